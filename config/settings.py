"""Settings for the credit ledger service.

Everything comes from the environment (django-environ); a `.env` file beside
`manage.py` is read when present. `.env.example` lists every setting.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
# Trusted reverse proxies in front of the service (see .env.example); 0 = clients connect directly.
NUM_PROXIES = env.int("NUM_PROXIES", default=0)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Security (strict unless DEBUG; each can be overridden, e.g. behind a TLS proxy) ---
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "core.apps.AdminConfig",  # django.contrib.admin with the two-factor, lockout-aware admin site
    "core.apps.CoreConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "djstripe",
    "users",
    "billing",
    "agents",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.RejectUnknownCharsetMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.db_routing.PinWritersToPrimaryMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out log-in with 429
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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


# --- Database ---------------------------------------------------------------
# A ledger verb waits at most this long for a row lock, and retries lock waits and deadlocks
# for at most LEDGER_RETRY_BUDGET_SECONDS in all, then answers 503 LEDGER_BUSY: both well
# under gunicorn's worker timeout, so a busy wallet is an answer, never a killed worker.
LEDGER_LOCK_WAIT_SECONDS = env.int("LEDGER_LOCK_WAIT_SECONDS", default=5)
LEDGER_RETRY_BUDGET_SECONDS = env.float("LEDGER_RETRY_BUDGET_SECONDS", default=12.0)
# Seconds to wait for one database host (of a host list, or the replica) before moving on.
DATABASE_CONNECT_TIMEOUT = env.int("DATABASE_CONNECT_TIMEOUT", default=3)


def database_from_url(url: str) -> dict:
    """Parse DATABASE_URL; accepts the runbook's SQLAlchemy-style `mysql+driver://`.

    Every MySQL/MariaDB URL is served by mysqlclient with utf8mb4, strict mode
    and READ COMMITTED, which the ledger's locking is designed for.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("mysql+"):
        url = "mysql://" + rest
    hosts = []
    if sep and scheme.startswith("mysql"):
        # A comma-separated host list (a Galera cluster's nodes, this server's own first): the
        # connection goes to the first that is up and ready (core.mysql_failover).
        userinfo, at, location = rest.rpartition("@")
        netloc, slash, path = location.partition("/")
        if "," in netloc:
            for entry in netloc.split(","):
                host, _, port = entry.strip().partition(":")
                hosts.append((host, int(port) if port else 3306))
            url = f"mysql://{userinfo}{at}{hosts[0][0]}:{hosts[0][1]}{slash}{path}"
    config = environ.Env.db_url_config(url)
    if hosts:
        config["ENGINE"] = "core.mysql_failover"
        config["HOSTS"] = hosts
        config.setdefault("OPTIONS", {})["connect_timeout"] = DATABASE_CONNECT_TIMEOUT
    if config["ENGINE"] in ("django.db.backends.mysql", "core.mysql_failover"):
        config.setdefault("OPTIONS", {}).update(
            {
                "charset": "utf8mb4",
                "init_command": "SET sql_mode='STRICT_TRANS_TABLES,NO_ZERO_DATE,"
                "NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', "
                f"SESSION innodb_lock_wait_timeout = {LEDGER_LOCK_WAIT_SECONDS}, "
                # On a Galera node, reads are causal (they see every write committed anywhere in
                # the cluster before them) whatever the node's own setting: a replay lookup or a
                # refusal after a lost answer must see a first run committed through another node.
                # Ignored by a server without Galera.
                "SESSION wsrep_sync_wait = @@wsrep_sync_wait | 1",
                "isolation_level": "read committed",
            }
        )
        config["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    config["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
    # With persistent connections: checked before each request reuses one (with a host list, also
    # that its Galera node is still serving), so a dead or departed node is not found by a request.
    config["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
    return config


DATABASES = {"default": database_from_url(env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))}
# An asynchronous read replica for reports, CSV downloads and transaction listings (core.db_routing
# says which reads may go there: never one that decides money). Tests mirror it onto the primary.
READ_REPLICA = None
if env.str("DATABASE_REPLICA_URL", default=""):
    READ_REPLICA = "replica"
    DATABASES[READ_REPLICA] = database_from_url(env.str("DATABASE_REPLICA_URL"))
    # An unreachable replica is skipped after this long (core.db_routing), not after the OS's minutes.
    DATABASES[READ_REPLICA].setdefault("OPTIONS", {}).setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT)
    DATABASES[READ_REPLICA]["TEST"] = {**DATABASES[READ_REPLICA].get("TEST", {}), "MIRROR": "default"}
