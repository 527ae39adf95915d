"""Signals of streaming_app. ``sender`` is :class:`streaming_app.models.Stream` for the
first two; receivers may be sync or async functions (async ones cost no thread)."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent after every committed change of a stream, never before, so a receiver only
#: sees text and statuses that a crash cannot take back: each flush, the claim, the
#: end. Keyword arguments: ``stream_id`` (UUID), ``offset`` (int: where ``text``
#: starts, in code points), ``text`` (str, possibly empty), ``status`` (str), ``error``
#: (str or None: the public message), ``parts`` (list: the entries of the part map that
#: committed with it, streaming_app.parts; empty for a plain stream). Sent in the
#: process that committed the change.
stream_committed = Signal()

#: Sent once per stream, after the commit that gave it a terminal status (``done``,
#: ``error``, ``cancelled`` or ``timeout``), in whichever process ended it: the run
#: that drove it, a cancel of a pending stream, an expiry. Same arguments as
#: ``stream_committed``; ``offset + len(text)`` is the stream's final length.
stream_finished = Signal()

#: Sent from the event loop when a :class:`~streaming_app.drive.run.StreamRun` starts in this
#: process; ``run`` is the run. The hub listens, to bring cancels to it.
stream_run_started = Signal()
