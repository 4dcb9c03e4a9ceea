"""The ``orchestrator`` command line: a thin click layer over ``orchestrator.api``.

Every command takes ``--json``, and every command on a project ``--base-path`` and ``--project-id``
(``keys`` and ``db`` work on no project). Expected errors print
``error[CODE]: message`` (or a JSON object with ``--json``, usage errors included) and exit with
the error's code, never a traceback; everything printed passes through ``sanitize_text``.

Here: the group, the runbook's core commands (``submit``, ``status``, ``verify``: their scripts import no other
command module, ``_LazyGroup``), and the command line run as a process (``main``, ``run_script``: ``.env``, stop
signals, output that cannot be written). What every command is built from is in ``cli_common``, the errors no
command's own code meets in ``cli_errors``, the other commands in ``commands/``.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.cli_common import (CONTEXT, EXIT_INTEGRITY, JobIdOptionCommand, Output, note_missing_store,
                                     project_command)
from orchestrator.cli_errors import data_on_stdout, load_dotenv, named_command, run_command, wants_json
from orchestrator.cli_values import WholeRange, job_kinds, seconds
from orchestrator.command_stop import COMMAND_STOP
from orchestrator.clock import from_iso
from orchestrator.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY
from orchestrator.errors import CommandInterrupted, Interrupted, InvalidInputError
from orchestrator.json_usage import RESULT
from orchestrator.limits import MAX_ATTEMPTS_LIMIT, MAX_INPUT_BYTES, MAX_PROCESSES, PRIORITY_LIMIT, read_at_most
from orchestrator.security import one_line, safe_line, sanitized_cut
from orchestrator.stdout import written_whole


class _LazyGroup(click.Group):
    """Commands of other areas (``orchestrator/commands/``) are imported the first time a command this
    module does not define is looked up, or all are listed: ``scripts/status.py`` then skips every
    other command's imports (cold start), and any caller of ``cli`` still sees every command."""

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            _register_commands()
        return super().get_command(ctx, cmd_name)  # type: ignore[arg-type]

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register_commands()
        return super().list_commands(ctx)


@click.group(cls=_LazyGroup, context_settings=CONTEXT)
@click.version_option(package_name="jsonl-orchestrator")
def cli() -> None:
    """Local-first, event-sourced job orchestrator on signed JSONL files.

    Exit codes: 0 ok, 1 internal error, 2 usage error, 3 invalid input or id, 4 job not found,
    5 action does not fit the job's state, 6 concurrent change (retry), 7 integrity problem,
    8 signing key problem (or jobs left, signed by a key not trusted), 9 malformed payload,
    10 storage error (also: stdout refused the output, a full disk), 11 handler not found, 12 alerts firing (metrics --fail-on),
    13 release gate failed (bench-terminal-latency), 75 nothing to run (worker --once),
    130 interrupted by SIGINT (Ctrl-C; a worker stops gracefully instead, exit 0),
    141 stdout's reader went away (| head), the command ended quietly,
    143 interrupted by SIGTERM (as 130).
    See the README's exit-code table.
    """


# -- submit -----------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.option("--kind", required=True, callback=job_kinds,
              help="Handler name: command, llm, or a registered Python handler.")
@click.option("--input", "input_json", default=None, help="Job input as JSON text (UTF-8; a leading byte order mark "
              "is dropped).")
@click.option("--input-file", type=click.File("rb"), default=None, help="Read the JSON input from a file ('-' for stdin) of at most 1 MiB; "
              "a larger one is refused (exit 3) without being read further. UTF-8, as --input: UTF-16 or UTF-32 is "
              "refused (exit 3).  Without --input or --input-file the job has no input (null): stdin is read only "
              "with --input-file -; data piped in with neither option is refused (exit 2, nothing submitted), not dropped.")
@click.option("--audit", is_flag=True, help="Send a successful result to awaiting_audit for approval.")
@click.option("--key", default=None, help="Idempotency key, an id (letters, digits, '.', '_', '-'): submitting the "
              "same key again returns the same job id.")
@click.option("--max-attempts", type=WholeRange(1, MAX_ATTEMPTS_LIMIT), default=DEFAULT_MAX_ATTEMPTS,
              show_default=True, help="Runs allowed before failing.")
