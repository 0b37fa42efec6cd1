"""Settings for Model Registry.

Everything that differs between a laptop and production comes from environment variables
(see README "Configuration"); the defaults need no server: SQLite, local-memory cache and a
filesystem Celery transport under ./var.
"""

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from config.env import env_bool, env_float, env_int, env_list, env_str
from config.storage_urls import is_remote as storage_is_remote
from config.storage_urls import storage_from_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # Only the embedded, local defaults may run without a secret; a deployment sets one. The
    # "django-insecure-" prefix makes `check --deploy` fail (security.W009) if it is forgotten.
    SECRET_KEY = "django-insecure-local-development-key-change-me-" + "x" * 16
# Earlier keys, still accepted while a rotation rolls out (sessions, password resets, and the
# cache's signed values); new signatures use SECRET_KEY.
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS", [])
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "django_celery_beat",
    "mlregistry",
    "predictions",
    "quality",
    "backups",
]

# Order matters: the request id first, so every log line carries it; the request log right after,
# so its latency covers the whole stack; the body limit before anything reads the body; static
# files (admin, API docs) from the app itself, so the container needs no other server.
MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "config.request_log.RequestLogMiddleware",
    "config.middleware.NulCharacterMiddleware",
    "config.limits.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.middleware.LazyMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # django-prometheus' HTTP metrics, only the series the dashboard and alerts read.
    "config.http_metrics.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- Database ---
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web workers, the Celery worker and beat write the same file. IMMEDIATE takes the write
    # lock when a transaction starts, so a writer waits (up to `timeout` seconds) instead of
    # failing at once with "database is locked" when a read lock could not be upgraded; WAL
    # lets readers go on while one writes; synchronous=NORMAL is safe with WAL (a power cut
    # can lose the last commits, never corrupt the file). A wait that still times out is an
    # OperationalError, which config/errors.py answers with 503 and Retry-After.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Behind pgbouncer in transaction mode a named cursor (QuerySet.iterator()) may meet a
    # different server connection on its next fetch: Django then fetches in plain chunks.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env_bool(
        "DB_DISABLE_SERVER_SIDE_CURSORS", False
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ---
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "mlr"),
            # The values' format (config/cache_serializer.py: signed): what an older release
            # wrote under version 1 is never read, so nothing is refused on an upgrade.
            "VERSION": 2,
            "OPTIONS": {
                # Short timeouts: a slow Redis must not slow predictions down, they go uncached.
                "SOCKET_CONNECT_TIMEOUT": env_float("REDIS_CONNECT_TIMEOUT", 0.25),
                "SOCKET_TIMEOUT": env_float("REDIS_SOCKET_TIMEOUT", 0.25),
                # Values come back only through an allow-list unpickler: writing to Redis must
                # not be a way to run code here (config/cache_serializer.py).
                "SERIALIZER": "config.cache_serializer.RestrictedPickleSerializer",
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "model-registry",
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }

# --- Auth, i18n, static -------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# ISO 8601 dates on every page (config/formats/en/formats.py).
FORMAT_MODULE_PATH = "config.formats"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "admin:login"

# --- Storage: artifacts (content-addressed) and backups, each a folder or an S3 bucket -------
# Every read and write goes through storages["artifacts"] / storages["backups"], so these URLs
# are the whole switch (config/storage_urls.py: empty = the folder, s3://bucket/prefix).
MODEL_STORE_DIR = Path(env_str("MODEL_STORE_DIR", str(VAR_DIR / "artifacts")))
BACKUP_DIR = Path(env_str("BACKUP_DIR", str(VAR_DIR / "backups")))
ARTIFACT_STORAGE_URL = env_str("ARTIFACT_STORAGE_URL", "")
BACKUP_STORAGE_URL = env_str("BACKUP_STORAGE_URL", "")
AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL", "")
AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME", env_str("AWS_DEFAULT_REGION", ""))
# Lifetime of a presigned download URL (mlregistry.storage.presigned_url).
STORAGE_PRESIGNED_URL_SECONDS = env_int("STORAGE_PRESIGNED_URL_SECONDS", 3600, minimum=60)
_s3_options = {
    "endpoint_url": AWS_S3_ENDPOINT_URL,
    "region_name": AWS_S3_REGION_NAME,
    "presigned_expire_seconds": STORAGE_PRESIGNED_URL_SECONDS,
}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "artifacts": storage_from_url(
        ARTIFACT_STORAGE_URL,
        default_location=MODEL_STORE_DIR,
        setting="ARTIFACT_STORAGE_URL",
        **_s3_options,
    ),
    "backups": storage_from_url(
        BACKUP_STORAGE_URL,
        default_location=BACKUP_DIR,
        setting="BACKUP_STORAGE_URL",
        private=True,
        **_s3_options,
    ),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Local read-through cache of verified artifact bytes, keyed by SHA-256 (never stale), for a
