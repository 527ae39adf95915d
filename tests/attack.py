"""The attack of issue 17, replayed against a real server process of the example.

One attacker client, from 127.0.0.1, as fast as it can for a bounded number of
requests: cookie-less ``POST /api/chats/`` (each mints a guest; it keeps the cookie for
``CHATS_PER_GUEST`` chats, then drops it), drives each chat and hangs up after the first
bytes (a drive goes on after its client hangs up), and every third chat asks
``/api/ai/chat`` instead (a new chat and its drive in one request). The model is a
:class:`CountingOpenAI`, which counts the calls it receives and holds each attacker's
reply open after its first piece until the attack is over, as a long answer of a real
model would (up to ``MAX_DURATION``): the drive slots it takes stay taken.

Meanwhile (once the attacker has sent ``legit_after`` requests, so that it comes while
the attack is on, whatever the machine's speed) a legitimate visitor from 127.0.0.2
starts a chat, a second client of it watches the reply over a websocket, and it drives
the reply to the end.

The viewer half: the attacker mints guests (each a new session) and opens as many
websockets as each is let on one live reply of the visitor's; then a viewer from
127.0.0.2 connects and reads that reply to its end.

``python -m tests.attack`` runs it on a fresh database (``DATABASE_URL``, SQLite by
default) against uvicorn and prints the report as JSON; a test calls :func:`replay`
with its own database. Each half runs against a uvicorn process of its own. Every wait
has a bound; every socket is closed; the servers are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from .servers import FakeOpenAI, Uvicorn, e2e_database, ws_watch

ATTACKER = "127.0.0.1"
VISITOR = "127.0.0.2"
#: What the attacker's prompts say; the model holds the replies to them.
MARK = "[attack]"
#: What the visitor's prompt says in the viewer half: its reply is held too.
HOLD = "[hold]"
CHATS_PER_GUEST = 3
#: The model's reply to anyone: the text a whole drive must be.
PIECES = [f"Word {i} of the model's reply. " for i in range(20)]
MODEL_TEXT = "".join(PIECES)

_request: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("request")


class CountingOpenAI(FakeOpenAI):
    """A FakeOpenAI that counts the replies it starts, how many are open at once (the
    drive slots they hold) and the most ever open, and holds a reply after its first
    piece while the last user message says ``hold`` and :meth:`release` was not called
    for it (at most ``patience`` seconds)."""

    def __init__(self, pieces: list[str], *, patience: float = 60, **kwargs: Any) -> None:
        self.patience = patience
        self.calls: Counter[str] = Counter()  # replies started, by who asked
        self.open = 0
        self.peak = 0
        self._released: dict[str, asyncio.Event] = {}
        super().__init__(pieces, **kwargs)

    @staticmethod
    def asker(body: dict[str, Any]) -> str:
        messages = body.get("messages") or [{}]
        content = str(messages[-1].get("content", ""))
        return "attacker" if MARK in content else "visitor"

    def _event(self, name: str) -> asyncio.Event:
        return self._released.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        """Let the held replies to prompts that say ``name`` go on (from any thread)."""
        self.loop.call_soon_threadsafe(self._event(name).set)

    def events(self, model: str, max_tokens: int | None = None) -> Iterator[str]:
        # handle() records the body, then asks for its events, with no await between:
        # the last body recorded is this reply's. (The handler is a task of its own, so
        # the context variable is this reply's too.)
        body = self.requests[-1]["body"]
        _request.set(body)
        self.calls[self.asker(body)] += 1
        return self._counted(super().events(model, max_tokens))

    def _counted(self, events: Iterator[str]) -> Iterator[str]:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            yield from events
        finally:  # the end of the reply, or its connection dropped
            self.open -= 1

    async def before_event(self, index: int) -> None:
        if index != 1:
            return
        content = str((_request.get().get("messages") or [{}])[-1].get("content", ""))
        for name in (MARK, HOLD):
            if name in content:
                with contextlib.suppress(TimeoutError):  # bounded: then it goes on
                    await asyncio.wait_for(self._event(name).wait(), self.patience)
                return


class Arrivals(list[tuple[float, int]]):
    """ws_watch's record of when text arrived, which says when the first did."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()

    def append(self, arrival: tuple[float, int]) -> None:
        super().append(arrival)
        self.first.set()


def client(base_url: str, address: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        transport=httpx.AsyncHTTPTransport(local_address=address),
        timeout=httpx.Timeout(20),
        **kwargs,
    )


