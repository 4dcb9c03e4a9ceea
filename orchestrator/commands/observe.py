"""``orchestrator audit-timeline`` and ``orchestrator metrics``: what on-call looks at."""
from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from orchestrator.audit import ACTIONS
from orchestrator.cli import cli
from orchestrator.cli_common import (CONTEXT, EXIT_INTEGRITY, JobIdOptionCommand, Output, echo, note_missing_store,
                                     project_command)
from orchestrator.cli_values import FiniteFloatRange, IsoTime, WholeRange, seconds
from orchestrator.json_usage import printing_result
from orchestrator.limits import MAX_PROCESSES
from orchestrator.state import TRANSITIONS
from orchestrator.timeline import FILTERS


@cli.command("audit-timeline", cls=JobIdOptionCommand, context_settings=CONTEXT)
@click.option("--job-id", default=None, help="The job whose timeline to show.")
@click.option("--run-id", default=None, help="Show one run (its job is found from the audit log or the projection cache).")
@click.option("--since", type=IsoTime(), metavar="TIME", default=None,
              help="Only the lines from the first one at or after this ISO-8601 time (every time shown is UTC, and "
                   "so is a TIME without a zone: 2026-12-01T16:00:00 is 2026-12-01T16:00:00Z; "
                   "2026-12-01T17:00:00+01:00 is the same time). A line after it stamped earlier (a clock stepped "
                   "back) is kept: it happened later.")
@click.option("--action", type=click.Choice(FILTERS), metavar="ACTION", default=None,
              help=f"Only this audit action ({', '.join(sorted(ACTIONS))}) or event type "
                   f"({', '.join(sorted(TRANSITIONS))}); an audited event and its entry's action are one filter: "
                   "resume and job_resumed both show the event and its entry.")
@project_command
def audit_timeline(orch: Any, out: Output, job_id: str | None, run_id: str | None, since: str | None,
                   action: str | None) -> int:
    """The timeline of a job: its events and audit entries, merged.

    The job's events are always in their sequence order (a clock stepped back never moves one); an
    audit entry follows the event it names, and one naming no event is merged in by its time.
    Each line carries its verification status (ok, or a problem code such as SIGNATURE_INVALID,
    AUDIT_EVENT_MISSING). Exits 7 when any line shown, or the job's history, failed verification;
    an audited event without its entry (AUDIT_ENTRY_MISSING) is a warning, as in verify. A missing
    entry is written here only with a signing key this machine already has: a read command never
    creates one. Reads the audit log, then the job, never every job: an action on the job while
    it reads is shown whole or not at all, never as AUDIT_EVENT_MISSING (one between its event and
    its entry is waited for, 5 s at most, as verify does). A job whose events file and
    head record were both deleted but which the audit log names shows its entries, each
    AUDIT_EVENT_MISSING (exit 7, as verify); one with neither events nor entries is JOB_NOT_FOUND.
    While an import into the project is under way (it writes the audit log before the jobs), an
    entry whose event it has not written yet is IMPORT_INCOMPLETE, a warning (exit 0), as in
    verify; once the import stopped or its process is gone, AUDIT_EVENT_MISSING again, with an
    IMPORT_ABANDONED warning naming its record: run it again, or remove the record.
    """
    from orchestrator.timeline import render, timeline

    if job_id is None and run_id is None:
        raise click.UsageError("give --job-id or --run-id")
    result = timeline(orch, job_id=job_id, run_id=run_id, since=since, action=action)
    out.emit(result, lambda: render(result))
    return 0 if result["ok"] else EXIT_INTEGRITY


def _threshold(name: str, kind: Any, help_text: str) -> Any:
    from orchestrator.metrics import Thresholds

    var = Thresholds.ENV[name]
    return click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None, envvar=var, show_envvar=True,
                        help=f"{help_text}  [default: {getattr(Thresholds, name)}]")


