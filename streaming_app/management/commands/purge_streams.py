from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_duration

from streaming_app.models import TERMINAL_STATUSES
from streaming_app.streams import purge_streams

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``, or what Django's parse_duration takes
    (``3 days, 10:00:00``, ISO 8601 ``P3D``)."""
    if not value.strip():
        raise ValueError(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if match:
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    parsed = parse_duration(value)
    if parsed is None or parsed < timedelta(0):
        raise ValueError(value)
    return parsed


class Command(BaseCommand):
    help = "Delete finished streams, and their chunks, that finished longer ago than a duration."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            help="how long ago they finished: 30d, 12h, 90m, 45s, 2w, or an ISO 8601 duration",
        )
        parser.add_argument(
            "--status",
            action="append",
            choices=[str(s) for s in TERMINAL_STATUSES],
            help="only streams with this status (repeatable; default: every finished one)",
        )
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            older_than = duration(options["older_than"])
        except ValueError:
            raise CommandError(
                f"--older-than {options['older_than']!r} is not a duration (try 30d, 12h, 90m)"
            ) from None
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        deleted = purge_streams(
            older_than, options["status"] or TERMINAL_STATUSES, batch_size=options["batch_size"]
        )
        self.stdout.write(f"{deleted} stream{'' if deleted == 1 else 's'} deleted")
