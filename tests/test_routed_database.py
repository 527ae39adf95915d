"""A project whose router sends the app's models to a database other than
``default``: the app's transactions are on that database (``models.write_transaction``
takes the write lock where the rows are)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .servers import ROOT, server_env

SCRIPT = """
import django
django.setup()
from streaming_app.streams import cancel_stream, claim_stream, create_stream, expire_stale_streams
from streaming_app.models import Stream
driven = create_stream()
claim_stream(driven.pk)
cancelled = create_stream()
print(cancel_stream(cancelled.pk), expire_stale_streams(), Stream.objects.get(pk=driven.pk).status)
Stream.objects.filter(pk=cancelled.pk).delete()
print(Stream.objects.count())
"""


def test_the_app_writes_on_the_database_its_models_are_routed_to(tmp_path: Path):
    env = server_env(
        "sqlite:///unused",
        DJANGO_SETTINGS_MODULE="tests.routed_settings",
        E2E_SQLITE_PATH=str(tmp_path / "default.sqlite3"),
        E2E_ROUTED_PATH=str(tmp_path / "data.sqlite3"),
    )
    for alias in ("default", "data"):
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--database", alias, "--no-input", "-v0"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=120,
        )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cancelled", "0", "streaming", "1"]
