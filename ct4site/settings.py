"""Settings for ct4 identity recovery, read from the environment.

DATABASE_URL (unset: embedded PostgreSQL under .data/), SECRET_KEY, DEBUG, TIME_ZONE,
ALLOWED_HOSTS (comma-separated). `ct4site.settings_production` hardens these for deployment.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from ct4site.database import database_config
from ct4site.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-insecure-key-set-SECRET_KEY-in-production")
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS",
                                                   "localhost,127.0.0.1,[::1],testserver").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_pgviews",
    "django_q",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "identity",
    "recovery",
]

MIDDLEWARE = [
    # /healthz, /readyz and /metrics answer before the host check and the HTTPS redirect: load
    # balancers and Prometheus call by IP address over plain HTTP.
    "ct4site.middleware.ProbeMiddleware",
    "ct4site.middleware.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, API docs) straight from gunicorn, with DEBUG off too.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ct4site.urls"
WSGI_APPLICATION = "ct4site.wsgi.application"

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
            ],
        },
    },
]

DATABASES = {"default": database_config(BASE_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The park's time zone: lead dates, the 14-day window and the schedules' cron are in it.
TIME_ZONE = os.environ.get("TIME_ZONE", "America/Lima")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `collectstatic` puts the files WhiteNoise serves.
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
LOGIN_URL = "admin:login"

# PostgreSQL views as unmanaged models: created after every migrate.
MATERIALIZED_VIEWS_CHECK_SQL_CHANGED = True

# CT4_LOG_FORMAT=json: one JSON object per line, with the jobs' figures as fields (ct4site.logs).
CT4_LOG_FORMAT = os.environ.get("CT4_LOG_FORMAT", "plain").strip().lower()
LOGGING = logging_config(log_format=CT4_LOG_FORMAT, level=os.environ.get("CT4_LOG_LEVEL", "INFO"))

# --- Health and metrics (/healthz, /readyz, /metrics) ------------------------------------
# /metrics answers loopback callers; any other caller must send `Authorization: Bearer <token>`
# with this token (unset: other callers are refused).
CT4_METRICS_TOKEN = os.environ.get("CT4_METRICS_TOKEN", "")
# The business gauges (backlog, queue, jobs...) are read at most this often per web process.
CT4_METRICS_CACHE_SECONDS = int(os.environ.get("CT4_METRICS_CACHE_SECONDS", "30"))
# /readyz fails when ct4 schedules exist and no qcluster worker beat within this many minutes.
CT4_READY_HEARTBEAT_MINUTES = int(os.environ.get("CT4_READY_HEARTBEAT_MINUTES", "5"))

# --- REST API (/api/v1/) -------------------------------------------------------------
# The API's reads of the views (summaries and listings) and the dashboard's figures are kept this
# many seconds per web process, and dropped sooner when a job run starts or finishes
# (recovery.read_cache; 0 turns the cache off). docs/api.md, docs/deploy.md.
CT4_API_CACHE_SECONDS = int(os.environ.get("CT4_API_CACHE_SECONDS", "60"))
# Where Django's cache lives: `local` (each process its own memory) or `database` (one table,
# `ct4_cache`, shared by every web worker on every machine: run `manage.py createcachetable` once).
# Shared, a summary is computed once for all workers and, while one worker recomputes it, the
# others serve the previous answer (docs/api.md, "Cached reads").
CT4_CACHE = os.environ.get("CT4_CACHE", "local").strip().lower()
if CT4_CACHE == "database":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "ct4_cache"}}
elif CT4_CACHE != "local":
    raise ImproperlyConfigured(f"CT4_CACHE must be 'local' or 'database', not {CT4_CACHE!r}")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token for scripts (Authorization: Token <key>; listed first, so an anonymous call gets
        # 401 with WWW-Authenticate), session for browsers (CSRF enforced on POST).
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "recovery.api.errors.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {"jobs": os.environ.get("CT4_API_JOB_RATE", "10/minute")},
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ct4 identity recovery API",
    "DESCRIPTION": "Red-KPI metrics, identity gaps, per-lead 14-day money, limbo and funnel listings, and job starts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # The docs' JavaScript and CSS come from the drf-spectacular-sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "JobRunStatusEnum": "identity.models.JobRunStatus",
        "RecoveryStatusEnum": ["ACTIVE", "NO_SIGNAL", "NOT_CONFIGURED"],
        "FreshnessEnum": ["OK", "STALE", "NEVER"],
    },
}

# --- Domain settings -------------------------------------------------------------------
CT4 = {
    # Days after the lead date in which trips count toward milestones.
    "CLAIM_WINDOW_DAYS": 14,
    # Trips needed for each milestone and the amount (PEN) the platform pays for it.
    "MILESTONES": {1: "25.00", 5: "35.00", 25: "100.00"},
    # Default region for phone numbers without a country code.
    "PHONE_REGION": "PE",
    # Leads one scheduled recovery run takes from the queue (every 2 hours).
    "SCHEDULED_RECOVERY_LIMIT": int(os.environ.get("CT4_SCHEDULED_RECOVERY_LIMIT", "5000")),
}

# --- Scheduling (django-q2, ORM broker: the database is the only moving part) ---------
Q_CLUSTER = {
    "name": "ct4",
    "orm": "default",
    "workers": int(os.environ.get("CT4_Q_WORKERS", "2")),
    # A job may take up to an hour; retry must be longer than timeout or a long job runs twice.
    "timeout": 3600,
    "retry": 4000,
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Scheduled tasks",
}

# Matching thresholds, in bits of posterior log-odds (docs/matching.md explains each).
CT4_MATCHING = {
    "link_bits": float(os.environ.get("CT4_LINK_BITS", "8.0")),
    "margin_bits": float(os.environ.get("CT4_MARGIN_BITS", "6.0")),
    "weak_bits": float(os.environ.get("CT4_WEAK_BITS", "-6.0")),
    # A record hired in the lead's park 0..N days after the lead date is recruitment evidence,
    # shown to reviewers and not weighed (identity.fields); 0 turns it off.
    "recruit_window_days": int(os.environ.get("CT4_RECRUIT_WINDOW_DAYS", "7")),
}
# Audit sampling (recovery.review.audit, docs/review.md "Audit sampling"): each stratum's sample gives
# a 95 % interval of +/- precision_half_width on its proportion (the standard formula with the finite
# population correction, at expected_proportion), and one audit_sample run draws at most max_per_run items.
CT4_AUDIT = {
    "precision_half_width": float(os.environ.get("CT4_AUDIT_HALF_WIDTH", "0.005")),
    "confidence": float(os.environ.get("CT4_AUDIT_CONFIDENCE", "0.95")),
    "expected_proportion": float(os.environ.get("CT4_AUDIT_EXPECTED_PROPORTION", "0.5")),
    "max_per_run": int(os.environ.get("CT4_AUDIT_MAX_PER_RUN", "200")),
    # The precision the partner asks of automatic links: the dashboard warns when the estimate's lower
    # bound falls below it, and a rule whose audited upper bound falls below it stops linking.
    "precision_target": float(os.environ.get("CT4_AUDIT_PRECISION_TARGET", "0.999")),
    # Draw an audit sample after every matching or recovery run that made links.
    "sample_after_runs": os.environ.get("CT4_AUDIT_SAMPLE_AFTER_RUNS", "true").lower() in ("1", "true", "yes", "on"),
}
# A matching run over at least this many leads reads the drivers index into memory once
# (identity.resolution, docs/engine.md); smaller ones use the database's indexes.
CT4_IN_MEMORY_MIN_LEADS = int(os.environ.get("CT4_IN_MEMORY_MIN_LEADS", "2000"))
# ... and a run over at least this many when the index's image on disk is current (identity.index_image).
CT4_IN_MEMORY_IMAGE_MIN_LEADS = int(os.environ.get("CT4_IN_MEMORY_IMAGE_MIN_LEADS", "100"))
# Where that in-memory index is kept on disk between runs, under the index's version
# (identity.index_image): a run reads it instead of the database. It holds what the index holds
# (names, keys); empty turns it off.
CT4_INDEX_IMAGE_DIR = os.environ.get("CT4_INDEX_IMAGE_DIR", str(BASE_DIR / ".data" / "index-image"))
# A process keeps the in-memory index it read while no refresh has changed it (about 0.8 GB at a
# million drivers): a worker's next run, of any size, decides against it (identity.candidates). Off: each
# run reads it again, and runs under CT4_IN_MEMORY_MIN_LEADS ask the database.
CT4_INDEX_KEEP = os.environ.get("CT4_INDEX_KEEP", "true").lower() in ("1", "true", "yes", "on")
# A batch of at most SCORE_ONCE_MAX_LEADS leads (a lead arriving now, a retry, explain_lead) is decided with
# Polars' pool threads kept on the caller's core: its hundreds of tiny frame operations then do not each
# wake another core (identity.cores, docs/engine.md). Off: they run where the system puts them.
CT4_SMALL_BATCH_ONE_CORE = os.environ.get("CT4_SMALL_BATCH_ONE_CORE", "true").lower() in ("1", "true", "yes", "on")

# A job whose database connection is lost mid-batch rolls the batch back, reconnects with
# backoff and goes on; past this many seconds without the database it stops (identity.runs).
CT4_DB_RETRY_SECONDS = float(os.environ.get("CT4_DB_RETRY_SECONDS", "60"))
