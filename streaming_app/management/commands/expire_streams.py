from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming_app import conf
from streaming_app.streams import expire_stale_streams


class Command(BaseCommand):
    help = (
        "Mark streaming streams with no activity for the timeout, and pending streams "
        "older than STREAMING_APP['PENDING_TIMEOUT'] if it is set, as timeout "
        "(cancelled, if a cancel was asked of them). Their committed text stays."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="seconds without activity of a streaming stream (default: "
            f"STREAMING_APP['TIMEOUT'], {conf.DEFAULTS['TIMEOUT']:g} unless set)",
        )

    def handle(self, *args: Any, timeout: float | None, **options: Any) -> None:
        if timeout is not None and timeout <= 0:
            raise CommandError("--timeout must be a positive number of seconds")
        expired = expire_stale_streams(timeout)
        self.stdout.write(f"{expired} stream{'' if expired == 1 else 's'} expired")
