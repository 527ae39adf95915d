"""``manage.py purge_guests [--days 30]``: remove guest users who have not been back for
that long, with their chats and streams, so that visitors cannot fill the user table.

A guest user is made by a visitor's first prompt (never by a page view); one with a
reply still live is kept until it ends. Their sessions go too (with the database
session engines: a cache's sessions expire on their own). Run it daily (cron, a
scheduled task: docs/deployment.md#scheduled-commands).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from example_project.chat.models import GUEST_PREFIX, Message
from streaming_app.models import Status, Stream
from streaming_app.streams import stale_streams


class Command(BaseCommand):
    help = "Remove guest users idle for --days days, with their chats and streams."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, default=30, help="idle for at least this many days (30)"
        )

    def handle(self, *args: Any, days: int, **options: Any) -> None:
        if days < 0:
            self.stderr.write("--days must be 0 or more")
            raise SystemExit(2)
        cutoff = timezone.now() - timedelta(days=days)
        # Being generated, by a writer still alive. A pending reply nobody drove does
        # not keep an idle guest.
        live = Stream.objects.filter(owner=OuterRef("pk"), status=Status.STREAMING).exclude(
            pk__in=stale_streams().values("pk")
        )
        # A guest logs in once, when made: their last prompt says when they were here.
        last_prompt = (
            Message.objects.filter(chat__owner=OuterRef("pk"))
            .order_by("-created_at")
            .values("created_at")[:1]
        )
        guests = (
            get_user_model()
            .objects.filter(username__startswith=GUEST_PREFIX, is_staff=False)
            .alias(
                seen=Greatest(
                    Coalesce("last_login", "date_joined"),
                    Coalesce(Subquery(last_prompt), "date_joined"),
                )
            )
            .filter(seen__lt=cutoff)
            .exclude(Exists(live))
        )
        removed: set[str] = set()
        for user in guests.iterator():
            removed.add(str(user.pk))
            user.delete()  # their chats, messages and streams go with them
        sessions = delete_sessions_of(removed) if removed else 0
        self.stdout.write(
            f"removed {len(removed)} guest user(s) idle for {days} days or more, "
            f"and {sessions} session(s) of theirs"
        )


#: Session rows read (and decoded) at a time, and keys deleted by one query.
BATCH = 2000


def delete_sessions_of(user_ids: set[str]) -> int:
    """Delete the sessions logged in as one of ``user_ids`` (their ``_auth_user_id``):
    the session table is read once, in batches of :data:`BATCH`, each row decoded in Python (the data
    is signed, not queryable), which takes about 15 s for 100,000 sessions. Returns
    how many were deleted; 0 with a session engine that keeps no table (cache, signed
    cookies), whose sessions expire on their own."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store, "get_model_class"):
        return 0
    model = store.get_model_class()
    decoder = store()
    rows = model.objects.values_list("session_key", "session_data")
    keys = [
        key
        for key, data in rows.iterator(chunk_size=BATCH)
        if str(decoder.decode(data).get(SESSION_KEY)) in user_ids
    ]
    deleted = 0
    for batch in _batches(iter(keys)):
        deleted += model.objects.filter(session_key__in=batch).delete()[0]
        if hasattr(store, "cache_key_prefix"):  # cached_db: its cached copies too
            caches[settings.SESSION_CACHE_ALIAS].delete_many(
                [store.cache_key_prefix + key for key in batch]
            )
    return deleted


def _batches(keys: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for key in keys:
        batch.append(key)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
