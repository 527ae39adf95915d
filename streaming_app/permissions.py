"""Who may read, drive or cancel a stream: one policy, applied by every transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from django.core.exceptions import PermissionDenied
from django.utils.module_loading import import_string

from . import conf
from .models import Stream
from .streams import StreamId, get_stream

Action = Literal["read", "drive", "cancel"]
Policy = Callable[[Any, Stream, Action], bool]


def owner_policy(user: Any, stream: Stream, action: Action) -> bool:
    """The default: a stream with an owner is the owner's alone; one without is anyone's.

    A stream without an owner is reachable only by its unguessable UUID, so the project
    decides who may act on it by deciding who learns the id.
    """
    if stream.owner_id is None:
        return True
    return bool(user is not None and user.is_authenticated and user.pk == stream.owner_id)


def anyone_reads_policy(user: Any, stream: Stream, action: Action) -> bool:
    """Anyone with the link may read; driving and cancelling are as in owner_policy."""
    return action == "read" or owner_policy(user, stream, action)


def get_policy() -> Policy:
    policy = conf.get("PERMISSION_POLICY")
    if isinstance(policy, str):
        policy = import_string(policy)
    return policy


def has_permission(user: Any, stream: Stream, action: Action) -> bool:
    return bool(get_policy()(user, stream, action))


def load_stream(user: Any, stream_id: StreamId, action: Action) -> Stream:
    """The stream, if it exists and ``user`` may do ``action`` to it.

    Raises ``Stream.DoesNotExist`` (unknown or malformed id) or ``PermissionDenied``.
    """
    stream = get_stream(stream_id)
    if not has_permission(user, stream, action):
        raise PermissionDenied(f"you may not {action} this stream")
    return stream
