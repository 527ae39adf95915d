from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from streaming_app.models import Stream

#: The username prefix of the guest users the example makes for visitors (guest_user).
GUEST_PREFIX = "guest-"


def is_guest(user: object) -> bool:
    """Whether ``user`` is a guest the example made (or an anonymous visitor)."""
    username = getattr(user, "username", None)
    if username is None or not getattr(user, "is_authenticated", False):
        return True
    return str(username).startswith(GUEST_PREFIX) and not getattr(user, "is_staff", False)


class Chat(models.Model):
    """A conversation, owned by the (guest) user who started it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.title


class Message(models.Model):
    """A prompt and the stream of its reply."""

    chat = models.ForeignKey(Chat, on_delete=models.CASCADE, related_name="messages")
    prompt = models.TextField()
    # Purging old streams keeps the prompt and loses the reply.
    stream = models.OneToOneField(Stream, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.prompt[:50]