def csrf(http: httpx.AsyncClient) -> dict[str, str]:
    # login() rotates the token: read it afresh for every request.
    return {"X-CSRFToken": http.cookies.get("csrftoken") or "", "Content-Type": "application/json"}


async def first_bytes(http: httpx.AsyncClient, path: str, body: Any = None) -> tuple[int, bool]:
    """POST, read the first bytes of the answer, hang up: its status, and whether a
    Retry-After came with a 429/503."""
    content = json.dumps(body) if body is not None else None
    async with http.stream("POST", path, content=content, headers=csrf(http)) as response:
        async for _ in response.aiter_raw():
            break
        return response.status_code, "retry-after" in response.headers


class Attacker:
    """The attacker's tallies: answers by request kind and code."""

    def __init__(self, base_url: str, budget: int, seconds: float, workers: int) -> None:
        self.base_url, self.budget, self.seconds, self.workers = base_url, budget, seconds, workers
        self.codes: dict[str, Counter[int]] = {
            "chat": Counter(),
            "drive": Counter(),
            "ai": Counter(),
        }
        self.sent = 0
        self.without_retry_after = 0
        self.errors: Counter[str] = Counter()
        self.sessions: list[str] = []  # the guests' session cookies, for the viewer half
        self.guests = 0
        self.milestones: dict[int, asyncio.Event] = {}
        self.elapsed = 0.0

    def at(self, sent: int) -> asyncio.Event:
        """Set once the attacker has sent ``sent`` requests (or stopped)."""
        return self.milestones.setdefault(sent, asyncio.Event())

    def count(self, kind: str, code: int, retry_after: bool = True) -> None:
        self.codes[kind][code] += 1
        if code in (429, 503) and not retry_after:
            self.without_retry_after += 1

    def take(self) -> bool:
        if self.sent >= self.budget or time.monotonic() > self.deadline:
            return False
        self.sent += 1
        for sent, event in self.milestones.items():
            if self.sent >= sent:
                event.set()
        return True

    async def run(self) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.seconds
        try:
            await asyncio.gather(*(self.worker(n) for n in range(self.workers)))
        finally:
            self.elapsed = time.monotonic() - self.started
            for event in self.milestones.values():
                event.set()

    async def worker(self, number: int) -> None:
        async with client(self.base_url, ATTACKER) as http:
            if (await http.get("/")).status_code != 200:
                self.errors["the page"] += 1
                return
            chats = 0
            while True:
                if chats % CHATS_PER_GUEST == 0:
                    # Drop the guest: the next post mints a new one.
                    session = http.cookies.get("sessionid")
                    if session:
                        self.sessions.append(session)
                    http.cookies.delete("sessionid")
                chats += 1
                prompt = f"{MARK} worker {number}, chat {chats}: " + "x" * 200
                anonymous = not http.cookies.get("sessionid")
                try:
                    if chats % 3 == 0:
                        if not self.take():
                            return
                        body = {
                            "id": str(uuid.uuid4()),
                            "trigger": "submit-message",
                            "messages": [
                                {
                                    "id": "m1",
                                    "role": "user",
                                    "parts": [{"type": "text", "text": prompt}],
                                }
                            ],
                        }
                        code, retry_after = await first_bytes(http, "/api/ai/chat", body)
                        self.count("ai", code, retry_after)
                        self.guests += anonymous and bool(http.cookies.get("sessionid"))
                        continue
                    if not self.take():
                        return
                    response = await http.post(
                        "/api/chats/", content=json.dumps({"prompt": prompt}), headers=csrf(http)
                    )
                    self.count("chat", response.status_code, "retry-after" in response.headers)
                    self.guests += anonymous and bool(http.cookies.get("sessionid"))
                    if response.status_code != 201 or not self.take():
                        continue
                    self.count("drive", *await first_bytes(http, response.json()["drive_url"]))
                except httpx.HTTPError as exc:
                    self.errors[type(exc).__name__] += 1

    def report(self) -> dict[str, Any]:
        drives = self.codes["drive"] + self.codes["ai"]
        return {
            "requests": self.sent,
            "seconds": round(self.elapsed, 2),
            "codes": {kind: dict(sorted(c.items())) for kind, c in self.codes.items()},
            "all_codes": dict(sorted((self.codes["chat"] + drives).items())),
            "guests_minted": self.guests,
            "drives_started": drives[200],
            "refusals_without_retry_after": self.without_retry_after,
            "errors": dict(self.errors),
        }


