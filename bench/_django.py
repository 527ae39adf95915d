"""Django for the benchmarks that run in-process: the example project's settings, on a
database of their own (a fresh SQLite file; or, when DATABASE_URL is PostgreSQL, a
scratch database on that server, dropped at exit). Import it before anything from
Django."""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
# DEBUG is off (as in production): the example wants a key other than its public one.
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-" + "k" * 50)

_server = os.environ.get("DATABASE_URL", "")
if _server.startswith(("postgres://", "postgresql://")):
    import psycopg

    _prefix = _server.rpartition("/")[0]
    _name = f"streaming_app_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{_prefix}/postgres", autocommit=True) as _admin:
        _admin.execute(f'CREATE DATABASE "{_name}"')
    os.environ["DATABASE_URL"] = f"{_prefix}/{_name}"

    @atexit.register
    def _drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{_prefix}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{_name}" WITH (FORCE)')
else:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django  # noqa: E402

django.setup()


def migrate() -> str:
    """Migrate the database; return its vendor (``postgresql``, ``sqlite``)."""
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    return connection.vendor
