"""Project figures and alerts for on-call: computed from the projection rows at a given ``now``.

Definitions (docs/metrics.md is the reference):

* ``counts``: jobs per state (every state listed, zeros included); ``integrity_errors``: jobs whose
  history failed verification, a figure of its own.
* ``stalled_count``: verified jobs in ``running`` whose current lease (heartbeats included) expired more
  than ``stall_grace`` seconds before ``now`` (the worker is gone and no stale recovery has run yet); a job
  whose history failed verification is in ``integrity_errors`` only (no worker recovers it).
  The projection holds the claim's expiry only; a job past it is checked against its lease record
  through ``renewed_lease``, so a healthy long run is not counted.
* ``resume_success_rate``: of the resumes whose outcome is known, the fraction after which the
  job next reached ``succeeded`` (directly or through approve) rather than asking again
  (``waiting_human``), failing or being cancelled. ``None`` when no resume has an outcome yet.
* ``mean_converge_time``: mean seconds from submission to the final state (succeeded, failed,
  cancelled), over the jobs that reached one (0 for a job whose final event is stamped before its submit: a
  clock stepped back). ``None`` when none has.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from orchestrator.projection import Columns, Row
from orchestrator.state import STATES

SEVERITIES = ("info", "warning", "critical")
# every time an event can have: years 1 to 9999 (``clock.from_iso``), give or take a day of UTC offset
EARLIEST, LATEST = -62135596800.0 - 86400, 253402300800.0 + 86400


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; each has an ``ORCH_*`` environment variable and a ``metrics`` option."""

    stall_grace: float = 0.0  # ORCH_STALL_GRACE_SECONDS
    stalled_max: int = 0  # ORCH_ALERT_STALLED_MAX: alert when stalled_count exceeds it
    resume_success_min: float = 0.8  # ORCH_ALERT_RESUME_SUCCESS_MIN
    resume_min_samples: int = 5  # ORCH_ALERT_RESUME_MIN_SAMPLES: below this, no rate alert
    converge_max_seconds: float = 3600.0  # ORCH_ALERT_CONVERGE_MAX_SECONDS
    waiting_human_max: int = 50  # ORCH_ALERT_WAITING_HUMAN_MAX
    awaiting_audit_max: int = 50  # ORCH_ALERT_AWAITING_AUDIT_MAX

    ENV = {"stall_grace": "ORCH_STALL_GRACE_SECONDS", "stalled_max": "ORCH_ALERT_STALLED_MAX",
           "resume_success_min": "ORCH_ALERT_RESUME_SUCCESS_MIN", "resume_min_samples": "ORCH_ALERT_RESUME_MIN_SAMPLES",
           "converge_max_seconds": "ORCH_ALERT_CONVERGE_MAX_SECONDS", "waiting_human_max": "ORCH_ALERT_WAITING_HUMAN_MAX",
           "awaiting_audit_max": "ORCH_ALERT_AWAITING_AUDIT_MAX"}

    def __post_init__(self) -> None:
        # NaN compares false with everything: a NaN threshold would silently never alert (or, for the grace,
        # never count a job as stalled); a negative one would always alert; the CLI's bounds, from Python too
        from orchestrator.limits import is_number

        for name, var in self.ENV.items():
            value = getattr(self, name)
            most, allowed = self._allowed(name)
            if not is_number(value, 0, most):
                from orchestrator.errors import ConfigError

                raise ConfigError(f"{var} (--{name.replace('_', '-')}) must be {allowed}, not {value!r}")

    @classmethod
    def _allowed(cls, name: str) -> tuple[float, str]:
        """The largest value of a threshold, and what it accepts in words (as its option's refusal says it)."""
        from orchestrator.limits import MAX_DURATION_SECONDS

        if name == "resume_success_min":
            return 1.0, "a number from 0 to 1"
        if name in ("stall_grace", "converge_max_seconds"):
            return MAX_DURATION_SECONDS, f"a number of seconds from 0 to {MAX_DURATION_SECONDS:.0f}"
        return math.inf, "a whole number of 0 or more"  # a count

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Thresholds":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in cls.ENV.items():
            kind = type(getattr(cls, name))
            if overrides.get(name) is not None:
                values[name] = kind(overrides[name])
            elif env.get(var):
                try:
                    values[name] = kind(env[var])
                except ValueError:
                    from orchestrator.errors import ConfigError

                    raise ConfigError(f"{var} must be {cls._allowed(name)[1]}, not {env[var]!r}") from None
        return cls(**values)


