"""ASGI entry point: ``daphne example_project.asgi:application``."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
# Django is set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from example_project.chat.llm import close_openai_client  # noqa: E402
from streaming_app.routing import websocket_urlpatterns  # noqa: E402


async def lifespan(scope: dict, receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol (uvicorn speaks it, daphne does not): the model's
    client is closed when the server shuts down."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_openai_client()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        # The static files come from whitenoise's middleware (settings.py), DEBUG on or off.
        "http": django_asgi_app,
        "lifespan": lifespan,
        # Browsers on other sites may not open sockets here with a visitor's cookies.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
