"""Persistent text streams for Django: stream generated text to the browser that asked
for it, persist it in batches, and let anyone allowed read it back or follow it live.

The public API is re-exported here. It is imported on first use, so that importing
``streaming_app`` (in settings, say) loads no models; type checkers see the real
names and signatures through the imports below.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

#: The release, and the one place it is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .admission import admit
    from .drive.flush import FlushPolicy
    from .drive.run import Source, StreamRun
    from .exceptions import InvalidOffset, Overloaded, StreamNotPending
    from .fanout.publish import adisconnect_viewers, disconnect_viewers
    from .http.drive import astream_response, stream_response
    from .signals import stream_committed, stream_finished
    from .streams import (
        StreamBody,
        acancel_stream,
        aclaim_stream,
        acompact_stream,
        acreate_stream,
        adelete_stream,
        aexpire_stale_streams,
        aget_stream_body,
        cancel_stream,
        claim_stream,
        compact_finished_streams,
        compact_stream,
        create_stream,
        delete_stream,
        expire_stale_streams,
        get_stream_body,
        purge_streams,
    )

__all__ = [
    "FlushPolicy",
    "InvalidOffset",
    "Overloaded",
    "Source",
    "StreamBody",
    "StreamNotPending",
    "StreamRun",
    "acancel_stream",
    "aclaim_stream",
    "acompact_stream",
    "acreate_stream",
    "adelete_stream",
    "adisconnect_viewers",
    "admit",
    "aexpire_stale_streams",
    "aget_stream_body",
    "astream_response",
    "cancel_stream",
    "claim_stream",
    "compact_finished_streams",
    "compact_stream",
    "create_stream",
    "delete_stream",
    "disconnect_viewers",
    "expire_stale_streams",
    "get_stream_body",
    "purge_streams",
    "stream_committed",
    "stream_finished",
    "stream_response",
]

_WHERE = {
    "FlushPolicy": "drive.flush",
    "InvalidOffset": "exceptions",
    "Overloaded": "exceptions",
    "Source": "drive.run",
    "StreamBody": "streams",
    "StreamNotPending": "exceptions",
    "StreamRun": "drive.run",
    "adisconnect_viewers": "fanout.publish",
    "admit": "admission",
    "astream_response": "http.drive",
    "disconnect_viewers": "fanout.publish",
    "stream_committed": "signals",
    "stream_finished": "signals",
    "stream_response": "http.drive",
}


def __getattr__(name: str) -> object:
    if name in __all__:
        value = getattr(import_module(f".{_WHERE.get(name, 'streams')}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