DATABASE_ROUTERS = ["core.db_routing.ReplicaRouter"]
# After a signed-in user's write, that user's reads stay on the primary this long (read-your-writes).
REPLICA_PIN_SECONDS = env.int("REPLICA_PIN_SECONDS", default=10)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "users.User"
AUTHENTICATION_BACKENDS = [
    # First: refuses every log-in (API and admin) to an account or from an address that failed too often.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed log-ins: after AXES_FAILURE_LIMIT failures for one account, whatever address they came
# from, its log-ins are refused (429) for AXES_COOLOFF_MINUTES. Per address, log-ins are
# rate-limited instead (THROTTLE_AUTH for the API, ADMIN_LOGIN_RATE for the admin), so one
# attacker cannot lock out everyone behind a shared address.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username"]
# axes warns without "ip_address" in the lockout parameters; addresses are rate-limited above
# instead of locked (a lockout per address would let one attacker lock out a whole office).
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
ADMIN_LOGIN_RATE = env.str("ADMIN_LOGIN_RATE", default="20/min")
AXES_USERNAME_CALLABLE = "users.lockout.username_of_attempt"
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
# The client address as the throttles see it: the socket's, unless NUM_PROXIES proxies are trusted.
AXES_CLIENT_IP_CALLABLE = "core.addresses.client_address"
# Two-factor (TOTP, django-otp) for the admin: any staff member with a registered device must
# give its code at log-in; with FINANCE_REQUIRE_2FA=true the Finance groups cannot use the admin
# without one.
FINANCE_REQUIRE_2FA = env.bool("FINANCE_REQUIRE_2FA", default=False)
ADMIN_2FA_REQUIRED_GROUPS = ["Finance", "Finance viewer"] if FINANCE_REQUIRE_2FA else []
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="Credit ledger admin")
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON only; the agent endpoints add multipart for CSV uploads.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.LimitedJSONParser"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        # A list or detail request with a query parameter its schema does not name is a 400.
        "core.query.RejectUnknownQueryParameters",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.StandardPagination",
    "DEFAULT_SCHEMA_CLASS": "core.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    # Client addresses (throttling) come from the socket unless NUM_PROXIES trusted proxies
    # stand in front: then from X-Forwarded-For, counting that many hops from the right.
    "NUM_PROXIES": NUM_PROXIES,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "auth": env.str("THROTTLE_AUTH", default="20/min"),
        "grant": env.str("THROTTLE_GRANT", default="120/min"),
        "agents": env.str("THROTTLE_AGENTS", default="600/min"),
    },
}
# Throttle counters live in the cache: use a shared one (Redis) when running several processes.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    # Refresh tokens are single-use (rotated, the old one blacklisted) and revocable: log-out
    # blacklists one, a password change all of the user's; access tokens carry a digest of
    # the password hash, so they die with a password change too.
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "CHECK_REVOKE_TOKEN": True,
    "TOKEN_REFRESH_SERIALIZER": "users.api.RefreshSerializer",
    "TOKEN_OBTAIN_SERIALIZER": "users.api.LogInSerializer",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Credit ledger API",
    "DESCRIPTION": "Prepaid credits bought with Stripe Checkout and spent on agent runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "stripeSignature": {
                "type": "apiKey",
                "in": "header",
                "name": "Stripe-Signature",
                "description": "Stripe's HMAC of the request body with STRIPE_WEBHOOK_SECRET (`t=…,v1=…`).",
            }
        }
    },
    # Swagger UI is served from our own static files, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "agents.models.RunStatus",
        "HoldStatusEnum": "billing.models.HoldStatus",
        "TransactionKindEnum": "billing.models.TransactionKind",
        "HealthStateEnum": "core.api.HEALTH_STATES",
    },
}

# --- Billing ----------------------------------------------------------------
BILLING_ENABLED = env.bool("BILLING_ENABLED", default=True)
BILLING_ENFORCEMENT = env.bool("BILLING_ENFORCEMENT", default=True)
# The hot ledger plans (charge, hold, capture, release) run as stored procedures on MariaDB (billing/ledger/sql.py):
# parsed once per connection, so worth it with persistent connections (the default follows them).
BILLING_STORED_PLANS = env.bool("BILLING_STORED_PLANS", default=DATABASES["default"]["CONN_MAX_AGE"] != 0)
BILLING_MAX_GRANT = env.int("BILLING_MAX_GRANT", default=1_000_000)
BILLING_HOLD_TTL = timedelta(seconds=env.int("BILLING_HOLD_TTL_SECONDS", default=900))
BILLING_PACKAGES_FILE = Path(
    env.str("BILLING_PACKAGES_FILE", default=str(BASE_DIR / "billing" / "credit_packages.json"))
)
FRONTEND_URL = env.str("FRONTEND_URL", default="http://localhost:3000")
# Staff grants/debits with |credits| above this wait for a second Finance user's approval; 0 = off.
FINANCE_APPROVAL_THRESHOLD = env.int("FINANCE_APPROVAL_THRESHOLD", default=10_000)
if FINANCE_APPROVAL_THRESHOLD < 0:
    raise ImproperlyConfigured("FINANCE_APPROVAL_THRESHOLD must be 0 (no approvals) or a positive number of credits.")

