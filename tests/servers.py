"""Real servers for the tests: daphne processes, a database for them, an OpenAI stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 20.0, process: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Ask it to stop (SIGTERM); kill it if it is still there 10 s later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def e2e_database(base_url: str) -> Iterator[str]:
    """A fresh, migrated database like ``base_url`` (its own file or Postgres database)."""
    if base_url.startswith(("postgres://", "postgresql://")):
        import psycopg

        name = f"streaming_app_e2e_{uuid.uuid4().hex[:12]}"
        prefix, _, _ = base_url.rpartition("/")
        admin_url = f"{prefix}/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"{prefix}/{name}"
        try:
            migrate(url)
            yield url
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        directory = tempfile.mkdtemp(prefix="streaming_app_e2e_")
        url = f"sqlite:///{directory}/db.sqlite3"
        try:
            migrate(url)
            yield url
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "DJANGO_", "PYTEST", "REDIS_URL", "DATABASE_URL", "E2E_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="tests.e2e_settings",
        DATABASE_URL=database_url,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        env=server_env(database_url),
        check=True,
        timeout=120,
    )


class Daphne:
    """One real daphne process serving the example project on a free port."""

    name = "daphne"
    #: The interpreter that runs the server, in this directory (a subclass may serve
    #: another project from another virtualenv).
    python: str = sys.executable
    cwd: Path = ROOT

    def __init__(
        self,
        database_url: str,
        *,
        application: str = "example_project.asgi:application",
        options: Sequence[str] = (),
        **env: str,
    ) -> None:
        """``options``: more command-line flags for the server (its proxy settings, say)."""
        self.port = free_port()
        # Open for the server's lifetime; stop() closes it.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"{self.name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [self.python, "-m", *self.arguments(), *options, application],
            cwd=self.cwd,
            env=self.environment(database_url, env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, process=self.process)
        except RuntimeError as exc:  # it exited: say why
            raise RuntimeError(f"{exc}:\n{self.output()}") from None

    def arguments(self) -> list[str]:
        return ["daphne", "-b", "127.0.0.1", "-p", str(self.port)]

    def environment(self, database_url: str, env: dict[str, str]) -> dict[str, str]:
        """The server's environment: the example's, on ``database_url``, with ``env``."""
        return server_env(database_url, **env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
        os.unlink(self.log.name)


class Uvicorn(Daphne):
    """The same, served by uvicorn (with its lifespan protocol: the example closes its
    model client at shutdown)."""

    name = "uvicorn"

    def arguments(self) -> list[str]:
        return ["uvicorn", "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "on"]


class Browser:
    """A browser's session against the example: cookies, CSRF token, the chat API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)
        page = self.http.get("/")
        assert page.status_code == 200, page.text

    def headers(self) -> dict[str, str]:
        # login() rotates the token, so it is read afresh for every request.
        return {"X-CSRFToken": self.http.cookies.get("csrftoken") or ""}

    def post_json(self, path: str, data: Any) -> httpx.Response:
        return self.http.post(path, content=json.dumps(data), headers=self.headers())

    def new_chat(self, prompt: str) -> dict[str, Any]:
        response = self.post_json("/api/chats/", {"prompt": prompt})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def drive(self, chat: dict[str, Any], base_url: str | None = None) -> httpx.Response:
        """Drive the chat's newest reply, reading the whole response."""
        with httpx.Client(
            base_url=base_url or self.base_url, cookies=self.http.cookies, timeout=60
        ) as c:
            return c.post(chat["drive_url"], headers=self.headers())

    def body(self, stream_id: str, offset: int = 0) -> dict[str, Any]:
        response = self.http.get(f"/api/streams/{stream_id}/", params={"offset": offset})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_finished(self, stream_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = self.body(stream_id)
            if body["status"] not in ("pending", "streaming"):
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream_id} still {body['status']} after {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        self.http.close()


class FakeOpenAI:
    """An OpenAI-compatible Chat Completions server on loopback, streaming ``pieces``
    ``delay`` seconds apart (asyncio, in a thread of its own: cheap enough for a
    hundred streams at once not to be anyone's bottleneck).

    It records every request body, so that a test can check what the model was sent,
    and honours a request's ``max_completion_tokens`` (or ``max_tokens``) as a real
    model does, a piece a token: past it the answer stops, with finish reason
    ``length``.
    """

    #: The paths it streams on (any other answers 404).
    paths: tuple[str, ...] = ("/v1/chat/completions",)

    def __init__(
        self,
        pieces: list[str],
        *,
        delay: float = 0.0,
        status: int = 200,
        fail_after: int | None = None,
        failure: str = "error event",
        usage: dict[str, int] | None = None,
    ) -> None:
        """``status``: answer every request with this HTTP status instead (429, say).
        ``fail_after``: after that many pieces, send an error event (``failure`` "error
        event") or drop the connection ("drop"). ``usage``: the tokens reported in a last
        chunk (``prompt_tokens``, ``completion_tokens``, ``total_tokens``), as OpenAI
        does for ``stream_options.include_usage``."""
        self.pieces = pieces
        self.usage = usage
        self.delay = delay
        self.status = status
        self.fail_after = fail_after
        self.failure = failure
        self.requests: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        started.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one request after another
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = json.loads(await reader.readexactly(int(headers.get("content-length", 0))))
                self.requests.append({"path": path, "body": body})
                if method != "POST" or path not in self.paths or not body.get("stream"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                if self.status != 200:
                    error = json.dumps({"error": {"message": "refused by the fake"}}).encode()
                    writer.write(
                        b"HTTP/1.1 %d Refused\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (self.status, len(error), error)
                    )
                    await writer.drain()
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                started = asyncio.get_running_loop().time()
                cap = body.get("max_completion_tokens") or body.get("max_tokens")
                events = self.events(body.get("model", "test"), max_tokens=cap)
                for i, event in enumerate(events):
                    await self.before_event(i)
                    if i == self.fail_after:
                        if self.failure == "drop":
                            writer.transport.abort()
                            return
                        event = 'data: {"error": {"message": "overloaded at 10.0.0.9"}}\n\n'
                    data = event.encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                    if self.delay:  # on a schedule: ``delay`` apart on average
                        wait = started + (i + 1) * self.delay - asyncio.get_running_loop().time()
                        await asyncio.sleep(max(0.0, wait))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def before_event(self, index: int) -> None:
        """Awaited before the answer's event ``index`` is sent: a subclass may hold the
        model back there."""

    def events(self, model: str, max_tokens: int | None = None) -> Iterator[str]:
        pieces = self.pieces if max_tokens is None else self.pieces[:max_tokens]
        finish = "stop" if len(pieces) == len(self.pieces) else "length"
        for i, piece in enumerate([*pieces, None]):
            delta: dict[str, Any] = {"content": piece} if piece is not None else {}
            if i == 0:
                delta["role"] = "assistant"
            choice = {
                "index": 0,
                "delta": delta,
                "finish_reason": None if piece is not None else finish,
            }
            chunk = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [choice],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
        if self.usage is not None:
            last = {"id": "chatcmpl-test", "model": model, "choices": [], "usage": self.usage}
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ScriptedOpenAI(FakeOpenAI):
    """A FakeOpenAI that sends a script on Chat Completions and the Responses API: the
    body's text in the ``chunks`` given, each written on its own (``delay`` apart), so
    that a test chooses where the network splits the events. It counts the connections
    that have ended (``disconnects``), to see a client close one."""

    paths = ("/v1/chat/completions", "/v1/responses")

    def __init__(self, chunks: list[str], **kwargs: Any) -> None:
        self.chunks = chunks
        self.disconnects = 0
        super().__init__([], **kwargs)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super().handle(reader, writer)
        finally:
            self.disconnects += 1

    def events(self, model: str, max_tokens: int | None = None) -> Iterator[str]:
        return iter(self.chunks)


async def closing(ws: Any) -> AsyncIterator[Any]:
    """A websocket's messages until it closes, whatever the close code."""
    from websockets.exceptions import ConnectionClosedError

    try:
        async for message in ws:
            yield message
    except ConnectionClosedError:
        pass


async def ws_watch(
    base_url: str,
    stream_id: str,
    *,
    offset: int = 0,
    origin: str | None = None,
    arrivals: list[tuple[float, int]] | None = None,
    on_status: Callable[[list[str]], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Watch a stream over a real websocket to its close, as a browser client would:
    append a text message when its offset is the text's length. Records the payload
    bytes received and when each piece of text arrived (in ``arrivals`` if given, to
    follow it from another thread); ``on_status`` is called with the statuses so far
    as each comes. ``options`` go to websockets' ``connect`` (``local_addr``, say)."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    url = base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/?offset={offset}"
    text, statuses, payload = "", [], 0
    arrivals = [] if arrivals is None else arrivals
    async with connect(
        url,
        origin=Origin(origin or base_url),
        proxy=None,
        compression=None,
        **options,
    ) as ws:
        async for raw in closing(ws):
            payload += len(raw.encode() if isinstance(raw, str) else raw)
            message = json.loads(raw)
            if message["type"] == "text":
                assert message["offset"] == offset + len(text), "overlap or gap"
                text += message["text"]
                arrivals.append((time.monotonic(), offset + len(text)))
            else:
                statuses.append(message["status"])
                if on_status is not None:
                    on_status(statuses)
        code = ws.close_code
    return {
        "text": text,
        "statuses": statuses,
        "code": code,
        "arrivals": arrivals,
        "payload": payload,
    }


async def sse_messages(chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The messages of a Server-Sent Events body (its text, as it arrives)."""
    buffer = ""
    async for chunk in chunks:
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
            if data:
                yield json.loads(data[0])


async def sse_watch(base_url: str, stream_id: str) -> dict[str, Any]:
    """Follow a stream's Server-Sent Events to their end."""
    text, statuses, arrivals, payload = "", [], [], 0

    async def counted(response: httpx.Response) -> AsyncIterator[str]:
        nonlocal payload
        async for chunk in response.aiter_text():
            payload += len(chunk.encode())
            yield chunk

    async with (
        httpx.AsyncClient(base_url=base_url, timeout=60) as http,
        http.stream("GET", f"/api/streams/{stream_id}/events/") as response,
    ):
        assert response.status_code == 200
        async for message in sse_messages(counted(response)):
            if message["type"] == "text":
                assert message["offset"] == len(text), "overlap or gap"
                text += message["text"]
                arrivals.append((time.monotonic(), len(text)))
            else:
                statuses.append(message["status"])
    return {"text": text, "statuses": statuses, "arrivals": arrivals, "payload": payload}


def drive_timed(
    browser: Browser, chat: dict[str, Any], base_url: str
) -> tuple[str, list[tuple[float, int]]]:
    """Drive a chat's reply; the text and when each length of it reached the driver."""
    text, arrivals = b"", []
    with (
        httpx.Client(base_url=base_url, cookies=browser.http.cookies, timeout=60) as http,
        http.stream("POST", chat["drive_url"], headers=browser.headers()) as response,
    ):
        assert response.status_code == 200, response.read()
        for data in response.iter_raw():
            text += data
            arrivals.append((time.monotonic(), len(text.decode(errors="ignore"))))
    return text.decode(), arrivals


def lag_percentiles(
    driver: list[tuple[float, int]], viewer: list[tuple[float, int]]
) -> list[float]:
    """For each length the driver reached, how much later a viewer reached it; sorted."""
    lags = []
    for at, length in driver:
        seen = next((t for t, n in viewer if n >= length), None)
        if seen is not None:
            lags.append(seen - at)
    return sorted(lags)


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server answers nothing, yet its connections stay open and new
        ones are accepted (by the kernel): a partition that refuses nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self) -> Any:
        """A client of this server, for the test's own looks (not while paused)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10)

    def unread_from(self, pid: int) -> int:
        """Bytes that process ``pid`` has sent to this server and the server has not
        read: while it is paused, calls of that process waiting for an answer."""
        sockets = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
        rows = []
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
            rows.append((local, remote, int(fields[4].split(":")[1], 16), fields[9]))
        theirs = {
            local for local, remote, _, inode in rows if remote == self.port and inode in sockets
        }
        return sum(
            unread for local, remote, unread, _ in rows if local == self.port and remote in theirs
        )


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl) on a free port."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's server binaries are not installed")
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="streaming_app_pg_"))
        self.data = self.dir / "data"
        # initdb and postgres refuse to run as root: run them as the postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "app")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/app"

    def run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.dir / "log"),
            "start",
        )

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


async def ws_follow(base_url: str, stream_id: str, *, patience: float = 60) -> dict[str, Any]:
    """Watch a stream as the JavaScript client's watch() does: when the connection drops
    (or the server says 4503, try again), reconnect and resume from the text's length,
    until the stream ends."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    text, statuses, reconnects = "", [], 0
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        url = base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/?offset={len(text)}"
        code: int | str | None = None
        try:
            async with connect(url, origin=Origin(base_url), proxy=None, open_timeout=5) as ws:
                async for raw in closing(ws):
                    message = json.loads(raw)
                    if message["type"] == "text":
                        # A resumed connection starts where the text ends.
                        assert message["offset"] == len(text), "overlap or gap"
                        text += message["text"]
                    else:
                        statuses.append(message["status"])
                code = ws.close_code
        except (OSError, TimeoutError) as exc:
            code = repr(exc)
        if code == 1000 or (isinstance(code, int) and 4400 <= code < 4500):
            return {"text": text, "statuses": statuses, "code": code, "reconnects": reconnects}
        reconnects += 1
        await asyncio.sleep(0.2)
    raise TimeoutError(f"stream {stream_id} did not end for a viewer within {patience}s")


def documented_block(heading: str = "## Proxies") -> str:
    """The nginx block of docs/deployment.md's section ``heading``."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split(heading + "\n", 1)[1]
    found = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert found, f"docs/deployment.md's {heading!r} has no nginx block"
    return found.group(1)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the documented nginx block should have {old!r} once"
    return text.replace(old, new)


NGINX = os.environ.get("NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """Debian's nginx in the foreground, with a prefix, logs and temp paths of its own,
    serving a documented block (docs/deployment.md's section ``heading``) in front of
    ``upstream_port``: its upstream and listen addresses replaced, then what
    :meth:`adapt` changes."""

    heading = "## Proxies"

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="streaming_app_nginx_"))
        self.dir.chmod(0o777)  # nginx's workers run as nobody when the test runs as root
        block = documented_block(self.heading)
        block = replace_once(block, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
        block = replace_once(block, "listen 80;", f"listen 127.0.0.1:{self.port};")
        block = self.adapt(block)
        temp = "\n".join(
            f"    {kind}_temp_path {self.dir}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = self.dir / "nginx.conf"
        config.write_text(
            f"worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log;\n"
            "worker_rlimit_nofile 16384;\nevents { worker_connections 8192; }\n"
            f"http {{\n    access_log off;\n{temp}\n{block}\n}}\n"
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(config), "-e", str(self.dir / "error.log")]
            + ["-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, process=self.process)
        except BaseException:
            self.stop()
            raise

    def adapt(self, block: str) -> str:
        return block

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def errors(self) -> str:
        log = self.dir / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