# store off this machine: a replica's cold load reads the disk, not the network. Bytes; 0 = off.
# On by default (2 GiB) only when ARTIFACT_STORAGE_URL is remote; the local folder needs none.
ARTIFACT_CACHE_DIR = Path(env_str("ARTIFACT_CACHE_DIR", str(VAR_DIR / "artifact-cache")))
ARTIFACT_CACHE_MAX_BYTES = env_int(
    "ARTIFACT_CACHE_MAX_BYTES",
    2 * 1024**3 if storage_is_remote(STORAGES["artifacts"]) else 0,
    minimum=0,
)

# --- Request limits ---
# Nesting depth a JSON body (or a JSON form field) may have: deeper is a 400 naming the field,
# never a recursion error.
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 32, minimum=2)
# Seconds a request body's next bytes may take to arrive (set on the socket where the server
# exposes it, as gunicorn does; a body that stops arriving is a 408). granian 2.8 has no such
# setting: there the token is checked before any body is read, so only authenticated callers
# can hold a thread with a slow body.
REQUEST_BODY_TIMEOUT = env_float("REQUEST_BODY_TIMEOUT", 10.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
MAX_ARTIFACT_SIZE = env_int("MAX_ARTIFACT_SIZE", 200 * 1024 * 1024, minimum=1024)

# --- REST API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "config.throttling.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # JSON only, through the API's one parser (depth and NUL rules, config/parsers.py); the
    # upload views name their multipart parsers themselves.
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.parsers.HTTPContentNegotiation",
    "DEFAULT_PAGINATION_CLASS": "config.pagination.AsciiPageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Bearer",
    "TOKEN_TTL": None,  # tokens live until revoked unless created with an expiry
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Model Registry API",
    "DESCRIPTION": (
        "Register, promote and serve scikit-learn models. Clients authenticate with "
        "`Authorization: Bearer <token>` (create one with `manage.py create_api_token USER`)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Error envelope, X-Request-ID / Retry-After, common statuses, health and metrics.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.schema.postprocess_schema",
    ],
    "TAGS": [
        {"name": "models", "description": "Registered models"},
        {"name": "versions", "description": "Model versions: upload, stages, artifacts"},
        {"name": "predict", "description": "Predictions (production, pinned version, split)"},
        {"name": "traffic", "description": "A/B traffic splits"},
        {"name": "feedback", "description": "True outcomes of served predictions"},
        {"name": "datasets", "description": "Training datasets"},
        {"name": "training", "description": "Training jobs"},
        {"name": "drift", "description": "Drift reports"},
        {"name": "aliases", "description": "Aliases: names that point to one version each"},
        {"name": "batch", "description": "Batch scoring jobs over CSV or Parquet files"},
        {"name": "mlflow", "description": "MLflow's scoring protocol (invocations)"},
        {"name": "webhooks", "description": "Webhooks: signed event deliveries"},
        {"name": "audit", "description": "The audit log of every change"},
        {"name": "demo", "description": "The demo model"},
        {"name": "operations", "description": "Health, readiness and metrics"},
    ],
}

