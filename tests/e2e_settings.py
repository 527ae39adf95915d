"""The example's settings for the tests' and benchmarks' daphne processes, adjusted by
the environment:

- ``E2E_CHANNEL_LAYER``: ``core`` or ``pubsub`` (channels-redis) when REDIS_URL is set;
- ``E2E_STREAMING_APP``: JSON merged into STREAMING_APP (short timeouts, say);
- ``E2E_FLUSH=every``: commit every piece, so that lag is the database's and the
  layer's, not the flush policy's;
- ``E2E_POOL_TIMEOUT``: seconds a request waits for a pooled connection (10).
"""

from __future__ import annotations

import json
import os

from example_project.settings import *  # noqa: F403
from example_project.settings import DATABASES, REDIS_URL, STREAMING_APP

STREAMING_APP = {**STREAMING_APP, **json.loads(os.environ.get("E2E_STREAMING_APP") or "{}")}
if os.environ.get("E2E_FLUSH") == "every":
    STREAMING_APP.update(MIN_FLUSH_INTERVAL=0, MAX_FLUSH_INTERVAL=0)

BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
if REDIS_URL and os.environ.get("E2E_CHANNEL_LAYER"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": BACKENDS[os.environ["E2E_CHANNEL_LAYER"]],
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }

if os.environ.get("E2E_POOL_TIMEOUT") and "pool" in DATABASES["default"].get("OPTIONS", {}):
    DATABASES["default"]["OPTIONS"]["pool"]["timeout"] = float(os.environ["E2E_POOL_TIMEOUT"])
