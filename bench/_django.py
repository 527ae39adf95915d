"""Django for the benchmarks that run in-process: the example project's settings, on
DATABASE_URL or a fresh SQLite file. Import it before anything from Django."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3")

import django  # noqa: E402

django.setup()


def migrate() -> str:
    """Migrate the database; return its vendor (``postgresql``, ``sqlite``)."""
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    return connection.vendor
