"""The views and helpers a project's own views build on, at the path the docs give
(``streaming_app.views``); they live in :mod:`streaming_app.http`."""

from __future__ import annotations

from .http.views import (
    JsonView,
    astream_response,
    csrf_failure,
    error_for,
    error_response,
    request_user,
    stream_response,
)

__all__ = [
    "JsonView",
    "astream_response",
    "csrf_failure",
    "error_for",
    "error_response",
    "request_user",
    "stream_response",
]
