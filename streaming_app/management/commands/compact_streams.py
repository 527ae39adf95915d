from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming_app.streams import compact_finished_streams


class Command(BaseCommand):
    help = (
        "Merge the chunks of every finished stream that still has more than one into one "
        "chunk, so that reading it fetches one row. Streams that end normally are merged "
        "as they end (COMPACT_FINISHED); this catches the rest, timed-out ones for instance."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        compacted = compact_finished_streams(batch_size=options["batch_size"])
        self.stdout.write(f"{compacted} stream{'' if compacted == 1 else 's'} compacted")
