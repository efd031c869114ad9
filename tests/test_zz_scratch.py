import json, pytest
from tests.conftest import api, event
from metrics.models import UsageEvent

CASES = [
 b'[' * 100000,
 b'{"model":"test-model","prompt_tokens":1e999999999999999999}',
 b'{"model":"test-model","metadata":{"a":1e999999999999999999}}',
 b'{"model":"test-model","timestamp":1734205034.5}',
 b'{"model":"test-model","timestamp":1734205034}',
 b'{"model":"test-model","timestamp":1e400}',
 b'{"model":"test-model","latency_ms":1e400}',
 b'{"model":"test-model","response_cost":1e400}',
 b'{"model":"test-model","latency_ms":NaN}',
 b'"hello"',
 b'{"model":"test-model","prompt_tokens":10,"cached_tokens":20}',
 b'{"model":"test-model","timestamp":"2999-01-01T00:00:00Z"}',
 b'{"model":"test-model","timestamp":"yesterday"}',
 b'{"model":"test-model","team_alias":"bad alias!"}',
 b'{"model":"   "}',
 b'{"model":"test-model","metadata":[1]}',
 b'{"model":"test-model","tags":"x"}',
 b'{"model":"test-model","request_id":""}',
 b'{"model":"test-model","user_id":"a\\u0000b"}',
 b'{"model":"te\\u0000st"}',
 b'{"model":"test-model","metadata":{"k":"a\\u0000b"}}',
 b'{"model":"test-model","request_id":"\\ud800"}',
 b'{"model":"\\ud800"}',
]

@pytest.mark.parametrize("body", CASES)
def test_probe(world, body):
    c = api(world.both)
    c.raise_request_exception = False
    try:
        r = c.post("/api/v1/metrics/track", body, content_type="application/json")
        print(body[:80], r.status_code, r.content[:300], UsageEvent.objects.count())
    except BaseException as e:
        print(body[:80], "EXC", type(e).__name__, str(e)[:200])
