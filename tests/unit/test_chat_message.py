"""Parsing ``job_id: <job_id>; <answer>`` as chat clients paste it."""
from __future__ import annotations

import pytest

from orchestrator.control import parse_chat_message
from orchestrator.errors import ChatMessageError, JobIdMismatchError

JOB = "01M80JP953YRTQZF0XECN1BNQB"


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
])
def test_tolerant_forms_give_the_answer(message: str, answer: str) -> None:
    assert parse_chat_message(JOB, message) == answer


@pytest.mark.parametrize("message", [
    f"job_id: 01OTHERJOB; yes",
    f"job_id: {JOB}X; yes",
    f"job_id: {JOB}; job_id: 01OTHERJOB; ship it",  # names this job, then another
    f"jobid: {JOB}\n\njob_id: 01OTHERJOB: deploy",  # a pasted thread
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
