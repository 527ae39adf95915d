"""Admission: rate limits and quotas per user and per client address, on the project's
Django cache (docs/deployment.md#limits-and-quotas).

The counting is the ``limits`` library's (its fixed-window strategy: the rate strings,
the windows, the cost of a hit, the time a window frees), with the project's cache as
its storage (:class:`CacheStorage`), so that every process of a site counts together
when the cache is shared (Redis, Memcached, the database cache). ``limits`` rather than
django-ratelimit: a token quota adds a run's tokens at once (a *cost*, which
django-ratelimit's +1 increments cannot), and the cache alias is ours
(``RATE_LIMIT_CACHE``), not a project-wide ``RATELIMIT_USE_CACHE``.

A request is counted against each rate as it is checked, in one increment (so that
simultaneous requests cannot all slip under a rate), and the counts are taken back if
it is refused, for a limit or, for a drive, for another reason (403, 404, 409, 503):
only an admitted request costs anything. The cache is outside the process:
each check waits ``RATE_LIMIT_TIMEOUT`` seconds at the most, in a few threads of its
own; a cache that fails or does not answer admits (fail open) with a logged warning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import limits
from django.http import HttpRequest

from . import conf, rates
from .clients import request_address_key
from .exceptions import Overloaded
from .parts import FINISH, Entry
from .rates import parse_rate, rates_setting

if TYPE_CHECKING:
    from .drive.run import StreamRun

logger = logging.getLogger(__name__)

#: Characters per token where the source reports no usage (English text with an
#: OpenAI tokenizer averages about four).
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Limit:
    """One limit on one key: ``item`` (its amount per window), ``key`` (whose: the
    action and ``user:<pk>``, ``address:<ip>`` or ``proxy:<ip>``), ``what`` for the
    message (``"drives per user"``)."""

    item: limits.RateLimitItem
    key: tuple[str, str]
    what: str


@dataclass
class Ticket:
    """The limits a request is admitted through: ``rates`` count the request itself,
    ``quotas`` the tokens it used, charged after it ran."""

    rates: list[Limit] = field(default_factory=list)
    quotas: list[Limit] = field(default_factory=list)
    #: The rates :meth:`reserve` counted the request against.
    held: list[Limit] = field(default_factory=list)

    def reserve(self) -> None:
        """Count the request against every rate, or raise
        :class:`~streaming_app.exceptions.Overloaded` (429) and count it against none, if
        a quota is used up or a rate is (naming it, and the seconds until all of the
        refusing ones have room). Each rate is counted before it is compared, in one
        increment, so that simultaneous requests cannot all slip under it; a refused
        one takes its counts back."""
        limiter = rates.limiter()
        refused = [limit for limit in self.quotas if not limiter.test(limit.item, *limit.key)]
        if not refused:
            for limit in self.rates:
                self.held.append(limit)
                if not limiter.hit(limit.item, *limit.key):
                    refused.append(limit)
        if not refused:
            return
        self.release()
        now = time.time()
        waits = [
            limiter.get_window_stats(limit.item, *limit.key).reset_time - now for limit in refused
        ]
        wait = max(1, math.ceil(max(waits)))
        first = refused[0]
        per = first.item.multiples
        window = f"{per} {first.item.GRANULARITY.name}s" if per > 1 else first.item.GRANULARITY.name
        raise Overloaded(
            f"too many {first.what}: the limit is {first.item.amount} per {window}; "
            f"try again in {wait} seconds",
            status_code=429,
            retry_after=wait,
        )

    def release(self) -> None:
        """Take back the counts of :meth:`reserve` (the request was refused after all)."""
        limiter = rates.limiter()
        while self.held:
            limit = self.held.pop()
            limiter.storage.incr(limit.item.key_for(*limit.key), limit.item.get_expiry(), -1)

    def charge(self, tokens: int) -> None:
        """Add ``tokens`` to every quota."""
        if tokens <= 0:
            return
        limiter = rates.limiter()
        for limit in self.quotas:
            limiter.hit(limit.item, *limit.key, cost=tokens)


def ticket_for(
    action: str,
    user: Any,
    request: HttpRequest | None,
    *,
    per_user: Iterable[limits.RateLimitItem] = (),
    per_address: Iterable[limits.RateLimitItem] = (),
    tokens_per_user: int | None = None,
    tokens_per_address: int | None = None,
) -> Ticket:
    """The limits of ``action`` for ``user`` (counted when authenticated) and the
    address ``request`` came from (:func:`streaming_app.clients.request_address_key`).
    An address whose forwarding headers the server did not apply (``proxy:``) stands
    for many visitors: its amounts are multiplied by ``PROXY_ADDRESS_FACTOR`` (None: no
    address limits for it)."""
    ticket = Ticket()
    if user is not None and getattr(user, "is_authenticated", False):
        key = (action, f"user:{user.pk}")
        ticket.rates += [Limit(item, key, f"{action}s per user") for item in per_user]
        if tokens_per_user is not None:
            day = limits.RateLimitItemPerDay(tokens_per_user)
            ticket.quotas.append(Limit(day, ("tokens", key[1]), "tokens per user today"))
    if request is None:
        return ticket
    address = request_address_key(request).key  # an IPv6 client as its /64
    factor = 1
    if address.startswith("proxy:"):
        proxy_factor = conf.get("PROXY_ADDRESS_FACTOR")
        if proxy_factor is None:
            return ticket
        factor = int(proxy_factor)
    # Keyed as the address itself: with PROXY_ADDRESS_FACTOR 1 (the default) a client
    # that adds a header of its own shares its address's count and gains nothing; with
    # a factor, the larger amount is a count of its own (the amount is in the key).
    key = (action, "address:" + address.removeprefix("proxy:").removeprefix("address:"))
    ticket.rates += [
        Limit(type(item)(item.amount * factor, item.multiples), key, f"{action}s from this address")
        for item in per_address
    ]
    if tokens_per_address is not None:
        day = limits.RateLimitItemPerDay(tokens_per_address * factor)
        ticket.quotas.append(Limit(day, ("tokens", address), "tokens from this address today"))
    return ticket


def drive_ticket(user: Any, request: HttpRequest | None) -> Ticket:
    """The limits of a drive, from the ``DRIVE_RATES_*`` and ``DAILY_TOKENS_*``
    settings."""
    return ticket_for(
        "drive",
        user,
        request,
        per_user=rates_setting("DRIVE_RATES_PER_USER"),
        per_address=rates_setting("DRIVE_RATES_PER_ADDRESS"),
        tokens_per_user=conf.get("DAILY_TOKENS_PER_USER"),
        tokens_per_address=conf.get("DAILY_TOKENS_PER_ADDRESS"),
    )


# Bounded, failing open ---------------------------------------------------------------

# The cache's calls wait here, never in the server's threads: a cache that hangs holds
# these few, and every check past RATE_LIMIT_TIMEOUT admits.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="streaming_app.admission")


def _warn_open(what: str, exc: BaseException) -> None:
    logger.warning(
        "rate limits and quotas not applied to this %s: the cache %r %s (failing open; "
        "RATE_LIMIT_CACHE, RATE_LIMIT_TIMEOUT)",
        what,
        conf.get("RATE_LIMIT_CACHE"),
        f"did not answer within {conf.get('RATE_LIMIT_TIMEOUT')} s"
        if isinstance(exc, TimeoutError)
        else f"failed: {exc!r}",
    )


def _bounded(what: str, work: Callable[[], None]) -> None:
    """``work()`` in the admission threads, waited for ``RATE_LIMIT_TIMEOUT`` at the
    most: its 429 goes on; a timeout or a failure of the cache is logged and admits."""
    future = _executor.submit(work)
    try:
        future.result(timeout=float(conf.get("RATE_LIMIT_TIMEOUT")))
    except Overloaded:
        raise
    except Exception as exc:  # TimeoutError included
        future.cancel()  # not yet started (the threads are all waiting): never run
        _warn_open(what, exc)


async def _abounded(what: str, work: Callable[[], None]) -> None:
    """:func:`_bounded`, awaited."""
    future = asyncio.wrap_future(_executor.submit(work))
    try:
        await asyncio.wait_for(future, float(conf.get("RATE_LIMIT_TIMEOUT")))
    except Overloaded:
        raise
    except Exception as exc:
        _warn_open(what, exc)


def in_background(what: str, call: Any, *args: Any) -> None:
    """``call(*args)`` in the admission threads, not waited for; a failure is logged."""

    def work() -> None:
        try:
            call(*args)
        except Exception as exc:
            _warn_open(what, exc)

    _executor.submit(work)


async def areserve(ticket: Ticket) -> None:
    """:meth:`Ticket.reserve`, bounded by ``RATE_LIMIT_TIMEOUT``; a cache that fails or
    does not answer admits (logged)."""
    if ticket.rates or ticket.quotas:
        await _abounded("drive", ticket.reserve)


async def arelease(ticket: Ticket) -> None:
    """:meth:`Ticket.release`, bounded the same way."""
    if ticket.held:
        await _abounded("drive", ticket.release)


def admit(
    request: HttpRequest,
    action: str,
    *,
    user: Any = None,
    per_user: Sequence[str] = (),
    per_address: Sequence[str] = (),
) -> Ticket:
    """Admit one ``action`` of a project's own view, or raise
    :class:`~streaming_app.exceptions.Overloaded` (429, ``retry_after``), which
    :func:`streaming_app.http.views.error_for` answers with JSON and ``Retry-After``.

    ``per_user`` are rate strings (``"10/m"``, ``"100/h"``) counted per authenticated
    ``user`` (by default the request's), ``per_address`` per client address (proxy
    aware, as the drive limits). Admitted, it counts against every rate; refused, it
    counts nothing. Returns the admission: :func:`release` it if the action is refused
    after all for another reason (a 409, a rolled-back transaction), so that it costs
    nothing. Synchronous (call it from a sync view or through ``sync_to_async``); it
    waits ``RATE_LIMIT_TIMEOUT`` at the most and admits if the cache fails (logged)."""
    if user is None:
        user = getattr(request, "user", None)
    ticket = ticket_for(
        action,
        user,
        request,
        per_user=[parse_rate(rate) for rate in per_user],
        per_address=[parse_rate(rate) for rate in per_address],
    )
    if ticket.rates:
        _bounded(action, ticket.reserve)
    return ticket


def release(ticket: Ticket) -> None:
    """Take back what :func:`admit` counted (synchronous, bounded as it is)."""
    if ticket.held:
        _bounded("release", ticket.release)


def run_tokens(parts: list[Entry], length: int) -> int:
    """The tokens a run used: the total its source reported in its finish parts
    (``total_tokens``, else input + output), else its text's length estimated at
    :data:`CHARS_PER_TOKEN` characters a token (rounded up)."""
    reported = 0
    found = False
    for entry in parts:
        if entry.get("type") != FINISH:
            continue
        usage = entry.get("usage") or {}
        total = usage.get("total_tokens")
        if not isinstance(total, int):
            counts = [usage.get("input_tokens"), usage.get("output_tokens")]
            total = sum(n for n in counts if isinstance(n, int)) if any(counts) else None
        if isinstance(total, int):
            reported += total
            found = True
    return reported if found else math.ceil(length / CHARS_PER_TOKEN)


def charge_when_done(run: StreamRun, ticket: Ticket) -> None:
    """Once ``run`` has ended, add the tokens it used (:func:`run_tokens`) to
    ``ticket``'s quotas, in the admission threads (not waited for; logged if the cache
    fails)."""
    if not ticket.quotas:
        return

    def ended(task: object) -> None:
        in_background("run's tokens", ticket.charge, run_tokens(run.parts, run.length))

    run.task.add_done_callback(ended)
