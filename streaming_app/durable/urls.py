"""Mount under a prefix of your choice, e.g.
``path("v1/stream/", include("streaming_app.durable.urls"))``: a stream is then at
``/v1/stream/<name>``, and each of the app's streams at ``/v1/stream/<id>``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "durable_streams"

urlpatterns = [
    # A stream's name (or one of the app's streams' id); <path:> so that a name may
    # have segments of its own.
    path("<path:name>", views.DurableStreamView.as_view(), name="stream"),
]
