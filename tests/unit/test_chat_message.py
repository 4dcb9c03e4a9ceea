"""Parsing ``job_id: <job_id>; <answer>`` as chat clients paste it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.control import parse_chat_message
from orchestrator.errors import ChatMessageError, JobIdMismatchError

JOB = "01M80JP953YRTQZF0XECN1BNQB"
OTHER = "01M80JQ0000000000000000000"
REPO = Path(__file__).resolve().parents[2]
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
    (f"job_id: {JOB};\njob_id: {JOB}; yes", f"job_id: {JOB}; yes"),  # its key repeated, then an answer: kept whole
    (f"job_id: {JOB}; job_id: «{JOB}»; yes", f"job_id: {JOB}; job_id: «{JOB}»; yes"[len(f"job_id: {JOB}; "):]),
    (f"job_id: {JOB};\njob_id: 「{JOB}」\nyes", f"job_id: 「{JOB}」\nyes"),
    # later on, words after a "job id" key that are no job id this orchestrator assigns are just the answer
    (f"job_id: {JOB}; the job id: in the ticket is wrong", "the job id: in the ticket is wrong"),
    (f"job_id: {JOB}; set job id = unknown, then retry", "set job id = unknown, then retry"),
    (f"job_id: {JOB}; use jobid: 42", "use jobid: 42"),
    (f"job_id: {JOB}; job id: {OTHER}X is no id", f"job id: {OTHER}X is no id"),
    # invisible characters chat clients paste around the key, the id and the separator
    (f"job_id: {JOB}\u200b; yes", "yes"),
    (f"\ufeffjob_id:\u2060{JOB}\u200b ;\u200b yes\u200b", "yes"),
    (f"job\xa0id:\xa0{JOB}; yes", "yes"),  # no-break spaces
])
def test_tolerant_forms_give_the_answer(message: str, answer: str) -> None:
    assert parse_chat_message(JOB, message) == answer


@pytest.mark.parametrize("message", [
    "job_id: 01OTHERJOB; yes",
    f"job_id: {JOB}X; yes",
    f"job_id: {JOB}; job_id: {OTHER}; ship it",  # names this job, then another
    f"jobid: {JOB}\n\njob_id: {OTHER}: deploy",  # a pasted thread
    f"job_id: {JOB}; yes\n> job id = {KEYED.upper()}; no",  # a job submitted with a key
    f"job_id: {JOB}; yes, and job-id: '{OTHER.lower()}' too",
    f"job_id: {JOB}; yes. The earlier thread was job id: {OTHER}. No",  # the other id ends a sentence
    f"job_id: {JOB}; ok job id: {KEYED}-",
    f"job_id: {JOB}; ok\njob id: {OTHER}...",
    # further on, the other id ends wherever an id character does not follow, and the key is found in its variants
    f"job_id: {JOB}; yes (see job_id: {OTHER})",
    f"job_id: {JOB}; yes\njob_id: {OTHER}! no",
    f"job_id: {JOB}; 好\njob_id：{OTHER}。不",
    f"job_id: {JOB}; yes\njob_id: {OTHER}\u200b; no",
    f"job_id: {JOB}; yes\njob_id: {OTHER}\u0415 no",
    f"job_id: {JOB}; yes **job_id: {OTHER}** no",
    f"job_id: {JOB}; yes *job_id:* {OTHER} no",
    f"job_id: {JOB}; yes\njob\xa0id: {OTHER}; no",
    f"job_id: {JOB}; yes\njob\u2010id: {OTHER}; no",
    f"job_id: {JOB}; yes\nｊｏｂ＿ｉｄ：{OTHER}；no",
    f"job_id: {JOB}; yes\njob\u200b_id: {OTHER}; no",
    # any run of characters that are neither letters nor digits between the key and the id, of any script
    *[f"job_id: {JOB}; job_id: {opening}{OTHER}{closing} ship it"
      for opening, closing in ["«»", "„“", "「」", "‹›", "{}", "||", ("#", ""), ("/", ""), ("@", ""), "【】", "⟨⟩",
                               ("→ ", ""), ("— ", ""), ("• ", ""), ("::", ""), ("«\u00a0", "\u00a0»"), "｛｝"]],
    f"job_id: {JOB}; job_id: job_id: {OTHER}",  # the first key's "id" is the second key
])
def test_a_message_naming_another_job_is_refused(message: str) -> None:
    with pytest.raises(JobIdMismatchError) as exc:
        parse_chat_message(JOB, message)
    assert exc.value.code == "JOB_ID_MISMATCH" and exc.value.exit_code == 3


@pytest.mark.parametrize("message", [
    "yes", "", f"job: {JOB}; yes", f"job_id: {JOB};   ", f"job_id {JOB} yes",
    f"job_id: {JOB}\u2010X; yes", f"job_id: {JOB}\u0415; yes",  # the id goes on in a look-alike letter: no id
    f"job_id: {JOB}\u200bX; yes",  # ... or after an invisible character
    f"job_id: {JOB}; \u200b\ufeff ",  # an answer of invisible characters is no answer
    # a message that only repeats its own key holds no answer
    f"job_id: {JOB};\njob_id: {JOB};", f"job_id: {JOB}; job_id: {JOB}", f"job_id: {JOB}; > JOB ID = `{JOB.lower()}`, ",
    f"job_id: {JOB}; " + f"job_id: {JOB}; " * 50,
    # ... in any quotes or brackets the keys further on take, with any separator after it
    *[f"job_id: {JOB}{after} job_id: {opening}{JOB}{closing}{sep}"
      for opening, closing in ["«»", "「」", '""', "''", "“”", "„“", "‹›", "【】", "()", "**", ("« ", " »")]
      for after, sep in [(";", ";"), (",", ","), (";\n", "\n"), (";", "")]],
    f"job_id: {JOB}; job_id: «{JOB}»; job_id: 「{JOB.lower()}」, job_id: '{JOB}'\njob_id: \"{JOB}\";",  # mixed
    f"job_id: \"{JOB}\"; job_id: «{JOB}»;", f"job_id: {JOB};\n> job id = 「{JOB}」；",
    f"job_id: {JOB}; **job_id:** «{JOB}»", f"job_id: {JOB}; job_id：「{JOB}」。", f"job_id: {JOB}; job_id: «{JOB}.»",
    f"job_id: {JOB}; @bot job_id: «{JOB}»\u200b;",
])
def test_a_message_without_id_or_answer_is_refused(message: str) -> None:
    with pytest.raises(ChatMessageError) as exc:
        parse_chat_message(JOB, message)
    assert exc.value.code == "CHAT_MESSAGE_INVALID" and exc.value.exit_code == 3


def test_the_ids_the_orchestrator_assigns_are_the_ones_a_message_cannot_name_later() -> None:
    from orchestrator.submitted import key_job_id, new_job_id
    from orchestrator.security import is_assigned_job_id

    assigned = [new_job_id(), new_job_id(0), key_job_id("p", "k")]
    assert all(is_assigned_job_id(i) and is_assigned_job_id(i.swapcase()) for i in assigned)
    for assigned_id in assigned:
        with pytest.raises(JobIdMismatchError):
            parse_chat_message(JOB, f"job_id: {JOB}; ok\njob_id: {assigned_id}; no")
    assert not any(is_assigned_job_id(w) for w in ["in", "unknown", "42", JOB + "X", "key-123", OTHER[:-1]])


def test_a_message_of_many_mentions_is_parsed_in_linear_time() -> None:
    """The leading mentions are read without backtracking through every way to split them: 80 characters of
    ``@.`` took days before (each pair four times longer), a hung command, not a refusal."""
    code = ("from orchestrator.control import parse_chat_message as p\n"
            "for m in ('@.' * 5000 + 'x', '@a. ' * 5000, '@a-.@b_' * 3000 + ' job_id'):\n"
            "    try: p('J', m)\n"
            "    except Exception as exc: assert exc.code == 'CHAT_MESSAGE_INVALID', exc\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=30, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_keys_further_on_and_repeated_keys_are_read_in_linear_time() -> None:
    """The runs between a later key and its id, and a message repeating its own key, are each scanned once: every
    message here, 100,000 characters or more, is read in milliseconds (a scan per key would take minutes)."""
    code = ("import time\n"
            "from orchestrator.control import parse_chat_message as p\n"
            f"J = {JOB!r}\n"
            "for m in (f'job_id: {J}; ' + ('job_id:' + '«»' * 5000) * 20 + 'x',\n"
            "          f'job_id: {J}; job_id' + ':' * 200000, f'job_id: {J}; ' + 'job_id:' * 30000,\n"
            "          f'job_id: {J}; ' + f'job_id: {J}; ' * 8000,\n"
            "          f'job_id: {J}; ' + f'> @a job_id: {J}; ' * 8000 + 'ok',\n"
            "          f'job_id: {J}; ' + ('!' * 100 + 'jo') * 2000,\n"
            "          f'job_id: {J}; ' + f'job_id: «{J}»; ' * 8000, f'job_id: {J}; ' + '@.' * 50000 + 'x',\n"
            "          f'job_id: {J}; job_id: ' + '«' * 200000, f'job_id: {J}; job_id: {J}' + '» ' * 100000 + 'x'):\n"
            "    start = time.monotonic()\n"
            "    try: p(J, m)\n"
            "    except Exception as exc: assert exc.code == 'CHAT_MESSAGE_INVALID', exc\n"
            "    assert time.monotonic() - start < 2, (m[:40], time.monotonic() - start)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
