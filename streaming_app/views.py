"""The views and helpers a project's own views build on, at the path the docs give
(``streaming_app.views``); they live in :mod:`streaming_app.http`."""

from __future__ import annotations

from .http.drive import astream_response, stream_response
from .http.jsonview import JsonView, csrf_failure
from .http.responses import error_for, error_response, request_user

__all__ = [
    "JsonView",
    "astream_response",
    "csrf_failure",
    "error_for",
    "error_response",
    "request_user",
    "stream_response",
]