# --- Registry ---
# Types a skops artifact may contain beyond skops' own defaults. Anything else is refused at
# upload with the list of offending types. The defaults are scikit-learn's own compiled
# structures (trees of forests and boosting, neighbour indexes), which skops rebuilds from plain
# state but leaves untrusted; a team's own functions or classes are never on it. Setting the
# variable replaces this list.
SKOPS_TRUSTED_TYPES = env_list(
    "SKOPS_TRUSTED_TYPES",
    [
        "sklearn.tree._tree.Tree",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    ],
)
# The globals a pickle artifact may import are not a setting: they are the exact list in
# mlregistry/pickle_globals.py, derived by scripts/pickle_allowlist.py and reviewed in code.
# Every archive (skops and MLflow zips, Parquet datasets, backups) is checked against these
# before it is opened (config/archives.py); a refusal names the member.
ARCHIVE_MAX_MEMBER_SIZE = env_int("ARCHIVE_MAX_MEMBER_SIZE", 512 * 1024 * 1024, minimum=1024)
ARCHIVE_MAX_TOTAL_SIZE = env_int("ARCHIVE_MAX_TOTAL_SIZE", 2 * 1024 * 1024 * 1024, minimum=1024)
ARCHIVE_MAX_RATIO = env_float("ARCHIVE_MAX_RATIO", 100.0)
ARCHIVE_RATIO_GRACE_SIZE = env_int("ARCHIVE_RATIO_GRACE_SIZE", 1024 * 1024, minimum=0)
REFERENCE_SAMPLE_MAX_ROWS = env_int("REFERENCE_SAMPLE_MAX_ROWS", 5000, minimum=1)

# --- Celery ---
# "localhost" names no server (the transport is folders under VAR_DIR); without a host kombu
# warns "No hostname was supplied" on every connection.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://localhost//")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "celery" / "queue"),
        "data_folder_out": str(VAR_DIR / "celery" / "queue"),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# Celery's Django fixup closes database connections around every task unless this is set;
# config.celery closes them as Django does between requests instead (CONN_MAX_AGE).
CELERY_DB_REUSE_MAX = 2**31
# Where chord members report in (a batch job's chunks, whose join starts its finish); no other
# task stores a result. A Redis broker keeps them too: its chord join counts each member once,
# by task id, so a redelivered chunk cannot start the finish early. With another broker
# (RabbitMQ), the cache's Redis when there is one; else a folder, which joins through Celery's
# polling unlock task and serves one machine, like the folder broker. rpc:// cannot join.
CELERY_RESULT_BACKEND = env_str(
    "CELERY_RESULT_BACKEND",
    CELERY_BROKER_URL
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
    else REDIS_URL or f"file://{VAR_DIR / 'celery' / 'results'}",
)
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 24 * 3600, minimum=60)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Time limits (seconds). A task gets SoftTimeLimitExceeded at its limit, so its job records the
# failure; the worker kills it JOB_TIME_LIMIT_GRACE_SECONDS later. The broker's visibility
# timeout is computed from the longest of them (config.celery), so a message is never handed
# to a second worker while its first run may still be going.
JOB_TIME_LIMIT_SECONDS = env_int("JOB_TIME_LIMIT_SECONDS", 1800, minimum=1)
JOB_TIME_LIMIT_GRACE_SECONDS = env_int("JOB_TIME_LIMIT_GRACE_SECONDS", 60, minimum=1)
BACKUP_TIME_LIMIT_SECONDS = env_int("BACKUP_TIME_LIMIT_SECONDS", 4 * 3600, minimum=1)
TRAINING_TIME_LIMIT_SECONDS = env_int("TRAINING_TIME_LIMIT_SECONDS", 2 * 3600, minimum=1)
CELERY_TASK_SOFT_TIME_LIMIT = JOB_TIME_LIMIT_SECONDS
CELERY_TASK_TIME_LIMIT = JOB_TIME_LIMIT_SECONDS + JOB_TIME_LIMIT_GRACE_SECONDS
# A running job writes its heartbeat this often; the reaper (every minute) fails a job whose
# heartbeat is older than JOB_STALLED_AFTER_SECONDS: its worker is gone.
JOB_HEARTBEAT_SECONDS = env_int("JOB_HEARTBEAT_SECONDS", 30, minimum=1)
JOB_STALLED_AFTER_SECONDS = env_int("JOB_STALLED_AFTER_SECONDS", 180, minimum=2)
# A job whose run starts this many times without finishing is failed on its next start: a job
# that kills its worker (out of memory, say) is redelivered at once (acks_late, reject on worker
# lost) and would otherwise run, die and say "running" for ever, its heartbeat fresh each time.
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 5, minimum=1)
if JOB_STALLED_AFTER_SECONDS <= 2 * JOB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "JOB_STALLED_AFTER_SECONDS must exceed two JOB_HEARTBEAT_SECONDS, or one late "
        "heartbeat would fail a live job."
    )

