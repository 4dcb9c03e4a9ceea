"""``orchestrator control approve|revise|resume|cancel`` and ``orchestrator resume-from-chat``.

Local CLI only: there is deliberately no ``--token`` option (an unknown option is click's
usage error, exit 2). An idempotent repeat exits 0 and says "already applied".
"""
from __future__ import annotations

from typing import Any

import click

from orchestrator.cli import cli
from orchestrator.cli_common import CONTEXT, JobIdOptionCommand, Output, project_command
from orchestrator.errors import InvalidInputError
from orchestrator.limits import MAX_TEXT_CHARS, MAX_TEXT_FILE_BYTES, read_at_most
from orchestrator.security import one_line, validate_id

_TEXT = {
    "approve": ("NOTE", False, "Approve a job awaiting audit: awaiting_audit -> succeeded."),
    "revise": ("NOTES", True, "Send a job awaiting audit back with revision NOTES: awaiting_audit -> queued."),
    "resume": ("ANSWER", True, "Answer a job's pending question: waiting_human -> queued, re-run with ANSWER. "
                               "The job receives ANSWER trimmed (also of zero-width spaces), with LF line ends, "
                               "in Unicode NFC and with secrets redacted (password=x is password=[REDACTED]), "
                               "and a repeat is compared in that form."),
    "cancel": ("REASON", False, "Cancel a job in any non-final state -> cancelled (a worker running it "
                                "kills the run at its next heartbeat, within a third of its lease, and records "
                                "nothing of it; the run of a worker that died or is paused is killed, on its "
                                "machine, by the next worker's stale recovery there once its lease expired)."),
}


@cli.group("control", context_settings=CONTEXT)
def control_group() -> None:
    """Operator actions: approve, revise, resume, cancel.

    Each checks that the action fits the job's state (else exit 5, nothing written) and is
    idempotent: the same action again (same job, same answer or notes) writes nothing and exits 0
    saying it was already applied, also after the job re-ran and asks exactly the same again
    (then --again gives the same answer or notes once more). A different answer or notes after
    the decision was taken is refused with ACTION_CONFLICT (exit 5). Notes and answers are
    sanitized (secrets redacted) before they are written, and compared as written: two answers
    that differ only in a redacted secret are the same answer to the job.
    """


def _emit(out: Output, result: Any) -> None:
    out.emit(result.to_dict(), one_line(result.message))  # it names the actor of an earlier event


def _again_option(action: str) -> Any:
    """``--again`` for the actions a job can ask for twice (resume, revise); nothing for the others."""
    if action not in ("resume", "revise"):
        return lambda command: command
    thing, field = ("asks the same question", "answer") if action == "resume" else ("shows the same output", "notes")
    return click.option("--again", is_flag=True, help=(
        f"Give the same {field} as the last {action} although the job {thing} again. Without it, that "
        f"repeat is taken as a retry of the last {action}: already applied, nothing written."))


def _text_file_option(what: str) -> Any:
    return click.option("--text-file", type=click.File("rb"), metavar="FILE", default=None, help=(
        f"Read the {what} from a file ('-' for stdin) instead of the argument, e.g. a multi-line one, or one a "
        f"shell history should not keep: UTF-8, at most {MAX_TEXT_FILE_BYTES} bytes (a larger one is refused, exit 3, "
        "without being read further); a trailing newline is trimmed like any space at its ends."))


def _given_text(text: str | None, text_file: Any, metavar: str, required: bool) -> str | None:
    """The argument, or the text of ``--text-file`` (not both); refused like a bad argument, before anything is
    read of the job: a file too long or not UTF-8 (``INVALID_INPUT``), or neither given where one is needed."""
    if text_file is None:
        if required and text is None:
            raise click.UsageError(f"give the {metavar.lower()} as an argument ({metavar}) or with --text-file")
        return text
    if text is not None:
        raise click.UsageError(f"give the {metavar.lower()} as an argument or with --text-file, not both")
    name = getattr(text_file, "name", None)  # stdin's is "<stdin>" (none at all under a test runner)
    given = f"--text-file {name if isinstance(name, str) and name != '<stdin>' else '-'}"
    raw = read_at_most(text_file, MAX_TEXT_FILE_BYTES)
    if raw is None:
        raise InvalidInputError(f"{given} holds more than {MAX_TEXT_FILE_BYTES} bytes (the {metavar.lower()} may be at "
                                f"most {MAX_TEXT_CHARS} characters); nothing was written")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{given} is not UTF-8 text (byte {exc.start} of it); nothing was written") from None


