"""Settings of the example project, from the environment (see docs/deployment.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str) -> str:
    """A variable's value; unset or empty (``NAME=`` in an env file) gives ``default``."""
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    value = env(name, "")
    if not value:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


def env_number(name: str, default: str, kind: type[int] | type[float]) -> Any:
    value = env(name, default)
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}"
        ) from None


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated variable's items."""
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# Production: docs/deployment.md#production-settings (every variable, an env file).
DEBUG = env_bool("DJANGO_DEBUG", False)
DEVELOPMENT_SECRET_KEY = "django-insecure-example-project-development-key"
SECRET_KEY = env("DJANGO_SECRET_KEY", DEVELOPMENT_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEVELOPMENT_SECRET_KEY:
    # The key signs sessions and tokens, and this one is public: in production anyone
    # could forge a session.
    raise ImproperlyConfigured(
        "Set DJANGO_SECRET_KEY (python -c 'import secrets; print(secrets.token_urlsafe(50))'): "
        "DEBUG is off and the key is the example's public development key "
        "(DJANGO_DEBUG=1 for development)"
    )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
# Origins a form or fetch may post from besides the host's own
# (https://chat.example.com): behind a proxy that changes the host or the scheme.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# HTTPS, all off by default (the example serves http://127.0.0.1); on in production.
# Cookies only over HTTPS: the session and the CSRF token never travel in clear.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
# Strict-Transport-Security: browsers go to HTTPS by themselves for that long.
SECURE_HSTS_SECONDS = env_number("DJANGO_HSTS_SECONDS", "0", int)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
# Redirect http:// to https:// (behind a TLS proxy, with the next setting).
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Behind a proxy that terminates TLS and sets X-Forwarded-Proto (and drops the client's
# own): the request is https when it says so. Never set it without such a proxy.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Error pages (DEBUG's technical pages, the mails of errors) show settings with the
# password of every URL in them masked (REDIS_URL, DATABASES, CHANNEL_LAYERS, CACHES).
DEFAULT_EXCEPTION_REPORTER_FILTER = "example_project.reporting.SettingsFilter"

INSTALLED_APPS = [
    # daphne first: its runserver serves ASGI, which driving a stream needs.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "streaming_app",
    "example_project.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The static files, from the process (STATIC_ROOT; the apps' folders with DEBUG):
    # whitenoise's middleware, made async-capable (example_project/static.py).
    "example_project.static.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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


def database_from_url(url: str) -> dict[str, Any]:
    config: dict[str, Any] = dict(dj_database_url.parse(url))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Several threads write at once (requests and stream writers): WAL lets readers
        # go on during a write, IMMEDIATE takes the write lock at BEGIN instead of
        # failing on upgrade, and the timeout waits out the others.
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            **config.get("OPTIONS", {}),
        }
    elif config["ENGINE"] == "django.db.backends.postgresql":
        # Writers commit a few times a second per stream, each time on a connection
        # Django closes after the call (it closes them outside requests too): without
        # a pool each flush would open a new one (bench/flush_cost.py).
        pool_size = env_number("DATABASE_POOL_SIZE", "20", int)
        if pool_size:
            config["OPTIONS"] = {
                # timeout: how long a thread waits for a free connection before failing.
                "pool": {"min_size": 2, "max_size": pool_size, "timeout": 10},
                **config.get("OPTIONS", {}),
            }
            # Pooled connections are checked as they are handed out, so that one the
            # server dropped (a restart) is replaced instead of failing a request.
            config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASES = {
    "default": database_from_url(env("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"))
}

REDIS_URL = env("REDIS_URL", "")
if REDIS_URL:
    # The pub/sub layer: one PUBLISH per update whatever the number of viewers, no
    # per-channel capacity to overflow, and the lowest latency (docs/fanout.md). It
    # drops messages across a Redis reconnect; viewers fill gaps from the database.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The cache the rate limits and quotas count in (STREAMING_APP["RATE_LIMIT_CACHE"]):
# Redis with REDIS_URL, shared by every process, each command waiting 1 s at the most
# (a Redis that does not answer admits, logged, rather than holding every drive up);
# else Django's local-memory cache, which counts for one process only.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

STREAMING_APP: dict[str, Any] = {
    # Anyone with a chat's link may watch it; only its owner drives or cancels.
    "PERMISSION_POLICY": "streaming_app.permissions.anyone_reads_policy",
    # Durable Streams at /v1/stream/ (docs/protocol.md#durable-streams): seconds a
    # long-poll waits before its 204.
    "LONG_POLL_TIMEOUT": env_number("STREAMING_LONG_POLL_TIMEOUT", "20", float),
}
# Anyone may create, append to and delete streams over Durable Streams at /v1/stream/
# (the protocol's conformance suite, which sends no credentials, runs against it so):
# never on a public site.
if env_bool("STREAMING_DURABLE_OPEN", False):
    STREAMING_APP["PERMISSION_POLICY"] = "streaming_app.permissions.durable_writes_open_policy"
# A guest's reply stops when its tab closes (a public site's choice: the model is not
# paid for a reply nobody waits for); off by default, so that the demo's promise holds
# (close the tab, the reply goes on). A registered user's reply always goes on.
if env_bool("CHAT_GUESTS_STOP_ON_DISCONNECT", False):
    STREAMING_APP["CANCEL_ON_DISCONNECT"] = "example_project.chat.views.guest_stops_on_disconnect"

# The example's own settings (docs/deployment.md#cost-caps).
CHAT_MAX_PROMPT_CHARS = 32_000
# The most tokens a reply may take: the model is asked for no more (finish "length").
CHAT_MAX_OUTPUT_TOKENS = env_number("CHAT_MAX_OUTPUT_TOKENS", "1024", int)
# The request field that carries it: OpenAI's max_completion_tokens (its reasoning
# models refuse max_tokens), or max_tokens for compatible servers that know only that
# one (Ollama, LM Studio ignore max_completion_tokens).
CHAT_MAX_OUTPUT_TOKENS_FIELD = env("OPENAI_MAX_TOKENS_FIELD", "max_completion_tokens")
if CHAT_MAX_OUTPUT_TOKENS_FIELD not in {"max_completion_tokens", "max_tokens"}:
    raise ImproperlyConfigured(
        "OPENAI_MAX_TOKENS_FIELD must be max_completion_tokens or max_tokens, "
        f"not {CHAT_MAX_OUTPUT_TOKENS_FIELD!r}"
    )
# The most tokens sent to the model with a new prompt, the prompt included (estimated:
# a token for every 4 characters, rounded up): earlier turns are dropped oldest first.
CHAT_MAX_CONTEXT_TOKENS = env_number("CHAT_MAX_CONTEXT_TOKENS", "16000", int)
# The most messages a chat may hold (past it a new one is 409: start a new chat), and
# how many of the newest the chat page and its JSON show (?before=<id>: earlier ones).
CHAT_MAX_MESSAGES = env_number("CHAT_MAX_MESSAGES", "100", int)
CHAT_PAGE_MESSAGES = env_number("CHAT_PAGE_MESSAGES", "50", int)
# Admission of the example's own actions (streaming_app.admit: 429 with Retry-After
# past a rate; rate strings as STREAMING_APP's DRIVE_RATES_*; None or (): no limit).
# A visitor without an account becomes a guest user on its first prompt: guests made
# from one client address (a proxy's, untrusted, counts PROXY_ADDRESS_FACTOR times).
CHAT_GUEST_RATES_PER_ADDRESS: tuple[str, ...] | None = ("5/h", "20/d")
# New chats (POST /api/chats/, and a new chat's first POST /api/ai/chat).
CHAT_CHAT_RATES_PER_USER: tuple[str, ...] | None = ("5/m", "30/h")
CHAT_CHAT_RATES_PER_ADDRESS: tuple[str, ...] | None = ("20/m", "120/h")
# Follow-up messages (they need no model call until driven, but each is a row).
CHAT_MESSAGE_RATES_PER_USER: tuple[str, ...] | None = ("10/m", "100/h")
CHAT_MESSAGE_RATES_PER_ADDRESS: tuple[str, ...] | None = ("30/m", "300/h")
# Seconds between the offline demo model's pieces ("a human pace").
DEMO_MODEL_DELAY = env_number("DEMO_MODEL_DELAY", "0.03", float)

# JSON for the drives' fetches, Django's page for a form a page posted.
CSRF_FAILURE_VIEW = "streaming_app.views.csrf_failure"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Where collectstatic puts the static files, which whitenoise serves with DEBUG off.
STATIC_ROOT: str | None = env("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles"))

# Content-Security-Policy (django-csp): scripts, styles and connections from this origin
# only, so that HTML that slips past the sanitizer (DOMPurify) still runs no script.
# <stream-text> and the page need nothing inline (docs/browser.md#content-security-policy).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        # 'self' covers the page's own websockets (ws:, wss:) and Server-Sent Events.
        "connect-src": [SELF],
        # No image from elsewhere: a reply's Markdown cannot send what it read to
        # another site through an image's address.
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "streaming_app": {"handlers": ["console"], "level": "INFO"},
    },
}
