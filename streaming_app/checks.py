"""System checks for the ``STREAMING_APP`` setting: ids ``streaming_app.E001`` …"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import conf

_NUMBERS = {
    # name: (minimum, exclusive minimum?, integer?)
    "MIN_FLUSH_INTERVAL": (0.0, False, False),
    "FLUSH_TICK": (0.0, False, False),
    "RETRY_AFTER": (0, False, True),
    "VIEWER_BUFFER_CHARS": (1, False, True),
    "MAX_FLUSH_INTERVAL": (0.0, True, False),
    "MAX_BUFFER_CHARS": (1, False, True),
    "MAX_PENDING_CHARS": (1, False, True),
    "HEARTBEAT_INTERVAL": (0.0, True, False),
    "TIMEOUT": (0.0, True, False),
    "WRITER_THREADS": (1, False, True),
    "RESYNC_INTERVAL": (0.0, True, False),
    "DATABASE_OUTAGE_LIMIT": (0.0, True, False),
    "CANCEL_WAIT": (0.0, False, False),
    "PUBLISH_TIMEOUT": (0.0, True, False),
    "SSE_KEEPALIVE": (0.0, True, False),
    "LONG_POLL_TIMEOUT": (0.0, True, False),
    "SSE_MAX_AGE": (0.0, True, False),
    "MAX_APPEND_BYTES": (1, False, True),
    "RATE_LIMIT_TIMEOUT": (0.0, True, False),
}


# Limits: None turns them off.
_LIMITS = {
    "MAX_LIVE_STREAMS": True,
    "MAX_LIVE_STREAMS_PER_USER": True,
    "MAX_VIEWERS_PER_USER": True,
    "MAX_VIEWERS_PER_ADDRESS": True,
    "MAX_VIEWERS_PER_PROXY": True,
    "MAX_LENGTH": True,
    "MAX_DURATION": False,
    "PENDING_TIMEOUT": False,
    "DAILY_TOKENS_PER_USER": True,
    "DAILY_TOKENS_PER_ADDRESS": True,
    "PROXY_ADDRESS_FACTOR": True,
}


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, int | float)


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    user = getattr(settings, "STREAMING_APP", {})
    if not isinstance(user, dict):
        return [
            Error(
                "STREAMING_APP must be a dict.",
                hint="See the settings table in the README.",
                id="streaming_app.E001",
            )
        ]
    errors: list[Error] = []
    for name in sorted(set(user) - set(conf.DEFAULTS)):
        errors.append(
            Error(
                f"STREAMING_APP has an unknown key {name!r}.",
                hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
                id="streaming_app.E002",
            )
        )
    for name, (minimum, exclusive, integer) in _NUMBERS.items():
        value = conf.get(name)
        kind = "an integer" if integer else "a number"
        if not _is_number(value, integer) or value < minimum or (exclusive and value == minimum):
            bound = f"greater than {minimum}" if exclusive else f"at least {minimum}"
            errors.append(
                Error(
                    f"STREAMING_APP[{name!r}] must be {kind} {bound}, not {value!r}.",
                    id="streaming_app.E003",
                )
            )
    for name, integer in _LIMITS.items():
        value = conf.get(name)
        if value is not None and (not _is_number(value, integer) or value <= 0):
            errors.append(
                Error(
                    f"STREAMING_APP[{name!r}] must be None (no limit) or "
                    f"{'an integer' if integer else 'a number'} greater than 0, not {value!r}.",
                    id="streaming_app.E003",
                )
            )
    if not errors:
        least, most = conf.get("MIN_FLUSH_INTERVAL"), conf.get("MAX_FLUSH_INTERVAL")
        if least > most:
            errors.append(
                Error(
                    f"STREAMING_APP['MIN_FLUSH_INTERVAL'] ({least!r}) must not exceed "
                    f"MAX_FLUSH_INTERVAL ({most!r}).",
                    hint="MIN_FLUSH_INTERVAL is the least time between two flushes of a "
                    "stream, MAX_FLUSH_INTERVAL the most a piece waits (docs/flush-policy.md).",
                    id="streaming_app.E004",
                )
            )
        if conf.get("HEARTBEAT_INTERVAL") >= conf.get("TIMEOUT"):
            errors.append(
                Error(
                    "STREAMING_APP['HEARTBEAT_INTERVAL'] must be shorter than TIMEOUT, or "
                    "live streams would time out.",
                    id="streaming_app.E005",
                )
            )
    for name in ("COMPACT_FINISHED", "LIMIT_UNACKED_VIEWERS"):
        if not isinstance(conf.get(name), bool):
            errors.append(
                Error(f"STREAMING_APP[{name!r}] must be True or False.", id="streaming_app.E003")
            )
    for name, shape in (
        ("PERMISSION_POLICY", "(user, stream, action) -> bool"),
        ("ERROR_MESSAGE", "(exception) -> str"),
    ):
        errors.extend(_check_callable(name, shape))
    if not isinstance(conf.get("CANCEL_ON_DISCONNECT"), bool):
        errors.extend(_check_callable("CANCEL_ON_DISCONNECT", "(user, stream) -> bool, or a bool"))
    return errors


def _check_callable(name: str, shape: str) -> list[Error]:
    value = conf.get(name)
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            return [
                Error(f"STREAMING_APP[{name!r}] cannot be imported: {exc}", id="streaming_app.E006")
            ]
    if not callable(value):
        return [
            Error(
                f"STREAMING_APP[{name!r}] must be a callable {shape}, or its dotted path.",
                id="streaming_app.E006",
            )
        ]
    return []


#: The one-process layer, as W001's hint gives it.
IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@register(Tags.compatibility)
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if getattr(settings, "CHANNEL_LAYERS", None):
        return []
    return [
        Warning(
            "CHANNEL_LAYERS is not configured: viewers in other processes than the one "
            "driving a stream learn of its text by reading the database every "
            "RESYNC_INTERVAL (later, not less), and a cancel from another process reaches "
            "the run at its next flush or heartbeat.",
            hint=f"For one process: CHANNEL_LAYERS = {IN_MEMORY_LAYER!r}. For several: "
            "channels_redis's pub/sub layer, channels_redis.pubsub.RedisPubSubChannelLayer "
            "(docs/deployment.md#the-channel-layer).",
            id="streaming_app.W001",
        )
    ]


@register(Tags.compatibility)
def check_database_connections(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """The writers of a process commit together, one transaction per ``FLUSH_TICK`` at
    the most, each in a thread that closes its connection after it, as Django does
    outside requests: on PostgreSQL without a pool (or ``CONN_MAX_AGE``), each of those
    transactions connects (bench/connections.py counts them)."""
    warnings = []
    tick = conf.get("FLUSH_TICK")
    most = (
        f"up to {1 / tick:.0f} a second per process (1 / FLUSH_TICK)"
        if _is_number(tick, False) and tick > 0
        else "one per flush of each stream (FLUSH_TICK is 0)"
    )
    for alias, database in settings.DATABASES.items():
        if database.get("ENGINE") != "django.db.backends.postgresql":
            continue
        if (database.get("OPTIONS") or {}).get("pool") or database.get("CONN_MAX_AGE"):
            continue
        warnings.append(
            Warning(
                f"DATABASES[{alias!r}] has no connection pool: the stream writers of each "
                "process open a new PostgreSQL connection for every transaction, which "
                "holds the flushes of all its streams due at that moment: about 3 a second "
                f"for one live stream, {most} however many streams it drives. Each "
                "connect adds its round trips to the flush.",
                hint="Turn Django's connection pool on: OPTIONS {'pool': True} with "
                "psycopg[pool] installed (see docs/deployment.md#databases). Behind an "
                "external pooler (PgBouncer), silence streaming_app.W002.",
                id="streaming_app.W002",
            )
        )
    return warnings


#: The rate settings (streaming_app.admission).
RATE_SETTINGS = ("DRIVE_RATES_PER_USER", "DRIVE_RATES_PER_ADDRESS")
#: Caches that do not count across processes, or at all.
_UNSHARED_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache": "counts in each process apart",
    "django.core.cache.backends.dummy.DummyCache": "counts nothing: no limit holds",
}


def limits_on() -> bool:
    """Whether any drive rate or token quota is set."""
    quotas = ("DAILY_TOKENS_PER_USER", "DAILY_TOKENS_PER_ADDRESS")
    return any(conf.get(name) for name in RATE_SETTINGS) or any(
        conf.get(name) is not None for name in quotas
    )


@register(Tags.compatibility)
def check_rate_limits(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    from .rates import parse_rate

    problems: list[Error | Warning] = []
    for name in RATE_SETTINGS:
        rates = conf.get(name)
        if rates is None:
            continue
        if isinstance(rates, str) or not isinstance(rates, list | tuple):
            problems.append(
                Error(
                    f"STREAMING_APP[{name!r}] must be None or a list of rate strings such "
                    f"as ['10/m', '100/h'], not {rates!r}.",
                    id="streaming_app.E007",
                )
            )
            continue
        for rate in rates:
            try:
                parse_rate(rate)
            except ValueError:
                problems.append(
                    Error(
                        f"STREAMING_APP[{name!r}] has a rate that is not one: {rate!r}.",
                        hint="A count per second, minute, hour or day: '10/m', '100/h', "
                        "'5/2m', '1000/d' (or the limits library's '10 per minute').",
                        id="streaming_app.E007",
                    )
                )
    alias = conf.get("RATE_LIMIT_CACHE")
    caches = getattr(settings, "CACHES", None) or {"default": {}}
    if not isinstance(alias, str) or alias not in caches:
        problems.append(
            Error(
                f"STREAMING_APP['RATE_LIMIT_CACHE'] is {alias!r}, which is not the name of "
                "one of CACHES.",
                hint=f"CACHES has: {', '.join(map(repr, caches))}.",
                id="streaming_app.E008",
            )
        )
    elif limits_on():
        backend = caches[alias].get("BACKEND", "django.core.cache.backends.locmem.LocMemCache")
        # A local-memory cache the project chose (CACHES set) is its word for one
        # process, as InMemoryChannelLayer is for W001; Django's default is not.
        chosen = settings.is_overridden("CACHES") and backend.endswith("LocMemCache")  # type: ignore[misc]
        if backend in _UNSHARED_CACHES and not chosen:
            problems.append(
                Warning(
                    f"The rate limits and quotas count in CACHES[{alias!r}], a "
                    f"{backend.rpartition('.')[2]}, which {_UNSHARED_CACHES[backend]}: "
                    "a site served by several processes admits that many times more.",
                    hint="Use a cache every process shares: "
                    "django.core.cache.backends.redis.RedisCache (with a socket timeout), "
                    "Memcached, or the database cache (docs/deployment.md#limits-and-quotas); "
                    "for one process, set CACHES to the LocMemCache explicitly.",
                    id="streaming_app.W003",
                )
            )
    return problems
