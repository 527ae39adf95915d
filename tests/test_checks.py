"""Bad settings are reported by system checks, not by a crash at first use."""

from __future__ import annotations

import pytest
from django.test import override_settings

from streaming_app.checks import check_channel_layer, check_settings


def errors_for(value) -> list[str]:
    with override_settings(STREAMING_APP=value):
        return [e.id or "" for e in check_settings()]


def test_the_defaults_pass():
    assert errors_for({}) == []


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([], "streaming_app.E001"),
        ({"FLUSH_INTERVALL": 1}, "streaming_app.E002"),
        ({"MAX_FLUSH_INTERVAL": 0}, "streaming_app.E003"),
        ({"MIN_FLUSH_INTERVAL": -1}, "streaming_app.E003"),
        ({"MAX_BUFFER_CHARS": "4096"}, "streaming_app.E003"),
        ({"WRITER_THREADS": 0}, "streaming_app.E003"),
        ({"MAX_VIEWERS_PER_PROXY": 0}, "streaming_app.E003"),
        ({"MAX_VIEWERS_PER_ADDRESS": 0}, "streaming_app.E003"),
        ({"MAX_VIEWERS_PER_ADDRESS": "100"}, "streaming_app.E003"),
        ({"MAX_VIEWERS_PER_ADDRESS": 2.5}, "streaming_app.E003"),
        ({"CANCEL_ON_DISCONNECT": "yes"}, "streaming_app.E006"),
        ({"CANCEL_ON_DISCONNECT": 1}, "streaming_app.E006"),
        ({"COMPACT_FINISHED": 1}, "streaming_app.E003"),
        ({"MIN_FLUSH_INTERVAL": 2, "MAX_FLUSH_INTERVAL": 1}, "streaming_app.E004"),
        ({"HEARTBEAT_INTERVAL": 60, "TIMEOUT": 30}, "streaming_app.E005"),
        ({"PERMISSION_POLICY": "no.such.policy"}, "streaming_app.E006"),
        ({"PERMISSION_POLICY": 42}, "streaming_app.E006"),
        ({"PENDING_TIMEOUT": 0}, "streaming_app.E003"),
        ({"PENDING_TIMEOUT": -60}, "streaming_app.E003"),
        ({"PENDING_TIMEOUT": "3600"}, "streaming_app.E003"),
        ({"PENDING_TIMEOUT": True}, "streaming_app.E003"),
    ],
)
def test_bad_values_are_reported(value, error):
    assert errors_for(value) == [error]


@pytest.mark.parametrize("seconds", [None, 3600, 0.5])
def test_a_pending_timeout_is_none_or_a_positive_number(seconds):
    assert errors_for({"PENDING_TIMEOUT": seconds}) == []


@pytest.mark.parametrize("viewers", [None, 1, 100])
def test_max_viewers_per_address_is_none_or_a_positive_integer(viewers):
    assert errors_for({"MAX_VIEWERS_PER_ADDRESS": viewers}) == []


@pytest.mark.parametrize(
    "policy",
    [True, False, "streaming_app.permissions.anonymous_cancels_on_disconnect", lambda u, s: True],
)
def test_cancel_on_disconnect_is_a_bool_or_a_policy(policy):
    assert errors_for({"CANCEL_ON_DISCONNECT": policy}) == []


def test_an_unknown_key_is_named_in_the_message():
    with override_settings(STREAMING_APP={"FLUSH_INTERVALL": 1}):
        (error,) = check_settings()
    assert "'FLUSH_INTERVALL'" in error.msg


def test_a_missing_channel_layer_is_a_warning():
    assert check_channel_layer() == []
    with override_settings(CHANNEL_LAYERS={}):
        (warning,) = check_channel_layer()
    assert warning.id == "streaming_app.W001"


def test_the_hint_of_w001_gives_the_one_process_layer_which_silences_it():
    with override_settings(CHANNEL_LAYERS=None):
        (warning,) = check_channel_layer()
    layer = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    hint = warning.hint or ""
    assert f"CHANNEL_LAYERS = {layer!r}" in hint
    assert "channels_redis.pubsub.RedisPubSubChannelLayer" in hint
    with override_settings(CHANNEL_LAYERS=layer):
        assert check_channel_layer() == []


