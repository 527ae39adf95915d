"""Signals sent by the core. Transports (websocket, SSE) listen; the core imports none."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent after a transaction that changed a stream has committed, never before, so a
#: receiver only ever sees text and statuses that a crash cannot take back.
#: Keyword arguments: ``stream_id`` (UUID), ``offset`` (int, where ``text`` starts, in
#: code points), ``text`` (str, possibly empty), ``status`` (str), ``error`` (str or
#: None). ``sender`` is :class:`streaming_app.models.Stream`.
stream_committed = Signal()

#: Sent (after commit) when a cancel is asked of a stream that a writer is driving,
#: so that the process running that writer can stop it at once. ``stream_id`` (UUID).
stream_cancel_requested = Signal()

#: Sent from the event loop when a :class:`~streaming_app.writer.StreamRun` starts in
#: this process. ``run`` is the run.
stream_run_started = Signal()
