"""Issue 17's attack, replayed against a real uvicorn process of the example
(tests/attack.py): one client from 127.0.0.1 minting guests and driving as fast as it
can is refused (429) past the documented limits and starts at most the documented
number of model calls, while a visitor from 127.0.0.2 drives and watches normally; the
same for viewers (guests minted to multiply sockets).

The limits are the ones the server runs with (the example's settings over the app's
defaults), read from a process with the server's environment, not assumed here.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import Any

import pytest

from .attack import LIMITS_ENV, PIECES, replay
from .servers import ROOT, server_env

pytestmark = [pytest.mark.attack, pytest.mark.daphne, pytest.mark.slow]

#: The app's settings that bound the attacker (streaming_app.conf).
APP_SETTINGS = [
    "DRIVE_RATES_PER_USER",
    "DRIVE_RATES_PER_ADDRESS",
    "DAILY_TOKENS_PER_USER",
    "DAILY_TOKENS_PER_ADDRESS",
    "MAX_VIEWERS_PER_ADDRESS",
    "MAX_VIEWERS_PER_USER",
    "MAX_LIVE_STREAMS",
]
#: The example's per-address limit on minting guests (example_project/settings.py).
GUEST_RATES_SETTING = "CHAT_GUEST_RATES_PER_ADDRESS"

PROBE = """
import json, django
django.setup()
from django.conf import settings
from streaming_app import conf
found = {}
for name in %(app)r:
    try:
        found[name] = conf.get(name)
    except KeyError:
        pass
for name in %(example)r:
    if hasattr(settings, name):
        found[name] = getattr(settings, name)
print(json.dumps(found))
"""


def server_settings(env: dict[str, str]) -> dict[str, Any]:
    """The limits a server with this environment runs with; a name it does not know is
    left out."""
    code = PROBE % {"app": APP_SETTINGS, "example": [GUEST_RATES_SETTING]}
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*(second|minute|hour|day|[smhd])s?\s*$")


def rate(text: str) -> tuple[int, float]:
    """``"10/m"`` (django-ratelimit's form) or ``"10 per 2 minutes"`` (limits'): how many
    in how many seconds."""
    match = RATE.match(text)
    assert match, f"not a rate the test understands: {text!r}"
    amount, multiples, unit = match.groups()
    return int(amount), (int(multiples) if multiples else 1) * UNITS[unit[0]]


def allowance(rates: Any, seconds: float) -> int | None:
    """The most a client may do in ``seconds`` under every one of ``rates``: a fixed
    window may let a rate's amount through on each side of a window's edge, so each
    allows its amount for every window the time touches, plus one."""
    if not rates:
        return None
    return min(amount * (math.ceil(seconds / period) + 1) for amount, period in map(rate, rates))


def limit(found: dict[str, Any], name: str) -> tuple[Any, str]:
    """A setting's value on the server, and how to name it in a failure."""
    assert name in found, f"the server has no setting {name}"
    return found[name], f"{name} = {found[name]!r}"


def test_one_client_minting_guests_is_refused_and_a_visitor_elsewhere_is_served(e2e_db):
    found = server_settings(server_env(e2e_db, **LIMITS_ENV))
    report = replay(e2e_db, budget=200, seconds=30)

    attacker, seen, viewers = report["attacker"], report["visitor"], report["viewers"]
    problems: list[str] = []

    drive_rates, named = limit(found, "DRIVE_RATES_PER_ADDRESS")
    most = allowance(drive_rates, attacker["seconds"])
    calls = report["model_calls"].get("attacker", 0)
    if most is None:
        problems.append(f"no per-address drive rate ({named}): nothing bounds the attacker")
    else:
        if attacker["drives_started"] > most:
            problems.append(
                f"{attacker['drives_started']} drives started from one address in "
                f"{attacker['seconds']} s, expected at most {most} ({named})"
            )
        if calls > most:
            problems.append(
                f"the model received {calls} calls of the attacker's, expected at most {most}"
            )
    # Past the limits the attacker is refused (429), whether its drives or the chats
    # and guests before them are.
    if not attacker["all_codes"].get(429):
        problems.append(f"the attacker was never refused with 429: {attacker['codes']}")
    if attacker["refusals_without_retry_after"]:
        problems.append(f"{attacker['refusals_without_retry_after']} refusals had no Retry-After")
    failures = {code: n for code, n in attacker["all_codes"].items() if int(code) >= 500}
    if failures:
        problems.append(f"the attacker got {failures} (the process's capacity, not its own limit)")

    guest_rates, named = limit(found, GUEST_RATES_SETTING)
    minted = attacker["guests_minted"]
    most_guests = allowance(guest_rates, attacker["seconds"])
    if most_guests is not None and minted > most_guests:
        problems.append(
            f"{minted} guests minted from one address, expected at most {most_guests} ({named})"
        )

    if seen["codes"] != [200, 201, 200] or not seen.get("reply_whole"):
        problems.append(f"the visitor from 127.0.0.2 got {seen['codes']}: {seen.get('reply')}")
    if seen.get("watcher") != {
        "whole": True,
        "characters": len("".join(PIECES)),
        "statuses": ["done"],
        "code": 1000,
    }:
        problems.append(f"the visitor's watcher saw {seen.get('watcher')}")

    most_sockets, named = limit(found, "MAX_VIEWERS_PER_ADDRESS")
    if viewers.get("sockets_accepted", 0) > most_sockets:
        problems.append(
            f"{viewers['sockets_accepted']} websockets held open from one address with "
            f"{viewers.get('identities')} guests/sessions, expected at most {most_sockets} ({named})"
        )
    visitor_viewer = viewers.get("visitor_viewer")
    if not viewers.get("visitor_viewer_read_while_held"):
        problems.append("the visitor's viewer read nothing while the attacker held its sockets")
    if viewers.get("visitor_drive") != 200 or visitor_viewer != {
        "whole": True,
        "characters": len("".join(PIECES)),
        "statuses": ["done"],
        "code": 1000,
    }:
        problems.append(
            f"the visitor's viewer under the socket attack saw {visitor_viewer}, its drive {viewers.get('visitor_drive')}"
        )

    if problems:
        pytest.fail(
            "\n".join(problems) + "\n\nthe whole report:\n" + json.dumps(report, indent=1),
            pytrace=False,
        )