@cli.command("metrics", context_settings=CONTEXT)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "prometheus"]), default="table",
              show_default=True, help="Output format (--json is the same as --format json; another --format with "
                                      "--json is a usage error).")
@click.option("--rebuild", is_flag=True, help="Ignore the projection cache and replay every job.")
@click.option("--fail-on", type=click.Choice(["warning", "critical"]), default=None,
              help="Exit 12 (ALERTS_FIRING) when an alert of this severity or worse fires.")
@click.option("--processes", type=WholeRange(1, MAX_PROCESSES), default=None, envvar="ORCH_METRICS_PROCESSES",
              show_envvar=True, help="Processes that replay the jobs when 2,000 or more must be (a first call, "
                                     "--rebuild)  [default: the CPUs this process may use]")
@_threshold("stall_grace", seconds(), "Seconds past lease expiry before a running job counts as stalled.")
@_threshold("stalled_max", WholeRange(min=0), "Alert STALLED_JOBS when stalled_count exceeds this.")
@_threshold("resume_success_min", FiniteFloatRange(0, 1), "Alert RESUME_SUCCESS_LOW below this rate (0..1).")
@_threshold("resume_min_samples", WholeRange(min=0), "Resumes with an outcome needed before the rate can alert.")
@_threshold("converge_max_seconds", seconds(), "Alert CONVERGE_SLOW when mean_converge_time exceeds this.")
@_threshold("waiting_human_max", WholeRange(min=0), "Alert WAITING_HUMAN_BACKLOG above this many waiting jobs.")
@_threshold("awaiting_audit_max", WholeRange(min=0),
            "Alert AWAITING_AUDIT_BACKLOG above this many jobs awaiting audit.")
@project_command
def metrics(orch: Any, out: Output, fmt: str, rebuild: bool, fail_on: str | None, processes: int | None,
            **limits: Any) -> int:
    """stalled_count, resume_success_rate, mean_converge_time, jobs per state, and alerts.

    Fast on large projects: per-job summaries are cached in projections/jobs-v2 (derived,
    deletable) and only jobs whose events file changed are replayed. A cache that cannot be
    written is a warning (CACHE_NOT_WRITTEN), not a failure. See docs/metrics.md.
    With --fail-on and JSON output, firing alerts add "error": "ALERTS_FIRING" to the one object.
    """
    from orchestrator import metrics as m
    from orchestrator.errors import AlertsFiringError

    given = click.get_current_context().get_parameter_source("fmt") is not ParameterSource.DEFAULT
    if out.as_json and fmt != "json" and given:
        raise click.UsageError(f"--format {fmt} and --json exclude each other (--json is --format json)")
    figures = orch.metrics(rebuild=rebuild, processes=processes, thresholds=m.Thresholds.from_env(**limits),
                           progress=lambda n: out.progress(f"replayed {n} jobs..."))
    note_missing_store(orch, out)
    worst = {"warning": 1, "critical": 2}
    rank = {"info": 0, **worst}
    firing = [a["code"] for a in figures.alerts if fail_on and rank[a["severity"]] >= worst[fail_on]]
    error = AlertsFiringError(f"{len(firing)} alert(s) at {fail_on} or worse: {', '.join(firing)}",
                              firing=firing) if firing else None
    # the figures and the verdict in one object: a JSON reader parses stdout once, whatever the exit code
    data = {**figures.to_dict(), **(error.to_dict() if error else {})}  # its warnings also on stderr (logged)
    if fmt == "prometheus" and not out.as_json:
        with printing_result():  # its result, as ``Output`` prints one: a stop after it is said so, on stderr
            echo(m.prometheus(figures), nl=False)
    elif fmt == "json" or out.as_json:
        Output(True).emit(data, "")
    else:
        out.emit(data, lambda: m.table(figures))
    if error is None:
        return 0
    if not out.as_json:
        out.error(error)  # stderr, as every error without --json
    return error.exit_code
