"""The deadline's watchdog thread (``store/pg_deadline.py``) watches calls, never keeps their connections nor its
deadline: a store dropped while its watchdog waits out its quiet period must not leave its sessions, nor the thread,
that long."""
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


def test_a_dropped_deadline_s_watchdog_ends_at_once_not_after_its_quiet_period() -> None:
    deadline = Deadline(10.0)
    conn = _Connection()
    deadline.arm(conn)
    assert deadline.disarm(conn)
    thread = deadline._thread  # noqa: SLF001
    assert thread is not None and thread.is_alive()
    del deadline
    thread.join(2.0)
    assert not thread.is_alive(), "the watchdog of a dropped deadline waits out its quiet period"
