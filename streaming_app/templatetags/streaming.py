"""``{% load streaming %}{% stream_text stream %}``: a stream's committed text, rendered
on the server, in a ``<stream-text>`` element that follows it live in the browser."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.middleware.csrf import get_token
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import SafeString

from ..models import Stream
from ..parts import assemble
from ..permissions import has_permission, load_stream
from ..render import parts_html
from ..streams import body_of, expire_if_stale

register = template.Library()


#: Django's default CSRF_HEADER_NAME: the header the element sends unless told another.
DEFAULT_CSRF_HEADER = "HTTP_X_CSRFTOKEN"


def csrf_attributes(request: Any) -> dict[str, str]:
    """How the element proves a POST (drive, cancel) is the page's: the request's CSRF
    token; the header to send it in, if the project named another one
    (``CSRF_HEADER_NAME``); and the cookie that holds the current token, where a script
    can read it (``CSRF_COOKIE_NAME``; none with ``CSRF_COOKIE_HTTPONLY`` or
    ``CSRF_USE_SESSIONS``)."""
    if request is None:
        return {}
    attributes = {"csrf-token": get_token(request)}
    header = settings.CSRF_HEADER_NAME
    if header != DEFAULT_CSRF_HEADER:
        attributes["csrf-header"] = header.removeprefix("HTTP_").replace("_", "-")
    if not settings.CSRF_USE_SESSIONS and not settings.CSRF_COOKIE_HTTPONLY:
        attributes["csrf-cookie"] = settings.CSRF_COOKIE_NAME
    return attributes


@register.simple_tag(takes_context=True)
def stream_text(
    context: template.Context,
    stream: Stream | str | None,
    *,
    markdown: bool = False,
    drive_url: str | None = None,
    socket_url: str | None = None,
) -> SafeString:
    """Render ``stream`` (a Stream, or its id) as a ``<stream-text>`` element.

    The committed text is inside it, so that a page without JavaScript shows it; with
    ``streaming_app/stream-text.js`` (included) the element follows the stream from
    there. ``markdown=True`` renders the text as Markdown in the browser, safely. A
    stream with parts (streaming_app.parts) shows each: reasoning and tool calls in
    closed ``<details>`` (as text), its text parts as the text of a plain stream.
    ``drive_url`` is the view that drives the stream: the element drives it when it is
    still pending. ``socket_url`` is the stream's websocket path, if the project routes
    ``streaming_app.routing`` elsewhere than ``ws/streams/<id>/``.

    It renders nothing for None (a stream purged under ``on_delete=SET_NULL``), an
    unknown id, or a stream the request's user may not ``read``: one such stream does
    not make the page a 404 or a 403. The cancel URL is rendered only for a user the
    policy lets ``cancel`` the live stream. A Stream instance is used as loaded: a
    finished one costs one query (its text), as the body endpoint does.
    """
    # A RequestContext knows its request; the request context processor puts it in.
    request = getattr(context, "request", None) or context.get("request")
    user = getattr(request, "user", None)
    if stream is None:
        return SafeString("")
    if isinstance(stream, Stream):
        if not has_permission(user, stream, "read"):
            return SafeString("")
    else:
        try:
            stream = load_stream(user, stream, "read")
        except (Stream.DoesNotExist, PermissionDenied):
            return SafeString("")
    body = body_of(expire_if_stale(stream))  # no query for a finished one
    pk = str(stream.pk)
    drive = drive_url if body.status == "pending" else None
    cancel = None
    if not body.is_finished and has_permission(user, stream, "cancel"):
        cancel = reverse("streaming_app:cancel", args=[pk])
    return render_to_string(
        "streaming_app/stream_text.html",
        {
            "body": body,
            "parts_html": parts_html(assemble(body.text, body.parts)) if body.parts else "",
            "part_map": json.dumps(list(body.parts), ensure_ascii=False) if body.parts else "",
            "markdown": markdown,
            "drive_url": drive,
            "body_url": reverse("streaming_app:body", args=[pk]),
            "events_url": reverse("streaming_app:events", args=[pk]),
            "cancel_url": cancel,
            "socket_url": socket_url or f"/ws/streams/{pk}/",
            "csrf": csrf_attributes(request) if drive or cancel else {},
        },
        request=request,
    )
