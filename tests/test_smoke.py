from decimal import Decimal

from tests.conftest import api, event


def test_it_records_and_prices_one_event(world):
    response = api(world.ingest).post("/api/v1/metrics/track", event(), format="json")
    assert response.status_code == 200, response.content
    # 1000 × $2/M + 500 × $8/M
    assert Decimal(str(response.json()["cost"])) == Decimal("0.006")
