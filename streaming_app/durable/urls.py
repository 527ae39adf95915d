"""Mount under a prefix of your choice, e.g.
``path("v1/stream/", include("streaming_app.durable.urls"))``: a stream is then at
``/v1/stream/<id>``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "durable_streams"

urlpatterns = [
    # <str:> rather than <uuid:>, so that a malformed id gets the protocol's 404.
    path("<str:stream_id>", views.DurableStreamView.as_view(), name="stream"),
]
