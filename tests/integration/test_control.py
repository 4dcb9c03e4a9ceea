"""Control actions: transitions checked by the reducer, idempotent repeats, races, audit entries."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import jobstates as js
from orchestrator import Orchestrator
from orchestrator.control import resume_from_chat
from orchestrator.errors import (ActionConflictError, ContextSignatureInvalid, InvalidInputError,
                                 InvalidTransitionError, JobNotFoundError)
from orchestrator.signing import line_hash
from orchestrator.store.base import AUDIT_STREAM


def audit_entries(orch: Orchestrator, job_id: str | None = None) -> list[dict]:
    recs = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    return [r for r in recs if job_id is None or r["job_id"] == job_id]


def file_bytes(orch: Orchestrator) -> dict[str, bytes]:
    root = orch.settings.state_dir
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "locks" not in p.parts}


# -- idempotency ---------------------------------------------------------------------------------------
def test_resume_twice_with_same_answer_writes_one_event(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    first = orch.resume(job_id, "yes, deploy")
    second = orch.resume(job_id, "yes, deploy")
    assert first.applied and not first.already_applied
    assert second.already_applied and second.event_seq == first.event_seq
    assert "already applied" in second.message
    assert js.event_types(orch, job_id).count("job_resumed") == 1
    assert len([e for e in audit_entries(orch, job_id) if e["data"]["action"] == "resume"]) == 1
    assert orch.load(job_id).state.answers == ("yes, deploy",)


def test_resume_records_the_question_it_answers(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, question="Which region?")
    orch.resume(job_id, "eu-west-1")
    assert orch.load(job_id).events[-1].data == {"answer": "eu-west-1", "question": "Which region?"}


def test_a_different_answer_after_a_resume_is_refused_and_writes_nothing(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    before = file_bytes(orch)
    with pytest.raises(ActionConflictError) as exc:
        orch.resume(job_id, "no")
    assert exc.value.code == "ACTION_CONFLICT" and exc.value.exit_code == 5
    assert "different answer" in exc.value.message and "'yes'" in exc.value.message
    assert file_bytes(orch) == before


def test_answers_that_differ_only_in_a_redacted_secret_are_the_same_answer_to_the_job(orch: Orchestrator) -> None:
    """The job receives the answer as stored, redacted; the typed secret is kept nowhere (docs/decisions.md)."""
    job_id = js.waiting_human(orch)
    first, again = orch.resume(job_id, "password=aaa-first"), orch.resume(job_id, "password=bbb-second")
    assert first.applied and again.already_applied and again.event_seq == first.event_seq
    assert orch.load(job_id).state.context()["answers"] == ["password=[REDACTED]"]
    assert not [name for name, data in file_bytes(orch).items() if b"aaa-first" in data or b"bbb-second" in data]


def test_a_resume_retried_after_the_job_asks_the_same_question_again_is_already_applied(orch: Orchestrator) -> None:
    """The retry of a resume whose job re-ran and asks exactly the same: no answer to a question not seen."""
    job_id = js.waiting_human(orch, run_id="run-1")
    first = orch.resume(job_id, "yes")
    js.waiting_human(orch, run_id="run-2", job_id=job_id)  # the re-run asks the same question again
    before = file_bytes(orch)
    retry = orch.resume(job_id, "yes")
    assert retry.already_applied and retry.event_seq == first.event_seq and retry.state == "waiting_human"
    assert "asks the same question again" in retry.message and "--again" in retry.message
    assert file_bytes(orch) == before


def test_again_gives_the_same_answer_to_the_same_question_once_more(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, run_id="run-1")
    orch.resume(job_id, "yes")
    js.waiting_human(orch, run_id="run-2", job_id=job_id)
    assert orch.resume(job_id, "yes", again=True).applied
    assert orch.resume(job_id, "yes", again=True).already_applied  # a retry of that one: the job is queued
    assert orch.load(job_id).state.answers == ("yes", "yes")


def test_the_same_answer_to_a_different_question_is_a_new_resume(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, run_id="run-1", question="Deploy to prod?")
    orch.resume(job_id, "yes")
    js.waiting_human(orch, run_id="run-2", job_id=job_id, question="Deploy to prod? The canary failed.")
    assert orch.resume(job_id, "yes").applied
    assert orch.load(job_id).state.answers == ("yes", "yes")


def test_another_answer_to_the_same_question_asked_again_is_a_new_resume(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, run_id="run-1")
    orch.resume(job_id, "yes")
    js.waiting_human(orch, run_id="run-2", job_id=job_id)
    assert orch.resume(job_id, "no").applied
    assert orch.load(job_id).state.answers == ("yes", "no")


def test_a_revise_retried_after_the_job_shows_the_same_output_again_is_already_applied(orch: Orchestrator) -> None:
    job_id = js.awaiting_audit(orch, run_id="run-1")
    first = orch.revise(job_id, "shorter please")
    js.awaiting_audit(orch, run_id="run-2", job_id=job_id)  # the re-run gives the same draft
    retry = orch.revise(job_id, "shorter please")
    assert retry.already_applied and retry.event_seq == first.event_seq and retry.state == "awaiting_audit"
    assert orch.revise(job_id, "shorter please", again=True).applied
    assert orch.load(job_id).state.revisions == ("shorter please", "shorter please")


@pytest.mark.parametrize("first, retry", [
    ("caf\u00e9 au lait", "cafe\u0301 au lait"),  # NFC and NFD: the same text
    ("line one\r\nline two", "line one\nline two"),  # pasted with CRLF, then typed
    ("yes", "\u200byes\u200b\ufeff"),  # invisible characters pasted at the ends
])
def test_a_retry_that_differs_only_in_unicode_form_line_endings_or_invisible_ends_is_already_applied(
        orch: Orchestrator, first: str, retry: str) -> None:
    job_id = js.waiting_human(orch)
    applied = orch.resume(job_id, first)
    before = file_bytes(orch)
    again = orch.resume(job_id, retry)
    assert again.already_applied and again.event_seq == applied.event_seq and file_bytes(orch) == before
    assert orch.load(job_id).state.answers == (orch.load(job_id).events[-1].data["answer"],)


def test_answers_are_written_in_one_form_and_differ_in_case_spacing_or_width(orch: Orchestrator) -> None:
    """What the job receives is NFC with LF line ends; anything else that differs is another answer."""
    job_id = js.waiting_human(orch)
    orch.resume(job_id, " cafe\u0301\r\nok\u200b ")
    assert orch.load(job_id).state.answers == ("caf\u00e9\nok",)
    for other in ("CAF\u00c9\nok", "caf\u00e9\n ok", "ｃａｆé\nok"):
        with pytest.raises(ActionConflictError):
            orch.resume(job_id, other)


def test_an_answer_of_invisible_characters_only_is_refused_as_empty(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    before = file_bytes(orch)
    with pytest.raises(InvalidInputError, match="must not be empty"):
        orch.resume(job_id, "\u200b \ufeff\u2060")
    assert file_bytes(orch) == before


def test_a_text_within_the_limit_is_taken_even_when_redaction_makes_it_longer(orch: Orchestrator) -> None:
    """The limit is on the text given: before, it was on the redacted one (each "token=a" grows by 9 characters), so
    an answer under the limit was refused, quoting a length the operator never typed."""
    from orchestrator.limits import MAX_TEXT_CHARS

    job_id = js.waiting_human(orch)
    answer = ("token=a " * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS - 1] + "!"
    assert len(answer) == MAX_TEXT_CHARS
    orch.resume(job_id, answer)
    written = orch.load(job_id).state.answers[-1]
    assert "token=a" not in written and len(written) > MAX_TEXT_CHARS


@pytest.mark.parametrize("text, says", [
    ("x" * 20_001, "the answer is 20001 characters long, more than the 20000 a control text may have"),
    ("\ud800", "the answer is not valid Unicode (bytes that are not UTF-8?)"),
    (" \u200b ", "the answer must not be empty"),
    (5, "the answer must be text (str), not int"),
])
def test_every_refused_control_text_says_why_and_that_nothing_was_written(orch: Orchestrator, text, says) -> None:
    job_id = js.waiting_human(orch)
    before = file_bytes(orch)
    with pytest.raises(InvalidInputError) as refused:
        orch.resume(job_id, text)
    assert refused.value.message == f"{says}; nothing was written"
    assert file_bytes(orch) == before


@pytest.mark.parametrize("call", [
    lambda o, j: o.resume(j, 5), lambda o, j: o.resume(j, b"yes"), lambda o, j: o.resume(j, "yes", note=["n"]),
    lambda o, j: o.cancel(j, 5), lambda o, j: o.approve(j, b"ok"), lambda o, j: resume_from_chat(o, j, None),
])
def test_a_control_text_that_is_not_a_string_is_invalid_input_from_python(orch: Orchestrator, call) -> None:
    job_id = js.waiting_human(orch)
    before = file_bytes(orch)
    with pytest.raises(InvalidInputError, match="must be text"):
        call(orch, job_id)
    assert file_bytes(orch) == before


def test_revise_twice_with_the_same_notes_writes_one_event_and_other_notes_conflict(orch: Orchestrator) -> None:
    job_id = js.awaiting_audit(orch)
    assert orch.revise(job_id, "shorter please").applied
    assert orch.revise(job_id, "shorter please").already_applied
    with pytest.raises(ActionConflictError):
        orch.revise(job_id, "longer please")
    assert js.event_types(orch, job_id).count("job_revised") == 1
    assert orch.load(job_id).state.revisions == ("shorter please",)


def test_approve_twice_writes_one_event(orch: Orchestrator) -> None:
    job_id = js.awaiting_audit(orch)
    assert orch.approve(job_id, "looks good").applied
    again = orch.approve(job_id, "looks good")
    assert again.already_applied and again.state == "succeeded"
    assert js.event_types(orch, job_id).count("job_approved") == 1


def test_cancel_twice_writes_one_event(orch: Orchestrator) -> None:
    job_id = orch.submit("echo", {})
    assert orch.cancel(job_id, "not needed").applied
    assert orch.cancel(job_id, "other reason").already_applied
    assert js.event_types(orch, job_id) == ["job_submitted", "job_cancelled"]


def test_a_cancelled_job_shows_no_pending_question(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, question="Which one?")
    orch.cancel(job_id, "not needed")
    assert [(st.state, st.question) for st in (orch.status(job_id), *orch.jobs())] == [("cancelled", None)] * 2


# -- transitions that do not fit -----------------------------------------------------------------------
@pytest.mark.parametrize("make, action, arg", [
    (lambda o: o.submit("echo", {}), "approve", ""),
    (lambda o: o.submit("echo", {}), "resume", "yes"),
    (lambda o: o.submit("echo", {}), "revise", "notes"),
    (js.awaiting_audit, "resume", "yes"),
    (js.waiting_human, "approve", ""),
    (js.waiting_human, "revise", "notes"),
])
def test_an_action_that_does_not_fit_the_state_is_refused_and_writes_nothing(orch: Orchestrator, make, action,
                                                                               arg) -> None:
    job_id = make(orch)
    before = file_bytes(orch)
    with pytest.raises(InvalidTransitionError) as exc:
        getattr(orch, action)(job_id, arg) if arg else getattr(orch, action)(job_id)
    assert exc.value.code == "INVALID_TRANSITION" and "nothing was written" in exc.value.message
    assert file_bytes(orch) == before


def test_approve_after_a_revise_is_refused_not_taken_as_already_applied(orch: Orchestrator) -> None:
    job_id = js.awaiting_audit(orch)
    orch.revise(job_id, "fix the title")
    with pytest.raises(InvalidTransitionError) as exc:
        orch.approve(job_id)
    assert not isinstance(exc.value, ActionConflictError)


@pytest.mark.parametrize("make, first, then", [
    (js.awaiting_audit, ("revise", "fix the title"), ("approve",)),  # the loser of an approve/revise race
    (js.awaiting_audit, ("approve",), ("revise", "fix the title")),
    (js.waiting_human, ("cancel",), ("resume", "yes")),  # the loser of a resume/cancel race
    (js.awaiting_audit, ("cancel",), ("approve",)),
])
def test_an_action_refused_because_another_decision_came_first_names_that_decision(orch: Orchestrator, make, first,
                                                                                    then) -> None:
    job_id = make(orch)
    getattr(orch, first[0])(job_id, *first[1:])
    decided = orch.load(job_id).stream.records[-1]
    before = file_bytes(orch)
    with pytest.raises(InvalidTransitionError) as exc:
        getattr(orch, then[0])(job_id, *then[1:])
    past = {"approve": "approved", "revise": "revised", "cancel": "cancelled"}[first[0]]
    assert f"it was {past} at {decided['ts']} by {orch.actor} (event {decided['seq']})" in exc.value.message
    assert exc.value.exit_code == 5 and file_bytes(orch) == before


def test_cancel_of_a_final_job_is_refused(orch: Orchestrator) -> None:
    job_id = js.awaiting_audit(orch)
    orch.approve(job_id)
    with pytest.raises(InvalidTransitionError):
        orch.cancel(job_id)


def test_cancel_of_a_running_job_writes_just_the_event(orch: Orchestrator) -> None:
    job_id = js.running(orch, run_id="run-9")
    result = orch.cancel(job_id, "operator stop")
    view = orch.load(job_id)
    assert result.applied and view.state.state == "cancelled"
    assert view.events[-1].run_id == "run-9"  # the worker of run-9 sees it on its next append
    assert js.event_types(orch, job_id)[-1] == "job_cancelled"


def test_empty_answers_and_unknown_jobs_are_refused(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    with pytest.raises(InvalidInputError):
        orch.resume(job_id, "   ")
    with pytest.raises(JobNotFoundError):
        orch.resume("01NOSUCHJOB", "yes")


def test_a_tampered_job_is_refused_and_the_refusal_is_audited(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    path = orch.store.path(job_id)
    path.write_bytes(path.read_bytes().replace(b'"hi"', b'"HI"'))
    with pytest.raises(ContextSignatureInvalid):
        orch.resume(job_id, "yes")
    assert "job_resumed" not in path.read_text()
    assert [e["data"]["action"] for e in audit_entries(orch, job_id)] == ["integrity_refusal"]


# -- races -------------------------------------------------------------------------------------------------
def test_operators_racing_the_same_resume_in_threads_write_one_event(base: Path, keyring) -> None:
    setup = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    for _ in range(5):
        job_id = js.waiting_human(setup)
        barrier = threading.Barrier(6)
        results, errors = [], []

        def operator() -> None:
            mine = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
            barrier.wait()
            try:
                results.append(mine.resume(job_id, "go"))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=operator) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sum(r.applied for r in results) == 1 and len(results) == 6
        assert js.event_types(setup, job_id).count("job_resumed") == 1
        assert len([e for e in audit_entries(setup, job_id) if e["data"]["action"] == "resume"]) == 1


# -- the audit entries -----------------------------------------------------------------------------------
def test_each_action_writes_one_signed_entry_naming_the_event_it_produced(orch: Orchestrator) -> None:
    job_id = js.awaiting_audit(orch, run_id="run-7")
    orch.revise(job_id, "add a summary")
    js.awaiting_audit(orch, run_id="run-8", job_id=job_id)
    orch.approve(job_id, "ok now")
    lines = orch.store.read(job_id)
    entries = audit_entries(orch, job_id)
    assert [(e["data"]["action"], e["run_id"], e["actor"]) for e in entries] == [
        ("revise", "run-7", orch.actor), ("approve", "run-8", orch.actor)]
    by_hash = {line_hash(s.raw): json.loads(s.raw) for s in lines}
    assert [by_hash[e["data"]["event_hash"]]["type"] for e in entries] == ["job_revised", "job_approved"]
    assert entries[1]["data"]["note"] == "ok now"
    from orchestrator.integrity import verify_project

    report = verify_project(orch)
    assert report.ok and not report.warnings
