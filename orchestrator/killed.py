"""What a run left running that was killed, told: the ``Killed`` count and pids, the ``RUN_PROCESSES_KILLED``
warning a run's result or its stale recovery carries (``killed_warning``), and the small frame in which a Python
handler's process tells the worker what it killed (``encode_killed``). How they are killed: ``leftovers``."""
from __future__ import annotations

import logging
import struct
from typing import NamedTuple

from orchestrator.notices import log_warning

RUN_PROCESSES_KILLED = "RUN_PROCESSES_KILLED"  # the warning of a run whose left processes were killed (``killed_warning``)
PIDS_NAMED = 10  # pids a warning names (and how many more there were)


class Killed(NamedTuple):
    """Processes a run left running that were killed: how many, and their pids (a Python handler's process tells
    the worker only the first ``PIDS_NAMED``: ``encode_killed``; its pid namespace is the worker's, its parent's)."""
    total: int
    pids: list[int]

    @classmethod
    def of(cls, pids: list[int]) -> "Killed":
        return cls(len(pids), pids)

    def plus(self, pids: list[int]) -> "Killed":
        """These and ``pids``, killed since (by the worker, after the handler process or the command's exit said what
        it killed), each process once: one named with its group's SIGTERM that outlived it, and was killed again
        afterwards, is still one process."""
        new = [pid for pid in dict.fromkeys(pids) if pid not in self.pids]
        return Killed(self.total + len(new), self.pids + new)


NONE_KILLED = Killed(0, [])


def killed_warning(killed: Killed, job_id: str, run_id: str, when: str) -> dict[str, str]:
    """The ``{code, message}`` reported with a run's result, or with its stale recovery, when processes the run left
    running were killed by pid (``leftovers.end_exited_run``, ``kill_run_processes``, a Python handler's ``end_leftovers``):
    whoever meant a handler to leave a daemon behind learns why it is gone, and from the result, not only from the
    worker's log. ``job_id`` empty: only the run's folder named the run (``recovery.sweep_left_over_runs``)."""
    named, of_job = ", ".join(str(pid) for pid in killed.pids[:PIDS_NAMED]), f" of job {job_id}" if job_id else ""
    more = f" and {killed.total - PIDS_NAMED} more" if killed.total > PIDS_NAMED else ""
    return {"code": RUN_PROCESSES_KILLED,
            "message": f"killed {killed.total} process(es) left running by run {run_id}{of_job} {when} "
                       f"(pid {named}{more}): what a run starts ends with the run (docs/worker.md)"}


def logged_killed(log: logging.Logger, killed: Killed, job_id: str, run_id: str, when: str) -> dict[str, str] | None:
    """``killed_warning``, logged on ``log`` too, for a run of which something was killed; None if nothing was: the
    one way a worker (``outcome.noting_killed``) and stale recovery (``recovery.kill_left_processes``) say it."""
    if not killed.total:
        return None
    warning = killed_warning(killed, job_id, run_id, when)
    log_warning(log, warning, job_id=job_id, run_id=run_id, pids=killed.pids)
    return warning


_KILLED_HEAD = struct.Struct(">II")  # how many were killed, how many pids follow (4 bytes each)
KILLED_MAX_BYTES = _KILLED_HEAD.size + 4 * PIDS_NAMED


def encode_killed(pids: list[int]) -> bytes:
    """``pids`` as a handler process tells them to the worker with its answer: at most ``KILLED_MAX_BYTES`` (48), so
    that a per-run child's write of them with its one-byte exit code stays one atomic pipe write (``PIPE_BUF``)."""
    named = pids[:PIDS_NAMED]
    return _KILLED_HEAD.pack(len(pids), len(named)) + struct.pack(f">{len(named)}i", *named)


def decode_killed(data: bytes) -> Killed:
    """``encode_killed``'s ``Killed``; nothing killed for what is not one (bytes a handler wrote on the pipe itself:
    its payload is judged as it is)."""
    if len(data) >= _KILLED_HEAD.size:
        total, count = _KILLED_HEAD.unpack_from(data)
        if count <= min(total, PIDS_NAMED) and len(data) == _KILLED_HEAD.size + 4 * count:
            return Killed(total, list(struct.unpack_from(f">{count}i", data, _KILLED_HEAD.size)))
    return NONE_KILLED
