"""The example project reads its settings from the environment, as docs/deployment.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHOW = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps([s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], "
    "s.DEMO_MODEL_DELAY, s.DEBUG, s.ALLOWED_HOSTS, bool(s.SECRET_KEY)]))"
)


def settings_with(code: str = SHOW, **env: str) -> subprocess.CompletedProcess[str]:
    """The example's settings under ``env``: what ``code`` prints of them."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DJANGO_"))
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "DJANGO_DEBUG": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_empty_variables_mean_the_defaults():
    # As an env file with "NAME=" lines gives them (all but the key: DEBUG is off).
    empty = dict.fromkeys(
        [
            "DATABASE_URL",
            "DATABASE_POOL_SIZE",
            "REDIS_URL",
            "DEMO_MODEL_DELAY",
            "DJANGO_DEBUG",
            "DJANGO_ALLOWED_HOSTS",
        ],
        "",
    )
    result = settings_with(**empty, DJANGO_SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
        0.03,
        False,
        ["127.0.0.1", "localhost"],
        True,
    ]


def test_a_malformed_number_is_named():
    result = settings_with(DEMO_MODEL_DELAY="fast")
    assert result.returncode != 0
    assert "DEMO_MODEL_DELAY must be a number, not 'fast'" in result.stderr
    result = settings_with(
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/x", DATABASE_POOL_SIZE="lots"
    )
    assert "DATABASE_POOL_SIZE must be an integer, not 'lots'" in result.stderr


def test_debug_is_off_and_then_the_public_development_key_is_refused():
    # (settings_with sets DJANGO_DEBUG=1 unless told: empty is unset.)
    for unset in (
        {"DJANGO_DEBUG": ""},
        {"DJANGO_DEBUG": "", "DJANGO_SECRET_KEY": ""},
        {"DJANGO_DEBUG": "0"},
    ):
        result = settings_with(**unset)
        assert result.returncode != 0, unset
        assert "ImproperlyConfigured: Set DJANGO_SECRET_KEY" in result.stderr, unset
    # Development (make demo) says so, and may keep the public key.
    result = settings_with(DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[3] is True
