from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from example_project.chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("chats/<str:chat_id>/", views.chat_page, name="chat"),
    path("api/chats/", views.ChatsView.as_view(), name="chats"),
    path("api/chats/<str:chat_id>/", views.ChatView.as_view(), name="chat-detail"),
    path("api/chats/<str:chat_id>/messages/", views.MessagesView.as_view(), name="messages"),
    path("api/chats/<str:chat_id>/stream/", views.DriveView.as_view(), name="drive"),
    path("api/streams/", include("streaming_app.urls")),
    # The Durable Streams protocol over the same streams (docs/protocol.md#durable-streams).
    path("v1/stream/", include("streaming_app.durable.urls")),
    # The AI SDK's useChat (its default transport and resume: true).
    path("api/ai/", include("example_project.chat.ai_urls")),
    path("admin/", admin.site.urls),
]
