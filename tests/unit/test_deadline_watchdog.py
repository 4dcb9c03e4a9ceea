"""The deadline's watchdog thread (``store/pg_deadline.py``) watches calls, never keeps their connections: a store
dropped while its watchdog waits out its quiet period must not leave its sessions open that long."""
from __future__ import annotations

import math
import weakref

from orchestrator.store.pg_deadline import Deadline

from helpers import wait_until


class _Connection:
    """Stands in for a psycopg connection: the watchdog only hashes it, and reads its socket when it cuts it."""

    def fileno(self) -> int:
        return -1


def test_the_watchdog_keeps_no_connection_alive_while_it_waits_for_the_next_deadline() -> None:
    deadline = Deadline(10.0)
    conn = _Connection()
    gone = weakref.ref(conn)
    deadline.arm(conn)
    wait_until(lambda: deadline._wake_at < math.inf, 5.0,  # noqa: SLF001
               "the watchdog to sleep until the call's deadline")
    assert deadline.disarm(conn)  # the call returned in time
    del conn
    try:
        assert deadline._thread is not None and deadline._thread.is_alive()  # noqa: SLF001 - still waiting
        assert gone() is None, "the watchdog's frame still holds the connection of a call that returned"
    finally:
        deadline.close()
