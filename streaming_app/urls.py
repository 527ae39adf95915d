"""Mount under a prefix of your choice, e.g. ``path("api/streams/", include("streaming_app.urls"))``."""

from __future__ import annotations

from django.urls import path

from .http import sse, views

app_name = "streaming_app"

urlpatterns = [
    # <str:> rather than <uuid:>, so that a malformed id gets this app's JSON 404.
    path("<str:stream_id>/", views.StreamBodyView.as_view(), name="body"),
    path("<str:stream_id>/events/", sse.StreamEventsView.as_view(), name="events"),
    path("<str:stream_id>/cancel/", views.StreamCancelView.as_view(), name="cancel"),
]
