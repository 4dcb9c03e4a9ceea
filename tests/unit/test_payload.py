"""The terminal payload contract (orchestrator/payload.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import MalformedPayloadError
from orchestrator.payload import MAX_RETRY_AFTER_SECONDS, parse_payload

FOLDER = Path("/nonexistent/artifacts/JOB1")


def test_a_done_payload_with_output_and_artifacts_is_accepted() -> None:
    p = parse_payload(json.dumps({"status": "done", "summary": "ok", "output": {"n": 1},
                                  "artifacts": ["report.md", "sub/x.txt"]}), FOLDER)
    assert (p.status, p.output, p.artifacts, p.retryable) == ("done", {"n": 1}, ["report.md", "sub/x.txt"], True)


@pytest.mark.parametrize("raw, fragment", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"summary": "no status"}), "status"),
    (json.dumps({"status": "done"}), "summary"),
    (json.dumps({"status": "finished", "summary": "x"}), "status"),
    (json.dumps({"status": "needs_human", "summary": "x"}), "question"),
    (json.dumps({"status": "needs_human", "summary": "x", "question": "  "}), "question"),
    (json.dumps({"status": "done", "summary": "x", "surprise": 1}), "surprise"),
    (json.dumps({"status": "done", "summary": "x", "retryable": "maybe"}), "retryable"),
])
def test_bad_json_and_missing_fields_are_malformed_payload(raw: bytes | str, fragment: str) -> None:
    with pytest.raises(MalformedPayloadError) as err:
        parse_payload(raw, FOLDER)
    assert err.value.code == "MALFORMED_PAYLOAD"
    assert fragment in err.value.message


@pytest.mark.parametrize("path", ["../other-job/x", "/etc/passwd", "a/../../b", "a\\b", ""])
def test_an_artifact_outside_the_jobs_folder_is_malformed_payload(path: str) -> None:
    with pytest.raises(MalformedPayloadError, match="artifact"):
        parse_payload({"status": "done", "summary": "x", "artifacts": [path]}, FOLDER)


def test_an_artifact_whose_name_begins_with_a_letter_and_a_colon_is_accepted_as_a_name_in_the_folder() -> None:
    """No drive letters on Linux and macOS: ``c:x`` and ``C:/x`` (a folder ``C:``) are inside the job's folder."""
    p = parse_payload({"status": "done", "summary": "x", "artifacts": ["c:x", "C:/x"]}, FOLDER)
    assert p.artifacts == ["c:x", "C:/x"]


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts" / "JOB1"
    folder.mkdir(parents=True)
    (folder / "escape").symlink_to(tmp_path)
    with pytest.raises(MalformedPayloadError):
        parse_payload({"status": "done", "summary": "x", "artifacts": ["escape/secret"]}, folder)


def test_secrets_in_validation_errors_are_redacted() -> None:
    with pytest.raises(MalformedPayloadError) as err:
        parse_payload({"status": "done", "summary": 5, "question": ["password=hunter2"]}, FOLDER)
    assert "hunter2" not in err.value.message


# -- a key twice: JSON would keep only its last value --------------------------------------------------------------
@pytest.mark.parametrize("raw, key, where", [
    (b'{"status": "done", "summary": "a", "summary": "b"}', "summary", "$"),
    (b'{"status": "done", "summary": "s", "output": {"n": 1, "m": 2, "n": 3}}', "n", "$.output"),
    (b'{"status": "done", "summary": "s", "output": {"rows": [{"id": 1}, {"id": 2, "id": 3}]}}', "id",
     "$.output.rows[1]"),
    ('{"status": "done", "summary": "s", "output": {"a b": {"x": 1, "x": 1}}}', "x", '$.output["a b"]'),
    (b'{"status": "done", "summary": "s", "output": {"k": 1, "\\u006b": 2}}', "k", "$.output"),  # an escape alike
    ('{"status": "done", "summary": "s", "output": {"1": 2, "1": 3}}'.encode("utf-16"), "1", "$.output"),
])
def test_a_payload_with_a_key_twice_in_one_object_is_malformed_payload_naming_the_key_and_where(
        raw: bytes | str, key: str, where: str) -> None:
    with pytest.raises(MalformedPayloadError) as err:
        parse_payload(raw, FOLDER)
    assert err.value.code == "MALFORMED_PAYLOAD"
    assert f"the key {key!r} twice (at {where})" in err.value.message, err.value.message


def test_a_payload_whose_objects_repeat_keys_across_objects_is_accepted_as_json_reads_it() -> None:
    raw = json.dumps({"status": "done", "summary": "s", "output": {"rows": [{"id": i, "n": {"id": i}} for i in
                                                                          range(50)], "id": "top"}})
    assert parse_payload(raw, FOLDER).output == json.loads(raw)["output"]



# -- error codes the orchestrator keeps for itself ------------------------------------------------------------------
@pytest.mark.parametrize("code", ["WORKER_STOPPED", "WORKER_STOPPED_BEFORE_START", "LEASE_LOST", "LEASE_NOT_RENEWED",
                                  "NO_TERMINAL_SIGNAL_EXIT", "NO_TERMINAL_SIGNAL_TIMEOUT", "NO_TERMINAL_SIGNAL_STALE",
                                  "OUTPUT_TOO_LARGE", "HANDLER_START_FAILED", "COMMAND_NOT_FOUND", "PATH_ESCAPE",
                                  "STORAGE_ERROR", "INTEGRITY_ERROR", "CONTEXT_SIGNATURE_INVALID"])
