"""Public error messages: what a reader of a stream that ended in error is told.

Anyone allowed to read a stream sees its ``error``, and with
``anyone_reads_policy`` that is anyone with its link: so the exception itself (a
provider's error body, an internal host name) goes to the log, and readers get a short
sentence. ``STREAMING_APP["ERROR_MESSAGE"]`` chooses the words; whatever it returns is
cleaned and bounded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.utils.module_loading import import_string

from . import conf
from .exceptions import RunStopped
from .models import Status, storable

logger = logging.getLogger(__name__)

#: What a reader is told when nothing more precise can be said.
GENERIC = "generation failed"
#: The longest message a reader is told, in characters.
MAX_CHARS = 500


def default_error_message(exc: BaseException) -> str:
    """The default ``ERROR_MESSAGE``: the app's own reasons as they are, the ``openai``
    SDK's errors as plain sentences, and "generation failed" for anything else."""
    if isinstance(exc, RunStopped):
        return str(exc)
    try:
        import openai
    except ImportError:  # pragma: no cover - openai is optional
        return GENERIC
    if isinstance(exc, openai.APITimeoutError):
        return "the model did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return "the model could not be reached"
    if isinstance(exc, openai.RateLimitError):
        return "the model is over its rate limit; try again later"
    if isinstance(exc, openai.APIStatusError):
        return f"the model answered with an error (HTTP {exc.status_code})"
    if isinstance(exc, openai.APIError):
        return "the model reported an error"
    return GENERIC


def public_message(exc: BaseException) -> str:
    """The words readers see for ``exc``: ``ERROR_MESSAGE``'s, storable (no NUL, no lone
    surrogate) and at most :data:`MAX_CHARS` long; never empty."""
    setting = conf.get("ERROR_MESSAGE")
    try:
        choose: Callable[[BaseException], object] = (
            import_string(setting) if isinstance(setting, str) else setting
        )
        message = str(choose(exc))
    except Exception:
        logger.exception("ERROR_MESSAGE failed for %r", exc)
        message = GENERIC
    message = storable(message).strip()
    if len(message) > MAX_CHARS:
        message = message[: MAX_CHARS - 1] + "…"
    return message or GENERIC


#: What a reader is told when a stream ends in a way that carries no message.
ENDED_WITHOUT_MESSAGE: dict[str, str] = {
    Status.ERROR: GENERIC,
    Status.TIMEOUT: "the reply timed out",
    Status.CANCELLED: "the reply was cancelled",
}


def ended_message(status: str) -> str:
    """The public message of a stream that ended with ``status`` and no message."""
    return ENDED_WITHOUT_MESSAGE.get(status, GENERIC)
