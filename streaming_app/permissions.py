"""Who may read, drive or cancel a stream: one policy, applied by every transport; and
whose runs stop when their driver hangs up (``CANCEL_ON_DISCONNECT``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from django.core.exceptions import PermissionDenied
from django.utils.module_loading import import_string

from . import conf
from .models import Stream
from .streams import StreamId, get_stream

logger = logging.getLogger(__name__)

#: "create", "append" and "delete" are what the Durable Streams protocol writes
#: (streaming_app.durable): a policy is asked "create" with the stream about to be
#: made (unsaved, its owner the user, or None for an anonymous one).
Action = Literal["read", "drive", "cancel", "create", "append", "delete"]
Policy = Callable[[Any, Stream, Action], bool]
#: The actions of the Durable Streams protocol's writes: nobody's over HTTP under the
#: app's policies but :func:`durable_writes_open_policy`.
DURABLE_WRITES: tuple[Action, ...] = ("create", "append", "delete")


def is_owner(user: Any, stream: Stream) -> bool:
    """Whether ``user`` is signed in and owns ``stream`` (never, for one without owner)."""
    return bool(
        stream.owner_id is not None
        and user is not None
        and user.is_authenticated
        and user.pk == stream.owner_id
    )


def owner_policy(user: Any, stream: Stream, action: Action) -> bool:
    """The default: a stream with an owner is the owner's alone; one without is
    read-only.

    A stream without an owner is reachable only by its unguessable UUID: whoever learns
    it may read it, and nobody may drive or cancel it over HTTP or websockets. Server
    code (``claim_stream`` with ``StreamRun``, ``cancel_stream``, the admin) is not
    subject to the policy; :func:`ownerless_open_policy` lets anyone drive and cancel.
    """
    if action in DURABLE_WRITES:
        return False
    if stream.owner_id is None:
        return action == "read"
    return is_owner(user, stream)


def anyone_reads_policy(user: Any, stream: Stream, action: Action) -> bool:
    """Anyone with the link may read; driving and cancelling are the owner's alone, as
    in owner_policy (nobody's, for a stream without owner)."""
    return action == "read" or (action not in DURABLE_WRITES and is_owner(user, stream))


def ownerless_open_policy(user: Any, stream: Stream, action: Action) -> bool:
    """A stream without an owner is anyone's who knows its id, to read, drive and
    cancel; one with an owner is as in owner_policy. For a site without accounts that
    drives ownerless streams from its views: the id is then the only key. Writes over
    Durable Streams are nobody's."""
    return action not in DURABLE_WRITES and (stream.owner_id is None or is_owner(user, stream))


def durable_writes_open_policy(user: Any, stream: Stream, action: Action) -> bool:
    """Anyone may create, append to and delete streams over Durable Streams, and read
    any stream; driving and cancelling as in :func:`anyone_reads_policy`. For a test
    server (the protocol's conformance suite sends no credentials) or an open demo;
    a site's own policy decides who writes, from ``user`` and ``stream.owner``."""
    return action in DURABLE_WRITES or anyone_reads_policy(user, stream, action)


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
        raise PermissionDenied(refusal(stream, action))
    return stream


#: The app's policies under which a stream without owner is read-only.
_READ_ONLY_OWNERLESS = (owner_policy, anyone_reads_policy)


def refusal(stream: Stream, action: Action) -> str:
    """Why ``action`` was refused, as the 403 says it: for a stream without owner under
    a policy that makes it read-only, what to do instead (an anonymous visitor's
    ``create_stream(owner=request.user)`` makes such a stream)."""
    message = f"you may not {action} this stream"
    if action in DURABLE_WRITES:
        return f"you may not {action} streams over Durable Streams"
    if stream.owner_id is None and action != "read" and get_policy() in _READ_ONLY_OWNERLESS:
        message += (
            ": a stream without owner is read-only under the default permission policy. "
            "Create it for a signed-in user (an anonymous visitor's stream has no owner), "
            "drive it from server code (claim_stream and StreamRun), or set "
            "STREAMING_APP['PERMISSION_POLICY'] to "
            "'streaming_app.permissions.ownerless_open_policy'"
        )
    return message


def anonymous_cancels_on_disconnect(user: Any, stream: Stream) -> bool:
    """A ``CANCEL_ON_DISCONNECT`` policy: a visitor who is not signed in (or a site
    without authentication) stops the run by hanging up; a signed-in user's goes on."""
    return user is None or not user.is_authenticated


def cancels_on_disconnect(user: Any, stream: Stream) -> bool:
    """Whether the run of ``stream``, driven by ``user``, stops when the driver hangs
    up: ``CANCEL_ON_DISCONNECT``, a bool or a callable (or its dotted path) taking
    ``(user, stream)``. Called on the event loop once the stream is claimed, so a
    callable must not query the database (the user and the stream are loaded). One
    that fails is logged, and the run goes on (the default, invariant 7)."""
    setting = conf.get("CANCEL_ON_DISCONNECT")
    if isinstance(setting, bool):
        return setting
    try:
        decide = import_string(setting) if isinstance(setting, str) else setting
        return bool(decide(user, stream))
    except Exception:
        logger.exception("CANCEL_ON_DISCONNECT failed for stream %s", stream.pk)
        return False
