"""Test settings: the example project's, with a test database that threads can share."""

from __future__ import annotations

import os
import tempfile

from example_project.settings import *  # noqa: F403
from example_project.settings import DATABASES, STREAMING_APP
from tests.no_limits import NO_ADMISSION_LIMITS, NO_EXAMPLE_LIMITS

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so that the writers' threads and the test share it.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"streaming_app_test_{os.getpid()}.sqlite3")
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEMO_MODEL_DELAY = 0.0

# The admission limits off (tests/no_limits.py says why); tests/test_admission.py turns
# them on where they are what is tested.
STREAMING_APP = {**STREAMING_APP, **NO_ADMISSION_LIMITS}
globals().update(NO_EXAMPLE_LIMITS)
