"""The e2e settings on a SQLite file configured as ``startproject`` writes it: ``NAME``
and nothing else, unless ``E2E_SQLITE_OPTIONS`` (JSON) gives its ``OPTIONS``. The file
is ``E2E_SQLITE_PATH``."""

from __future__ import annotations

import json
import os

from tests.e2e_settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["E2E_SQLITE_PATH"],
        **(
            {"OPTIONS": json.loads(os.environ["E2E_SQLITE_OPTIONS"])}
            if os.environ.get("E2E_SQLITE_OPTIONS")
            else {}
        ),
    }
}
