"""Test settings: the example project's, with a test database that threads can share."""

from __future__ import annotations

import os
import tempfile

# DEBUG is off, as in production, so the example wants a key of its own.
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-" + "k" * 50)

from example_project.settings import *  # noqa: E402, F403
from example_project.settings import DATABASES, STREAMING_APP  # noqa: E402
from tests.no_limits import NO_ADMISSION_LIMITS, NO_EXAMPLE_LIMITS  # noqa: E402

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so that the writers' threads and the test share it.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"streaming_app_test_{os.getpid()}.sqlite3")
    }

# The static files from the apps' folders, without collectstatic (as the servers').
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEMO_MODEL_DELAY = 0.0

# The admission limits off (tests/no_limits.py says why); tests/test_admission.py turns
# them on where they are what is tested.
STREAMING_APP = {**STREAMING_APP, **NO_ADMISSION_LIMITS}
globals().update(NO_EXAMPLE_LIMITS)
