"""The example chat: pages and a small JSON API around ``streaming_app``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

import streaming_app
from streaming_app import disconnect_viewers
from streaming_app.admission import Ticket, release
from streaming_app.exceptions import Overloaded
from streaming_app.models import LIVE_STATUSES, Stream
from streaming_app.parts import TEXT, assemble, spans
from streaming_app.streams import create_stream, get_stream_body
from streaming_app.views import (
    JsonView,
    astream_response,
    error_for,
    error_response,
    request_user,
)

from .llm import Messages, reply_pieces
from .models import Chat, Message, is_guest


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JsonResponse:
        return error_response(self.status, str(self))


def read_prompt(request: HttpRequest) -> str:
    """The ``prompt`` of a JSON body, refusing oversize bodies before reading them."""
    limit = int(settings.CHAT_MAX_PROMPT_CHARS)
    too_big = f"the prompt is limited to {limit} characters"
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        raise BadRequest(400, "malformed Content-Length") from None
    # A code point takes at most 12 bytes of JSON ("\ud83d\ude00"), plus the braces.
    if declared > limit * 12 + 1024:
        raise BadRequest(413, too_big)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise BadRequest(413, too_big) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(400, f"the body is not valid JSON: {exc!s:.200}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, 'the body must be a JSON object: {"prompt": "..."}')
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest(400, '"prompt" is required and must be a string')
    if not prompt.strip():
        raise BadRequest(400, '"prompt" must not be empty')
    if len(prompt) > limit:
        raise BadRequest(413, too_big)
    check_text(prompt, '"prompt"')
    return prompt


def check_text(text: str, what: str) -> None:
    """Refuse what no database stores as it is: NUL, and lone surrogates (JSON lets a
    client send ``"\\ud800"``, which is not a character)."""
    if "\x00" in text:
        raise BadRequest(400, f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(400, f"{what} must be valid Unicode (it has a lone surrogate)") from None


def admit(request: HttpRequest, action: str) -> None:
    """Admit one ``action`` ("guest", "chat", "message") within the example's
    ``CHAT_<ACTION>_RATES_PER_USER`` / ``_PER_ADDRESS`` settings, or raise Overloaded
    (429 with Retry-After, answered by ``error_for``). Within :func:`admissions`, a
    request refused after all (a 409, a later 429) takes its counts back."""
    name = f"CHAT_{action.upper()}_RATES"
    ticket = streaming_app.admit(
        request,
        action,
        per_user=getattr(settings, f"{name}_PER_USER", None) or (),
        per_address=getattr(settings, f"{name}_PER_ADDRESS", None) or (),
    )
    held = _admitted.get()
    if held is not None:
        held.append(ticket)


#: What admit() counted within admissions(), to take back if the request is refused.
_admitted: ContextVar[list[Ticket] | None] = ContextVar("admitted", default=None)


@contextmanager
def admissions() -> Iterator[None]:
    """What :func:`admit` counts in the block is taken back if the block raises: a
    request refused for any reason costs none of the rates."""
    held: list[Ticket] = []
    token = _admitted.set(held)
    try:
        yield
    except BaseException:
        for ticket in held:
            release(ticket)
        raise
    finally:
        _admitted.reset(token)


def guest_user(request: HttpRequest) -> Any:
    """The request's user; a visitor who is not logged in becomes a guest user, within
    the per-address limit of ``CHAT_GUEST_RATES_PER_ADDRESS`` (Overloaded past it).

    Chats and their streams are owned by a user, so that the permission policy of
    streaming_app (the owner drives and cancels) applies to anonymous visitors too.
    """
    if request.user.is_authenticated:
        return request.user
    admit(request, "guest")
    # purge_guests removes them once idle (manage.py purge_guests --days 30).
    user = get_user_model().objects.create_user(username=f"guest-{uuid.uuid4().hex[:16]}")
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return user


def guest_stops_on_disconnect(user: Any, stream: Stream) -> bool:
    """The example's ``CANCEL_ON_DISCONNECT`` with ``CHAT_GUESTS_STOP_ON_DISCONNECT``:
    a guest's reply stops when its tab closes (a visitor who leaves costs no more model
    time); a registered user's goes on to the end."""
    return is_guest(user)


def find_chat(chat_id: str) -> Chat:
    try:
        return Chat.objects.get(pk=uuid.UUID(chat_id))
    except (ValueError, Chat.DoesNotExist):
        raise BadRequest(404, "no such chat") from None


def own_chat(request: HttpRequest, chat_id: str, user: Any) -> Chat:
    chat = find_chat(chat_id)
    if user is None or chat.owner_id != user.pk:
        raise BadRequest(403, "this chat is not yours: you may watch it, not write to it")
    return chat


def check_room(chat: Chat) -> None:
    """Refuse a message past ``CHAT_MAX_MESSAGES`` in ``chat`` (409): a follow-up costs
    no model call of its own to post, so a chat would otherwise grow without bound.
    Called with the chat's row locked."""
    limit = int(settings.CHAT_MAX_MESSAGES)
    if chat.messages.count() >= limit:
        raise BadRequest(409, chat_full(limit))


