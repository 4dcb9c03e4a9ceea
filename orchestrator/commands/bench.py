"""``orchestrator bench-terminal-latency`` (runbook: ``scripts/bench_terminal_latency.py``): the v1.2.3 gate."""
from __future__ import annotations

import os

import click

from orchestrator.cli import cli
from orchestrator.cli_common import CONTEXT, Output, echo, reported_errors
from orchestrator.cli_values import WholeRange
from orchestrator.config import from_env
from orchestrator.errors import CommandInterrupted

EXIT_GATE_FAILED = 13


@cli.command("bench-terminal-latency", context_settings=CONTEXT)
@click.option("--samples", type=WholeRange(min=1), default=1000, show_default=True, help="Jobs measured.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the payload sizes (reproducible runs).")
@click.option("--raw-output", metavar="FILE", default=None,
              help="Write one JSON line per sample (latency_ms and its components) to this file.")
@click.option("--report", metavar="FILE", default=None,
              help="Write the Markdown report (P50/P95/P99/max, PASS/FAIL, machine, settings) to this file.")
@click.option("--base-path", envvar="BASE_PATH", show_envvar=True, default=None, type=click.Path(file_okay=False),
              help="Disk to measure: the scratch project is created here; a missing folder is made, as by a "
                   "submit, and removed again after a scratch run.  [default: a temporary folder; with --project-id or "
                   "--keep, the current folder, as for every other command]")
@click.option("--project-id", default=None,
              help="Project to write the benchmark jobs into, kept afterwards and signed with this machine's "
                   "signing key, as a submit would be (so verify passes). A project holding jobs the benchmark did "
                   "not submit is refused (exit 3): its worker would run them. PROJECT_ID from the environment is "
                   "deliberately not used: by default a scratch project is created and deleted, with a scratch key.")
@click.option("--keep", is_flag=True, help="Keep the scratch project (to inspect the events; signed with this "
                                           "machine's signing key, as with --project-id).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def bench_terminal_latency(samples: int, seed: int, raw_output: str | None, report: str | None, base_path: str | None,
                           project_id: str | None, keep: bool, as_json: bool) -> None:
    """Terminal latency: handler return -> terminal state durable and visible to a separate reader.

    Runs a real worker process and reads each job as `status` would. Exits 0 when the release gate
    (P95 <= 80 ms, P99 <= 150 ms) passes, 13 when it fails; our own target (P99 <= 2 ms) is reported.
    A --project-id, --raw-output or --report that cannot be used is refused (exit 3) before measuring.

    SIGTERM or SIGINT (Ctrl-C) stops the run cleanly: its worker process is stopped, a scratch run removes
    what it made (its project, its scratch keys, a --base-path it created), no output file is written, and
    it exits 143 (SIGTERM) or 130 (SIGINT) with a one-line message on stderr (with --json, also
    {"error": "INTERRUPTED", "message", "signal"} on stdout). SIGKILL cannot be caught: it
    leaves a scratch run's folders in place; its worker process stops on its own (Linux; docs/runbook.md).
    """
    from orchestrator import terminal_bench as tb
    from orchestrator.security import sanitize_text

    out = Output(as_json)
    try:
        with reported_errors(out):
            if base_path is None:  # click reads BASE_PATH set empty as unset: refused, as every command refuses it
                from_env(os.environ, "BASE_PATH", "")
            result = tb.execute(samples, seed, base_path, project_id, raw_output, report, keep,
                                progress=lambda m: echo(m, err=True))
    except tb.Interrupted as stop:
        echo(sanitize_text(stop.message), err=True)
        if as_json:  # stdout still holds one JSON object, as after any error
            out.emit(CommandInterrupted(stop.message, stop.signum).to_dict(), "")
        click.get_current_context().exit(stop.exit_code)
    out.emit(result, lambda: tb.text_summary(result))
    click.get_current_context().exit(0 if result["verdicts"]["gate"] else EXIT_GATE_FAILED)