@pytest.mark.parametrize("status", ["failed", "done"])
def test_a_payload_using_an_error_code_the_orchestrator_reserves_is_malformed_payload_naming_it(
        code: str, status: str) -> None:
    for raw in (json.dumps({"status": status, "summary": "s", "error_code": code}),
                {"status": status, "summary": "s", "error_code": code}):
        with pytest.raises(MalformedPayloadError) as err:
            parse_payload(raw, FOLDER)
        assert f"error_code {code!r} is reserved for the orchestrator" in err.value.message, err.value.message


@pytest.mark.parametrize("code", ["MALFORMED_PAYLOAD", "HANDLER_ERROR", "HANDLER_FAILED", "INVALID_INPUT",
                                  "LLM_TIMEOUT", "UPSTREAM_503", "WORKER_STOPPED_X"])
def test_a_payload_may_use_the_codes_a_handler_writes_itself(code: str) -> None:
    """The handler's side of the orchestrator writes ``MALFORMED_PAYLOAD`` and ``HANDLER_ERROR`` in payloads
    (``handler_result``, the ``llm`` handler); ``INVALID_INPUT`` is a handler's own check of its input."""
    assert parse_payload(json.dumps({"status": "failed", "summary": "s", "error_code": code}), FOLDER).error_code == code


def test_every_code_the_orchestrator_records_for_a_run_on_its_own_account_is_reserved() -> None:
    from orchestrator import errors, leases, output_cap, payload, state
    from orchestrator.handlers.command import CommandNotFound

    written = {state.WORKER_STOPPED, state.WORKER_STOPPED_BEFORE_START, payload.NO_TERMINAL_SIGNAL_EXIT,
               payload.NO_TERMINAL_SIGNAL_TIMEOUT, payload.NO_TERMINAL_SIGNAL_STALE, leases.LEASE_NOT_RENEWED,
               output_cap.OUTPUT_TOO_LARGE, payload.HANDLER_START_FAILED, CommandNotFound.code,
               errors.LeaseLostError.code, errors.PathEscapeError.code, errors.StorageError.code,
               errors.IntegrityError.code, errors.ContextSignatureInvalid.code}
    assert payload.RESERVED_ERROR_CODES == written


# -- retry_after: how long the next attempt must wait at least ------------------------------------------------------
@pytest.mark.parametrize("value", [0, 30, 2.5, 86400])
def test_a_payload_may_say_how_many_seconds_its_next_attempt_must_wait_at_least(value: float) -> None:
    """A handler told by the service it called when to come back (an HTTP ``Retry-After``) says so: the worker's
    backoff alone decided, and the next attempt came back too soon, was refused again, an attempt spent for nothing."""
    for raw in (json.dumps({"status": "failed", "summary": "busy", "retry_after": value}),
                {"status": "failed", "summary": "busy", "retry_after": value}):
        assert parse_payload(raw, FOLDER).retry_after == min(value, MAX_RETRY_AFTER_SECONDS)  # 86400: cut to 3600


@pytest.mark.parametrize("raw", [
    '{"status": "failed", "summary": "s", "retry_after": 1%s}' % ("0" * 400),
    {"status": "failed", "summary": "s", "retry_after": 10 ** 400},  # a Python handler's
    {"status": "failed", "summary": "s", "retry_after": 10 ** 400, "output": ("asks the model",)},
    {"status": "failed", "summary": "s", "retry_after": 2 ** 53 + 1},
], ids=["400-digits", "10**400", "10**400-model", "2**53+1"])
def test_a_whole_retry_after_of_any_size_is_cut_to_the_bound(raw) -> None:
    """README: a longer wait "is cut to" an hour; one no float holds was ``MALFORMED_PAYLOAD`` ("Input should be a
    valid number"), the run failed for a wait it asked too long."""
    assert parse_payload(raw, FOLDER).retry_after == MAX_RETRY_AFTER_SECONDS


def test_a_payload_without_retry_after_or_with_null_has_none() -> None:
    assert parse_payload({"status": "failed", "summary": "s"}, FOLDER).retry_after is None
    assert parse_payload({"status": "failed", "summary": "s", "retry_after": None}, FOLDER).retry_after is None


@pytest.mark.parametrize("raw", [
    '{"status": "failed", "summary": "s", "retry_after": -1}',
    '{"status": "failed", "summary": "s", "retry_after": "30"}',
    '{"status": "failed", "summary": "s", "retry_after": true}',
    '{"status": "failed", "summary": "s", "retry_after": NaN}',
    '{"status": "failed", "summary": "s", "retry_after": Infinity}',
    '{"status": "failed", "summary": "s", "retry_after": [30]}',
])
def test_a_retry_after_that_is_no_number_of_seconds_is_malformed_payload_naming_it(raw: str) -> None:
    with pytest.raises(MalformedPayloadError) as err:
        parse_payload(raw, FOLDER)
    assert "retry_after" in err.value.message, err.value.message
