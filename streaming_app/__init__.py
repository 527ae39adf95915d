"""Persistent text streams for Django: stream generated text to the browser that asked
for it, persist it in batches, and let anyone allowed read it back or follow it live.

The public API is re-exported here and imported lazily, so that importing
``streaming_app`` (in settings, say) loads no models.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "FlushPolicy",
    "InvalidOffset",
    "StreamBody",
    "StreamNotPending",
    "StreamRun",
    "acancel_stream",
    "acompact_stream",
    "acreate_stream",
    "adelete_stream",
    "aget_stream_body",
    "astream_response",
    "cancel_stream",
    "compact_finished_streams",
    "compact_stream",
    "create_stream",
    "delete_stream",
    "expire_stale_streams",
    "get_stream_body",
    "purge_streams",
    "stream_committed",
    "stream_response",
]

_WHERE = {
    "FlushPolicy": "writer",
    "InvalidOffset": "exceptions",
    "StreamBody": "streams",
    "StreamNotPending": "exceptions",
    "StreamRun": "writer",
    "acancel_stream": "streams",
    "acompact_stream": "streams",
    "acreate_stream": "streams",
    "adelete_stream": "streams",
    "aget_stream_body": "streams",
    "astream_response": "views",
    "cancel_stream": "streams",
    "compact_finished_streams": "streams",
    "compact_stream": "streams",
    "create_stream": "streams",
    "delete_stream": "streams",
    "expire_stale_streams": "streams",
    "get_stream_body": "streams",
    "purge_streams": "streams",
    "stream_committed": "signals",
    "stream_response": "views",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