def chat_full(limit: int) -> str:
    return f"this chat has reached its limit of {limit} messages: start a new chat"


def page_of(chat: Chat, before: str | None) -> tuple[list[Message], Message | None]:
    """At most ``CHAT_PAGE_MESSAGES`` of the chat's messages, oldest first: the newest,
    or (``before``, a message's id) those before that one; and the oldest of them when
    there are earlier ones (where the next page starts), else None. A ``before`` that
    is not a message of this chat is 400."""
    size = int(settings.CHAT_PAGE_MESSAGES)
    messages = chat.messages.select_related("stream")
    if before is not None:
        try:
            pk = int(before)
            if not 0 < pk < 2**63:  # past a bigint, the database would fail
                raise ValueError(before)
            start = chat.messages.get(pk=pk)
        except (ValueError, Message.DoesNotExist):
            raise BadRequest(400, '"before" must be the id of a message of this chat') from None
        messages = messages.filter(
            Q(created_at__lt=start.created_at) | Q(created_at=start.created_at, id__lt=start.pk)
        )
    newest = list(messages.reverse()[: size + 1])
    page = newest[:size][::-1]
    return page, (page[0] if len(newest) > size else None)


def message_json(chat: Chat, message: Message) -> dict[str, Any]:
    return {
        "id": str(chat.id),
        "message_id": message.pk,
        "stream_id": str(message.stream_id) if message.stream_id else None,
        "url": reverse("chat", args=[chat.id]),
        "drive_url": reverse("drive", args=[chat.id]),
    }


def start_message(chat: Chat, prompt: str) -> Message:
    stream = create_stream(owner=chat.owner, metadata={"chat": str(chat.id)})
    return Message.objects.create(chat=chat, prompt=prompt, stream=stream)


def answer_of(stream_id: uuid.UUID) -> str:
    """A reply's answer: the text parts of its body (its reasoning is not the answer)."""
    body = get_stream_body(stream_id)
    return "".join(part["text"] for part in assemble(body.text, body.parts) if part["type"] == TEXT)


def answer_length(stream: Stream) -> int:
    """How long a reply's answer is, from its row alone (its part map)."""
    if not stream.parts:
        return stream.length
    return sum(
        span.end - span.start
        for span in spans(stream.parts, 0, stream.length)
        if span.entry["type"] == TEXT
    )