@click.option("--timeout", type=seconds(min_open=True), default=None, help="Seconds a run may take (a year at most).")
@click.option("--priority", type=WholeRange(-PRIORITY_LIMIT, PRIORITY_LIMIT), default=DEFAULT_PRIORITY,
              show_default=True, help="Higher runs first.")
@project_command
def submit(orch: Any, out: Output, kind: str, input_json: str | None, input_file: Any, audit: bool, key: str | None,
           max_attempts: int, timeout: float | None, priority: int) -> None:
    """Submit a job and print its id (the same id again for the same --key)."""
    if input_json is not None and input_file is not None:
        raise click.UsageError("give --input or --input-file, not both")
    name = getattr(input_file, "name", None)  # stdin's is "<stdin>" (none at all under a test runner)
    if input_json is None and input_file is None and _stdin_holds_data():  # JSON piped in, meant as the input
        raise click.UsageError("stdin holds data, but no --input or --input-file is given: submit reads stdin only "
                               "with --input-file - (to submit what is piped in: `... | orchestrator submit --kind K "
                               "--input-file -`; a job with no input: `< /dev/null`); nothing was submitted")
    given = ("--input" if input_file is None
             else f"--input-file {name if isinstance(name, str) and name != '<stdin>' else '-'}")
    raw = read_at_most(input_file, MAX_INPUT_BYTES) if input_file is not None else input_json
    if input_file is not None and raw is None:  # the rest is never read: a pipe or a device may not end
        raise InvalidInputError(f"{given} holds more than {MAX_INPUT_BYTES} bytes, the most a job's input may be "
                                "(as compact JSON); pass large data as a file path or an artifact")
    from orchestrator.json_text import input_value  # here: only ``submit`` reads JSON text (``status``' cold start)

    # bytes either way (an argument as the program was given it): one rule for both, ``json_text.input_text``
    value = None if raw is None else input_value(raw if input_file is not None else os.fsencode(raw), given)
    sub = orch.submit_job(kind, value, audit=audit, key=key, max_attempts=max_attempts, timeout=timeout,
                          priority=priority)
    out.emit({"job_id": sub.job_id, "created": sub.created, "warnings": list(sub.warnings)},
             sub.job_id if sub.created else f"{sub.job_id}\n(already submitted with key {key!r}; nothing written)")


def _stdin_holds_data() -> bool:
    """Whether stdin (descriptor 0) already holds bytes, found without reading it or waiting on it: a regular file
    with bytes after its offset (``< input.json``), or a pipe or socket with bytes in it (``echo ... |``: FIONREAD).
    A terminal, ``/dev/null``, a closed stdin, or a pipe nobody has written to yet (cron, ssh, a parent process that
    keeps it open): no, and nothing waits for it. A stdin that is no descriptor (a test runner's) holds nothing."""
    try:
        if sys.stdin is None or sys.stdin.fileno() != 0:
            return False
        info = os.fstat(0)
        if stat.S_ISREG(info.st_mode):
            return info.st_size > os.lseek(0, 0, os.SEEK_CUR)
        if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
            import array
            import fcntl
            import termios

            waiting = array.array("i", [0])
            fcntl.ioctl(0, termios.FIONREAD, waiting)
            return waiting[0] > 0
    except (OSError, ValueError, ImportError, AttributeError):  # no such descriptor, no FIONREAD (not POSIX)
        pass
    return False


# -- status -----------------------------------------------------------------------------------
STATUS_SHOWN_CHARS = 200  # of a result's output or artifact list in `status` text; --json holds all of it


def _shown_cut(text: str) -> str:
    """``text`` redacted, then cut to ``STATUS_SHOWN_CHARS`` saying where the rest is (a cut never shows half a
    secret: ``sanitized_cut``)."""
    if len(text) <= STATUS_SHOWN_CHARS:
        return safe_line(text)
    return one_line(sanitized_cut(text, STATUS_SHOWN_CHARS)) + " (status --json shows all of it)"


