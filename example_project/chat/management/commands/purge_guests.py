"""``manage.py purge_guests [--days 30]``: remove guest users who have not been back for
that long, with their chats and streams, so that visitors cannot fill the user table.

A guest user is made by a visitor's first prompt (never by a page view); one with a
reply still live is kept until it ends. Run it daily (cron, a scheduled task).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from example_project.chat.models import Message
from streaming_app.models import Status, Stream
from streaming_app.streams import stale_streams

GUEST_PREFIX = "guest-"


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
        removed = 0
        for user in guests.iterator():
            user.delete()  # their chats, messages and streams go with them
            removed += 1
        self.stdout.write(f"removed {removed} guest user(s) idle for {days} days or more")