def estimated_tokens(chars: int) -> int:
    """The tokens a text of ``chars`` characters costs, estimated as a model's
    tokenizer counts English and code: about 4 characters a token, rounded up (no
    tokenizer to load; other scripts take more tokens a character, so the bound is
    loose for them)."""
    return -(-chars // 4)


def conversation(chat: Chat, newest: Message) -> Messages:
    """What the model is sent: the newest prompt, after as many earlier turns as fit in
    ``CHAT_MAX_CONTEXT_TOKENS`` with it (:func:`estimated_tokens`), newest first: the
    oldest are dropped. Earlier turns are not read at all, so a long chat does not
    delay the first token."""
    budget = int(settings.CHAT_MAX_CONTEXT_TOKENS) - estimated_tokens(len(newest.prompt))
    turns: list[Messages] = []
    earlier = chat.messages.exclude(pk=newest.pk).select_related("stream").reverse()
    for message in earlier[:100]:
        reply = answer_length(message.stream) if message.stream else 0
        budget -= estimated_tokens(len(message.prompt)) + estimated_tokens(reply)
        if budget < 0:
            break
        turn = [{"role": "user", "content": message.prompt}]
        if message.stream_id is not None and reply:
            turn.append({"role": "assistant", "content": answer_of(message.stream_id)})
        turns.append(turn)
    return [m for turn in reversed(turns) for m in turn] + [
        {"role": "user", "content": newest.prompt}
    ]


def your_chats(request: HttpRequest) -> list[Chat]:
    """The visitor's own chats, newest first (a visitor who never asked has none: a
    guest user is made only by a first prompt, never by a page view)."""
    if not request.user.is_authenticated:
        return []
    return list(Chat.objects.filter(owner=request.user).order_by("-created_at")[:20])


@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html", {"chat": None, "chats": your_chats(request)})


@ensure_csrf_cookie
def chat_page(request: HttpRequest, chat_id: str) -> HttpResponse:
    """The chat, its replies rendered on the server ({% stream_text %}) and followed live
    in the browser; its owner may write and drives a reply still to be generated. It
    shows the newest ``CHAT_PAGE_MESSAGES`` (``?before=<message id>``: those before),
    with a link to the earlier ones."""
    try:
        chat = find_chat(chat_id)
        before = request.GET.get("before")
        messages, oldest = page_of(chat, before)
    except BadRequest as exc:
        if exc.status == 404:
            raise Http404("no such chat") from None
        return HttpResponse(str(exc), status=exc.status, content_type="text/plain")
    owner = request.user.is_authenticated and request.user.pk == chat.owner_id
    newest_page = before is None
    limit = int(settings.CHAT_MAX_MESSAGES)
    return render(
        request,
        "chat/index.html",
        {
            "chat": chat,
            "owner": owner,
            "messages": messages,
            "older": oldest.pk if oldest else None,
            "newest_page": newest_page,
            # Only the newest reply is generated by the drive view.
            "drive_url": reverse("drive", args=[chat.id]) if owner and newest_page else None,
            "full": chat_full(limit) if owner and chat.messages.count() >= limit else "",
            "chats": your_chats(request),
        },
    )


class ChatsView(JsonView):
    def post(self, request: HttpRequest) -> HttpResponse:
        try:
            prompt = read_prompt(request)
            with admissions(), transaction.atomic():
                user = guest_user(request)
                admit(request, "chat")  # as the guest, if one was made
                chat = Chat.objects.create(owner=user, title=prompt.strip()[:80])
                message = start_message(chat, prompt)
        except BadRequest as exc:
            return exc.response()
        except Overloaded as exc:
            return error_for(exc)
        return JsonResponse(message_json(chat, message), status=201)


class ChatView(JsonView):
    def get(self, request: HttpRequest, chat_id: str) -> HttpResponse:
        """The chat and its newest ``CHAT_PAGE_MESSAGES`` messages, oldest first
        (``?before=<message_id>``: those before that one); ``older`` is the URL of the
        page before, or null."""
        try:
            chat = find_chat(chat_id)
            messages, oldest = page_of(chat, request.GET.get("before"))
        except BadRequest as exc:
            return exc.response()
        older = None
        if oldest is not None:
            older = f"{reverse('chat-detail', args=[chat.id])}?before={oldest.pk}"
        return JsonResponse(
            {
                "id": str(chat.id),
                "title": chat.title,
                "owner": request.user.is_authenticated and request.user.pk == chat.owner_id,
                "messages": [
                    {
                        "message_id": m.pk,
                        "prompt": m.prompt,
                        "stream_id": str(m.stream_id) if m.stream_id else None,
                    }
                    for m in messages
                ],
                "older": older,
            }
        )

    def delete(self, request: HttpRequest, chat_id: str) -> HttpResponse:
        """Delete the chat (its owner only): its live replies are stopped (their runs,
        wherever they are, are told at once), its streams and messages deleted, then
        the chat, so that its link is dead: 404 for the page, the JSON and its streams
        (a websocket 4404)."""
        try:
            with transaction.atomic():
                chat = own_chat(request, chat_id, request.user)
                Chat.objects.select_for_update().filter(pk=chat.pk).exists()
                streams = Stream.objects.filter(
                    pk__in=chat.messages.exclude(stream=None).values("stream_id")
                )
                live = list(streams.live().values_list("pk", flat=True))
                # Locked and deleted: the live ones' runs are told to stop on commit.
                streams.delete()
                chat.delete()
        except BadRequest as exc:
            return exc.response()
        for stream_id in live:
            # Their viewers, in every process, find the stream gone: close 4404.
            disconnect_viewers(stream_id)
        return JsonResponse({"id": chat_id, "deleted": True})


class MessagesView(JsonView):
    def post(self, request: HttpRequest, chat_id: str) -> HttpResponse:
        try:
            prompt = read_prompt(request)
            own_chat(request, chat_id, request.user)  # a 403 or 404 costs no message
            with admissions(), transaction.atomic():
                admit(request, "message")  # taken back if the chat refuses it (409)
                chat = own_chat(request, chat_id, request.user)
                # One follow-up at a time: the chat's row serialises concurrent posts.
                Chat.objects.select_for_update().filter(pk=chat.pk).exists()
                last = chat.messages.select_related("stream").last()
                if last is not None and last.stream and last.stream.status in LIVE_STATUSES:
                    raise BadRequest(409, f"the previous reply is still {last.stream.status}")
                check_room(chat)
                message = start_message(chat, prompt)
        except BadRequest as exc:
            return exc.response()
        except Overloaded as exc:
            return error_for(exc)
        return JsonResponse(message_json(chat, message), status=201)


class DriveView(JsonView):
    """Generate the reply to the chat's newest message, streamed as plain text (or,
    with ``?parts=1``, as the protocol's messages with the part map: docs/protocol.md)."""

    async def post(self, request: HttpRequest, chat_id: str) -> HttpResponseBase:
        user = await request_user(request)

        def prepare() -> tuple[Stream | None, Messages]:
            chat = own_chat(request, chat_id, user)
            newest = chat.messages.select_related("stream").last()
            if newest is None or newest.stream is None:
                raise BadRequest(409, "this chat has no reply to generate")
            return newest.stream, conversation(chat, newest)

        try:
            stream, messages = await sync_to_async(prepare)()
        except BadRequest as exc:
            return exc.response()
        assert stream is not None
        return await astream_response(request, stream.pk, reply_pieces(messages))