# The git commit of the deployed code (a build sets it); recorded as the lineage of versions
# the training jobs register. Empty: read from the checkout's .git, when there is one.
CODE_VERSION = env_str("CODE_VERSION", "")

# --- Logging ---
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("LOG_FORMAT", "json")  # json | text
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "config.logging.RequestIdFilter"},
        "routine_tasks": {"()": "config.logging.RoutineTaskFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
        # Each task run gets one line from mlregistry.tasks (outcome, duration); Celery's own
        # "received" and "succeeded" lines would say it twice more. Failures are WARNING+.
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
        "celery.beat": {"filters": ["routine_tasks"]},
    },
}
# LOG_FILE: the same lines also go to this file, shared by every process (web workers, Celery
# children). LOG_FILE_MAX_BYTES=0 (default): the file is reopened when an external logrotate
# renames it; > 0: the app rotates it at that size, keeping LOG_FILE_BACKUP_COUNT old files,
# under a file lock so several processes never rotate at once (config/logging.py).
LOG_FILE = env_str("LOG_FILE", "")
LOG_FILE_MAX_BYTES = env_int("LOG_FILE_MAX_BYTES", 0, minimum=0)
LOG_FILE_BACKUP_COUNT = env_int("LOG_FILE_BACKUP_COUNT", 5, minimum=1)
if LOG_FILE:
    from config.logging import log_file_handler

    LOGGING["handlers"]["file"] = log_file_handler(
        path=LOG_FILE,
        max_bytes=LOG_FILE_MAX_BYTES,
        backup_count=LOG_FILE_BACKUP_COUNT,
        formatter=LOGGING["handlers"]["stdout"]["formatter"],
    )
    LOGGING["root"]["handlers"].append("file")

# --- Model-quality loop: drift, datasets, training --------- --------------------------------
# Drift: served rows of the last DRIFT_WINDOW_HOURS against the version's reference sample.
DRIFT_WINDOW_HOURS = env_int("DRIFT_WINDOW_HOURS", 24, minimum=1)
DRIFT_MIN_SAMPLES = env_int("DRIFT_MIN_SAMPLES", 50, minimum=2)
DRIFT_MAX_SAMPLES = env_int("DRIFT_MAX_SAMPLES", 10_000, minimum=10)
# A feature drifts when its p-value, adjusted for testing every feature of the model
# (Benjamini-Hochberg), is under DRIFT_P_VALUE_THRESHOLD and its effect size reaches a floor:
# the KS statistic (the largest gap between the two cumulative distributions, 0..1) for numbers,
# the population stability index for categories (0.1 = the conventional "moderate shift").
DRIFT_P_VALUE_THRESHOLD = env_float("DRIFT_P_VALUE_THRESHOLD", 0.05)
DRIFT_MIN_KS_STATISTIC = env_float("DRIFT_MIN_KS_STATISTIC", 0.1)
DRIFT_MIN_PSI = env_float("DRIFT_MIN_PSI", 0.1)
if not 0 < DRIFT_P_VALUE_THRESHOLD < 1:
    raise ImproperlyConfigured("DRIFT_P_VALUE_THRESHOLD must be between 0 and 1 (exclusive)")