@dataclass
class Metrics:
    project_id: str
    now: float
    jobs: int
    counts: dict[str, int]
    integrity_errors: int
    stalled_count: int
    resume_success_rate: float | None
    resumes_decided: int
    mean_converge_time: float | None
    converged_jobs: int
    alerts: list[dict[str, str]] = field(default_factory=list)
    # what the refresh of the jobs cache before it did (``Orchestrator.metrics``): the jobs it replayed, and
    # {code, message} for a cache (CACHE_NOT_WRITTEN) or a healed audit entry (AUDIT_ENTRY_MISSING) not written
    replayed: int = 0
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compute(project_id: str, rows: "Iterable[Row] | Columns", now: float, limits: Thresholds,
            renewed_lease: Callable[[str], float | None] | None = None) -> Metrics:
    """The figures at ``now``, from projection columns (fast: no object per job) or any rows.

    ``renewed_lease(job_id)`` gives a running job's lease expiry with heartbeats included; it is
    asked only about jobs whose claim-time expiry has passed (few), never about the others.
    """
    cols = rows if isinstance(rows, Columns) else Columns.from_rows(rows)
    jobs = cols.jobs
    counts = {s: cols.state.count(code) for code, s in enumerate(STATES)}
    integrity = cols.ok.count(0)
    running, stall_grace = STATES.index("running"), limits.stall_grace
    lease, verified = cols.lease, cols.ok
    stalled = 0
    pos = cols.state.find(running)
    while pos != -1:  # running jobs only, found by a C scan of the state column
        # a job whose history failed verification is in integrity_errors, not here: "running" is only where its
        # valid prefix stops (a cut tail hides how it ended), and no worker recovers it (it is never run)
        if verified[pos] and lease[pos] + stall_grace < now:  # NaN (no lease) compares false
            # None from renewed_lease: the job is no longer running (it ended since the projection was read)
            current = renewed_lease(cols.ids[pos]) if renewed_lease is not None else lease[pos]
            if current is not None and current + stall_grace < now:
                stalled += 1
        pos = cols.state.find(running, pos + 1)
    ok, failed = sum(cols.resumes_ok), sum(cols.resumes_failed)
    # a job with no final state (NaN) is skipped, and so is a row whose times no event can have (a cache edited by
    # hand or a flipped bit: an infinity there made the mean Infinity, which is no JSON, or overflowed fsum); a
    # clock stepped back between the submit and the final event makes their stamps' difference negative, but the
    # final state came after the submit: 0, not less
    durations = [f - s if f > s else 0.0 for f, s in zip(cols.final, cols.submitted)
                 if EARLIEST <= f <= LATEST and EARLIEST <= s <= LATEST]  # NaN compares false
    converged, converge_sum = len(durations), math.fsum(durations)
    m = Metrics(project_id=project_id, now=now, jobs=jobs, counts=counts, integrity_errors=integrity,
                stalled_count=stalled, resume_success_rate=ok / (ok + failed) if ok + failed else None,
                resumes_decided=ok + failed, mean_converge_time=converge_sum / converged if converged else None,
                converged_jobs=converged)
    m.alerts = alerts(m, limits)
    return m


