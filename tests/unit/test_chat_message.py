"""Parsing ``job_id: <job_id>; <answer>`` as chat clients paste it."""
from __future__ import annotations

import pytest

from orchestrator.control import parse_chat_message
from orchestrator.errors import ChatMessageError, JobIdMismatchError

JOB = "01M80JP953YRTQZF0XECN1BNQB"
OTHER = "01M80JQ0000000000000000000"
KEYED = "key-" + "0123456789abcdef" * 2


@pytest.mark.parametrize("message, answer", [
    (f"job_id: {JOB}; yes", "yes"),
    (f"job_id:{JOB};yes", "yes"),  # no spaces at all
    (f"  JOB_ID :  {JOB} ;   yes  ", "yes"),  # spacing and case
    (f"job_id：{JOB}；好的，继续", "好的，继续"),  # full-width colon and semicolon
    (f"Job Id： {JOB} ； 继续", "继续"),
    (f"job-id = `{JOB}`, deploy it", "deploy it"),
    (f"> jobid: {JOB} ship it", "ship it"),  # quoted reply, no separator after the id
    (f"job_id: {JOB.lower()}; yes", "yes"),  # ULIDs are case-insensitive
    (f"job_id: {JOB}; line one\nline two; with semicolons", "line one\nline two; with semicolons"),
    (f"> @bot job_id: {JOB}; yes", "yes"),  # a mention before the key
    (f"job_id: {JOB}: ratio 3:1", "ratio 3:1"),
    (f"job_id: {JOB}; as job_id: {JOB.lower()} said, yes", f"as job_id: {JOB.lower()} said, yes"),  # itself again
    # later on, words after a "job id" key that are no job id this orchestrator assigns are just the answer
    (f"job_id: {JOB}; the job id: in the ticket is wrong", "the job id: in the ticket is wrong"),
    (f"job_id: {JOB}; set job id = unknown, then retry", "set job id = unknown, then retry"),
    (f"job_id: {JOB}; use jobid: 42", "use jobid: 42"),
    (f"job_id: {JOB}; job id: {OTHER}X is no id", f"job id: {OTHER}X is no id"),
])
def test_tolerant_forms_give_the_answer(message: str, answer: str) -> None:
    assert parse_chat_message(JOB, message) == answer


@pytest.mark.parametrize("message", [
    f"job_id: 01OTHERJOB; yes",
    f"job_id: {JOB}X; yes",
    f"job_id: {JOB}; job_id: {OTHER}; ship it",  # names this job, then another
    f"jobid: {JOB}\n\njob_id: {OTHER}: deploy",  # a pasted thread
    f"job_id: {JOB}; yes\n> job id = {KEYED.upper()}; no",  # a job submitted with a key
    f"job_id: {JOB}; yes, and job-id: '{OTHER.lower()}' too",
    f"job_id: {JOB}; yes. The earlier thread was job id: {OTHER}. No",  # the other id ends a sentence
    f"job_id: {JOB}; ok job id: {KEYED}-",
    f"job_id: {JOB}; ok\njob id: {OTHER}...",
])
def test_a_message_naming_another_job_is_refused(message: str) -> None:
    with pytest.raises(JobIdMismatchError) as exc:
        parse_chat_message(JOB, message)
    assert exc.value.code == "JOB_ID_MISMATCH" and exc.value.exit_code == 3


@pytest.mark.parametrize("message", [
    "yes", "", f"job: {JOB}; yes", f"job_id: {JOB};   ", f"job_id {JOB} yes",
    f"job_id: {JOB}\u2010X; yes", f"job_id: {JOB}\u0415; yes",  # the id goes on in a look-alike letter: no id
])
def test_a_message_without_id_or_answer_is_refused(message: str) -> None:
    with pytest.raises(ChatMessageError) as exc:
        parse_chat_message(JOB, message)
    assert exc.value.code == "CHAT_MESSAGE_INVALID"


def test_the_ids_the_orchestrator_assigns_are_the_ones_a_message_cannot_name_later() -> None:
    from orchestrator.api import key_job_id, new_job_id
    from orchestrator.security import is_assigned_job_id

    assigned = [new_job_id(), new_job_id(0), key_job_id("p", "k")]
    assert all(is_assigned_job_id(i) and is_assigned_job_id(i.swapcase()) for i in assigned)
    for assigned_id in assigned:
        with pytest.raises(JobIdMismatchError):
            parse_chat_message(JOB, f"job_id: {JOB}; ok\njob_id: {assigned_id}; no")
    assert not any(is_assigned_job_id(w) for w in ["in", "unknown", "42", JOB + "X", "key-123", OTHER[:-1]])