async def watch(
    base_url: str,
    stream_id: str,
    *,
    address: str,
    cookie: str | None = None,
    patience: float,
    **options: Any,
) -> dict[str, Any]:
    """Watch a stream over a websocket from ``address`` to its close (at most
    ``patience`` seconds): its text, statuses and close code (``options``: ws_watch's)."""
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else None
    try:
        async with asyncio.timeout(patience):
            return await ws_watch(
                base_url,
                stream_id,
                local_addr=(address, 0),
                additional_headers=headers,
                open_timeout=10,
                **options,
            )
    except (OSError, TimeoutError) as exc:
        return {"text": "", "statuses": [], "code": f"{type(exc).__name__}: {exc}"}


async def visit(base_url: str, prompt: str, *, patience: float) -> dict[str, Any]:
    """The legitimate visitor from 127.0.0.2: a chat, a second client of it watching the
    reply over a websocket, the drive read to its end."""
    seen: dict[str, Any] = {"codes": []}
    async with client(base_url, VISITOR) as http:
        seen["codes"].append((await http.get("/")).status_code)
        response = await http.post(
            "/api/chats/", content=json.dumps({"prompt": prompt}), headers=csrf(http)
        )
        seen["codes"].append(response.status_code)
        if response.status_code != 201:
            seen["error"] = response.text[:300]
            return seen
        chat = response.json()
        seen["stream_id"] = chat["stream_id"]
        watcher = asyncio.create_task(
            watch(base_url, chat["stream_id"], address=VISITOR, patience=patience)
        )
        try:
            started = time.monotonic()
            body = b""
            async with http.stream("POST", chat["drive_url"], headers=csrf(http)) as drive:
                seen["codes"].append(drive.status_code)
                async for data in drive.aiter_raw():
                    if not body:
                        seen["first_byte_ms"] = round((time.monotonic() - started) * 1000, 1)
                    body += data
            text = body.decode(errors="replace")
            seen["reply"] = text if drive.status_code != 200 else f"{len(text)} characters"
            seen["reply_whole"] = drive.status_code == 200 and text == MODEL_TEXT
            if drive.status_code != 200:
                # The reply stays pending: nothing will ever come to its watcher.
                watcher.cancel()
        finally:
            try:
                result = await watcher
            except asyncio.CancelledError:
                result = {"text": "", "statuses": [], "code": "none: the reply never started"}
        seen["watcher"] = {
            "whole": result["text"] == MODEL_TEXT,
            "characters": len(result["text"]),
            "statuses": result["statuses"][-1:],
            "code": result["code"],
        }
    return seen