def alerts(m: Metrics, t: Thresholds) -> list[dict[str, str]]:
    out = []

    def add(code: str, severity: str, message: str) -> None:
        out.append({"code": code, "severity": severity, "message": message})

    if m.integrity_errors:
        add("INTEGRITY_ERRORS", "critical", f"{m.integrity_errors} job(s) failed verification and will not run; "
                                            "run verify (runbook E)")
    if m.stalled_count > t.stalled_max:
        add("STALLED_JOBS", "critical", f"{m.stalled_count} running job(s) have an expired lease "
                                        f"(limit {t.stalled_max}); run a worker to recover them (runbook A)")
    if (m.resume_success_rate is not None and m.resumes_decided >= t.resume_min_samples
            and m.resume_success_rate < t.resume_success_min):
        rate, least = m.resume_success_rate * 100, t.resume_success_min * 100
        add("RESUME_SUCCESS_LOW", "warning", f"resume success rate {_beside(rate, least)}% over {m.resumes_decided} "
                                             f"resume(s) is below {least:g}%")
    if m.mean_converge_time is not None and m.mean_converge_time > t.converge_max_seconds:
        most = t.converge_max_seconds
        add("CONVERGE_SLOW", "warning", f"mean time to a final state {_beside(m.mean_converge_time, most)}s exceeds "
                                        f"{most:g}s")
    if m.counts["waiting_human"] > t.waiting_human_max:
        add("WAITING_HUMAN_BACKLOG", "warning", f"{m.counts['waiting_human']} job(s) wait for an answer "
                                                f"(limit {t.waiting_human_max}); runbook C")
    if m.counts["awaiting_audit"] > t.awaiting_audit_max:
        add("AWAITING_AUDIT_BACKLOG", "warning", f"{m.counts['awaiting_audit']} job(s) wait for approval "
                                                 f"(limit {t.awaiting_audit_max}); runbook B")
    return out


def _beside(value: float, limit: float) -> str:
    """``value`` with as many decimals as it takes (up to 6) not to read as equal to ``limit`` (``:g``), which an
    alert says it is below or above: "80% is below 80%" for 79.6% was a contradiction."""
    for places in range(1, 7):
        text = f"{value:.{places}f}"
        if text != f"{limit:.{places}f}" and float(text) != limit:
            return text
    return repr(value)


def _num(value: float | None) -> str:
    return "NaN" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(m: Metrics) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    p = f'project="{_label(m.project_id)}"'
    lines = ["# HELP orchestrator_jobs Jobs by state.", "# TYPE orchestrator_jobs gauge"]
    lines += [f'orchestrator_jobs{{{p},state="{s}"}} {n}' for s, n in m.counts.items()]
    for name, help_text, value in [
        ("orchestrator_integrity_errors", "Jobs whose history failed verification.", m.integrity_errors),
        ("orchestrator_stalled_jobs", "Running jobs whose lease expired (stalled_count).", m.stalled_count),
        ("orchestrator_resume_success_ratio", "Resumes after which the job succeeded, over resumes with an outcome.",
         m.resume_success_rate),
        ("orchestrator_resumes_decided", "Resumes whose outcome is known.", m.resumes_decided),
        ("orchestrator_mean_converge_seconds", "Mean seconds from submission to a final state.", m.mean_converge_time),
        ("orchestrator_converged_jobs", "Jobs in a final state.", m.converged_jobs),
    ]:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
                  f"{name}{{{p}}} {value if isinstance(value, int) else _num(value)}"]
    lines += ["# HELP orchestrator_alert Alerts firing (1 per alert).", "# TYPE orchestrator_alert gauge"]
    lines += [f'orchestrator_alert{{{p},code="{a["code"]}",severity="{a["severity"]}"}} 1' for a in m.alerts]
    return "\n".join(lines) + "\n"


def table(m: Metrics) -> str:
    rate = "n/a" if m.resume_success_rate is None else f"{m.resume_success_rate:.1%} ({m.resumes_decided} resumes)"
    conv = "n/a" if m.mean_converge_time is None else f"{m.mean_converge_time:.3f}s ({m.converged_jobs} jobs)"
    lines = [f"project              {m.project_id}", f"jobs                 {m.jobs}",
             f"stalled_count        {m.stalled_count}", f"resume_success_rate  {rate}",
             f"mean_converge_time   {conv}", f"integrity_errors     {m.integrity_errors}", "", "STATE            JOBS"]
    lines += [f"{s:<16} {n:>5}" for s, n in m.counts.items()]
    lines += ["", "ALERTS" if m.alerts else "ALERTS: none"]
    lines += [f"[{a['severity']}] {a['code']}: {a['message']}" for a in m.alerts]
    return "\n".join(lines)