# --- Stripe (dj-stripe reads these names) -----------------------------------
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
STRIPE_SECRET_KEY = STRIPE_API_KEY
STRIPE_LIVE_MODE = STRIPE_API_KEY.startswith(("sk_live_", "rk_live_"))
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
STRIPE_API_VERSION = "2026-05-27.dahlia"
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_WEBHOOK_VALIDATION = "verify_signature"
if env.str("STRIPE_API_HOST", default=""):
    STRIPE_API_HOST = env.str("STRIPE_API_HOST")

# --- Metrics --------------------------------------------------------------------
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Behind a proxy every request arrives from the proxy's address, so /metrics then requires
# METRICS_TOKEN whatever METRICS_ALLOWED_IPS says.

# --- Logging ------------------------------------------------------------------
# LOG_FORMAT=json writes one JSON object per line; the runbook's messages are unchanged.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json" if LOG_FORMAT == "json" else "plain"}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- Agents -------------------------------------------------------------------
AGENT_MAX_INPUT_BYTES = env.int("AGENT_MAX_INPUT_BYTES", default=10 * 1024 * 1024)
AGENT_MAX_ROWS = env.int("AGENT_MAX_ROWS", default=200_000)
# Request bodies may carry the whole input table (JSON-escaped CSV grows it a little).
DATA_UPLOAD_MAX_MEMORY_SIZE = AGENT_MAX_INPUT_BYTES + 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
# A tool runs in its own OS process (agents.sandbox), killed at the time limit; the memory
# limit is what one run may allocate on top of the idle worker process (RLIMIT_AS).
AGENT_RUN_TIMEOUT_SECONDS = env.float("AGENT_RUN_TIMEOUT_SECONDS", default=120)
AGENT_RUN_MAX_MEMORY_MB = env.int("AGENT_RUN_MAX_MEMORY_MB", default=2048)
# master-my-data refuses (413, before holding credits) input whose blocking would compare more pairs.
AGENT_MASTER_MAX_PAIRS = env.int("AGENT_MASTER_MAX_PAIRS", default=5_000_000)

# --- Celery (asynchronous runs, hold expiry) -------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
# A run's message is acknowledged only once it has finished, so a crashed worker's run is
# delivered again; its hold expires meanwhile if nobody picks it up.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The tool's own process is killed at AGENT_RUN_TIMEOUT_SECONDS; these bound the task around it
# (the hard limit kills the worker child, whose hold then expires and whose message is redelivered).
CELERY_TASK_SOFT_TIME_LIMIT = int(AGENT_RUN_TIMEOUT_SECONDS) + 30
CELERY_TASK_TIME_LIMIT = int(AGENT_RUN_TIMEOUT_SECONDS) + 60
# reconcile_ledger reports a hold still pending longer than this past its expiry.
EXPIRE_HOLDS_EVERY_SECONDS = env.float("EXPIRE_HOLDS_EVERY_SECONDS", default=60.0)
EXPIRE_CREDITS_EVERY_SECONDS = env.float("EXPIRE_CREDITS_EVERY_SECONDS", default=60.0)
# Event webhooks (billing.events): the sweep's interval, one attempt's timeout, how long to retry.
DELIVER_WEBHOOKS_EVERY_SECONDS = env.float("DELIVER_WEBHOOKS_EVERY_SECONDS", default=30.0)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_RETRY_HOURS = env.float("WEBHOOK_RETRY_HOURS", default=72.0)
# Balance alerts: balance.low below this many available credits, unless a user set their own.
BALANCE_LOW_THRESHOLD_CREDITS = env.int("BALANCE_LOW_THRESHOLD_CREDITS", default=100)
# Auto-recharge: an attempt Stripe has not answered for this long is asked again (same idempotency key).
AUTO_RECHARGE_RETRY_SECONDS = env.float("AUTO_RECHARGE_RETRY_SECONDS", default=300.0)
# E-mail to users (low balance, failed or disabled auto-recharge): the console in development.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_URL = env.str("EMAIL_URL", default="")
if EMAIL_URL:
    vars().update(env.email_url("EMAIL_URL"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@localhost")
CELERY_BEAT_SCHEDULE = {
    "expire-holds": {"task": "billing.expire_holds", "schedule": EXPIRE_HOLDS_EVERY_SECONDS},
    "expire-credits": {"task": "billing.expire_credits", "schedule": EXPIRE_CREDITS_EVERY_SECONDS},
    "deliver-webhooks": {"task": "billing.deliver_webhooks", "schedule": DELIVER_WEBHOOKS_EVERY_SECONDS},
    "send-emails": {"task": "billing.send_emails", "schedule": DELIVER_WEBHOOKS_EVERY_SECONDS},
    "retry-auto-recharges": {"task": "billing.retry_auto_recharges", "schedule": 60.0},
}
