"""The exceptions of the public API, and the reasons a run is stopped by the app."""

from __future__ import annotations

from . import conf


class StreamNotPending(Exception):
    """The stream was already claimed by a driver, or has finished."""

    def __init__(self, status: str) -> None:
        super().__init__(f"the stream is already {status}")
        self.status = status


class StreamAlreadyRunning(RuntimeError):
    """A second run of a stream that a run of this process drives already: a stream has
    one run at a time (the first one's writer would be lost, and its run never end)."""

    def __init__(self, stream_id: object) -> None:
        super().__init__(
            f"stream {stream_id} is already being run in this process; a stream has one run"
        )
        self.stream_id = stream_id


class InvalidOffset(ValueError):
    """An offset that is negative, not an integer, or past the end of a finished stream."""


class Overloaded(Exception):
    """A drive or a viewer refused for load, before anything was done: try again after
    ``retry_after`` seconds (by default ``RETRY_AFTER``). ``status_code`` is 503 for the
    process's limit, 429 for the user's (a websocket closes 4000 + that)."""

    def __init__(self, message: str, *, status_code: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        if retry_after is None:
            retry_after = int(conf.get("RETRY_AFTER"))
        self.retry_after = retry_after


class RunStopped(Exception):
    """Why the app stopped a run. The message is public: readers see it as the error."""


class DatabaseOutage(RunStopped):
    """The database did not take the stream's text for ``DATABASE_OUTAGE_LIMIT``."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"the database was unreachable for more than {limit:g} seconds")


class WriteFailed(RunStopped):
    """The database refused the stream's text or heartbeat (not a lost connection)."""

    def __init__(self) -> None:
        super().__init__("the reply could not be saved")


class LimitExceeded(RunStopped):
    """The run went past ``MAX_DURATION`` or ``MAX_LENGTH``."""


class WindowSpent(Exception):
    """A viewer held to a window that it does not acknowledge has had it: it is to come
    back on a new connection and resume from its offset."""

    def __init__(self) -> None:
        super().__init__("VIEWER_BUFFER_CHARS sent unacknowledged: resume from your offset")
