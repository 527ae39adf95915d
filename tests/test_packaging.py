"""The wheel carries what an installed app needs: migrations, static files, py.typed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .servers import ROOT


@pytest.mark.slow
def test_the_wheel_carries_migrations_and_static_files(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "streaming_app/migrations/0001_initial.py",
        "streaming_app/static/streaming_app/client.js",
        "streaming_app/static/streaming_app/client.d.ts",
        "streaming_app/static/streaming_app/stream-text.js",
        "streaming_app/static/streaming_app/react.js",
        "streaming_app/static/streaming_app/react.d.ts",
        "streaming_app/static/streaming_app/vendor/marked.esm.js",
        "streaming_app/static/streaming_app/vendor/marked.LICENSE.md",
        "streaming_app/static/streaming_app/vendor/purify.es.js",
        "streaming_app/templates/streaming_app/stream_text.html",
        "streaming_app/templatetags/streaming.py",
        "streaming_app/py.typed",
        "streaming_app/models.py",
    ]:
        assert expected in names
    assert not any(name.startswith(("example_project/", "tests/")) for name in names)
