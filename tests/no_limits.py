"""The admission limits off, for the test settings: the suites drive hundreds of streams
in a process, as a few users from one address, within minutes, and mint a guest per
chat; the drive rates, token quotas and the example's own rates would refuse them.
tests/test_admission.py and tests/test_admission_servers.py turn them on where they are
what is tested (override_settings, E2E_STREAMING_APP, E2E_SETTINGS)."""

from __future__ import annotations

#: Merged into STREAMING_APP.
NO_ADMISSION_LIMITS = {
    "DRIVE_RATES_PER_USER": None,
    "DRIVE_RATES_PER_ADDRESS": None,
    "DAILY_TOKENS_PER_USER": None,
    "DAILY_TOKENS_PER_ADDRESS": None,
}

#: The example's settings of the same (example_project/settings.py CHAT_*_RATES_*).
NO_EXAMPLE_LIMITS = dict.fromkeys(
    f"CHAT_{action}_RATES_PER_{whose}"
    for action in ("GUEST", "CHAT", "MESSAGE")
    for whose in ("USER", "ADDRESS")
)