def test_min_over_max_flush_interval_names_both_values():
    with override_settings(STREAMING_APP={"MIN_FLUSH_INTERVAL": 2, "MAX_FLUSH_INTERVAL": 1.5}):
        (error,) = check_settings()
    assert error.id == "streaming_app.E004"
    assert "['MIN_FLUSH_INTERVAL'] (2)" in error.msg and "MAX_FLUSH_INTERVAL (1.5)" in error.msg


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_postgres_without_a_pool_is_a_warning(settings):
    from streaming_app.checks import check_database_connections

    postgres = {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}
    settings.DATABASES = {
        "default": {**postgres, "OPTIONS": {"pool": {"max_size": 4}}},
        "kept": {**postgres, "CONN_MAX_AGE": 60},
        "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "plain": {**postgres, "OPTIONS": {}},
    }
    (warning,) = check_database_connections()
    assert warning.id == "streaming_app.W002"
    assert "DATABASES['plain']" in warning.msg
    # What a missing pool costs with the committer (bench/connections.py): a connection
    # per transaction, and transactions bounded per process by FLUSH_TICK.
    assert "every flush of every stream" not in warning.msg
    assert "for every transaction" in warning.msg
    assert "up to 20 a second per process (1 / FLUSH_TICK)" in warning.msg
    settings.STREAMING_APP = {"FLUSH_TICK": 0.1}
    (warning,) = check_database_connections()
    assert "up to 10 a second per process" in warning.msg
    settings.STREAMING_APP = {"FLUSH_TICK": "bad"}  # E003's; W002 still speaks
    (warning,) = check_database_connections()
    assert warning.id == "streaming_app.W002"


# Admission (streaming_app.admission) ----------------------------------------------------


def rate_problems(**streaming) -> list[str]:
    from streaming_app.checks import check_rate_limits

    with override_settings(STREAMING_APP=streaming):
        return [p.id or "" for p in check_rate_limits()]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"DRIVE_RATES_PER_USER": "10/m"}, "streaming_app.E007"),  # a string, not a list
        ({"DRIVE_RATES_PER_USER": ["10/w"]}, "streaming_app.E007"),
        ({"DRIVE_RATES_PER_ADDRESS": ["10/m", "lots"]}, "streaming_app.E007"),
        ({"DRIVE_RATES_PER_ADDRESS": [10]}, "streaming_app.E007"),
        ({"RATE_LIMIT_CACHE": "ratelimits"}, "streaming_app.E008"),
        ({"RATE_LIMIT_CACHE": ["default"]}, "streaming_app.E008"),  # unhashable: no crash
        ({"RATE_LIMIT_CACHE": None}, "streaming_app.E008"),
    ],
)
def test_bad_admission_settings_are_errors(value, error):
    assert rate_problems(**value) == [error]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"DAILY_TOKENS_PER_USER": 0}, "streaming_app.E003"),
        ({"DAILY_TOKENS_PER_ADDRESS": "1000"}, "streaming_app.E003"),
        ({"PROXY_ADDRESS_FACTOR": 1.5}, "streaming_app.E003"),
        ({"RATE_LIMIT_TIMEOUT": 0}, "streaming_app.E003"),
    ],
)
def test_bad_quota_settings_are_errors(value, error):
    assert errors_for(value) == [error]


def test_a_bad_rate_is_named_with_the_spellings_that_work():
    from streaming_app.checks import check_rate_limits

    with override_settings(STREAMING_APP={"DRIVE_RATES_PER_USER": ["10/m", "10/week"]}):
        (error,) = check_rate_limits()
    assert "'10/week'" in error.msg and "'100/h'" in (error.hint or "")


def test_a_cache_that_does_not_count_across_processes_is_a_warning_while_limits_are_on():
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    with override_settings(CACHES=dummy, STREAMING_APP={}):  # the limits' defaults: on
        from streaming_app.checks import check_rate_limits

        (warning,) = check_rate_limits()
        assert warning.id == "streaming_app.W003"
        assert "counts nothing" in warning.msg
        assert "django.core.cache.backends.redis.RedisCache" in (warning.hint or "")
        off = {
            "DRIVE_RATES_PER_USER": None,
            "DRIVE_RATES_PER_ADDRESS": (),
            "DAILY_TOKENS_PER_USER": None,
            "DAILY_TOKENS_PER_ADDRESS": None,
        }
        assert rate_problems(**off) == []
    # The project's own choice of the local-memory cache: one process, as it says.
    locmem = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=locmem):
        assert rate_problems() == []
    redis = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache"}}
    with override_settings(CACHES=redis):
        assert rate_problems() == []


def test_djangos_default_cache_is_a_warning_while_limits_are_on():
    # A project that never set CACHES: Django's default, a LocMemCache of each process.
    code = (
        "import django; from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['streaming_app'])\n"
        "django.setup()\n"
        "from streaming_app.checks import check_rate_limits\n"
        "print([(p.id, p.msg) for p in check_rate_limits()])\n"
    )
    import subprocess
    import sys

    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "streaming_app.W003" in found and "counts in each process apart" in found