def _make(action: str) -> None:
    metavar, required, help_text = _TEXT[action]
    note_names = ["--note", "--reason"] if action == "cancel" else ["--note"]
    note_help = ("Comment for the audit log (default: the text itself)." if required
                 else f"The {metavar.lower()} (instead of the positional {metavar}).")

    @control_group.command(action, context_settings=CONTEXT, help=help_text)
    @click.argument("job_id")
    @click.argument("text", metavar=f"[{metavar}]", required=False)
    @_text_file_option(metavar)
    @click.option(*note_names, "note", default=None, help=note_help)
    @_again_option(action)
    @project_command
    def command(orch: Any, out: Output, job_id: str, text: str | None, text_file: Any, note: str | None,
                again: bool = False) -> None:
        from orchestrator import control
        from orchestrator.held_records import waiting_said

        text = _given_text(text, text_file, metavar, required)
        if not required and text is not None and note is not None:
            given = "--text-file" if text_file is not None else "an argument"
            raise click.UsageError(f"give the {metavar.lower()} once: as an argument, with --text-file or with "
                                   f"{' or '.join(note_names)} (here {given} and {'/'.join(note_names)})")
        with waiting_said():  # a lock a paused process holds is waited for, saying so (LOCK_HELD)
            if required:
                result = getattr(control, action)(orch, job_id, text, note=note or "", again=again)
            else:
                result = getattr(control, action)(orch, job_id, text if text is not None else (note or ""))
        _emit(out, result)


for _action in ("approve", "revise", "resume", "cancel"):
    _make(_action)


@cli.command("resume-from-chat", context_settings=CONTEXT)
@click.argument("job_id")
@click.argument("message", metavar="[MESSAGE]", required=False)
@_text_file_option("MESSAGE")
@click.option("--note", default=None, help="Comment for the audit log (default: the answer).")
@_again_option("resume")
@project_command
def resume_from_chat(orch: Any, out: Output, job_id: str, message: str | None, text_file: Any, note: str | None,
                     again: bool) -> None:
    """Resume JOB_ID with the answer in a pasted chat MESSAGE: "job_id: <JOB_ID>; <answer>".

    Tolerates any case and spacing, full-width "：" and "；", a missing space, a leading "@bot",
    zero-width spaces around the key, the id and the separator.
    Refuses a message that names another job, first or anywhere after (JOB_ID_MISMATCH, exit 3), or
    has no answer, as one that only repeats its own key, in any quotes or brackets (CHAT_MESSAGE_INVALID,
    exit 3); nothing is written then. Idempotent like `control resume`.
    """
    from orchestrator import control
    from orchestrator.held_records import waiting_said

    message = _given_text(message, text_file, "MESSAGE", True)
    with waiting_said():
        result = control.resume_from_chat(orch, job_id, message, note=note or "", again=again)
    _emit(out, result)


@cli.group("audit", context_settings=CONTEXT)
def audit_group() -> None:
    """The audit log: heal missing entries (see also audit-timeline and verify)."""


@audit_group.command("heal", cls=JobIdOptionCommand, context_settings=CONTEXT)
@click.option("--job-id", default=None, help="Heal one job instead of every job of the project.")
@project_command
def audit_heal(orch: Any, out: Output, job_id: str | None) -> None:
    """Write the audit entries a crash left missing (once; the job events are the truth), and the head records
    left behind their jobs' events and the audit log's.

    Every command that touches a job heals it already; this heals the whole project at once, and also writes the
    entries an audit log restored from an older copy lacks (it reads the whole log). A head record behind
    (a crash, or a disk that refused it: HEAD_RECORD_NOT_WRITTEN) is otherwise written by the job's next event,
    which a finished job never gets. The audit log's is written only once its entries after it verify.
    """
    from orchestrator import audit, head_records

    ids = [validate_id(job_id)] if job_id is not None else sorted(orch.job_ids())  # "": INVALID_ID, not every job
    written: list[int] = []
    caught_up: list[str] = []
    warnings: list[dict[str, str]] = []  # entries written whose records after them were not (also logged)
    logged = audit.audited_hashes(orch)  # the log itself, not only the markers (``audit.unmarked``)
    for start in range(0, len(ids), audit.HEAL_BATCH):
        views = [v for v in (orch.load(j) for j in ids[start:start + audit.HEAL_BATCH]) if v.ok]
        written += audit.heal_found(orch, audit.unmarked(orch, views, logged), warnings=warnings)
        caught_up += head_records.catch_up_jobs(orch.store, views)
        if len(ids) > audit.HEAL_BATCH:  # a large project: say how far (stderr, on a terminal only)
            out.progress(f"checked {min(start + audit.HEAL_BATCH, len(ids))} of {len(ids)} jobs...")
    audit_log = head_records.catch_up_audit_log(orch)  # after the entries this heal wrote, which write it anyway
    out.emit({"jobs": len(ids), "written": len(written), "audit_seqs": written, "head_records": caught_up,
              "audit_head_record": audit_log, "warnings": warnings},
             f"checked {len(ids)} job(s); wrote {len(written)} missing audit entr{'y' if len(written) == 1 else 'ies'}"
             f" and {len(caught_up) + audit_log} head record(s) behind their events"
             + (" (the audit log's among them)" if audit_log else ""))
