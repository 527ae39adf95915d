"""docs/quickstart.md, followed as a stranger would: the app installed from its wheel
into a virtualenv of its own, a fresh ``startproject`` + ``startapp`` with the page's
own code blocks written or appended as the page says (so the page and this test cannot
drift), served by real uvicorn and daphne processes, and used over HTTP, a websocket
and Chromium. On SQLite (the page's settings) and on PostgreSQL + Redis (its block for
several processes)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from .servers import ROOT, Daphne, FakeOpenAI, closing

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

QUICKSTART = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"
#: A marked code block: ``<!-- quickstart: <target> -->`` on the line before its fence.
BLOCK = re.compile(
    r"^<!-- quickstart: (?P<target>[^>]+?) -->\n```(?P<lang>\w*)\n(?P<code>.*?)^```$",
    re.M | re.S,
)
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.M | re.S)

PASSWORD = "quick-start-password"
#: The fake model's answer, one piece per event.
PIECES = ["Streams ", "arrive ", "token ", "by ", "token, ", "saved ", "as ", "they ", "come."]
ANSWER = "".join(PIECES)


def marked_blocks(path: Path) -> list[tuple[str, str]]:
    """The marked code blocks of a page, in order: (target, code)."""
    return [(m["target"], m["code"]) for m in BLOCK.finditer(path.read_text())]


def quickstart_block(target: str) -> str:
    (code,) = [code for t, code in marked_blocks(QUICKSTART) if t == target]
    return code


def shell_text() -> str:
    """The page's shell blocks, the commands it tells a user to run."""
    return "".join(code for target, code in marked_blocks(QUICKSTART) if target == "sh")


def test_the_readme_pastes_only_tested_code():
    """A Python block of the README (or its install line) is one of the quick start's
    blocks, marked as such and equal to it; any other code for a user to paste is a
    link to tested code."""
    text = README.read_text()
    marked = {m.start("lang") - len("```"): m for m in BLOCK.finditer(text)}
    tested = dict(marked_blocks(QUICKSTART))
    for fence in FENCE.finditer(text):
        block = next((m for at, m in marked.items() if at == fence.start()), None)
        if block is None:
            assert fence["lang"] not in ("python", "py"), (
                f"an unmarked Python block in the README:\n{fence['code']}"
            )
            continue
        assert block["target"] in tested, f"the quick start has no block {block['target']!r}"
        assert block["code"] == tested[block["target"]], f"{block['target']} differs"
    assert any(t == "install" for t, _ in marked_blocks(README)), "no install line"