def _lease_text(st: Any, now: float) -> str | None:
    """The lease expiry, and when it has passed while the job runs, what that means (runbook section A); a job whose
    history failed verification is never run nor recovered (its INTEGRITY line says why), so no recovery is promised."""
    if st.lease_expires_at is None or st.state != "running" or from_iso(st.lease_expires_at) > now:
        return st.lease_expires_at
    if st.integrity_error:
        return (f"{st.lease_expires_at} (expired; no worker runs or recovers the job while its history fails "
                "verification: see INTEGRITY)")
    if st.lease_record_held:
        return (f"{st.lease_expires_at} (its claim's, expired: its lease record is held by another process, "
                "RECORD_LOCK_HELD; workers pass the job over, and recover it once the record is let go: runbook F)")
    return (f"{st.lease_expires_at} (expired: its worker stopped renewing it; a worker pass, `worker --once`, "
            "recovers the job)")


def _status_text(st: Any, now: float) -> str:
    result = st.result or {}
    output = result.get("output")
    rows = [("job_id", st.job_id), ("state", st.state or "unknown"), ("kind", st.kind), ("attempt", st.attempt),
            ("run_id", st.run_id), ("worker", st.worker_id), ("lease_expires_at", _lease_text(st, now)),
            ("retry_at", st.retry_at), ("question", st.question),
            ("last_error", f"{st.last_error['code']}: {st.last_error.get('message', '')}" if st.last_error else None),
            ("summary", result.get("summary"))]
    fields = [(k, safe_line(v)) for k, v in rows if v not in (None, "")]
    # the result a reviewer looks at before approving (runbook section B): cut, as it may be long
    fields += [(k, _shown_cut(v)) for k, v in (
        ("output", None if output is None else json.dumps(output, ensure_ascii=False)),
        ("artifacts", ", ".join(result.get("artifacts") or ()))) if v]
    fields += [("updated_at", safe_line(st.updated_at))] if st.updated_at else []
    lines = [f"{k:<17}{v}" for k, v in fields]
    if st.integrity_error:
        lines.append(f"{'INTEGRITY':<17}{safe_line(st.integrity_error['code'] + ': ' + st.integrity_error['message'])}")
    return "\n".join(lines)


@cli.command(context_settings=CONTEXT)
@click.argument("job_id", required=False)
@click.option("--all", "all_jobs", is_flag=True, help="List every job (oldest first).")
@click.option("--state", "states", multiple=True, type=click.Choice(
    ["queued", "running", "awaiting_audit", "waiting_human", "succeeded", "failed", "cancelled"]),
    help="List only jobs in this state (repeatable; implies --all).")
@click.option("--kind", "kinds", multiple=True, callback=job_kinds,
              help="List only jobs of this kind (repeatable; implies --all), e.g. those a `worker --kind` would run.")
@project_command
def status(orch: Any, out: Output, job_id: str | None, all_jobs: bool, states: tuple[str, ...],
           kinds: tuple[str, ...]) -> int:
    """Show a job's state, attempt, run id, lease, pending question and last error.

    Exits 7 when the job's history failed verification (the job will not be run). A head or
    lease record that a paused process holds locked is read around after 1 s: the state from
    the events alone, the claim's lease, and a RECORD_LOCK_HELD warning on stderr.
    """
    if all_jobs or states or kinds:
        if job_id is not None:  # "" too: an id given (an empty one is INVALID_ID, as any bad id)
            raise click.UsageError("give a JOB_ID, or --all (with or without --state, --kind) to list jobs, not both")
        jobs = orch.jobs(states, kinds)
        note_missing_store(orch, out)
        out.emit({"jobs": [j.to_dict() for j in jobs], "count": len(jobs)},
                 lambda: "\n".join([f"{'JOB_ID':<36} {'STATE':<15} {'KIND':<16} {'ATT':>3}  UPDATED"] + [
                     f"{j.job_id:<36} {(j.state or 'unknown'):<15} {safe_line(j.kind or '-')[:16]:<16} {j.attempt:>3}  "
                     f"{j.updated_at or '-'}" + ("  INTEGRITY" if j.integrity_error else "") for j in jobs]))
        return EXIT_INTEGRITY if any(j.integrity_error for j in jobs) else 0
    if job_id is None:
        raise click.UsageError("give a JOB_ID, or --all")
    st = orch.status(job_id)
    out.emit(st.to_dict(), lambda: _status_text(st, orch.clock()))
    return EXIT_INTEGRITY if st.integrity_error else 0


