"""Durable Streams offsets and cursors (PROTOCOL.md §8, §10.1).

An offset is the app's own offset (code points of the body) as an opaque token that
sorts as it counts: ``0000000000000000_0000000000000042`` is code point 42. The first
field is reserved (always zero today), so that a later layout of a stream (a fork's,
say) can mint offsets that sort after these without changing their shape.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

from ..exceptions import InvalidOffset

_TOKEN = re.compile(r"([0-9]{16})_([0-9]{16})")
#: The protocol's sentinels: the stream's beginning, its tail at the time of the read.
BEGINNING, NOW = "-1", "now"

#: The protocol's cursor clock (§10.1): intervals of 20 seconds from 2024-10-09 UTC.
CURSOR_EPOCH = 1728432000
CURSOR_INTERVAL = 20


def token(offset: int) -> str:
    """The opaque offset of code point ``offset``."""
    return f"{0:016d}_{offset:016d}"


@dataclass(frozen=True)
class Start:
    """Where a read starts: a code point, or the tail (``now``)."""

    offset: int | None
    #: What the request said (``-1``, ``now`` or a token): part of the ETag.
    given: str

    @property
    def at_tail(self) -> bool:
        return self.offset is None


def parse_start(values: list[str]) -> Start:
    """A read's ``offset`` query parameter (all its values): absent is ``-1``. Raises
    InvalidOffset, which the protocol answers with 400, for an empty or repeated offset
    or one this server did not mint."""
    if len(values) > 1:
        raise InvalidOffset("offset is given more than once")
    given = values[0] if values else BEGINNING
    if given == BEGINNING:
        return Start(0, given)
    if given == NOW:
        return Start(None, given)
    match = _TOKEN.fullmatch(given)
    if match is None or int(match[1]) != 0:
        raise InvalidOffset(
            f"offset must be -1, now, or a Stream-Next-Offset of this server, not {given[:40]!r}"
        )
    return Start(int(match[2]), given)


def cursor(echoed: str | None, *, now: float | None = None) -> str:
    """The ``Stream-Cursor`` of a live response: the current interval, or, when the
    client echoed one at or past it, that one advanced by 1 to 3,600 seconds' worth of
    intervals, so that a cursor never repeats and a CDN's cache key moves on."""
    current = int(((time.time() if now is None else now) - CURSOR_EPOCH) // CURSOR_INTERVAL)
    try:
        # A cursor this server made has a few digits: a longer one is not ours.
        previous = int(echoed) if echoed and len(echoed) <= 20 else None
    except ValueError:
        previous = None
    if previous is None or previous < current:
        return str(current)
    jitter = random.randint(1, 3600)
    return str(previous + max(1, -(-jitter // CURSOR_INTERVAL)))