# The installation ----------------------------------------------------------------------


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment of a stranger's shell: none of the suite's settings or paths."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("PYTHON", "DJANGO_", "OPENAI_", "DATABASE_URL", "REDIS_URL", "PYTEST", "VIRTUAL_ENV")
        )
    }
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Venv:
    python: Path
    site_packages: Path
    wheel: Path

    def run(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(self.python), *args],
            cwd=cwd,
            env=env or clean_environment(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A new virtualenv with the app installed from a wheel built from this checkout.
    Its dependencies come from the suite's own environment, without a network: a .pth
    file names that site-packages (a plain path, so that the checkout's editable
    install, a finder started by an ``import`` line, is not)."""
    root = tmp_path_factory.mktemp("quickstart")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = root.glob("*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_environment(),
    )
    site_packages = Path(found.stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_packages / "quickstart-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    installed = Venv(python, site_packages, wheel)
    installed.run("-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel), cwd=root)
    return installed


def test_the_app_is_installed_from_its_wheel(venv: Venv, tmp_path: Path):
    where = venv.run(
        "-c",
        "import sys, streaming_app; print(streaming_app.__file__);"
        "print(any('editable' in repr(f) for f in sys.meta_path))",
        cwd=tmp_path,
    ).split()
    assert where == [str(venv.site_packages / "streaming_app" / "__init__.py"), "False"]
    assert "No broken requirements" in venv.run("-m", "pip", "check", cwd=tmp_path)


def test_the_install_line_names_the_wheel_and_its_extras(venv: Venv):
    """The page's install line installs the wheel ``make dist`` builds, with extras the
    wheel declares."""
    (line,) = [line for line in quickstart_block("install").splitlines() if line.startswith("pip")]
    wheel, extras = re.search(r'"dist/([^"\[]+)\[([^\]]+)\]"', line).groups()  # type: ignore[union-attr]
    assert wheel == venv.wheel.name
    with zipfile.ZipFile(venv.wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        declared = Parser().parsestr(archive.read(metadata).decode()).get_all("Provides-Extra")
    assert set(extras.split(",")) <= set(declared or []), f"the wheel declares {declared}"


# The project ---------------------------------------------------------------------------


@dataclass
class Project:
    venv: Venv
    directory: Path
    backend: str
    #: The logged-in users' cookies, kept across the servers of one project.
    sessions: dict[str, dict[str, str]] = field(default_factory=dict)

    def manage(self, *args: str, **env: str) -> str:
        return self.venv.run("manage.py", *args, cwd=self.directory, env=clean_environment(**env))


def write_blocks(directory: Path, postgres: dict[str, str] | None) -> None:
    for target, code in marked_blocks(QUICKSTART):
        path, _, how = target.partition(" ")
        if path in ("install", "sh"):
            continue
        destination = directory / path
        if how == "append":
            with destination.open("a") as f:
                f.write("\n\n" + code)
        elif how == "append postgres":
            if postgres is not None:
                with destination.open("a") as f:
                    f.write("\n\n" + rewritten(code, postgres))
        else:
            assert not how, f"unknown block {target!r}"
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(code)


def rewritten(code: str, values: dict[str, str]) -> str:
    """The PostgreSQL block with the test's connection values (each found once)."""
    for key, value in values.items():
        pattern = r"redis://127\.0\.0\.1:6379/0" if key == "REDIS" else rf'"{key}": "[^"]*"'
        replacement = value if key == "REDIS" else f'"{key}": "{value}"'
        code, count = re.subn(pattern, replacement.replace("\\", "\\\\"), code)
        assert count == 1, f"the PostgreSQL block has {count} {key}"
    return code


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def project(
    request: pytest.FixtureRequest, venv: Venv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    """``startproject mysite`` and ``startapp chat``, the page's blocks in, migrated,
    checked, with its users: alice (``createsuperuser``) and four more."""
    root = tmp_path_factory.mktemp(f"mysite-{request.param}")
    commands = shell_text()
    for command in [
        "django-admin startproject mysite",
        "python manage.py startapp chat",
        "python manage.py makemigrations chat",
        "python manage.py migrate",
        "python manage.py createsuperuser",
        "uvicorn mysite.asgi:application",
        "daphne mysite.asgi:application",
    ]:
        assert command in commands, f"the page does not say {command!r}"
    venv.run("-m", "django", "startproject", "mysite", cwd=root)
    project = Project(venv, root / "mysite", request.param)
    project.manage("startapp", "chat")

    database = None
    postgres = None
    if request.param == "postgres":
        import psycopg

        url = urlsplit(os.environ["DATABASE_URL"])
        database = f"{url.path.lstrip('/')}_quickstart_{uuid.uuid4().hex[:8]}"
        admin = url._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        postgres = {
            "NAME": database,
            "USER": url.username or "postgres",
            "PASSWORD": url.password or "",
            "HOST": url.hostname or "127.0.0.1",
            "PORT": str(url.port or 5432),
            "REDIS": os.environ["REDIS_URL"],
        }
    try:
        write_blocks(project.directory, postgres)
        project.manage("makemigrations", "chat")
        project.manage("migrate", "--no-input")
        checked = project.manage("check", "--fail-level", "WARNING")
        assert "System check identified no issues" in checked, checked
        project.manage(
            "createsuperuser",
            "--no-input",
            DJANGO_SUPERUSER_USERNAME="alice",
            DJANGO_SUPERUSER_EMAIL="alice@example.com",
            DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        )
        project.manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n"
            f"for name in {DRIVERS!r}: User.objects.create_user(name, password={PASSWORD!r})",
        )
        yield project
    finally:
        if database is not None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


#: The users of the concurrent drives, two each (under MAX_LIVE_STREAMS_PER_USER, 3).
DRIVERS = ["bob", "carol", "dave", "erin"]


# The servers ---------------------------------------------------------------------------


class SteppedOpenAI(FakeOpenAI):
    """The fake model; while ``stepping``, it holds each piece after the first until
    the test lets it go (``step()``): a piece the driver reads before the next is let
    go was streamed on its own."""

    def __init__(self, pieces: list[str], **kwargs: Any) -> None:
        super().__init__(pieces, **kwargs)
        self.stepping = False
        self.permits = asyncio.Semaphore(0)

    async def before_event(self, index: int) -> None:
        if self.stepping and 0 < index < len(self.pieces):
            await self.permits.acquire()

    def step(self) -> None:
        self.loop.call_soon_threadsafe(self.permits.release)


class ProjectDaphne(Daphne):
    """``daphne mysite.asgi:application``, as the page says, from the project's
    virtualenv, in its directory."""

    def __init__(self, project: Project, environ: dict[str, str]) -> None:
        self.python, self.cwd, self.environ = str(project.venv.python), project.directory, environ
        super().__init__("unused", application="mysite.asgi:application")

    def environment(self, database_url: str, env: dict[str, str]) -> dict[str, str]:
        return self.environ


class ProjectUvicorn(ProjectDaphne):
    """``uvicorn mysite.asgi:application`` (no lifespan flag, as the page says)."""

    name = "uvicorn"

    def arguments(self) -> list[str]:
        return ["uvicorn", "--host", "127.0.0.1", "--port", str(self.port)]


@dataclass
class Site:
    project: Project
    server: Daphne
    model: SteppedOpenAI
    #: Every HTTP answer the test got: (status, method, path).
    answers: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, cookies: dict[str, str] | None = None) -> httpx.Client:
        def record(response: httpx.Response) -> None:
            request = response.request
            self.answers.append((response.status_code, request.method, request.url.path))

        return httpx.Client(
            base_url=self.url,
            cookies=cookies,
            timeout=30,
            event_hooks={"response": [record]},
        )

    def visitor(self, username: str | None = None) -> Visitor:
        """A browser's session: logged in through the login form (once per project:
        the session is in the database), or anonymous."""
        visitor = Visitor(self.client(self.project.sessions.get(username or "")))
        if username is not None and username not in self.project.sessions:
            visitor.login(username)
            self.project.sessions[username] = dict(visitor.http.cookies)
        elif username is None:
            visitor.http.get("/accounts/login/")  # a CSRF cookie, as any form gives
        return visitor

    def assert_no_server_errors(self) -> None:
        failed = [answer for answer in self.answers if answer[0] >= 500]
        assert not failed, f"server errors: {failed}"
        log = self.server.output()
        for sign in ("Traceback", "Internal Server Error"):
            assert sign not in log, f"{self.server.name} logged:\n{log}"


