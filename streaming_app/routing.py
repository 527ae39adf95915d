"""Websocket routes. Wrap them in your project's asgi.py, e.g.
``AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))``."""

from __future__ import annotations

from django.urls import path

from .consumers import StreamConsumer

websocket_urlpatterns = [
    # <str:> so that a malformed id is answered with close code 4404, not a routing error.
    path("ws/streams/<str:stream_id>/", StreamConsumer.as_asgi()),
]
