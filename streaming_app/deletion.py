"""Deleting streams: every deleted stream's row locked, and its run told to stop.

Django deletes a stream's chunks, then the stream (``django.db.models.deletion``). A
writer flushing in between would insert a chunk that the stream's deletion then trips
over (a foreign key violation on PostgreSQL). :func:`lock_deleted_streams`, connected to
``pre_delete`` for :class:`~streaming_app.models.Stream` by the app's ``ready()``, runs
inside the deletion's transaction before any chunk is deleted, however the streams go (a
queryset, an instance, a cascade from their owner): it locks their rows, so that a
writer either commits first (and its chunk is deleted too) or finds its stream gone and
stops; and it tells the runs driving the live ones, wherever they are, to stop as soon
as the deletion commits (rather than at their next flush).

Django sends ``pre_delete`` once per deleted instance, all of them before it deletes
anything. The first call of a deletion locks, in one query, every stream its origin
says it takes (the queryset deleted, the stream, or the object whose streams cascade);
the later calls find their stream locked already. A stream that query did not find (a
queryset whose filter it no longer matches, a cascade through another model) is locked
on its own. No SELECT ... FOR UPDATE on SQLite, which locks the whole file instead
(``models.write_transaction``, opened by ``Stream.delete`` and ``StreamQuerySet.delete``
before Django reads the rows).

The module is named after Django's, whose deletions it hooks into.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Any

from django.db import connections, models
from django.db.models import Q

from .fanout.outbox import cancel_on_commit
from .models import Status, Stream

#: The ``dispatch_uid`` of :func:`lock_deleted_streams` (its name from when it locked
#: only the streams deleted with their owner; kept for projects that disconnect it).
DISPATCH_UID = "streaming_app.lock_cascaded_stream"


@dataclass
class _Deletion:
    """The deletion running on this thread: its transaction and origin (held weakly),
    and the statuses of the streams it has locked."""

    atomic: Callable[[], object]
    origin: Callable[[], object]
    statuses: dict[uuid.UUID, str]

    def is_of(self, atomic: object, origin: object) -> bool:
        return self.atomic() is atomic and self.origin() is origin


_current = threading.local()


def lock_deleted_streams(
    sender: type[Stream], instance: Stream, origin: object, using: str, **kwargs: object
) -> None:
    """``pre_delete`` of a stream: lock its row (with the rest of its deletion's, at the
    deletion's first call), and if it is live, have its run stopped once the deletion
    commits."""
    deletion = _deletion(origin, using)
    if instance.pk not in deletion.statuses:
        deletion.statuses.update(_lock(Stream.objects.using(using).filter(pk=instance.pk)))
    if deletion.statuses.get(instance.pk) == Status.STREAMING:
        cancel_on_commit(instance.pk)


def _deletion(origin: object, using: str) -> _Deletion:
    """The deletion now sending ``pre_delete``: the one of the last call if it has the
    same transaction (Django's deletion opens its own) and the same origin; else a new
    one, whose streams are locked now."""
    blocks = connections[using].atomic_blocks
    atomic = blocks[-1] if blocks else None
    current: _Deletion | None = getattr(_current, "deletion", None)
    if current is not None and atomic is not None and current.is_of(atomic, origin):
        return current
    scope = _scope(origin, using)
    current = _Deletion(_ref(atomic), _ref(origin), _lock(scope) if scope is not None else {})
    _current.deletion = current
    return current


def _scope(origin: object, using: str) -> models.QuerySet[Stream] | None:
    """The streams a deletion from ``origin`` takes, as one query, when it can say."""
    streams = Stream.objects.using(using)
    if isinstance(origin, Stream):
        return streams.filter(pk=origin.pk)
    if isinstance(origin, models.QuerySet) and issubclass(origin.model, Stream):
        return origin.using(using)
    # A cascade: the streams whose foreign key points at what is deleted.
    if isinstance(origin, models.Model):
        model, lookup = type(origin), ""
    elif isinstance(origin, models.QuerySet):
        model, lookup = origin.model, "__in"
    else:
        return None
    cascades = [
        Q(**{f"{field.name}{lookup}": origin})
        for field in Stream._meta.concrete_fields
        if isinstance(field, models.ForeignKey)
        and field.remote_field.on_delete is models.CASCADE
        and issubclass(model, field.related_model)
    ]
    return streams.filter(reduce(or_, cascades)) if cascades else None


def _lock(streams: models.QuerySet[Stream]) -> dict[uuid.UUID, str]:
    """Lock ``streams``' rows until the end of the transaction, in the order of their
    ids (two deletions take them in the same order); their statuses."""
    return dict(streams.order_by("pk").select_for_update().values_list("pk", "status"))


def _ref(obj: Any) -> Callable[[], object]:
    """A weak reference to ``obj`` when it takes one (not to keep a deletion's queryset
    alive until the next deletion); else a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj
