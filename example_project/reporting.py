"""What error pages show: the settings and variables with the password of every URL
masked.

Django's filter hides settings named like a secret (``SECRET_KEY``, ``PASSWORD``), but
not a password inside a URL: ``REDIS_URL``, the hosts of ``CHANNEL_LAYERS``, a cache's
``LOCATION``. With DEBUG on, a request with a wrong ``Host`` showed them on the
technical 400 page.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@host, or scheme://:password@host: the password.
CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@", re.IGNORECASE)


def mask_passwords(value: Any) -> Any:
    """``value`` with the password of each URL in it masked, if it is a string."""
    if isinstance(value, str):
        return CREDENTIALS.sub(
            lambda m: m["head"] + SafeExceptionReporterFilter.cleansed_substitute + "@", value
        )
    return value


class SettingsFilter(SafeExceptionReporterFilter):
    """Django's filter, and the password of each URL in a setting or variable masked."""

    def cleanse_setting(self, key: int | str, value: Any) -> Any:
        # Django's recurses into dicts, lists and tuples through this method.
        return mask_passwords(super().cleanse_setting(key, value))

    def cleanse_special_types(self, request: Any, value: Any) -> Any:
        return mask_passwords(super().cleanse_special_types(request, value))
