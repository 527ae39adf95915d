"""The example's settings for the tests' and benchmarks' daphne processes, adjusted by
the environment:

- ``E2E_CHANNEL_LAYER``: ``core`` or ``pubsub`` (channels-redis) when REDIS_URL is set;
- ``E2E_REDIS_SOCKET_TIMEOUT``: seconds the Redis client waits for an answer;
- ``E2E_STREAMING_APP``: JSON merged into STREAMING_APP (short timeouts, say; the
  drive rates and token quotas are off unless it sets them);
- ``E2E_LIMITS=documented``: the admission limits as documented (the app's defaults
  and the example's settings), instead of off;
- ``E2E_FLUSH=every``: commit every piece, so that lag is the database's and the
  layer's, not the flush policy's;
- ``E2E_POOL_TIMEOUT``: seconds a request waits for a pooled connection (10);
- ``E2E_SETTINGS``: JSON of Django settings to set (``CSRF_COOKIE_NAME``, say).

DEBUG is off (``DJANGO_DEBUG=1`` turns it on). Without ``DJANGO_STATIC_ROOT`` the
static files are served from the apps' folders (no collectstatic before a test).
"""

from __future__ import annotations

import json
import os

# DEBUG is off, as in production, so the example wants a key of its own.
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-" + "k" * 50)

from example_project.settings import *  # noqa: E402, F403
from example_project.settings import DATABASES, REDIS_URL, STREAMING_APP  # noqa: E402
from tests.no_limits import NO_ADMISSION_LIMITS, NO_EXAMPLE_LIMITS  # noqa: E402

# The admission limits are off unless E2E_LIMITS=documented, E2E_STREAMING_APP or
# E2E_SETTINGS sets them.
DOCUMENTED_LIMITS = os.environ.get("E2E_LIMITS") == "documented"
if not DOCUMENTED_LIMITS:
    globals().update(NO_EXAMPLE_LIMITS)
STREAMING_APP = {
    **STREAMING_APP,
    **({} if DOCUMENTED_LIMITS else NO_ADMISSION_LIMITS),
    **json.loads(os.environ.get("E2E_STREAMING_APP") or "{}"),
}
if os.environ.get("E2E_FLUSH") == "every":
    STREAMING_APP.update(MIN_FLUSH_INTERVAL=0, MAX_FLUSH_INTERVAL=0)

BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
if REDIS_URL and os.environ.get("E2E_CHANNEL_LAYER"):
    host: dict[str, object] = {"address": REDIS_URL}
    if os.environ.get("E2E_REDIS_SOCKET_TIMEOUT"):
        # redis-py 8 gives up on a command after 5 s of its own (older ones never
        # do): a test of a Redis that does not answer sets how long it may wait.
        seconds = float(os.environ["E2E_REDIS_SOCKET_TIMEOUT"])
        host.update(socket_timeout=seconds, socket_connect_timeout=seconds)
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": BACKENDS[os.environ["E2E_CHANNEL_LAYER"]],
            "CONFIG": {"hosts": [host]},
        }
    }

if os.environ.get("E2E_POOL_TIMEOUT") and "pool" in DATABASES["default"].get("OPTIONS", {}):
    DATABASES["default"]["OPTIONS"]["pool"]["timeout"] = float(os.environ["E2E_POOL_TIMEOUT"])

if not os.environ.get("DJANGO_STATIC_ROOT"):
    STATIC_ROOT = None
    WHITENOISE_USE_FINDERS = True

globals().update(json.loads(os.environ.get("E2E_SETTINGS") or "{}"))
