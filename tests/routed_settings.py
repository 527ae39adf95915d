"""The e2e settings with the project's data on a second database, ``"data"`` (a SQLite
file, ``E2E_ROUTED_PATH``), where a router sends every model; ``default`` is an empty
SQLite file (``E2E_SQLITE_PATH``) that nothing is migrated to."""

from __future__ import annotations

import os
from typing import Any

from tests.e2e_settings import *  # noqa: F403

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["E2E_SQLITE_PATH"]},
    "data": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["E2E_ROUTED_PATH"]},
}


class DataRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "data"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "data"

    def allow_relation(self, *args: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "data"


DATABASE_ROUTERS = ["tests.routed_settings.DataRouter"]
