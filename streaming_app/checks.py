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
    if not errors:
        if conf.get("MIN_FLUSH_INTERVAL") > conf.get("MAX_FLUSH_INTERVAL"):
            errors.append(
                Error(
                    "STREAMING_APP['MIN_FLUSH_INTERVAL'] must not exceed MAX_FLUSH_INTERVAL.",
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
    for name in ("CANCEL_ON_DISCONNECT", "COMPACT_FINISHED"):
        if not isinstance(conf.get(name), bool):
            errors.append(
                Error(f"STREAMING_APP[{name!r}] must be True or False.", id="streaming_app.E003")
            )
    policy = conf.get("PERMISSION_POLICY")
    if isinstance(policy, str):
        try:
            policy = import_string(policy)
        except ImportError as exc:
            errors.append(
                Error(
                    f"STREAMING_APP['PERMISSION_POLICY'] cannot be imported: {exc}",
                    id="streaming_app.E006",
                )
            )
            return errors
    if not callable(policy):
        errors.append(
            Error(
                "STREAMING_APP['PERMISSION_POLICY'] must be a callable "
                "(user, stream, action) -> bool, or its dotted path.",
                id="streaming_app.E006",
            )
        )
    return errors


@register(Tags.compatibility)
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    if getattr(settings, "CHANNEL_LAYERS", None):
        return []
    return [
        Warning(
            "CHANNEL_LAYERS is not configured: viewers of a stream (websocket, Server-Sent "
            "Events) cannot follow it live, and cancels wait for the writer's next flush.",
            hint="Use channels_redis for several processes, or "
            "channels.layers.InMemoryChannelLayer for one.",
            id="streaming_app.W001",
        )
    ]


@register(Tags.compatibility)
def check_database_connections(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Writers flush a few times a second per stream, each time on a connection that
    Django closes after the call: on PostgreSQL without a pool, each flush connects."""
    warnings = []
    for alias, database in settings.DATABASES.items():
        if database.get("ENGINE") != "django.db.backends.postgresql":
            continue
        if (database.get("OPTIONS") or {}).get("pool") or database.get("CONN_MAX_AGE"):
            continue
        warnings.append(
            Warning(
                f"DATABASES[{alias!r}] opens a new PostgreSQL connection for every flush of "
                "every stream (about 3 a second per live stream).",
                hint="Turn Django's connection pool on: OPTIONS {'pool': True} with "
                "psycopg[pool] installed (see docs/deployment.md). Behind an external "
                "pooler (PgBouncer), silence streaming_app.W002.",
                id="streaming_app.W002",
            )
        )
    return warnings
