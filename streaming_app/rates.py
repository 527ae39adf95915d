"""Rates: the rate strings of the settings ("10/m", "100/h", or the ``limits``
library's own), and ``limits``' storage on the project's Django cache, on which
:mod:`streaming_app.admission` counts drives, actions and tokens."""

from __future__ import annotations

import re
import time

import limits
from django.core.cache import BaseCache, caches
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter

from . import conf

#: "10/m", "100/h", "5/2m" (django-ratelimit's spelling) besides the ``limits`` library's
#: own ("10/minute", "10 per 2 hours").
_SHORT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$", re.IGNORECASE)
_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def parse_rate(rate: str) -> limits.RateLimitItem:
    """A rate string as a ``limits`` item; ValueError if it is not one."""
    if not isinstance(rate, str):
        raise ValueError(f"a rate must be a string such as '10/m', not {rate!r}")
    match = _SHORT.match(rate)
    if match:
        count, multiples, unit = match.groups()
        rate = f"{count}/{multiples or 1} {_UNITS[unit.lower()]}"
    return limits.parse(rate)


def rates_setting(name: str) -> list[limits.RateLimitItem]:
    """The rates of a ``STREAMING_APP`` setting (None or empty: none)."""
    return [parse_rate(rate) for rate in conf.get(name) or ()]


class CacheStorage(Storage):
    """``limits``' storage on a Django cache: a window's end under its key, its count
    under the key and that end (so a count is never read past its window, on caches
    whose ``incr`` sets a new timeout, the database's and the file cache's)."""

    STORAGE_SCHEME = None

    def __init__(self, alias: str) -> None:
        super().__init__()
        self.alias = alias

    @property
    def base_exceptions(self) -> type[Exception]:
        return Exception

    @property
    def cache(self) -> BaseCache:
        return caches[self.alias]

    def _window_end(self, key: str, expiry: int) -> float:
        for _ in range(3):
            end = time.time() + expiry
            if self.cache.add(key, end, expiry):
                return end
            found = self.cache.get(key)
            if found is not None and found > time.time():
                return float(found)
            if found is not None:  # ended, not yet evicted: the next window begins
                self.cache.delete(key)
        raise RuntimeError(f"the cache keeps no window for {key!r}")

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        if amount < 0:  # a count taken back: only from the window it went into
            return self._take_back(key, -amount)
        end = self._window_end(key, expiry)
        counter = f"{key}@{end}"
        if self.cache.add(counter, amount, expiry + 1):
            return amount
        try:
            return int(self.cache.incr(counter, amount))
        except ValueError:  # it was evicted in between: count afresh
            self.cache.set(counter, amount, expiry + 1)
            return amount

    def _take_back(self, key: str, amount: int) -> int:
        end = self.cache.get(key)
        if end is None:
            return 0
        try:
            return int(self.cache.decr(f"{key}@{end}", amount))
        except ValueError:  # that window has ended
            return 0

    def get(self, key: str) -> int:
        end = self.cache.get(key)
        if end is None or end <= time.time():
            return 0
        return int(self.cache.get(f"{key}@{end}", 0))

    def get_expiry(self, key: str) -> float:
        end = self.cache.get(key)
        return float(end) if end is not None else time.time()

    def check(self) -> bool:
        self.cache.get("streaming_app.admission.check")
        return True

    def reset(self) -> int | None:
        return None  # the project's cache holds more than limits: clear() key by key

    def clear(self, key: str) -> None:
        end = self.cache.get(key)
        self.cache.delete_many([key, f"{key}@{end}"])


def limiter() -> FixedWindowRateLimiter:
    return FixedWindowRateLimiter(CacheStorage(str(conf.get("RATE_LIMIT_CACHE"))))
