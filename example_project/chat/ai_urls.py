"""The AI SDK's routes (ai_views.py), under the prefix that useChat's ``api`` names::

    path("api/ai/", include("example_project.chat.ai_urls"))

serves ``DefaultChatTransport({ api: "/api/ai/chat" })``: it posts to ``api/ai/chat``
and resumes from ``api/ai/chat/<id>/stream``.
"""

from __future__ import annotations

from django.urls import path

from . import ai_views

urlpatterns = [
    path("chat", ai_views.AIChatView.as_view(), name="ai-chat"),
    path("chat/<str:chat_id>/stream", ai_views.AIChatStreamView.as_view(), name="ai-chat-stream"),
]
