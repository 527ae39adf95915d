from __future__ import annotations


class StreamNotPending(Exception):
    """The stream was already claimed by a driver, or has finished."""

    def __init__(self, status: str) -> None:
        super().__init__(f"the stream is already {status}")
        self.status = status


class InvalidOffset(ValueError):
    """An offset that is negative, not an integer, or past the end of a finished stream."""
