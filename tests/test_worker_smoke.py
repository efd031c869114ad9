import time

import pytest

from metrics.models import DirtyHour, HourlyRollup
from metrics.tasks import rollups_refresh
from tests.conftest import api, event
from tests.workers import celery_worker


@pytest.mark.django_db(transaction=True)
def test_it_rolls_up_in_a_real_worker(world):
    assert api(world.ingest).post("/api/v1/metrics/track", event(), format="json").status_code == 200
    assert DirtyHour.objects.count() == 1
    with celery_worker():
        rollups_refresh.delay()
        deadline = time.monotonic() + 30
        while DirtyHour.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not DirtyHour.objects.exists()
    assert HourlyRollup.objects.filter(is_team_total=True).get().requests == 1
