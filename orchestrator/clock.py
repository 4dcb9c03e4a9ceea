"""Time in one place: epoch floats inside, ISO-8601 UTC strings on disk.

Every decision that depends on time takes ``now`` as an argument; only the CLI and the
worker loop read the real clock, through ``Orchestrator.clock``: ``now()`` on files, the
database server's on PostgreSQL, where machines compare each other's times (``store/pg_clock.py``).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone


# the forms ``from_iso`` reads, for a message refusing a time that is none (``audit-timeline --since``)
ISO_FORMS = "e.g. 2026-11-22T03:00:00Z, or 2026-11-22T03:00:00 in UTC, or 2026-11-22T04:00:00+01:00"


def now() -> float:
    return time.time()


def to_iso(epoch: float) -> str:
    """Microsecond ISO-8601 in UTC with a ``Z``: sortable as text and readable in ``tail``. ``isoformat``, not
    ``strftime``, whose ``%Y`` (the C library's) does not pad a year before 1000 to four digits: ``from_iso`` could
    not read such a time back."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def from_iso(text: str) -> float:
    """Epoch seconds of an ISO-8601 time (``ValueError`` if it is none). A time without a zone is UTC, like
    every time this program writes and shows: never the machine's local time, which would make a replay (a
    ``retry_at`` of the Python API) or ``audit-timeline --since`` depend on ``TZ``. Any year 1 to 9999 works,
    with any offset."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()
