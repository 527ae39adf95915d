"""The JSON answers of the app's views: errors, and the 405 of a drive that is not a
POST."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse

from .. import conf
from ..exceptions import InvalidOffset, Overloaded, StreamNotPending
from ..fanout.outbox import published_after
from ..models import Stream
from ..permissions import Action, load_stream
from ..streams import StreamId, expire_if_stale

logger = logging.getLogger(__name__)

T = TypeVar("T")


def error_response(code: int, message: str, **extra: Any) -> JsonResponse:
    """A JSON error: ``{"error": message, ...extra}`` with HTTP status ``code``."""
    return JsonResponse({"error": message, **extra}, status=code)


def method_not_allowed(request: HttpRequest, allowed: list[str], hint: str = "") -> JsonResponse:
    """405, as JSON, with ``Allow``."""
    response = error_response(405, f"{request.method} is not allowed{hint or ' here'}")
    response["Allow"] = ", ".join(allowed)
    return response


def post_only(request: HttpRequest) -> JsonResponse | None:
    """What every driving response checks before it claims anything: a stream is driven
    by POST (which the CSRF check covers), never by a GET a link or a prefetch makes."""
    if request.method == "POST":
        return None
    return method_not_allowed(request, ["POST"], ": drive by POST")


#: What reading, driving or cancelling a stream may raise, each answered by
#: :func:`error_for`; the last two are the database being away.
STREAM_ERRORS = (
    Stream.DoesNotExist,
    PermissionDenied,
    InvalidOffset,
    StreamNotPending,
    Overloaded,
    OperationalError,
    InterfaceError,
)


def error_for(exc: Exception) -> JsonResponse:
    """The HTTP answer to one of :data:`STREAM_ERRORS`."""
    if isinstance(exc, Stream.DoesNotExist):
        return error_response(404, "no such stream")
    if isinstance(exc, PermissionDenied):
        return error_response(403, str(exc))
    if isinstance(exc, StreamNotPending):
        return error_response(409, str(exc), status=exc.status)
    if isinstance(exc, Overloaded):
        response = error_response(exc.status_code, str(exc))
        response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        response = error_response(503, "the database is unavailable; try again shortly")
        response["Retry-After"] = str(conf.get("RETRY_AFTER"))
        return response
    return error_response(400, str(exc))


async def request_user(request: HttpRequest) -> Any:
    """The request's user, or None where the project has no authentication."""
    if hasattr(request, "auser"):
        return await request.auser()
    return None


async def act_on(
    request: HttpRequest, stream_id: StreamId, action: Action, then: Callable[[Stream], T]
) -> T:
    """``then(stream)``, in the request's thread, if the request's user may do
    ``action`` to the stream; raises one of :data:`STREAM_ERRORS` otherwise. What it
    commits is published once it returns."""
    user = await request_user(request)

    def act() -> T:
        return then(expire_if_stale(load_stream(user, stream_id, action)))

    return await published_after(act)()
