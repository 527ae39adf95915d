from __future__ import annotations

import threading
from typing import Any

from django.db.backends.signals import connection_created
from django.http import HttpRequest, JsonResponse
from django.urls import path

from bench.passthrough import passthrough, passthrough_raw
from example_project.urls import urlpatterns as example
from streaming_app.drive.committer import committer


async def committed(request: HttpRequest) -> JsonResponse:
    """The server process's writer transactions so far (its one event loop's)."""
    return JsonResponse({"transactions": committer().transactions})


# Every statement the server process sends to its database, in any thread.
_statements = [0]
_count_lock = threading.Lock()


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    with _count_lock:
        _statements[0] += 1
    return execute(sql, params, many, context)


def _install(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_install, weak=False)


async def statements(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"statements": _statements[0]})


urlpatterns = [
    path("bench/passthrough/", passthrough),
    path("bench/passthrough-raw/", passthrough_raw),
    path("bench/committer/", committed),
    path("bench/statements/", statements),
    *example,
]
