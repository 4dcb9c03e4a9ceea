"""A worker's settings (``WorkerSettings``), checked when made: the Python form of ``worker``'s options and
their ``ORCH_*`` variables. ``orchestrator.worker.Worker`` runs with them; it is imported from there too."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from orchestrator.config import (DEFAULT_HANDLER_MAX_RUNS, DEFAULT_HANDLER_PROCESS, DEFAULT_LEASE_SECONDS,
                                 DEFAULT_OUTPUT_MAX_BYTES, DEFAULT_RETRY_BASE_SECONDS, DEFAULT_RETRY_MAX_SECONDS,
                                 DEFAULT_STOP_GRACE_SECONDS, DEFAULT_STORE_WAIT_SECONDS, HANDLER_PROCESS_MODES,
                                 MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, MIN_OUTPUT_MAX_BYTES)
from orchestrator.errors import InvalidInputError
from orchestrator.limits import MAX_DURATION_SECONDS, is_number, require_kinds, true_or_false, whole_number
from orchestrator.output_cap import is_output_bound
from orchestrator.security import shown

# A retry's delay is doubled at most this many times (``retry_delay``): 2.0 ** this is the largest power of two a float
# holds, past which every delay is its cap; ``Worker.backoff(10**100)`` built the integer 2**(10**100 - 1) (21 GB)
MAX_DOUBLINGS = sys.float_info.max_exp - 1

@dataclass(frozen=True)
class WorkerSettings:
    """Worker options; each has an ``ORCH_*`` variable on the command line (see ``orchestrator worker -h``)."""

    worker_id: str | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS
    imports: tuple[str, ...] = ()
    artifacts_import: bool = False  # ORCH_ARTIFACTS_IMPORT: copy artifacts named by input "artifacts_from"
    handler_process: str = DEFAULT_HANDLER_PROCESS  # "reused" (one HandlerHost) or "per-run" (a fork per run)
    handler_max_runs: int = DEFAULT_HANDLER_MAX_RUNS  # runs one reused handler process serves, then a new one
    store_wait_seconds: float = DEFAULT_STORE_WAIT_SECONDS  # run_once: a store lost in recovery or claim, retried
    kinds: tuple[str, ...] = ()  # ORCH_WORKER_KINDS: the only kinds this worker runs; empty: every kind it can
    pass_store_credentials: bool = False  # ORCH_PASS_STORE_CREDENTIALS: handlers get PGPASSWORD, ... (handler_env)
    output_max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES  # ORCH_OUTPUT_MAX_BYTES: a run's output.log on disk; 0: no bound

    def __post_init__(self) -> None:
        for name in ("kinds", "imports"):  # a single string would be read letter by letter
            value = getattr(self, name)
            if (isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, frozenset, set))
                    or not all(isinstance(item, str) for item in value)):  # [1], [None]: no module name
                raise InvalidInputError(f"{name} must be a list of names, not {shown(value)}")
        object.__setattr__(self, "imports", tuple(self.imports))
        require_kinds(self.kinds)
        object.__setattr__(self, "kinds", tuple(dict.fromkeys(self.kinds)))  # a tuple, each kind once, as given
        if self.handler_process not in HANDLER_PROCESS_MODES:
            raise InvalidInputError(f"handler_process must be one of {', '.join(HANDLER_PROCESS_MODES)}, "
                                    f"not {self.handler_process!r}")
        whole_number(self.handler_max_runs, "handler_max_runs")
        if not is_output_bound(self.output_max_bytes):
            raise InvalidInputError(f"output_max_bytes must be 0 (no bound) or a whole number of bytes from "
                                    f"{MIN_OUTPUT_MAX_BYTES}, not {shown(self.output_max_bytes)}")
        for name in ("artifacts_import", "pass_store_credentials"):  # "no" is truthy: it would switch them on
            true_or_false(getattr(self, name), name)
        # a lease's heartbeats are trusted up to MAX_LEASE_SECONDS (leases.lease_expiry); the other durations
        # up to a year: NaN fails both comparisons, inf or a huge value would overflow the ISO timestamps
        for name, least, most in (("lease_seconds", MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
                                  ("stop_grace_seconds", 0.0, MAX_DURATION_SECONDS),
                                  ("retry_base_seconds", 0.0, MAX_DURATION_SECONDS),
                                  ("retry_max_seconds", 0.0, MAX_DURATION_SECONDS),
                                  ("store_wait_seconds", 0.0, MAX_DURATION_SECONDS)):
            value = getattr(self, name)
            if not is_number(value, least, most):
                raise InvalidInputError(f"{name} must be a number of seconds from {least:g} to {most:.0f}, "
                                        f"not {value!r}")

    def retry_delay(self, failures: int) -> float:
        """The delay before the retry after ``failures`` failed attempts, before jitter: ``retry_base_seconds`` *
        2^(failures-1), at most ``retry_max_seconds``. A count that is no whole number from 0 is ``INVALID_INPUT``."""
        doublings = min(max(0, whole_number(failures, "failures", 0) - 1), MAX_DOUBLINGS)
        return min(self.retry_max_seconds, self.retry_base_seconds * 2.0 ** doublings)  # too large a product: inf


def default_worker_id() -> str:
    return f"{os.uname().nodename}-{os.getpid()}-{os.urandom(2).hex()}"  # the host name, as ``socket.gethostname()``
