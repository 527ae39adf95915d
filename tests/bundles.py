"""Test pages built from the npm registry's packages (tests/browser/package.json and its
lock file), bundled with esbuild at test time and served on the server's own origin."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .conftest import require

HERE = Path(__file__).parent / "browser"


def node_modules(here: Path = HERE) -> Path:
    """``here``/node_modules (tests/browser's by default), installed from the lock file
    (``npm ci``) when it is missing or older than the lock file. Skips (fails on CI)
    without npm."""
    require(shutil.which("npm") is not None, "needs Node.js and npm for the test pages")
    installed = here / "node_modules" / ".package-lock.json"
    lock = here / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=here,
            check=True,
            timeout=300,
        )
    return here / "node_modules"


def bundle(entry: str, out: Path) -> str:
    """tests/browser/``entry`` and what it imports, as one JavaScript module."""
    node_modules()
    subprocess.run(["node", str(HERE / "build.mjs"), str(out), entry], check=True, timeout=120)
    return out.read_text()


def serve_page(
    context: Any, prefix: str, title: str, script: str, headers: dict[str, str] | None = None
) -> None:
    """``/<prefix>/`` (any query) on the server's own origin, so the page has its
    cookies and CSRF token: a page that runs ``script``, mounted on ``#root``, answered
    with ``headers`` (a Content-Security-Policy, say)."""
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body><div id="root"></div><script type="module" src="/{prefix}/page.js"></script>'
        "</body></html>"
    )
    context.route(
        f"**/{prefix}/page.js",
        lambda route: route.fulfill(body=script, content_type="text/javascript"),
    )
    context.route(
        re.compile(rf"/{prefix}/(\?.*)?$"),
        lambda route: route.fulfill(body=page, content_type="text/html", headers=headers),
    )
