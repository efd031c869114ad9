"""Liveness and readiness probes for load balancers and orchestrators."""

from django.conf import settings
from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """The process is up and serving requests."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """The process can reach what it needs: the database, and Redis when configured.

    Without the database nothing works: "unavailable", 503, so a load balancer sends traffic
    elsewhere. Without Redis ingest, reads and the budget check still work (the caches and the
    rate limit fail open, llmcost_project/cache.py) and background work waits for Redis: the
    process is "degraded" but still ready, 200, so a Redis outage does not take every web process
    out of the load balancer at once.
    """
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; report it rather than 500
        checks["database"] = f"error: {exc.__class__.__name__}"
    if settings.REDIS_URL:
        try:
            import redis

            client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
            try:
                client.ping()
            finally:
                client.close()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {exc.__class__.__name__}"
    if checks["database"] != "ok":
        status, code = "unavailable", 503
    elif any(value != "ok" for value in checks.values()):
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return JsonResponse({"status": status, "checks": checks}, status=code)
