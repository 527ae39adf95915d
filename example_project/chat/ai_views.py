"""The example chat for the AI SDK's ``useChat``: its default transport's two requests.

A page built with ``@ai-sdk/react``::

    useChat({
      id,  // crypto.randomUUID(): the chat's id here
      transport: new DefaultChatTransport({
        api: "/api/ai/chat",
        headers: () => ({ "X-CSRFToken": csrfToken() }),
      }),
      resume: true,
    })

posts each new message to ``api/ai/chat`` and reads the reply as a UI message stream
(:mod:`streaming_app.aisdk`); after a reload (``resume: true``) it asks
``api/ai/chat/<id>/stream`` for the reply still being written. The chat lives here,
not in the browser: the model is sent the conversation as this server has it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from streaming_app.aisdk import aresume_response, aui_message_stream_response
from streaming_app.exceptions import Overloaded
from streaming_app.models import LIVE_STATUSES, Status, Stream
from streaming_app.views import JsonView, error_for

from .llm import Messages, reply_pieces
from .models import Chat, Message
from .views import (
    BadRequest,
    admissions,
    admit,
    check_room,
    check_text,
    conversation,
    guest_user,
    own_chat,
    start_message,
)


def parse_chat_id(value: Any) -> uuid.UUID:
    """A chat's id as useChat sends it: a UUID (the page makes it with
    ``crypto.randomUUID()``)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadRequest(400, '"id" must be a UUID') from None


def read_chat_request(request: HttpRequest) -> tuple[uuid.UUID, str]:
    """The chat's id and the new prompt (the text of the last message, the user's) of
    useChat's body, ``{id, messages, trigger, messageId}``."""
    try:
        data = json.loads(request.body)
    except RequestDataTooBig:
        raise BadRequest(413, "the request body is too large") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(400, f"the body is not valid JSON: {exc!s:.200}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object: {id, messages, trigger}")
    chat_id = parse_chat_id(data.get("id"))
    trigger = data.get("trigger", "submit-message")
    if trigger != "submit-message":
        raise BadRequest(400, f'"trigger" {trigger!r} is not supported: only "submit-message"')
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, '"messages" must be a non-empty list')
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise BadRequest(400, "the last message must be the user's")
    parts = last.get("parts")
    if not isinstance(parts, list):
        raise BadRequest(400, "the last message must have a list of parts")
    prompt = "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    )
    limit = int(settings.CHAT_MAX_PROMPT_CHARS)
    if not prompt.strip():
        raise BadRequest(400, "the last message has no text")
    if len(prompt) > limit:
        raise BadRequest(413, f"the prompt is limited to {limit} characters")
    check_text(prompt, "the prompt")
    return chat_id, prompt


def start_reply(request: HttpRequest, chat_id: uuid.UUID, prompt: str) -> tuple[Message, Messages]:
    """The chat with ``chat_id`` (made now, for the visitor, if it is new), a new
    message with ``prompt`` and its stream to drive, and what the model is sent."""
    if Chat.objects.filter(pk=chat_id).exists():
        own_chat(request, str(chat_id), request.user)  # a 403 costs no message
    with admissions(), transaction.atomic():
        if not Chat.objects.filter(pk=chat_id).exists():
            # A visitor who asks for the first time becomes a guest user.
            user = guest_user(request)
            admit(request, "chat")  # as the guest, if one was made
            Chat.objects.get_or_create(
                pk=chat_id, defaults={"owner": user, "title": prompt.strip()[:80]}
            )
        else:
            admit(request, "message")
        chat = own_chat(request, str(chat_id), request.user)
        # One reply at a time: the chat's row serialises concurrent posts.
        Chat.objects.select_for_update().filter(pk=chat.pk).exists()
        last = chat.messages.select_related("stream").last()
        if last is not None and last.stream_id is not None and replace_undriven(last):
            last = chat.messages.select_related("stream").last()
        if last is not None and last.stream and last.stream.status in LIVE_STATUSES:
            raise BadRequest(409, f"the previous reply is still {last.stream.status}")
        check_room(chat)
        message = start_message(chat, prompt)
        return message, conversation(chat, message)


def replace_undriven(message: Message) -> bool:
    """Delete ``message`` and its reply if the reply was never driven (its drive was
    refused, 429 or 503, and useChat does not retry a drive: it sends the message
    again), so that the new message takes its place instead of a 409 for ever.
    Whether it did. The stream's row is locked, so a drive claiming it meanwhile
    finds it gone (or, claimed first, keeps it: then it is not pending here)."""
    stream_id = message.stream_id
    if stream_id is None:
        return False
    pending = Stream.objects.select_for_update().filter(pk=stream_id, status=Status.PENDING)
    if not pending.exists():
        return False
    message.delete()
    Stream.objects.filter(pk=stream_id).delete()
    return True


class AIChatView(JsonView):
    """``POST api/ai/chat``: a new message to a chat, answered by the reply's UI message
    stream. 400 for a body useChat would not send, 403 for someone else's chat, 409
    while its previous reply is still being written."""

    async def post(self, request: HttpRequest) -> HttpResponseBase:
        try:
            chat_id, prompt = read_chat_request(request)
            message, messages = await sync_to_async(start_reply)(request, chat_id, prompt)
        except BadRequest as exc:
            return exc.response()
        except (OperationalError, InterfaceError, Overloaded) as exc:
            return error_for(exc)
        assert message.stream_id is not None
        return await aui_message_stream_response(request, message.stream_id, reply_pieces(messages))


class AIChatStreamView(JsonView):
    """``GET api/ai/chat/<id>/stream``: the chat's reply still being written, for
    useChat's ``resume: true``; 204 when there is none (a new chat, or its replies have
    ended). Whoever may read the reply's stream may resume it."""

    async def get(self, request: HttpRequest, chat_id: str) -> HttpResponseBase:
        try:
            pk = parse_chat_id(chat_id)
        except BadRequest as exc:
            return exc.response()
        try:
            latest = (
                await Message.objects.filter(chat_id=pk)
                .order_by("created_at", "id")
                .values_list("stream_id", flat=True)
                .alast()
            )
        except (OperationalError, InterfaceError) as exc:
            return error_for(exc)
        return await aresume_response(request, latest)
