"""What ``python -m build`` makes is what a user installs: the wheel carries the app, its
licence and its metadata; the sdist carries the tests and what they import, and they run.

One build per module (the sdist, then the wheel built from that sdist, as ``make dist``
does), so that a file missing from the sdist is missing from the wheel too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import NamedTuple

import pytest

import streaming_app

from .servers import ROOT

pytestmark = pytest.mark.slow


class Dists(NamedTuple):
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel)


def wheel_metadata(wheel: Path) -> tuple[set[str], Message]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (path,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        return names, HeaderParser().parsestr(archive.read(path).decode())


def test_the_wheel_carries_migrations_and_static_files(dists: Dists):
    names, _ = wheel_metadata(dists.wheel)
    for expected in [
        "streaming_app/migrations/0001_initial.py",
        "streaming_app/static/streaming_app/client.js",
        "streaming_app/static/streaming_app/base.js",
        "streaming_app/static/streaming_app/parts.js",
        "streaming_app/static/streaming_app/http.js",
        "streaming_app/static/streaming_app/watch.js",
        "streaming_app/static/streaming_app/client.d.ts",
        "streaming_app/static/streaming_app/stream-text.js",
        "streaming_app/static/streaming_app/stream-text.css",
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
    assert not any(name.startswith(("example_project/", "tests/", "bench/")) for name in names)


def test_the_wheel_carries_the_licence_and_says_what_it_supports(dists: Dists):
    names, metadata = wheel_metadata(dists.wheel)
    (dist_info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
    assert f"{dist_info}/licenses/LICENSE" in names
    with zipfile.ZipFile(dists.wheel) as archive:
        licence = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "BSD 3-Clause License" in licence
    assert "Copyright (c) 2026, streaming_app developers" in licence

    # The app's own licence, and those of the browser libraries it vendors.
    assert metadata["License-Expression"] == "BSD-3-Clause AND MIT AND (Apache-2.0 OR MPL-2.0)"
    vendor = "streaming_app/static/streaming_app/vendor"
    assert set(metadata.get_all("License-File") or []) == {
        "LICENSE",
        f"{vendor}/dompurify.LICENSE",
        f"{vendor}/dompurify.LICENSE-MPL",
        f"{vendor}/marked.LICENSE.md",
    }
    assert {"openai", "redis"} <= set(metadata.get_all("Provides-Extra") or [])
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("openai") and 'extra == "openai"' in r for r in requires)
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {
        "Typing :: Typed",
        "Framework :: Django",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Framework :: Django :: 6.1",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    } <= classifiers


def test_the_wheel_is_the_version_the_app_says(dists: Dists):
    _, metadata = wheel_metadata(dists.wheel)
    assert metadata["Version"] == streaming_app.__version__
    assert dists.wheel.name.startswith(f"django_streaming_app-{streaming_app.__version__}-")


def test_the_sdist_runs_its_own_tests(dists: Dists, tmp_path: Path):
    with tarfile.open(dists.sdist) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path, filter="data")
    (top,) = {name.split("/")[0] for name in names}
    inside = {name.partition("/")[2] for name in names}
    for expected in [
        "LICENSE",
        "README.md",
        "Makefile",
        "manage.py",
        "requirements-dev.txt",
        "tests/conftest.py",
        "tests/browser/package.json",
        "tests/conformance/package-lock.json",
        "example_project/settings.py",
        "docs/api.md",
    ]:
        assert expected in inside
    assert not any("node_modules" in name or "__pycache__" in name for name in inside)

    unpacked = tmp_path / top
    # The sdist's own tests, on SQLite and the in-memory layer, with nothing of this
    # checkout on the path: the venv's editable install of the app is shadowed by the
    # unpacked copy because the current directory comes first on sys.path.
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CI"}}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [sys.executable, "-c", "import streaming_app; print(streaming_app.__file__)"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(unpacked)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_parts.py",
            "tests/test_checks.py",
        ],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout
