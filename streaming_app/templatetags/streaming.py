"""``{% load streaming %}{% stream_text stream %}``: a stream's committed text, rendered
on the server, in a ``<stream-text>`` element that follows it live in the browser."""

from __future__ import annotations

from django import template
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import SafeString

from ..models import Stream
from ..permissions import has_permission, load_stream
from ..streams import body_of, expire_if_stale

register = template.Library()


@register.simple_tag(takes_context=True)
def stream_text(
    context: template.Context,
    stream: Stream | str,
    *,
    markdown: bool = False,
    drive_url: str | None = None,
    socket_url: str | None = None,
) -> SafeString:
    """Render ``stream`` (a Stream, or its id) as a ``<stream-text>`` element.

    The committed text is inside it, so that a page without JavaScript shows it; with
    ``streaming_app/stream-text.js`` (included) the element follows the stream from
    there. ``markdown=True`` renders the text as Markdown in the browser, safely.
    ``drive_url`` is the view that drives the stream: the element drives it when it is
    still pending. ``socket_url`` is the stream's websocket path, if the project routes
    ``streaming_app.routing`` elsewhere than ``ws/streams/<id>/``.

    The request's user must be allowed to ``read`` the stream (else 403); an unknown id
    is a 404. A Stream instance is used as loaded: a finished one costs one query (its
    text), as the body endpoint does.
    """
    # A RequestContext knows its request; the request context processor puts it in.
    request = getattr(context, "request", None) or context.get("request")
    user = getattr(request, "user", None)
    if isinstance(stream, Stream):
        if not has_permission(user, stream, "read"):
            raise PermissionDenied("you may not read this stream")
    else:
        try:
            stream = load_stream(user, stream, "read")
        except Stream.DoesNotExist:
            raise Http404("no such stream") from None
    body = body_of(expire_if_stale(stream))  # no query for a finished one
    pk = str(stream.pk)
    return render_to_string(
        "streaming_app/stream_text.html",
        {
            "body": body,
            "markdown": markdown,
            "drive_url": drive_url if body.status == "pending" else None,
            "body_url": reverse("streaming_app:body", args=[pk]),
            "events_url": reverse("streaming_app:events", args=[pk]),
            "cancel_url": reverse("streaming_app:cancel", args=[pk]),
            "socket_url": socket_url or f"/ws/streams/{pk}/",
        },
        request=request,
    )
