"""Public errors (design.md, invariant 12): what readers of a failed stream are told."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest
from django.test import override_settings

from streaming_app.errors import MAX_CHARS, default_error_message, public_message
from streaming_app.exceptions import DatabaseOutage, LimitExceeded, WriteFailed

REQUEST = httpx.Request("POST", "https://api.example.internal/v1/chat/completions")


def status_error(cls: type[openai.APIStatusError], code: int) -> openai.APIStatusError:
    response = httpx.Response(code, request=REQUEST, json={"error": {"message": "secret"}})
    return cls("secret details from the provider", response=response, body=None)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (openai.APITimeoutError(request=REQUEST), "the model did not answer in time"),
        (openai.APIConnectionError(request=REQUEST), "the model could not be reached"),
        (
            status_error(openai.RateLimitError, 429),
            "the model is over its rate limit; try again later",
        ),
        (
            status_error(openai.InternalServerError, 503),
            "the model answered with an error (HTTP 503)",
        ),
        (
            openai.APIError("boom at 10.1.2.3", request=REQUEST, body=None),
            "the model reported an error",
        ),
        (DatabaseOutage(30), "the database was unreachable for more than 30 seconds"),
        (WriteFailed(), "the reply could not be saved"),
        (
            LimitExceeded("the reply went on for more than 900 seconds"),
            "the reply went on for more than 900 seconds",
        ),
        (RuntimeError("password=hunter2 at db.internal"), "generation failed"),
    ],
)
def test_the_default_words_say_what_happened_and_nothing_private(exc, message):
    assert default_error_message(exc) == message
    assert public_message(exc) == message


def raises(exc: BaseException) -> str:
    raise RuntimeError("the project's ERROR_MESSAGE has a bug")


def shouts(exc: BaseException) -> str:
    return f"  \x00{exc}\ud800 " + "!" * 1000


@override_settings(STREAMING_APP={"ERROR_MESSAGE": "tests.test_errors.shouts"})
def test_a_projects_words_are_cleaned_and_bounded():
    message = public_message(ValueError("oops"))
    assert message.startswith("\ufffdoops\ufffd !!!")
    assert len(message) == MAX_CHARS and message.endswith("…")


@override_settings(STREAMING_APP={"ERROR_MESSAGE": "tests.test_errors.raises"})
def test_a_failing_error_message_falls_back_to_the_generic_words(caplog):
    assert public_message(ValueError("oops")) == "generation failed"
    assert "has a bug" in caplog.text


@override_settings(STREAMING_APP={"ERROR_MESSAGE": lambda exc: "   "})
def test_empty_words_are_never_shown():
    assert public_message(ValueError("oops")) == "generation failed"
