"""The example deployed as docs/deployment.md#production-settings says: its documented
environment passes ``check --deploy``, its static files come from a real server with
DEBUG off, and DEBUG's error pages show no password."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import ROOT, Daphne, Uvicorn, server_env

DEPLOYMENT = ROOT / "docs" / "deployment.md"


def production_env() -> dict[str, str]:
    """The env file of docs/deployment.md's "Production settings": its first ``sh``
    block, ``NAME=value`` a line."""
    text = DEPLOYMENT.read_text()
    section = text[text.index("### Production settings") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no env file in the Production settings section"
    env = {}
    for line in block[1].splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """manage.py with the example's settings in exactly ``env`` (and what Python needs)."""
    base = {k: v for k, v in server_env("").items() if k in ("PATH", "HOME", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "example_project.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_documented_production_environment_passes_check_deploy():
    env = production_env()
    assert env["DJANGO_SECRET_KEY"] == "", "the docs tell the reader to make one"
    assert env["DJANGO_DEBUG"] == "0"
    # As documented, the key left out: the example does not start.
    refused = manage(env, "check", "--deploy")
    assert refused.returncode != 0
    assert "ImproperlyConfigured: Set DJANGO_SECRET_KEY" in refused.stderr
    # With the key the docs say how to make, nothing to report, warnings included.
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.fixture(scope="module")
def collected(e2e_db: str) -> Any:
    """A STATIC_ROOT that ``collectstatic`` filled, as a release does."""
    with tempfile.TemporaryDirectory(prefix="streaming_app_static_") as root:
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"],
            cwd=ROOT,
            env=server_env(e2e_db, DJANGO_STATIC_ROOT=root),
            check=True,
            timeout=120,
        )
        yield root


TYPES = {".js": "text/javascript", ".css": "text/css"}


@pytest.mark.daphne
@pytest.mark.parametrize("kind", [Uvicorn, Daphne], ids=["uvicorn", "daphne"])
def test_a_server_with_debug_off_serves_the_chat_page_and_its_scripts_and_styles(
    daphne_factory, collected, kind
):
    # The servers' settings (tests/e2e_settings.py) serve the apps' folders unless
    # DJANGO_STATIC_ROOT is set: here only what collectstatic put there.
    server = daphne_factory(kind, DJANGO_DEBUG="0", DJANGO_STATIC_ROOT=collected)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert "Content-Security-Policy" in page.headers
        linked = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert {Path(url).suffix for url in linked} == {".js", ".css"}, linked
        # stream-text.js imports these (and client.js the modules it is built of).
        linked += ["/static/streaming_app/client.js", "/static/streaming_app/markdown.js"]
        linked += [
            f"/static/streaming_app/{name}.js" for name in ("base", "parts", "http", "watch")
        ]
        for url in linked:
            response = http.get(url)
            assert response.status_code == 200, url
            assert response.headers["content-type"].startswith(TYPES[Path(url).suffix]), url
            assert response.content == (Path(collected) / url.removeprefix("/static/")).read_bytes()
        assert http.get("/static/streaming_app/nothing-here.js").status_code == 404
    output = server.output()
    assert "Traceback" not in output, output
    assert "synchronous iterators" not in output, output


@pytest.mark.daphne
def test_debug_pages_show_no_password_of_the_redis_or_database_url(daphne_factory, e2e_db):
    password = "s3cret-" + secrets.token_hex(8)
    # PostgreSQL on loopback trusts the tests' user; SQLite URLs have no password.
    database_url = e2e_db.replace("postgres://postgres@", f"postgres://postgres:{password}@")
    server = daphne_factory(
        Uvicorn,
        DJANGO_DEBUG="1",
        DJANGO_ALLOWED_HOSTS="chat.example.com",
        REDIS_URL=f"redis://:{password}@127.0.0.1:6379/4",
        DATABASE_URL=database_url,
    )
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.get("/", headers={"Host": "evil.example.com"})
    assert response.status_code == 400
    # The technical page, with the settings: the URLs shown, their password masked.
    assert "DisallowedHost" in response.text and "REDIS_URL" in response.text
    assert "redis://:********************@127.0.0.1:6379/4" in response.text
    assert password not in response.text