class Visitor:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def headers(self) -> dict[str, str]:
        return {"X-CSRFToken": self.http.cookies.get("csrftoken") or ""}

    def login(self, username: str) -> None:
        form = self.http.get("/accounts/login/", params={"next": "/"})
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token is not None, form.text
        response = self.http.post(
            "/accounts/login/?next=/",
            data={
                "username": username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": token[1],
                "next": "/",
            },
        )
        assert response.status_code == 302 and response.headers["location"] == "/", response.text

    def ask(self, prompt: str | None, *, csrf: bool = True) -> httpx.Response:
        data = {} if prompt is None else {"prompt": prompt}
        return self.http.post("/ask/", data=data, headers=self.headers() if csrf else {})

    def asked(self, prompt: str) -> dict[str, Any]:
        response = self.ask(prompt)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def reply(self, message_id: int | str, *, csrf: bool = True) -> httpx.Response:
        return self.http.post(
            f"/messages/{message_id}/reply/", headers=self.headers() if csrf else {}
        )

    def body(self, stream_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/streams/{stream_id}/")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def finished(self, stream_id: str, patience: float = 30) -> dict[str, Any]:
        """The stream's body once it has ended (its last commit may follow the end of
        the drive's response)."""
        deadline = time.monotonic() + patience
        while (body := self.body(stream_id))["status"] in ("pending", "streaming"):
            assert time.monotonic() < deadline, f"still {body['status']} after {patience} s"
            time.sleep(0.05)
        return body

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())


