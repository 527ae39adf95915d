"""Faults made by the database itself, for the in-process tests.

A trigger refuses the writes a test names, as a constraint, a read-only replica or a
full disk would: the error comes from the real server, through the real driver, and
the test can confirm that it hit.
"""

from __future__ import annotations

import threading
from typing import Any

from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.db.backends.signals import connection_created

from streaming_app.permissions import Action, owner_policy


class database_refuses:  # noqa: N801  (used as a context manager, like a function)
    """While open, the database raises ``message`` for every ``event`` (INSERT or
    UPDATE) on ``table`` whose row matches ``when`` (SQL over ``NEW`` and, for UPDATE,
    ``OLD``). ``with`` in sync code, ``async with`` in async code."""

    def __init__(
        self, table: str, *, event: str = "UPDATE", when: str = "1 = 1", message: str = "refused"
    ) -> None:
        self.table, self.event, self.when, self.message = table, event, when, message
        self.name = f"test_refuse_{table}_{event.lower()}"

    def __enter__(self) -> database_refuses:
        name, table, event, when, message = (
            self.name,
            self.table,
            self.event,
            self.when,
            self.message,
        )
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when} "
                    f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
            else:
                cursor.execute(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN IF {when} THEN RAISE EXCEPTION '{message}'; END IF; "
                    "RETURN NEW; END $$"
                )
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {name}()"
                )
        return self

    def __exit__(self, *exc: object) -> None:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER IF EXISTS {self.name}")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {self.name} ON {self.table}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {self.name}()")

    async def __aenter__(self) -> database_refuses:
        return await sync_to_async(self.__enter__)()

    async def __aexit__(self, *exc: object) -> None:
        await sync_to_async(self.__exit__)(*exc)


#: A writer's heartbeat: a live stream's row updated without its length changing.
HEARTBEAT = (
    "OLD.status = 'streaming' AND NEW.status = 'streaming' AND NEW.length = OLD.length "
    "AND NEW.cancel_requested_at IS NULL"
)


class OnNewConnections:
    """A wrapper (``wrap``) around every query of the connections opened while this is
    open, in any thread; taken off again at the end."""

    def __init__(self) -> None:
        self._installed: list[Any] = []

    def wrap(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        return execute(sql, params, many, context)

    def _install(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if self.wrap not in connection.execute_wrappers:
            connection.execute_wrappers.append(self.wrap)
            self._installed.append(connection)

    def __enter__(self) -> Any:
        connection_created.connect(self._install, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        connection_created.disconnect(self._install)
        for conn in self._installed:
            if self.wrap in conn.execute_wrappers:
                conn.execute_wrappers.remove(self.wrap)


class Hang(OnNewConnections):
    """Every INSERT into ``table`` waits until :meth:`release`: a database that took
    the statement and does not answer. ``entered`` is set once one is held."""

    def __init__(self, table: str = "streaming_app_chunk") -> None:
        super().__init__()
        self.table = table
        self.entered = threading.Event()
        self.released = threading.Event()

    def wrap(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith("INSERT") and self.table in sql:
            self.entered.set()
            self.released.wait(60)
        return execute(sql, params, many, context)

    def release(self) -> None:
        self.released.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        super().__exit__(*exc)


class DatabaseAway(OnNewConnections):
    """Every query fails as if the database had gone (OperationalError) until
    :meth:`back`; ``refused`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.away = True
        self.refused = 0

    def wrap(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.away:
            self.refused += 1
            raise OperationalError("the database is away (a test's fault)")
        return execute(sql, params, many, context)

    def back(self) -> None:
        self.away = False


class Statements(OnNewConnections):
    """Records the statements of the connections opened meanwhile (in any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []

    def wrap(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.seen.append((sql, params))
        return execute(sql, params, many, context)

    def inserts_into(self, table: str) -> list[tuple[str, Any]]:
        return [(sql, p) for sql, p in self.seen if sql.startswith(f'INSERT INTO "{table}"')]


def reading_is_broken(user: Any, stream: Any, action: Action) -> bool:
    """A permission policy with a bug (``PERMISSION_POLICY``, for a server): every read
    raises; driving and cancelling are as in ``owner_policy``."""

    if action == "read":
        raise AttributeError("a bug in the project's permission policy")
    return owner_policy(user, stream, action)
