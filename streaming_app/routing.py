"""Websocket routes. Wrap them in your project's asgi.py, e.g.
``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))``."""

from __future__ import annotations

from django.urls import re_path

from .websocket.consumers import StreamConsumer

websocket_urlpatterns = [
    # ws/streams/<id>/, with or without its trailing slash. Anything under ws/streams/
    # is the consumer's, so that a malformed id (a slash in it, none at all) is
    # answered with close code 4404, never with the router's error (an HTTP 500).
    re_path(r"^ws/streams/(?P<stream_id>.*?)/?$", StreamConsumer.as_asgi()),
]