@pytest.fixture(params=["uvicorn", "daphne"])
def site(request: pytest.FixtureRequest, project: Project) -> Iterator[Site]:
    """The project served by a real uvicorn or daphne from its virtualenv, its model
    the fake, as OPENAI_API_KEY and OPENAI_BASE_URL say."""
    model = SteppedOpenAI(PIECES, delay=0.02)
    kind = ProjectUvicorn if request.param == "uvicorn" else ProjectDaphne
    try:
        server = kind(
            project,
            clean_environment(OPENAI_API_KEY="sk-quickstart", OPENAI_BASE_URL=model.base_url),
        )
        try:
            yield Site(project, server, model)
        finally:
            server.stop()
    finally:
        model.close()


def json_error(response: httpx.Response, status: int) -> str:
    """The error of a JSON error answer, asserting its status and kind."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error
    return error


async def watch(base_url: str, stream_id: str, cookie: str, connected: threading.Event) -> dict:
    """A viewer on ``ws/streams/<id>/`` with the user's session, to the close."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    text, statuses = "", []
    url = base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/"
    async with connect(
        url, origin=Origin(base_url), additional_headers={"Cookie": cookie}, proxy=None
    ) as ws:
        connected.set()
        async for raw in closing(ws):
            message = json.loads(raw)
            if message["type"] == "text":
                assert message["offset"] == len(text), "a gap or an overlap"
                text += message["text"]
            else:
                statuses.append(message["status"])
        return {"text": text, "statuses": statuses, "code": ws.close_code}


# The checks ----------------------------------------------------------------------------


def test_the_quickstart_streams_to_its_owner_and_a_viewer(site: Site):
    alice = site.visitor("alice")
    message = alice.asked("Does it stream?")
    assert set(message) == {"id", "stream_id", "url"}
    assert alice.body(message["stream_id"])["status"] == "pending"

    # A viewer in another tab follows the stream from before its first token.
    connected = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        viewer = pool.submit(
            asyncio.run, watch(site.url, message["stream_id"], alice.cookie_header(), connected)
        )
        assert connected.wait(15), "the viewer's websocket did not open"
        site.model.stepping = True
        reads: list[str] = []
        with alice.http.stream(
            "POST", f"/messages/{message['id']}/reply/", headers=alice.headers()
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            for chunk in response.iter_raw():
                reads.append(chunk.decode())
                if len(reads) < len(PIECES):
                    site.model.step()  # the next piece is made only now
        site.model.stepping = False
        watched = viewer.result(30)
    # Each piece reached the browser on its own, before the model made the next.
    assert reads == PIECES
    assert watched == {"text": ANSWER, "statuses": ["pending", "streaming", "done"], "code": 1000}
    assert site.model.requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "Does it stream?"}
    ]
    body = alice.finished(message["stream_id"])
    assert (body["status"], body["text"]) == ("done", ANSWER)
    assert f'href="{message["url"]}"' in alice.http.get("/").text, "not on the index"
    page = alice.http.get(message["url"])
    assert page.status_code == 200 and ANSWER in page.text and 'status="done"' in page.text
    site.assert_no_server_errors()


def test_the_quickstart_serves_its_streams_over_durable_streams(site: Site):
    alice = site.visitor("alice")
    message = alice.asked("Over the open protocol?")
    assert alice.reply(message["id"]).status_code == 200
    alice.finished(message["stream_id"])
    url = f"/v1/stream/{message['stream_id']}"
    # Its owner reads it (the default policy), as the protocol's clients read: to the close.
    read = alice.http.get(url, params={"offset": "-1"})
    assert read.status_code == 200, read.text
    assert (read.text, read.headers["Stream-Closed"]) == (ANSWER, "true")
    assert read.headers["Cache-Control"].startswith("private, ")  # hers alone
    end = alice.http.get(url, params={"offset": read.headers["Stream-Next-Offset"]})
    assert (end.content, end.headers["Stream-Closed"]) == (b"", "true")
    # Anyone else is refused, and nobody writes over the protocol by default.
    assert json_error(site.visitor().http.get(url), 403)
    refused = alice.http.post(
        url, content=b"more", headers={**alice.headers(), "Content-Type": "text/plain"}
    )
    assert refused.status_code == 405
    site.assert_no_server_errors()