if not 0 <= DRIFT_MIN_KS_STATISTIC <= 1:
    raise ImproperlyConfigured("DRIFT_MIN_KS_STATISTIC must be between 0 and 1")
if not 0 <= DRIFT_MIN_PSI < float("inf"):
    raise ImproperlyConfigured("DRIFT_MIN_PSI must be a finite number of at least 0")
# Drift reports older than this are pruned by the hourly cleanup, except each version's newest
# report and newest tested one.
DRIFT_REPORT_RETENTION_DAYS = env_int("DRIFT_REPORT_RETENTION_DAYS", 180, minimum=1)
# SQL datasets may only read from connections named here: "name" = an existing alias of
# DATABASES, "name=URL" = a separate database (added as alias "dataset_<name>"). None by
# default: the registry's own tables (users, tokens) are not training data.
DATASET_DATABASES: dict[str, str] = {}
for _entry in env_list("DATASET_DATABASES", []):
    _name, _, _url = _entry.partition("=")
    if _url:
        DATABASES[f"dataset_{_name}"] = dj_database_url.parse(_url, conn_max_age=0)
        DATASET_DATABASES[_name] = f"dataset_{_name}"
    else:
        DATASET_DATABASES[_name] = _name
DATASET_MAX_ROWS = env_int("DATASET_MAX_ROWS", 1_000_000, minimum=1)
DATASET_MAX_UPLOAD_SIZE = env_int("DATASET_MAX_UPLOAD_SIZE", 100 * 1024 * 1024, minimum=1024)
DATASET_SQL_TIMEOUT_SECONDS = env_int("DATASET_SQL_TIMEOUT_SECONDS", 60, minimum=1)
# Datasets and versions both have a "source" choice field: name their enums apart in the schema.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {
        "DatasetSourceEnum": "quality.models.DatasetSource",
        "VersionSourceEnum": "mlregistry.models.VersionSource",
    }
)
# --- end model-quality loop ----------------------------------------------------------------
# --- Batch scoring jobs (predictions.batch) ---
# Rows per chunk task when a request names none, and the most one may ask for: a chunk's
# frame, matrix and outputs are held in one worker's memory at once (~200 B a row a feature).
BATCH_CHUNK_ROWS = env_int("BATCH_CHUNK_ROWS", 50_000, minimum=1)
BATCH_CHUNK_ROWS_MAX = env_int("BATCH_CHUNK_ROWS_MAX", 500_000, minimum=1)
# Chunks a job may be cut into: each is a task, a row and a chord member, so chunk_rows=1 over
# a large file must be refused, not queued as millions of tasks.
BATCH_MAX_CHUNKS = env_int("BATCH_MAX_CHUNKS", 10_000, minimum=1)
# Threads a chunk may use in BLAS and pyarrow. Workers run one process per core, so more than one
# thread per chunk oversubscribes the cores (predictions.batch.batch_chunk_run).
BATCH_CHUNK_THREADS = env_int("BATCH_CHUNK_THREADS", 1, minimum=1)
# Share of invalid input rows (0..1) past which a job fails instead of reporting them.
BATCH_MAX_ERROR_SHARE = env_float("BATCH_MAX_ERROR_SHARE", 0.1)
BATCH_MAX_INPUT_SIZE = env_int("BATCH_MAX_INPUT_SIZE", 2 * 1024 * 1024 * 1024, minimum=1024)
BATCH_MAX_ROWS = env_int("BATCH_MAX_ROWS", 100_000_000, minimum=1)
# A chunk decodes whole row groups: one may hold at most this many bytes once decoded, counted
# as rows x feature columns x 8 (a constant column of 50M rows is a few hundred KB on disk).
BATCH_MAX_ROW_GROUP_BYTES = env_int("BATCH_MAX_ROW_GROUP_BYTES", 256 * 1024 * 1024, minimum=1)
# Every chunk parses the footer: millions of tiny row groups make one of hundreds of MB.
BATCH_MAX_FOOTER_BYTES = env_int("BATCH_MAX_FOOTER_BYTES", 16 * 1024 * 1024, minimum=1024)
# Finished jobs (and their files) are deleted this long after they finished.
BATCH_JOB_RETENTION_DAYS = env_int("BATCH_JOB_RETENTION_DAYS", 14, minimum=1)
# The Celery queue of batch tasks. Its own by default, which every worker consumes beside the
# default queue (CELERY_TASK_QUEUES) taking from each in turn: the reaper, backups and webhook
# deliveries then wait for one chunk per worker, not behind every chunk of a long job. Workers
# started with `-Q batch` alone (or `-Q celery`) split the two; "" puts batch tasks in the
# default queue.
BATCH_QUEUE = env_str("BATCH_QUEUE", "batch")
CELERY_TASK_QUEUES = [
    # As Celery declares its default queue: a direct exchange of the same name and key.
    Queue(name, Exchange(name), routing_key=name)
    for name in dict.fromkeys(["celery", BATCH_QUEUE or "celery"])
]
BATCH_CHUNK_TIME_LIMIT_SECONDS = env_int("BATCH_CHUNK_TIME_LIMIT_SECONDS", 1800, minimum=1)
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"].update(
    {
        "BatchStatusEnum": "predictions.models.BatchStatus",
        # The same csv | parquet choice as datasets' file_format: one enum in the schema.
        "FileFormatEnum": "predictions.models.BatchFormat",
    }
)
# === Operations and security =================================================================
# README "Configuration" lists every variable.
INSTALLED_APPS += ["drf_spectacular_sidecar"]

