"""When a stream's text is committed: the flush policy and the buffer. Pure: no I/O.

Time is passed in (``now``, a monotonic clock reading), so that the policy is tested
with a fake clock. See ``docs/flush-policy.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import conf

# A sentence or a line ends the buffer: terminal punctuation (Latin, CJK, ellipsis),
# optionally closed by quotes or brackets, then optional whitespace; or a newline.
_BOUNDARY = re.compile(
    r"(?:[.!?\u2026\u3002\uff01\uff1f][\"')\]\u00bb\u201d\u2019]*[ \t]*|\n\s*)\Z"
)


def ends_at_boundary(text: str) -> bool:
    return _BOUNDARY.search(text) is not None


@dataclass(frozen=True)
class FlushPolicy:
    """When a stream's buffer is flushed: once ``min_interval`` has passed since the
    last flush and the buffer ends a sentence or a line; once its oldest text has
    waited ``max_interval``; as soon as it holds ``max_chars``; and always at the end."""

    min_interval: float
    max_interval: float
    max_chars: int

    @classmethod
    def from_settings(cls) -> FlushPolicy:
        return cls(
            min_interval=float(conf.get("MIN_FLUSH_INTERVAL")),
            max_interval=float(conf.get("MAX_FLUSH_INTERVAL")),
            max_chars=int(conf.get("MAX_BUFFER_CHARS")),
        )

    def due_at(
        self, *, buffered: int, at_boundary: bool, oldest: float, last_flush: float
    ) -> float:
        """The monotonic time at which a non-empty buffer is due to be flushed."""
        if buffered >= self.max_chars:
            return float("-inf")
        deadline = oldest + self.max_interval
        if at_boundary:
            deadline = min(deadline, last_flush + self.min_interval)
        return deadline


class Terminal(NamedTuple):
    """How a stream ends: its terminal status and the public error message, if any."""

    status: str
    error: str | None = None


@dataclass(frozen=True)
class Batch:
    """Text sealed for one flush; retried as it is until it commits."""

    seq: int
    offset: int
    text: str
    # Set when this flush also ends the stream.
    terminal: tuple[str, str | None] | None = None
    # The whole part map after this batch, when it has grown (streaming_app.parts),
    # and how many of its entries had committed before.
    parts: tuple[dict[str, Any], ...] | None = None
    parts_from: int = 0

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


class Buffer:
    """One stream's text on its way to the database, in order.

    Pieces are appended; :meth:`seal` takes what is waiting as the next batch, which
    stays :attr:`sealed` (retried as it is) until :meth:`committed` or
    :meth:`refused`. A refused batch was not written, so it takes more text at the next
    seal.
    """

    def __init__(
        self, policy: FlushPolicy, now: float, parts: list[dict[str, Any]] | None = None
    ) -> None:
        self.policy = policy
        #: The stream's part map, appended to by its writer (empty: a plain stream).
        self.parts: list[dict[str, Any]] = parts if parts is not None else []
        #: Entries of the part map committed.
        self.committed_parts = 0
        self._parts_closed = False
        self.sealed: Batch | None = None
        #: Characters committed: the stream's length in the database.
        self.committed_length = 0
        self.last_flush = now
        self._pieces: list[str] = []
        self._buffered = 0
        self._oldest = 0.0
        self._at_boundary = False
        self._seq = 0
        self._refused: Batch | None = None

    @property
    def has_waiting(self) -> bool:
        """Whether anything waits to be sealed: text, or part-map entries."""
        return bool(self._pieces) or self._refused is not None

    @property
    def waiting(self) -> int:
        """Characters appended and not sealed yet."""
        return self._buffered + (len(self._refused.text) if self._refused else 0)

    @property
    def pending(self) -> int:
        """Characters appended and not committed yet."""
        return self.waiting + (len(self.sealed.text) if self.sealed else 0)

    @property
    def oldest(self) -> float:
        """When the oldest text waiting was appended (meaningless when none waits)."""
        return self._oldest

    @property
    def length(self) -> int:
        """Characters appended in all."""
        return self.committed_length + self.pending

    def append(self, text: str, now: float) -> bool:
        """Add ``text``; True when that may have brought the next flush forward."""
        first = not self._pieces
        if first:
            self._oldest = now
        self._pieces.append(text)
        self._buffered += len(text)
        at_boundary = ends_at_boundary(text)
        sooner = (
            first
            or (at_boundary and not self._at_boundary)
            or self._buffered >= self.policy.max_chars
        )
        self._at_boundary = at_boundary
        return sooner

    def due_at(self) -> float:
        """When the text waiting is due to be flushed; infinity if there is none, or if
        a batch is still being written (flushes of one stream never overlap)."""
        if self.sealed is not None or not self._pieces:
            return float("inf")
        return self.policy.due_at(
            buffered=self._buffered,
            at_boundary=self._at_boundary,
            oldest=self._oldest,
            last_flush=self.last_flush,
        )

    def seal(self, terminal: Terminal | None = None) -> Batch:
        """Take everything waiting as the next batch (with ``terminal``, the last)."""
        assert self.sealed is None, "a batch is still being written"
        text = "".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        self._at_boundary = False
        # The map covers every text appended: its entries come before their text.
        grew = len(self.parts) > self.committed_parts and not self._parts_closed
        parts = tuple(self.parts) if grew else None
        if self._refused is not None:
            # Never written (the database said so): it starts where it did, with more.
            start = self._refused
            self._refused = None
            batch = Batch(
                start.seq, start.offset, start.text + text, terminal, parts, self.committed_parts
            )
        else:
            batch = Batch(
                self._seq, self.committed_length, text, terminal, parts, self.committed_parts
            )
        self.sealed = batch
        return batch

    def committed(self, now: float) -> Batch:
        """The sealed batch has committed."""
        assert self.sealed is not None
        batch, self.sealed = self.sealed, None
        self._seq = batch.seq + (1 if batch.text else 0)
        self.committed_length = batch.end
        if batch.parts is not None:
            self.committed_parts = len(batch.parts)
        self.last_flush = now
        return batch

    def refused(self) -> None:
        """The sealed batch was refused, unwritten (a cancel): keep it for the last one."""
        assert self.sealed is not None
        self._refused, self.sealed = self.sealed, None

    def discard(self) -> None:
        """Drop everything not committed: the database cannot take it (the map's
        entries for that text included; none are written after)."""
        del self.parts[self.committed_parts :]
        self._parts_closed = True
        self._pieces.clear()
        self._buffered = 0
        self._refused = None
        self.sealed = None