def test_the_quickstart_refuses_clearly(site: Site):
    alice = site.visitor("alice")
    anonymous = site.visitor()
    message = alice.asked("Who may drive this?")

    # Anonymous: the page sends them to log in; asking and driving are 403.
    page = anonymous.http.get("/")
    assert page.status_code == 302 and page.headers["location"] == "/accounts/login/?next=/"
    json_error(anonymous.ask("Let me in"), 403)
    json_error(anonymous.reply(message["id"]), 403)
    # Bad input: a missing or empty prompt.
    assert "prompt" in json_error(alice.ask(None), 400)
    assert "prompt" in json_error(alice.ask("   "), 400)
    # Unknown messages, and another user's.
    json_error(alice.reply(999_999), 404)
    json_error(alice.reply(10**20), 404)
    assert alice.http.get("/messages/999999/").status_code == 404
    json_error(site.visitor("bob").reply(message["id"]), 404)
    # A GET does not drive.
    json_error(alice.http.get(f"/messages/{message['id']}/reply/"), 405)
    # Without the CSRF token: a JSON 403, on the app's views as on the project's.
    json_error(alice.ask("No token", csrf=False), 403)
    json_error(alice.reply(message["id"], csrf=False), 403)
    assert alice.body(message["stream_id"])["status"] == "pending", "something drove it"
    # Once: a second drive is refused.
    assert alice.reply(message["id"]).text == ANSWER
    json_error(alice.reply(message["id"]), 409)
    site.assert_no_server_errors()


def test_eight_concurrent_drives_all_end_done(site: Site):
    users = [site.visitor(name) for name in DRIVERS]
    messages = [(user, user.asked(f"Question {i}")) for i in range(2) for user in users]

    def drive(user: Visitor, message: dict[str, Any]) -> tuple[int, str]:
        with site.client(dict(user.http.cookies)) as http:
            response = http.post(f"/messages/{message['id']}/reply/", headers=user.headers())
            return response.status_code, response.text

    with ThreadPoolExecutor(len(messages)) as pool:
        drives = list(pool.map(lambda m: drive(*m), messages))
    assert drives == [(200, ANSWER)] * 8
    bodies = [user.finished(message["stream_id"]) for user, message in messages]
    assert [(b["status"], b["text"]) for b in bodies] == [("done", ANSWER)] * 8
    site.assert_no_server_errors()


@pytest.mark.browser
def test_the_pages_follow_in_chromium(site: Site, chromium: Any):
    context = chromium.new_context(base_url=site.url)
    page = context.new_page()
    answers: list[tuple[int, str]] = []
    page.on("response", lambda r: answers.append((r.status, urlsplit(r.url).path)))
    page.goto("/")
    assert urlsplit(page.url).path == "/accounts/login/"
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")
    page.fill("textarea[name=prompt]", "Hello from Chromium")
    page.click("button[type=submit]")
    page.wait_for_url("**/messages/*/")
    # The element drives the pending stream and shows the answer as it comes.
    page.locator("stream-text[status=done]").wait_for(timeout=30_000)
    assert page.eval_on_selector("stream-text", "e => e.text") == ANSWER
    assert page.inner_text("stream-text .stream-text-body").strip() == ANSWER
    assert page.inner_text("stream-text .stream-text-status").strip() == "done"
    assert (200, "/static/streaming_app/stream-text.js") in answers
    # A reload shows it from the database.
    page.reload()
    page.locator("stream-text[status=done]").wait_for(timeout=10_000)
    assert page.inner_text("stream-text .stream-text-body").strip() == ANSWER
    assert not [a for a in answers if a[0] >= 500], answers
    context.close()
    site.assert_no_server_errors()
