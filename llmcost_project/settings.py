"""The one settings module. Everything that differs between machines comes from the environment.

A malformed value stops start-up with ImproperlyConfigured naming the variable, instead of
silently falling back to a default.
"""

import ipaddress
import os
import secrets
import zoneinfo
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("LLMCOST_VAR_DIR", BASE_DIR / "var"))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false/1/0), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_decimal(name: str, default: str, *, minimum: Decimal = Decimal(0)) -> Decimal:
    raw = os.environ.get(name)
    try:
        value = Decimal(default if raw is None or raw.strip() == "" else raw.strip())
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {raw!r}") from None
    if not value.is_finite() or value < minimum:
        raise ImproperlyConfigured(f"{name} must be a number of at least {minimum}, got {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, parse, default: str | None):
    """Parse a URL-shaped variable with django-environ, naming the variable when it is malformed."""
    raw = os.environ.get(name, default)
    if raw is None or raw == "":
        return None
    try:
        return parse(raw)
    except Exception as exc:  # environ raises several types for a malformed URL
        raise ImproperlyConfigured(f"{name} is malformed ({raw!r}): {exc}") from None


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = secrets.token_urlsafe(50)  # development only: sessions end when the process does
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

TIME_ZONE = env_str("TIME_ZONE", "UTC")
try:
    zoneinfo.ZoneInfo(TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE is not a known time zone: {TIME_ZONE!r}") from None
USE_TZ = True  # storage is always UTC; TIME_ZONE only changes how times are shown
USE_I18N = False
LANGUAGE_CODE = "en-us"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from our static files: /api/docs/ needs no CDN
    "axes",
    "teams",
    "billing",
    "metrics",
]

MIDDLEWARE = [
    # First and last: request counts and latency for /metrics, measured around everything else.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # A view that finds the database away answers 503 + Retry-After, not a 500 (see the module).
    "llmcost_project.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last but for metrics, as django-axes asks: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "llmcost_project.urls"
WSGI_APPLICATION = "llmcost_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "teams.context_processors.organizations",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
_default_sqlite = f"sqlite:///{VAR_DIR / 'llmcost.sqlite3'}"


def _database_url(raw: str) -> dict:
    scheme = urlsplit(raw).scheme
    config = environ.Env.db_url_config(raw) if scheme in environ.Env.DB_SCHEMES else {}
    # The ingest and rollup SQL is written for these two (COPY, ON CONFLICT … RETURNING, JSON functions).
    if config.get("ENGINE") not in ("django.db.backends.postgresql", "django.db.backends.sqlite3"):
        raise ValueError(f"unsupported scheme {scheme!r}; use postgres://… or sqlite:///…")
    return config


DATABASES = {"default": env_url("DATABASE_URL", _database_url, _default_sqlite)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the Celery worker write at the same time: WAL lets readers and one
    # writer proceed together, IMMEDIATE takes the write lock at BEGIN (so a transaction never
    # fails half-way on an upgrade from read to write), and the timeout makes writers queue.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env_int("DB_CONN_MAX_AGE", 60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Dashboard queries are short; PostgreSQL's JIT compiles them for longer than they run.
        DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
_test_name = os.environ.get("TEST_DATABASE_NAME") or None
if _test_name is None and DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: tests start real Celery workers that must see the same database.
    _test_name = str(VAR_DIR / "test.sqlite3")
DATABASES["default"]["TEST"] = {"NAME": _test_name}
# The same backends wrapped by django-prometheus: query counts, errors and durations on /metrics.
_PROMETHEUS_DB_ENGINES = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}
_engine = DATABASES["default"]["ENGINE"]
DATABASES["default"]["ENGINE"] = _PROMETHEUS_DB_ENGINES.get(_engine, _engine)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache and queue ------------------------------------------------------------------------
def _redis_url(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        raise ValueError("expected redis://host:port/db")
    parsed.port  # noqa: B018 -- raises ValueError for a non-numeric port
    return raw


REDIS_URL = env_url("REDIS_URL", _redis_url, None)
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's RedisCache, failing open: with Redis away every operation is a counted, logged
            # miss (the rate limit allows), so ingest, reads and the budget check keep working.
            "BACKEND": "llmcost_project.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "llmcost"),
            # Redis answers in well under a millisecond: an unreachable one costs half a second at most.
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- email ----------------------------------------------------------------------------------
_email = env_url("EMAIL_URL", environ.Env.email_url_config, None)
if _email:
    EMAIL_BACKEND = _email.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
    EMAIL_HOST = _email.get("EMAIL_HOST", "localhost")
    EMAIL_PORT = _email.get("EMAIL_PORT", 25)
    EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
    EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "llmcost <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- static files ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- security (clean `check --deploy` when DEBUG is off) --------------------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes and scrapers speak plain HTTP inside
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # throttles repeated failed logins
    "django.contrib.auth.backends.ModelBackend",
]
# Repeated failed logins: after AXES_FAILURE_LIMIT failures for one username from one address,
# that pair is locked out for AXES_COOLOFF_MINUTES; after LOGIN_IP_FAILURE_LIMIT failures from one
# address across usernames (a password spray), that address is (teams/login_lockout.py).
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HANDLER = "teams.login_lockout.LoginLockoutHandler"
LOGIN_IP_FAILURE_LIMIT = env_int("LOGIN_IP_FAILURE_LIMIT", 20, minimum=1)
# Password reset mails, per hour: to one address, and requests from one client address.
PASSWORD_RESET_MAILS_PER_ADDRESS = env_int("PASSWORD_RESET_MAILS_PER_ADDRESS", 3, minimum=1)
PASSWORD_RESET_REQUESTS_PER_IP = env_int("PASSWORD_RESET_REQUESTS_PER_IP", 20, minimum=1)
AXES_RESET_ON_SUCCESS = True
# Off: django-axes would log an "AXES: BEGIN …" banner in every process, so every management
# command, worker and test run; lockouts and failed logins are still logged (naming the username,
# address and path, without the user agent).
AXES_VERBOSE = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# --- API ------------------------------------------------------------------------------------
# Largest request body accepted by the ingest API (a full 1,000-event batch fits with room).
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
API_MAX_BATCH_EVENTS = 1000
# Per-token request rate, in DRF's "N/period" form; generous so gateways are never throttled
# in normal use, but a runaway client cannot flood the database.
API_RATE_LIMIT = env_str("API_RATE_LIMIT", "6000/min")
# How far ahead of the server clock an event timestamp may be (client clock skew).
INGEST_MAX_FUTURE_SECONDS = env_int("INGEST_MAX_FUTURE_SECONDS", 300)
# Prices are read into each process and refreshed this often; admin edits apply within it.
PRICE_CACHE_SECONDS = env_int("PRICE_CACHE_SECONDS", 30)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["teams.authentication.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["teams.authentication.ApiTokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_token": API_RATE_LIMIT},
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "llmcost_project.api_errors.api_exception_handler",
    "COERCE_DECIMAL_TO_STRING": False,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "llmcost API",
    "DESCRIPTION": "Record what every LLM call costs; read spend, tokens and latency per team.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI from drf-spectacular-sidecar's copy in our static files, not a CDN (works offline).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "WARNING"}},
}

# Tests and `make run` may start before collectstatic has written a manifest: fall back to the
# plain file name instead of failing the page.
WHITENOISE_MANIFEST_STRICT = False

# --- Celery ---------------------------------------------------------------------------------
# Production: Redis (REDIS_URL). Embedded default: kombu's filesystem transport, a broker that
# needs no server, so `make run` shows rollups and alerts with nothing installed.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "celery-broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Longer than the longest task's hard limit, so a running task is never handed out twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_TIME_LIMIT = 900
CELERY_TASK_SOFT_TIME_LIMIT = 840
# A task is acknowledged when it finishes; a worker killed mid-task leaves it to be redelivered.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
RAW_EVENT_RETENTION_DAYS = env_int("RAW_EVENT_RETENTION_DAYS", 90, minimum=2)
# Worker processes that share a rollup backlog (after an outage, a backfill or a reprice): the beat
# run queues this many runs in all, which split the chunks between them. Match the workers' concurrency.
ROLLUP_WORKERS = env_int("ROLLUP_WORKERS", 2, minimum=1)
CELERY_BEAT_SCHEDULE = {
    # `expires`: if no worker runs for a while, stale runs are dropped rather than piling up.
    "rollups-refresh": {"task": "metrics.tasks.rollups_refresh", "schedule": 60.0, "options": {"expires": 55}},
    "budgets-evaluate": {"task": "billing.tasks.budgets_evaluate", "schedule": 60.0, "options": {"expires": 55}},
    "reprice-requests-sweep": {
        "task": "metrics.tasks.reprice_requests_sweep", "schedule": 60.0, "options": {"expires": 55},
    },
    "spend-anomalies-detect": {
        "task": "metrics.tasks.spend_anomalies_detect", "schedule": 300.0, "options": {"expires": 290},
    },
    "raw-events-prune": {"task": "metrics.tasks.raw_events_prune", "schedule": 3600.0, "options": {"expires": 3000}},
    "reprice-history-prune": {
        "task": "metrics.tasks.reprice_history_prune", "schedule": 3600.0, "options": {"expires": 3000},
    },
    "notification-history-prune": {
        "task": "billing.tasks.notification_history_prune", "schedule": 3600.0, "options": {"expires": 3000},
    },
    "notification-deliveries-send": {
        "task": "billing.tasks.notification_deliveries_send", "schedule": 60.0, "options": {"expires": 55},
    },
}
# Spend anomalies (metrics.anomalies): a team's closed hour is anomalous when its spend exceeds the
# median m of the same hour on the previous 7 days by more than max(ANOMALY_FACTOR × MAD,
# ANOMALY_MIN_USD), MAD being the median absolute deviation of those 7 hours from m. Detection looks
# back ANOMALY_LOOKBACK_HOURS closed hours at each run (every 5 minutes), so hours rolled up late count.
ANOMALY_FACTOR = env_decimal("ANOMALY_FACTOR", "5")
ANOMALY_MIN_USD = env_decimal("ANOMALY_MIN_USD", "1", minimum=Decimal("0.000001"))
ANOMALY_LOOKBACK_HOURS = env_int("ANOMALY_LOOKBACK_HOURS", 24, minimum=1)
# A budget's forecast alert (`budget.forecast`, once per period when the projection first exceeds the
# limit; method in billing.selectors.BudgetStatus). Off: threshold alerts only.
BUDGET_FORECAST_ALERTS = env_bool("BUDGET_FORECAST_ALERTS", True)
# Budget spend is cached this long per budget for budget checks and ingest answers.
BUDGET_SPEND_CACHE_SECONDS = env_int("BUDGET_SPEND_CACHE_SECONDS", 5)
# Reservations may reuse a budget's spend read this long ago (0: read it for every reservation;
# see billing/reservations.py).
RESERVE_SPEND_CACHE_SECONDS = env_int("RESERVE_SPEND_CACHE_SECONDS", 1)
# Where links in emails point.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# A webhook or Slack delivery that keeps failing (5xx, 429, timeouts) is retried this long, then failed.
NOTIFICATION_RETRY_HOURS = env_int("NOTIFICATION_RETRY_HOURS", 24, minimum=1)
# Off: a webhook or Slack URL must resolve only to public addresses, when saved and at every delivery
# (billing/safe_http.py). On: loopback, private and link-local targets are allowed too (a receiver
# inside the same network; the test suite's local receiver).
NOTIFICATION_ALLOW_PRIVATE_URLS = env_bool("NOTIFICATION_ALLOW_PRIVATE_URLS", False)
# Finished deliveries (and sent forecast and anomaly alerts) older than this are pruned, hourly.
NOTIFICATION_HISTORY_DAYS = env_int("NOTIFICATION_HISTORY_DAYS", 90, minimum=1)
# Finished repricing records (metrics.RepriceRequest) older than this are pruned, hourly.
REPRICE_HISTORY_DAYS = env_int("REPRICE_HISTORY_DAYS", 90, minimum=1)

# --- Prometheus (/metrics) ------------------------------------------------------------------
# Scrapers present `Authorization: Bearer <PROMETHEUS_SCRAPE_TOKEN>` and/or connect from one of
# PROMETHEUS_ALLOWED_NETWORKS; with neither set, /metrics answers only when DEBUG is on.
PROMETHEUS_SCRAPE_TOKEN = env_str("PROMETHEUS_SCRAPE_TOKEN", "")
if PROMETHEUS_SCRAPE_TOKEN and len(PROMETHEUS_SCRAPE_TOKEN) < 16:
    raise ImproperlyConfigured("PROMETHEUS_SCRAPE_TOKEN must be at least 16 characters long")


def _networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in env_list(name, [])]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be comma-separated addresses or networks (CIDR): {exc}") from None


PROMETHEUS_ALLOWED_NETWORKS = _networks("PROMETHEUS_ALLOWED_NETWORKS")
# Business metrics (from rollups) are computed at most this often; scrapes in between reuse them.
PROMETHEUS_CACHE_SECONDS = env_int("PROMETHEUS_CACHE_SECONDS", 30)
# Label cardinality: per organization, the costliest N models and teams keep their own label;
# the rest are summed under "other".
PROMETHEUS_TOP_MODELS = env_int("PROMETHEUS_TOP_MODELS", 10, minimum=1)
PROMETHEUS_TOP_TEAMS = env_int("PROMETHEUS_TOP_TEAMS", 20, minimum=1)
# Set for gunicorn with several workers: each worker writes its request metrics to files here and
# /metrics merges them (prometheus_client's multiprocess mode). It must exist before the workers start.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR and not Path(PROMETHEUS_MULTIPROC_DIR).is_dir():
    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR is not a directory: {PROMETHEUS_MULTIPROC_DIR!r}")