# --- Throttling: per client (or per address when anonymous), per scope, counted in the cache.
# Rates are "N/s|min|hour|day"; "none" switches a scope off. Clients behind N proxies are
# identified by the N-th address from the right of X-Forwarded-For; 0 trusts REMOTE_ADDR only.
NUM_PROXIES = env_int("NUM_PROXIES", 0, minimum=0)
THROTTLE_RATES = {
    "predict": env_str("THROTTLE_PREDICT_RATE", "6000/min"),
    "predict_anon": env_str("THROTTLE_PREDICT_ANON_RATE", "60/min"),
    "write": env_str("THROTTLE_WRITE_RATE", "120/min"),
    "write_anon": env_str("THROTTLE_WRITE_ANON_RATE", "10/min"),
    "read": env_str("THROTTLE_READ_RATE", "1200/min"),
    "read_anon": env_str("THROTTLE_READ_ANON_RATE", "60/min"),
    # Requests with a refused bearer token, per client address on every route: token guessing.
    "refused_token": env_str("THROTTLE_REFUSED_TOKEN_RATE", "30/min"),
}
REST_FRAMEWORK["NUM_PROXIES"] = NUM_PROXIES
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["config.throttling.ScopeRateThrottle"]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    scope: (None if rate.strip().lower() in {"", "none", "off"} else rate)
    for scope, rate in THROTTLE_RATES.items()
}

