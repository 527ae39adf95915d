"""The example's application with the benchmarks' extra websocket route
(``ws/relay/<id>/``: bench.relay) and HTTP views (bench.urls)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from bench.relay import RelayConsumer  # noqa: E402
from example_project.asgi import lifespan  # noqa: E402
from streaming_app.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "lifespan": lifespan,
        "websocket": AuthMiddlewareStack(
            URLRouter(
                [path("ws/relay/<str:stream_id>/", RelayConsumer.as_asgi()), *websocket_urlpatterns]
            )
        ),
    }
)