async def drive_attack(
    base_url: str,
    model: CountingOpenAI,
    *,
    budget: int = 200,
    seconds: float = 30,
    workers: int = 6,
    legit_after: int | None = None,
) -> tuple[dict[str, Any], Attacker]:
    """The drive half: the attacker's report, the visitor's, the model's counts."""
    attacker = Attacker(base_url, budget, seconds, workers)
    started = attacker.at(legit_after if legit_after is not None else budget * 9 // 10)
    attack = asyncio.create_task(attacker.run())

    async def visitor() -> dict[str, Any]:
        await started.wait()
        return await visit(base_url, "Hello, I am a visitor.", patience=seconds)

    try:
        seen = await asyncio.wait_for(visitor(), seconds * 2)
        await asyncio.wait_for(attack, seconds * 2)
    finally:
        attack.cancel()
        await asyncio.gather(attack, return_exceptions=True)
        peak = model.peak
        model.release(MARK)
    return {
        "attacker": attacker.report(),
        "model_calls": dict(model.calls),
        "model_replies_open_at_peak": peak,
        "visitor": seen,
    }, attacker


async def viewer_attack(
    base_url: str,
    model: CountingOpenAI,
    *,
    guests: int = 3,
    per_guest: int = 25,
    reused: int = 2,
    sessions: Sequence[str] = (),
    patience: float = 30,
) -> dict[str, Any]:
    """The viewer half: ``guests`` guests minted, ``reused`` of the drive half's
    ``sessions`` and no session at all each open up to ``per_guest`` sockets (to the
    first refused) on one live reply of the visitor's (held after its first piece),
    then a viewer from 127.0.0.2 reads it."""
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed
    from websockets.typing import Origin

    report: dict[str, Any] = {"guests_minted": 0, "mint_codes": Counter()}
    held: list[ClientConnection] = []
    async with client(base_url, VISITOR) as http:
        await http.get("/")
        response = await http.post(
            "/api/chats/", content=json.dumps({"prompt": f"{HOLD} show me"}), headers=csrf(http)
        )
        if response.status_code != 201:
            return {"error": f"the visitor's chat: {response.status_code} {response.text[:200]}"}
        chat = response.json()
        drive = asyncio.create_task(
            http.post(chat["drive_url"], headers=csrf(http), timeout=patience * 2)
        )
        url = base_url.replace("http://", "ws://") + f"/ws/streams/{chat['stream_id']}/"
        identities: list[str | None] = []
        try:
            async with client(base_url, ATTACKER) as attacker:
                await attacker.get("/")
                for n in range(guests):
                    attacker.cookies.delete("sessionid")
                    minted = await attacker.post(
                        "/api/chats/",
                        content=json.dumps({"prompt": f"{MARK} viewer guest {n}"}),
                        headers=csrf(attacker),
                    )
                    report["mint_codes"][minted.status_code] += 1
                    if minted.status_code == 201:
                        identities.append(attacker.cookies.get("sessionid"))
            report["guests_minted"] = len(identities)
            # Guests the drive half minted, and no session at all (keyed by address).
            identities += [*sessions[:reused], None]
            accepted, refused = 0, Counter[str]()
            for cookie in identities:
                for _ in range(per_guest):
                    ws = await connect(
                        url,
                        origin=Origin(base_url),
                        proxy=None,
                        open_timeout=10,
                        local_addr=(ATTACKER, 0),
                        additional_headers={"Cookie": f"sessionid={cookie}"} if cookie else None,
                    )
                    held.append(ws)
                    # A viewer let in is sent the reply's first piece; one refused, a close.
                    try:
                        async with asyncio.timeout(10):
                            await ws.recv()
                    except ConnectionClosed:
                        refused[str(ws.close_code)] += 1
                        break
                    except TimeoutError:
                        refused["no answer in 10 s"] += 1
                        break
                    accepted += 1
            report["sockets_accepted"] = accepted
            report["refusals"] = dict(refused)
            report["identities"] = len(identities)
            # The visitor's viewer comes while the attacker holds its sockets; it reads
            # what is there, then the rest once the model goes on.
            arrivals = Arrivals()
            viewer = asyncio.create_task(
                watch(
                    base_url,
                    chat["stream_id"],
                    address=VISITOR,
                    patience=patience,
                    arrivals=arrivals,
                )
            )
            first = asyncio.create_task(arrivals.first.wait())
            await asyncio.wait({viewer, first}, timeout=patience, return_when="FIRST_COMPLETED")
            first.cancel()
            report["visitor_viewer_read_while_held"] = bool(arrivals)
            model.release(HOLD)
            result = await viewer
            answer = await drive
            report["visitor_drive"] = answer.status_code
            report["visitor_viewer"] = {
                "whole": result["text"] == MODEL_TEXT,
                "characters": len(result["text"]),
                "statuses": result["statuses"][-1:],
                "code": result["code"],
            }
        finally:
            model.release(HOLD)
            drive.cancel()
            await asyncio.gather(drive, return_exceptions=True)
            await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    report["mint_codes"] = dict(report["mint_codes"])
    return report


#: The server's limits: the documented ones (the tests' servers run without them).
LIMITS_ENV = {"E2E_LIMITS": "documented"}


def model_env(model: FakeOpenAI) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-attack",
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_MODEL": "m",
        **LIMITS_ENV,
    }


def replay(database_url: str, **options: Any) -> dict[str, Any]:
    """Both halves on ``database_url``, each against a uvicorn process of its own (the
    viewer half is not to find the drive slots still taken by the drive half's
    replies); ``options`` go to :func:`drive_attack`. The server is stopped, the model
    closed, whatever happens."""
    model = CountingOpenAI(PIECES, delay=0.01)
    try:
        server = Uvicorn(database_url, **model_env(model))
        try:
            report, attacker = asyncio.run(drive_attack(server.url, model, **options))
        finally:
            server.stop()
        server = Uvicorn(database_url, **model_env(model))
        try:
            # The guests the drive half minted are in the database, still logged in.
            report["viewers"] = asyncio.run(
                viewer_attack(server.url, model, sessions=attacker.sessions)
            )
        finally:
            server.stop()
    finally:
        model.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=200, help="the attacker's requests")
    parser.add_argument("--seconds", type=float, default=30, help="the attack's longest")
    parser.add_argument("--workers", type=int, default=6, help="the attacker's concurrency")
    args = parser.parse_args()
    with e2e_database(os.environ.get("DATABASE_URL", "sqlite:///unused")) as url:
        report = replay(url, budget=args.budget, seconds=args.seconds, workers=args.workers)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