# --- Failed admin logins: per (address, username) and per address, in the cache.
ADMIN_LOGIN_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1)
ADMIN_LOGIN_LOCKOUT_SECONDS = env_int("ADMIN_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)

# --- /metrics: open to these addresses (single IPs or CIDR blocks), or to a bearer token.
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

# --- API client model restrictions are cached per user; every policy edit invalidates them.
ACCESS_POLICY_CACHE_TTL = env_int("ACCESS_POLICY_CACHE_TTL", 600, minimum=1)

# --- HTTPS. Production (DJANGO_DEBUG=false) gets HSTS and secure cookies by default; the TLS
# redirect stays opt-in because TLS usually ends at a proxy, and `make run` is plain http.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# When the proxy itself answers http with a redirect, the app never sees plain http (bar the
# probes) and Django's "no redirect" warning is about a redirect that exists elsewhere.
SECURE_SSL_REDIRECT_AT_PROXY = env_bool("DJANGO_SECURE_SSL_REDIRECT_AT_PROXY", False)
if SECURE_SSL_REDIRECT_AT_PROXY:
    SILENCED_SYSTEM_CHECKS = ["security.W008"]
# Probes and Prometheus talk plain http inside the private network.
SECURE_REDIRECT_EXEMPT = [r"^health", r"^metrics$"]
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- API docs served from the sidecar package: no page loads anything from outside.
SPECTACULAR_SETTINGS.update(
    {"SWAGGER_UI_DIST": "SIDECAR", "SWAGGER_UI_FAVICON_HREF": "SIDECAR", "REDOC_DIST": "SIDECAR"}
)

LOGGING["loggers"]["mlregistry.requests"] = {"level": LOG_LEVEL}
LOGGING["loggers"]["mlregistry.tasks"] = {"filters": ["routine_tasks"]}
# The worker imports the deployment's own tasks (heartbeat) besides the apps' tasks modules.
CELERY_IMPORTS = ["config.tasks", "mlregistry.webhooks.tasks"]
# Workers log through LOGGING above (JSON lines with the request id), not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if CELERY_BROKER_URL.startswith("filesystem"):
    # Otherwise kombu puts its broadcast (control) exchange in ./control of the current folder.
    CELERY_BROKER_TRANSPORT_OPTIONS["control_folder"] = str(VAR_DIR / "celery" / "control")
# === end of operations and security ==========================================================

# --- Backups and retention (backups app) ---------------------------------------------------
BACKUP_RETENTION_DAYS = env_int("BACKUP_RETENTION_DAYS", 7, minimum=1)
# /health/ready says "degraded" when the newest verified backup is older than this.
BACKUP_STALE_AFTER_HOURS = env_int("BACKUP_STALE_AFTER_HOURS", 26, minimum=1)
# Folder of pg_dump/pg_restore; by default the server's major version under
# /usr/lib/postgresql/<major>/bin, then PATH.
PG_BIN_DIR = env_str("PG_BIN_DIR", "")
# Unreferenced artifact files younger than this are left alone: an upload may be in flight.
ARTIFACT_SWEEP_MIN_AGE_SECONDS = env_int("ARTIFACT_SWEEP_MIN_AGE_SECONDS", 3600, minimum=0)
# Job runs (admin "Job runs") older than this are pruned by the hourly cleanup; the newest run
# of each job and outcome stays, and /metrics keeps counting pruned runs (backups.JobRunTally).
JOB_RUN_RETENTION_DAYS = env_int("JOB_RUN_RETENTION_DAYS", 90, minimum=1)
# --- end backups ---------------------------------------------------------------------------
# --- Webhooks (mlregistry/webhooks; README "Webhooks") ------------------------------------
# Hosts or IP addresses (exact, comma-separated) a webhook may reach although they are loopback,
# private or link-local; every other such address is refused at configuration and at sending.
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", [])
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 5.0)
# Attempts per delivery, and the backoff between them: base * 2**(n-1) capped at max, jittered.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 10.0)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 3600.0)
# A webhook whose every attempt failed for this long is disabled (audited; readiness says so).
WEBHOOK_DISABLE_AFTER_HOURS = env_float("WEBHOOK_DISABLE_AFTER_HOURS", 24.0)
# Finished deliveries (and their attempts) older than this are pruned by the retention job.
WEBHOOK_DELIVERY_RETENTION_DAYS = env_int("WEBHOOK_DELIVERY_RETENTION_DAYS", 30, minimum=1)
# --- end Webhooks ---
# --- Predictions (serving path; see README "Serving") ----------------------------------------
# Result cache TTL in seconds (keys hold the version id and sha256, so a promotion never
# serves a previous version's answer).
PREDICTION_CACHE_TTL = env_int("PREDICTION_CACHE_TTL", 60, minimum=0)
# After a cache error, skip the cache for this many seconds instead of paying a socket timeout
# on every request while Redis is down.
PREDICTION_CACHE_RETRY_SECONDS = env_float("PREDICTION_CACHE_RETRY_SECONDS", 5.0)
# During a cache outage, tokens, access policies and routing entries this process last read or
# wrote are reused for up to this many seconds (config/cache_outage.py), instead of costing
# database queries on every request.
CACHE_OUTAGE_MEMO_SECONDS = env_float("CACHE_OUTAGE_MEMO_SECONDS", 10.0)
# Result-cache writes go to Redis from a background thread, in pipelined batches, instead of
# the request waiting for each SET (a late write only costs a later miss, never a stale answer).
PREDICTION_CACHE_WRITE_BEHIND = env_bool("PREDICTION_CACHE_WRITE_BEHIND", True)
# A write no request has carried (in its read-ahead pipeline) after this long goes on its own.
PREDICTION_CACHE_WRITE_DELAY = max(0.01, env_float("PREDICTION_CACHE_WRITE_DELAY", 0.2))
# How long a routing entry (model name -> production version / split) may live in the cache.
# Invalidated on commit of every change, so this only bounds staleness when invalidation can't
# reach the entry: another process's local-memory cache (default 2 s) or a Redis outage during
# a promotion (shared cache, default 60 s).
PREDICTION_ROUTING_TTL = env_int("PREDICTION_ROUTING_TTL", 60, minimum=1)
PREDICTION_ROUTING_LOCAL_TTL = env_float("PREDICTION_ROUTING_LOCAL_TTL", 2.0)
PREDICTION_MAX_BATCH_ROWS = env_int("PREDICTION_MAX_BATCH_ROWS", 10_000, minimum=1)
# Loaded estimators kept per process (LRU keyed by version id + sha256).
PREDICTION_MODEL_CACHE_SIZE = env_int("PREDICTION_MODEL_CACHE_SIZE", 8, minimum=1)
# ...and at most this many megabytes of them (measured by artifact size), per process.
PREDICTION_MODEL_CACHE_MAX_MB = env_int("PREDICTION_MODEL_CACHE_MAX_MB", 1024, minimum=1)
# Prediction log: the share of served rows recorded (0..1), buffered in-process and
# bulk-inserted every PREDICTION_LOG_FLUSH_SECONDS or PREDICTION_LOG_FLUSH_ROWS rows.
PREDICTION_LOG_SAMPLE_RATE = env_float("PREDICTION_LOG_SAMPLE_RATE", 1.0)
# A batch logs at most this many (randomly chosen) rows: a logged row costs ~12 us of the web
# process and ~28 us of Postgres, far more than predicting it (~1 us for a linear model).
# Raise it when every batch row must be audited.
PREDICTION_LOG_BATCH_MAX_ROWS = env_int("PREDICTION_LOG_BATCH_MAX_ROWS", 20, minimum=1)
PREDICTION_LOG_STORE_FEATURES = env_bool("PREDICTION_LOG_STORE_FEATURES", True)
PREDICTION_LOG_RETENTION_DAYS = env_int("PREDICTION_LOG_RETENTION_DAYS", 30, minimum=1)
# Small, frequent flushes: a flush briefly competes with the request threads for the GIL and
# the CPU, and a 1,000-row flush every ~1.6 s was what the slowest 1% of requests waited for.
PREDICTION_LOG_FLUSH_SECONDS = env_float("PREDICTION_LOG_FLUSH_SECONDS", 0.2)
PREDICTION_LOG_FLUSH_ROWS = env_int("PREDICTION_LOG_FLUSH_ROWS", 200, minimum=1)
# Rows held in memory at most; past it rows are dropped and counted (a slow database must not
# grow the web process without bound).
PREDICTION_LOG_BUFFER_MAX = env_int("PREDICTION_LOG_BUFFER_MAX", 100_000, minimum=1)
# Token -> user kept this long on the predict path (0 = off). Revoking a token or deactivating a
# user through the product drops its entry at once; another process's local-memory cache, or a
# change made outside the product (raw SQL, a script's update()), lags by at most this long.
PREDICTION_AUTH_CACHE_SECONDS = env_int("PREDICTION_AUTH_CACHE_SECONDS", 30, minimum=0)
# --- end Predictions ---