# -- verify -----------------------------------------------------------------------------------
@cli.command(cls=JobIdOptionCommand, context_settings=CONTEXT)
@click.option("--job-id", default=None, help="Verify one job instead of the whole project.")
@click.option("--export-head", metavar="FILE", default=None,
              help="After verifying the whole project (not with --job-id: a usage error, exit 2), write a signed "
                   "digest of every head to this file (keep it elsewhere), signed with the key this machine has "
                   "(exit 8 if none: verify never creates one); a path that cannot be written is refused (exit 3) "
                   "before verifying.")
@click.option("--against", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also prove nothing was rolled back since this exported head file (read up to 256 MiB, "
                   "about two million jobs; a larger file is no anchor: exit 3).")
@click.option("--processes", type=WholeRange(1, MAX_PROCESSES), default=None, envvar="ORCH_VERIFY_PROCESSES",
              show_envvar=True, help="Processes that check the jobs of a project of 2,000 jobs or more, each "
                                     "signature being checked  [default: the CPUs this process may use]")
@project_command
def verify(orch: Any, out: Output, job_id: str | None, export_head: str | None, against: str | None,
           processes: int | None) -> int:
    """Check the signatures and hash chains of every events file and of the audit log.

    Also reports a job whose events are all gone while its head record remains (its file deleted
    or emptied). Names the file and line of each problem; exits 7 on any integrity problem.
    Warns (exit 0), over the whole project, of a store folder a worker run by this user refuses
    or changes: the project folder, .orchestrator, runs/ or artifacts/ that another user owns or
    others may write (or root owns and this user may not write), or a folder above the project
    folder so, or a job's folder so
    (STORE_FOLDER_LOOSE); run by a user who owns neither the project folder nor .orchestrator,
    for the owner of .orchestrator. An audit entry whose event an import under way has not
    written yet is IMPORT_INCOMPLETE, a warning (exit 0); once that import stopped or its process
    is gone, AUDIT_EVENT_MISSING (exit 7), with an IMPORT_ABANDONED warning naming its record.
    """
    from orchestrator.held_records import waiting_said
    from orchestrator.integrity import export_anchor, require_anchor_key
    from orchestrator.output_file import OutputFile

    if export_head is not None and job_id is not None:  # the anchor signs every stream's head: after them all
        raise click.UsageError("--export-head anchors every job, so it needs the whole project verified: "
                               "leave out --job-id")
    anchor = OutputFile(export_head, "the head anchor") if export_head is not None else None  # "" refused there
    with anchor or contextlib.nullcontext():
        if anchor:
            require_anchor_key(orch)  # a key this machine has (verify creates none), before the work
        with waiting_said():  # a lock a paused process holds is waited for, saying so (LOCK_HELD)
            report = orch.verify(job_id, against=against, processes=processes,
                                 progress=lambda n: out.progress(f"verified {n} jobs..."))
        note_missing_store(orch, out)
        result = report.to_dict()
        if anchor and report.ok:
            result["exported"] = export_anchor(orch, anchor)
        elif anchor:
            anchor.discard()  # an older anchor there stays as it was
    where = getattr(orch.store, "path", None)

    def place(p: Any) -> str:
        """The file of a stream on files; else the stream as named (a job, ``anchor``, a folder's path)."""
        return where(p.stream) if where and p.stream != "anchor" and not os.path.isabs(p.stream) else p.stream

    def text() -> str:
        lines = [f"{place(p)}:{p.line}: {p.code}: {p.message}" for p in report.problems]
        lines += [f"warning: {place(w)}:{w.line}: {w.code}: {w.message}"
                  for w in getattr(report, "warnings", [])]  # control plane: audit cross-check
        verdict = "OK" if report.ok else f"FAILED: {len(report.problems)} problem(s)"
        lines.append(f"{verdict}: {report.streams} stream(s), {report.events} event(s) checked")
        if report.ok and report.against:
            held = report.against
            lines.append(safe_line(f"anchor {held['path']} of {held['created_at']} ({held['streams']} stream(s)): "
                                   "nothing rolled back since"))
        if "exported" in result:
            lines.append(f"head anchor written to {export_head}")
        elif anchor:
            lines.append("head anchor NOT written: fix the problems first")
        return "\n".join(lines)

    out.emit(result, text)
    return 0 if report.ok else EXIT_INTEGRITY


def _register_commands() -> None:
    """Import ``orchestrator/commands/``: each module adds its commands to ``cli`` (see ``_LazyGroup``)."""
    import importlib
    import pkgutil

    import orchestrator.commands as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def _run(command: click.Command | str, args: list[str], prog_name: str | None) -> None:
    """``.env``, then ``run_command`` (``command``: the group, or a script's command by name, looked up here), its
    stop signals handled (``command_stop``; a stop reported by ``_interrupted``), in ``stdout.written_whole``: a reader
    that went away (``| head``) ends the command quietly, exit 141 as SIGPIPE would; a disk that refused the output
    (``> file`` on a full disk) is ``STORAGE_ERROR`` (exit 10) on stderr (as JSON with ``--json``), saying to check
    what the command did, or that nothing was done when it was its help, its version or a usage error that could not
    be printed."""
    RESULT.printed = False
    with written_whole(report=Output(wants_json(args), data_on_stdout=True).error):
        try:
            with COMMAND_STOP.handled():  # raises as it begins a stop held since the start (``entry``)
                found = _script_command(command) if isinstance(command, str) else command
                load_dotenv(found, args)
                run_command(found, args, prog_name)
        except (KeyboardInterrupt, Interrupted) as exc:  # KeyboardInterrupt: SIGINT under Python's own handler
            _interrupted(command, args, exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def _interrupted(command: click.Command | str, args: list[str], signum: int) -> None:
    """Report a stop signal that ``_run`` met: ``INTERRUPTED`` (exit 128 + the signal), or, for a command that stops on
    it in its own way (``stopped_before_start``: the worker), what it says of a stop that came before its own
    handling began, wherever that was (the command line read, the store opened, a handler module imported). A stop
    after the command printed its result (``json_usage.RESULT``) is said on stderr, as ``entry.run_tool`` says a
    tool's: stdout keeps that result, its one object under ``--json``."""
    named: click.Command | None = None
    with contextlib.suppress(Exception):  # the look-up imports the command modules, which the signal may have cut
        _register_commands()  # short: those are imported again, whole
        named, args = named_command(_script_command(command) if isinstance(command, str) else command, args)
    own = getattr(named, "stopped_before_start", None)
    if own is not None:
        sys.exit(own(args))
    printed = RESULT.printed
    stop = CommandInterrupted(interrupted_message(signum, printed=printed), signum)
    Output(wants_json(args), data_on_stdout=printed or (named is not None and data_on_stdout(named, args))).error(stop)
    sys.exit(stop.exit_code)


def interrupted_message(signum: int, *, printed: bool = False) -> str:
    """What a command stopped by Ctrl-C or SIGTERM says, outside a command's own handling (the worker and the
    benchmark stop on them in their own way); ``printed``: once it had printed its result."""
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
    if printed:
        return f"interrupted by {name} after the command printed its result"
    return f"interrupted by {name} before the command finished: check what it did (status, verify) before running it again"


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """The command line, as the console script and ``python3 -m orchestrator`` run it (through ``entry``, which handles
    the stop signals before importing this module). Ends the process (``sys.exit``); SIGTERM and SIGINT stay ignored
    after the command, until it has exited (``command_stop``)."""
    _run(cli, sys.argv[1:] if argv is None else list(argv), prog_name)


def run_script(command: str, argv: list[str] | None = None) -> None:
    """``scripts/<name>.py`` (through ``entry``): the same command, named as the runbook names it (as ``main``)."""
    _run(command, sys.argv[1:] if argv is None else list(argv), f"scripts/{Path(sys.argv[0]).name}")


def _script_command(name: str) -> click.Command:
    found = cli.get_command(None, name)  # type: ignore[arg-type]
    if found is None:  # a script named after a command that does not exist: a packaging mistake
        raise SystemExit(f"no command {name!r}")
    return found
