"""``status`` of a job whose head or lease record a process paused in the middle of writing it (SIGSTOP, Ctrl-Z, a
frozen VM) holds locked: the record is waited for at most ``LOCK_WAIT_SECONDS``, then read around, with a
``RECORD_LOCK_HELD`` warning, instead of waiting for as long as the writer is stopped. The events are the truth: the
head record only spares a read signature checks and shows a cut of the history (``verify`` still waits for it, and
reports the cut); the lease record only moves the claim's lease on. Workers pass such a job over instead
(``locks.bounded_waits``, ``LockHeldError``). ``verify`` and control actions wait for it, saying so (``waiting_said``)."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from orchestrator.errors import LOCK_HELD, RECORD_LOCK_HELD, LockHeldError
from orchestrator.notices import log_warning
from orchestrator.store.locks import LOCK_WAIT_SECONDS, bounded_waits, said_waits

log = logging.getLogger(__name__)
T = TypeVar("T")

# What ``status`` shows in place of each record it reads around
WITHOUT_HEAD_RECORD = ("its state is read from its events alone, every signature checked; a cut of its history is "
                       "not looked for against the record (`verify` does, once it is let go)")
WITHOUT_LEASE_RECORD = ("the lease shown is its claim's, without the renewals of its heartbeats; workers pass the job "
                        "over until the record is let go")


def waiting_said() -> said_waits:
    """For ``verify`` and a control action, which wait for a lock of the store however long it is held: after
    ``LOCK_WAIT_SECONDS``, a ``LOCK_HELD`` warning (stderr) names the file and says why the command waits."""
    def say(what: str) -> None:
        log_warning(log, {"code": LOCK_HELD,
                          "message": f"the lock of {what or 'a file of the store'} is held by another process (paused "
                                     f"in the middle of writing or reading it?) after {LOCK_WAIT_SECONDS:g}s; waiting "
                                     "until it is let go (Ctrl-C ends the wait): `fuser -v` on that file names the "
                                     "process (docs/runbook.md F)"})
    return said_waits(say)


def read_around_a_held_record(job_id: str, read: Callable[[], T], instead: Callable[[], T], without: str) -> T:
    """``read()``, a record's lock waited for at most ``LOCK_WAIT_SECONDS``; while it stays held, ``instead()``,
    warning that the job is shown ``without`` its record."""
    try:
        with bounded_waits(lambda: False):
            return read()
    except LockHeldError as exc:
        log_warning(log, {"code": RECORD_LOCK_HELD,
                          "message": f"job {job_id}: the lock of {exc.details.get('path') or 'a record'} is held by "
                                     f"another process (paused in the middle of writing it?) after "
                                     f"{LOCK_WAIT_SECONDS:g}s; {without}"}, job_id=job_id)
        return instead()
