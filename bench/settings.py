"""The example's settings, as the tests' servers use them, with the benchmarks' URLs
(``bench.urls``: the example's, and a plain passthrough view to measure against)."""

from __future__ import annotations

from tests.e2e_settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
