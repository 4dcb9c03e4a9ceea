"""Property-based tests for the line parser, the payload validator and the CLI, plus the documented limits."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import Orchestrator
from orchestrator.cli import cli
from orchestrator.errors import InvalidIdError, InvalidInputError, MalformedPayloadError
from orchestrator.history import verify_stream
from orchestrator.limits import MAX_DURATION_SECONDS, MAX_INPUT_BYTES, MAX_JSON_DEPTH, json_depth
from orchestrator.payload import Payload, parse_payload
from orchestrator.key_files import load_keyring
from orchestrator.signing import Keyring
from orchestrator.store.base import StoredLine

RING = Keyring.generate()
GOOD = RING.seal({"v": 1, "seq": 1, "prev": "0" * 64, "job_id": "j", "type": "job_submitted", "data": {}})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
hostile_paths = st.sampled_from(["../x", "/etc/passwd", "a/../../b", "x\x00y", "C:\\x", "", ".", "a/./b", "ok.txt"])
payload_like = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["done", "needs_human", "needs_audit", "failed", "DONE", "", "ok"]) | json_values,
    "summary": st.text(max_size=30) | json_values, "question": st.text(max_size=30) | st.none() | json_values,
    "output": json_values, "artifacts": st.lists(hostile_paths | st.text(max_size=10), max_size=3) | json_values,
    "retryable": st.booleans() | json_values, "error_code": st.text(max_size=10) | st.none(),
    "extra": json_values})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_the_line_parser_reports_any_damaged_line_and_never_raises(raw: bytes) -> None:
    result = verify_stream("j", [StoredLine(1, raw)], RING)
    assert bool(result.problems) == (raw != GOOD)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255))
def test_any_byte_change_of_a_signed_line_is_reported(offset: int, xor: int) -> None:
    line = bytearray(GOOD)
    line[offset] ^= xor
    assert verify_stream("j", [StoredLine(1, bytes(line))], RING).problems


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload_like | json_values | st.text(max_size=50) | st.binary(max_size=50))
def test_the_payload_validator_returns_a_payload_or_malformed_payload_and_nothing_else(tmp_path: Path,
                                                                                      raw: object) -> None:
    if isinstance(raw, (dict, list, int, float, bool)) or raw is None:
        candidates = [raw, json.dumps(raw)] if not isinstance(raw, float) or raw == raw else [raw]
    else:
        candidates = [raw]
    for candidate in candidates:
        try:
            payload = parse_payload(candidate, tmp_path)  # type: ignore[arg-type]
        except MalformedPayloadError:
            continue
        assert isinstance(payload, Payload)
        assert all(".." not in a.split("/") and not a.startswith("/") for a in payload.artifacts)


@pytest.fixture
def runner_env(base: Path, cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "BASE_PATH": str(base)}


def stored_input(runner_env: dict[str, str], job: str) -> object:
    """The input the job ``job`` submitted with ``runner_env`` holds."""
    ring = load_keyring(runner_env, announce=False)
    return Orchestrator(base_path=runner_env["BASE_PATH"], project_id="proj", keyring=ring).load(job).state.input


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40) | st.builds(json.dumps, json_values))
def test_cli_submit_stores_valid_json_exactly_and_refuses_anything_else_with_exit_3(runner_env: dict[str, str],
                                                                                     text: str) -> None:
    result = CliRunner().invoke(cli, ["submit", "--kind", "k", "--input", text, "--json"], env=runner_env)
    assert result.exit_code in (0, 3), result.output
    if result.exit_code == 0:
        assert stored_input(runner_env, json.loads(result.output)["job_id"]) == json.loads(text.removeprefix("\ufeff"))
    else:
        assert json.loads(result.output)["error"] == "INVALID_INPUT"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=30).filter(lambda s: s and not s.startswith("-")))
def test_cli_status_of_any_text_is_not_found_or_invalid_id_never_a_crash(runner_env: dict[str, str],
                                                                         job_id: str) -> None:
    result = CliRunner().invoke(cli, ["status", job_id, "--json"], env=runner_env)
    assert result.exit_code in (3, 4), result.output
    assert json.loads(result.output)["error"] in ("INVALID_ID", "JOB_NOT_FOUND")


# -- documented limits (README "Limits") -------------------------------------------------------
def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_a_job_input_nested_deeper_than_the_limit_is_invalid_input(orch: Orchestrator) -> None:
    assert orch.submit("k", nested(MAX_JSON_DEPTH))
    assert orch.submit("k", {"a": ["[[[" * 100, {"b": "\\" * 7 + '"[[[' * 30}]})  # brackets in strings: no level
    for too_deep in (nested(MAX_JSON_DEPTH + 1), nested(100_000), {"a": [nested(MAX_JSON_DEPTH - 1)]}):
        with pytest.raises(InvalidInputError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
            orch.submit("k", too_deep)
    assert len(list(orch.job_ids())) == 2


def test_a_job_input_larger_than_the_limit_is_invalid_input(orch: Orchestrator) -> None:
    with pytest.raises(InvalidInputError, match="at most"):
        orch.submit("k", "x" * MAX_INPUT_BYTES)


@pytest.mark.parametrize("key", ["deploy password=hunter2", "a\nb", "", "../x", "-x", "k" * 129, "ключ"])
def test_an_idempotency_key_that_is_not_an_id_is_invalid_id_and_writes_nothing(orch: Orchestrator, key: str) -> None:
    """Keys are ids (docs/decisions.md): stored in the first event and printed, never free text."""
    with pytest.raises(InvalidIdError, match="invalid idempotency key"):
        orch.submit_job("k", {}, key=key)
    assert list(orch.store.job_ids()) == []
    assert orch.submit_job("k", {}, key="deploy-2026.12_01").created


def test_a_history_submitted_with_a_free_text_key_before_keys_were_checked_still_replays(orch: Orchestrator) -> None:
    from orchestrator.submitted import context_digest
    from orchestrator.integrity import verify_project

    options = {"audit": False, "max_attempts": 3, "priority": 0, "key": "deploy to prod"}
    orch.append(None, "key-legacy", [("job_submitted", {"kind": "k", "input": {}, "options": options,
                                                        "context_digest": context_digest("k", {}, options)})])
    assert orch.status("key-legacy").state == "queued" and verify_project(orch).ok


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 1e308, MAX_DURATION_SECONDS + 1, 0, -1])
def test_a_job_timeout_that_is_not_a_number_of_seconds_up_to_a_year_is_invalid_input_and_writes_nothing(
        orch: Orchestrator, timeout: float) -> None:
    with pytest.raises(InvalidInputError, match="timeout"):
        orch.submit("k", {}, timeout=timeout)
    assert list(orch.store.job_ids()) == []
    assert orch.status(orch.submit("k", {}, timeout=MAX_DURATION_SECONDS)).state == "queued"


@pytest.mark.parametrize("args", [
    ["submit", "--kind", "k", "--timeout", "inf"], ["submit", "--kind", "k", "--timeout", "nan"],
    ["submit", "--kind", "k", "--timeout", "1e308"], ["worker", "--once", "--lease-seconds", "inf"],
    ["worker", "--once", "--lease-seconds", "1e12"], ["worker", "--once", "--stop-grace-seconds", "nan"],
    ["worker", "--once", "--retry-base-seconds", "1e308"], ["worker", "--once", "--retry-max-seconds", "nan"],
    ["metrics", "--stall-grace", "nan"], ["metrics", "--resume-success-min", "nan"], ["metrics", "--stalled-max", "-1"]])
def test_a_duration_or_threshold_option_that_is_nan_infinite_or_out_of_range_is_a_usage_error(
        runner_env: dict[str, str], base: Path, args: list[str]) -> None:
    """Like any option value out of its range (exit 2): checked before anything is read or written."""
    result = CliRunner().invoke(cli, args, env=runner_env)
    assert result.exit_code == 2 and "Invalid value" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (base / "proj").exists()


def test_worker_settings_refuse_a_duration_that_is_nan_infinite_or_beyond_a_year() -> None:
    from orchestrator.config import MAX_LEASE_SECONDS
    from orchestrator.worker import WorkerSettings

    for name in ("lease_seconds", "stop_grace_seconds", "retry_base_seconds", "retry_max_seconds"):
        for value in (float("nan"), float("inf"), MAX_DURATION_SECONDS * 2, -1.0):
            with pytest.raises(InvalidInputError, match=name):
                WorkerSettings(**{name: value})
    assert WorkerSettings(stop_grace_seconds=MAX_DURATION_SECONDS, retry_max_seconds=MAX_DURATION_SECONDS)
    # a lease at most a day: a heartbeat's record is trusted up to that (leases.lease_expiry)
    assert WorkerSettings(lease_seconds=MAX_LEASE_SECONDS)
    with pytest.raises(InvalidInputError, match="lease_seconds"):
        WorkerSettings(lease_seconds=MAX_LEASE_SECONDS * 2)


def test_cli_submit_of_a_hundred_thousand_levels_is_invalid_input_not_a_crash(runner_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["submit", "--kind", "k", "--input-file", "-", "--json"], env=runner_env,
                                input="[" * 100_000 + "]" * 100_000)
    assert result.exit_code == 3 and json.loads(result.output)["error"] == "INVALID_INPUT"


@pytest.mark.parametrize("content", [b"", b"not json", b"\xff\xfe\x00garbage"])
def test_cli_submit_of_an_input_file_that_is_not_json_names_the_file_not_input(
        runner_env: dict[str, str], base: Path, tmp_path: Path, content: bytes) -> None:
    given = tmp_path / "job-input.json"
    given.write_bytes(content)
    result = CliRunner().invoke(cli, ["submit", "--kind", "k", "--input-file", str(given), "--json"], env=runner_env)
    error = json.loads(result.output)
    assert result.exit_code == 3 and error["error"] == "INVALID_INPUT"
    assert error["message"].startswith(f"--input-file {given} is not valid JSON"), error["message"]
    assert not (base / "proj").exists()


def _submit_text(runner_env: dict[str, str], tmp_path: Path, how: str, text: str | bytes) -> tuple[int, dict]:
    """``submit --json`` of ``text`` given as ``--input`` (str), ``--input-file`` or stdin (``-``): exit code, output."""
    data = text.encode() if isinstance(text, str) else text
    if how == "--input":
        args = ["--input", data.decode("utf-8", "surrogateescape")]  # as Python hands a program its arguments
    elif how == "file":
        (tmp_path / "in.json").write_bytes(data)
        args = ["--input-file", str(tmp_path / "in.json")]
    else:
        args = ["--input-file", "-"]
    result = CliRunner().invoke(cli, ["submit", "--kind", "k", *args, "--json"], env=runner_env,
                                input=data if how == "stdin" else None)
    return result.exit_code, json.loads(result.output)


@pytest.mark.parametrize("how", ["--input", "file", "stdin"])
@pytest.mark.parametrize("text, key, where", [
    ('{"a": 1, "a": 2}', "a", "$"),
    ('{"a": {"b": [0, {"c": 1, "d": 2, "c": 1}]}}', "c", "$.a.b[1]"),
    ('[{"x": 1}, {"x": 2}, {"x": 3, "\\u0078": 4}]', "x", "$[2]"),
])
def test_cli_submit_refuses_an_input_with_a_key_twice_naming_the_key_and_where_and_writes_nothing(
        runner_env: dict[str, str], base: Path, tmp_path: Path, how: str, text: str, key: str, where: str) -> None:
    """JSON keeps the last of a key's values: ``{"a":1,"a":2}`` was stored as ``{"a": 2}``, the 1 lost unsaid."""
    code, out = _submit_text(runner_env, tmp_path, how, text)
    assert (code, out["error"]) == (3, "INVALID_INPUT"), out
    assert f"has the key {key!r} twice (at {where})" in out["message"], out["message"]
    assert not (base / "proj").exists()


@pytest.mark.parametrize("how", ["--input", "file", "stdin"])
def test_cli_submit_takes_utf8_input_with_or_without_a_byte_order_mark_alike_on_every_path(
        runner_env: dict[str, str], tmp_path: Path, how: str) -> None:
    """``--input`` refused a UTF-8 BOM ("Unexpected UTF-8 BOM") that ``--input-file`` took: one rule now."""
    for text in (b'{"a": "\xc3\xa9"}', b'\xef\xbb\xbf{"a": "\xc3\xa9"}'):
        code, out = _submit_text(runner_env, tmp_path, how, text)
        assert code == 0, out
        assert stored_input(runner_env, out["job_id"]) == {"a": "é"}


@pytest.mark.parametrize("how", ["--input", "file", "stdin"])
@pytest.mark.parametrize("data, why", [
    ('{"a": "é"}'.encode("utf-16"), "it is UTF-16 text, not UTF-8"),  # with its byte order mark
    ('{"a": "é"}'.encode("utf-16-le"), "it is UTF-16 text, not UTF-8"),
    ('{"a": "é"}'.encode("utf-32"), "it is UTF-32 text, not UTF-8"),
    ('{"a": "é"}'.encode("utf-32-be"), "it is UTF-32 text, not UTF-8"),
    ('{"a": "é"}'.encode("latin-1"), "it is not UTF-8 (byte 0xe9 at offset 7"),
    (b'\xef\xbb\xbf{"a": "\xff"}', "it is not UTF-8 (byte 0xff at offset 10"),  # in the bytes as given
], ids=["utf-16", "utf-16-le", "utf-32", "utf-32-be", "latin-1", "bom-then-not-utf-8"])
def test_cli_submit_refuses_input_that_is_not_utf8_on_every_path_saying_so_and_writes_nothing(
        runner_env: dict[str, str], base: Path, tmp_path: Path, how: str, data: bytes, why: str) -> None:
    """``--input-file`` took UTF-16 and UTF-32 (``json.loads`` of bytes guesses their encoding) where ``--input``
    could not be given them; a job's input is UTF-8 JSON on every path."""
    if how == "--input" and b"\0" in data:
        pytest.skip("an argument cannot hold a NUL byte")
    code, out = _submit_text(runner_env, tmp_path, how, data)
    assert (code, out["error"]) == (3, "INVALID_INPUT"), out
    assert f"is not valid JSON: {why}" in out["message"], out["message"]
    assert not (base / "proj").exists()


def test_cli_submit_of_an_input_file_over_the_input_limit_is_refused_without_reading_the_rest(
        runner_env: dict[str, str], base: Path) -> None:
    """As an oversized --input is (INVALID_INPUT, exit 3), but after reading one byte past the limit: a pipe or a
    device that never ends (``--input-file /dev/zero``) must not be read into memory whole first."""
    import io

    stdin = io.BytesIO(json.dumps("x" * (2 * MAX_INPUT_BYTES)).encode())
    result = CliRunner().invoke(cli, ["submit", "--kind", "k", "--input-file", "-", "--json"], env=runner_env,
                                input=stdin)
    error = json.loads(result.output)
    assert result.exit_code == 3 and error["error"] == "INVALID_INPUT", result.output
    assert error["message"].startswith(f"--input-file - holds more than {MAX_INPUT_BYTES} bytes"), error["message"]
    assert stdin.tell() == MAX_INPUT_BYTES + 1  # the rest was never read
    assert not (base / "proj").exists()  # nothing written


def test_cli_submit_takes_an_input_file_of_exactly_the_limit_and_refuses_one_byte_more(
        runner_env: dict[str, str], tmp_path: Path) -> None:
    given = tmp_path / "input.json"
    given.write_bytes(json.dumps("x" * (MAX_INPUT_BYTES - 2)).encode())  # canonical JSON of exactly the limit
    ok = CliRunner().invoke(cli, ["submit", "--kind", "k", "--input-file", str(given), "--json"], env=runner_env)
    assert ok.exit_code == 0 and json.loads(ok.output)["created"], ok.output
    given.write_bytes(given.read_bytes() + b"\n")  # a file is bounded in its own bytes, whitespace included
    over = CliRunner().invoke(cli, ["submit", "--kind", "k", "--input-file", str(given), "--json"], env=runner_env)
    assert over.exit_code == 3 and json.loads(over.output)["error"] == "INVALID_INPUT", over.output
    assert f"--input-file {given} holds more than" in json.loads(over.output)["message"]


@pytest.mark.parametrize("kind", ["", "k" * 201, None, 7])
def test_a_kind_that_is_empty_too_long_or_not_text_is_invalid_input_that_names_the_kind(
        orch: Orchestrator, kind: object) -> None:
    with pytest.raises(InvalidInputError, match=r"^the kind must be a handler name of 1 to 200 characters"):
        orch.submit(kind, {})  # type: ignore[arg-type]
    assert not list(orch.job_ids())  # nothing written


def test_cli_submit_with_an_empty_kind_says_what_a_kind_must_be(runner_env: dict[str, str], base: Path) -> None:
    """A usage error (exit 2), as every ``--kind`` (until 2026-12-03 ``INVALID_INPUT``, exit 3, for ``submit``)."""
    result = CliRunner().invoke(cli, ["submit", "--kind", "", "--input", "{}"], env=runner_env)
    assert result.exit_code == 2, result.output
    assert ("Invalid value for '--kind': a job kind is 1 to 200 characters of valid Unicode on one line (no control "
            "character, line separator or bidirectional control), not ''") in result.output
    assert not list((base / "proj" / ".orchestrator" / "queue" / "jobs").glob("*"))


def test_json_depth_counts_nesting_without_recursion() -> None:
    assert json_depth(0) == 0 and json_depth([]) == 1 and json_depth({"a": [1]}) == 2
    assert json_depth(nested(100_000)) > MAX_JSON_DEPTH


def test_json_depth_is_the_deepest_nesting_of_any_value() -> None:
    """Walked level by level (C loops sort each container's children), it must be the plain recursive definition:
    dicts, lists and tuples count a level, their subclasses too; scalars, and values JSON cannot carry, none."""
    from collections import OrderedDict

    from hypothesis import given, settings
    from hypothesis import strategies as st

    def depth(value):  # noqa: ANN001, ANN202 - the definition
        if isinstance(value, dict):
            value = list(value.values())
        if not isinstance(value, (list, tuple)):
            return 0
        return 1 + max((depth(child) for child in value), default=0)

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3) | st.just({1, 2})
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=4)
                          | st.dictionaries(st.text(max_size=2), inner, max_size=3).map(OrderedDict), max_leaves=30)

    @settings(max_examples=400, deadline=None)
    @given(values)
    def same(value) -> None:  # noqa: ANN001
        assert json_depth(value) == depth(value)

    same()


def test_the_depth_of_an_encoded_value_is_the_depth_of_the_value() -> None:
    """A submit takes its input's depth from the canonical bytes it encodes anyway (``encoded_depth``): it must be
    ``json_depth``'s, whatever the strings hold (quotes, backslashes, brackets, runs of them) and wherever they are
    (keys too)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from orchestrator.limits import encoded_depth
    from orchestrator.signing import canonical

    texts = st.text(st.sampled_from('"\\[]{}x\n\u00e9'), max_size=8)
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                          | st.dictionaries(texts, inner, max_size=4), max_leaves=40)

    @settings(max_examples=1500, deadline=None)
    @given(values)
    def same(value) -> None:  # noqa: ANN001
        assert encoded_depth(canonical(value)) == json_depth(value)

    same()
    assert encoded_depth(canonical(nested(300))) == json_depth(nested(300)) == MAX_JSON_DEPTH * 4 + 1  # both stop


def test_a_value_that_holds_itself_is_walked_in_bounded_time_and_refused(orch: Orchestrator) -> None:
    """A list holding itself a thousand times has a million children at its second level: the walk stops after
    ``_MAX_CONTAINERS`` (the encoder then refuses the cycle); one holding itself once is too deep."""
    import time

    wide: list = []
    wide.extend([wide] * 1000)
    started = time.monotonic()
    assert 2 <= json_depth(wide) <= 4
    assert time.monotonic() - started < 5
    with pytest.raises(InvalidInputError, match="not plain JSON: Circular reference"):
        orch.submit("k", wide)
    itself: list = []
    itself.append(itself)
    assert json_depth(itself) > MAX_JSON_DEPTH
    with pytest.raises(InvalidInputError, match="not plain JSON: Circular reference"):  # the encoder's, first
        orch.submit("k", {"a": itself})
    assert not list(orch.job_ids())


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000,
                                 '{"status":"done","summary":"s","output":' + "[" * 100 + "]" * 100 + "}"])
def test_a_deeply_nested_payload_is_malformed_payload(tmp_path: Path, raw: str) -> None:
    with pytest.raises(MalformedPayloadError, match="nested"):
        parse_payload(raw, tmp_path)


def test_a_handler_writing_a_deeply_nested_payload_fails_its_job_not_the_worker(orch: Orchestrator) -> None:
    script = "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('[' * 100000 + ']' * 100000)"
    job = orch.submit("command", {"argv": [sys.executable, "-c", script]}, max_attempts=1)
    result = orch.worker(worker_id="w").run_once()
    assert result is not None and result.error_code == "MALFORMED_PAYLOAD"
    assert orch.status(job).state == "failed"


@pytest.mark.parametrize("options", [{"timeout": float("inf")}, {"priority": 10**9}, {"max_attempts": 0},
                                     {"audit": "maybe"}, {"max_attempts": 0, "priority": -10**9}])
def test_a_job_option_the_model_refuses_is_one_line_naming_each_field_without_pydantics_links(
        tmp_path, options: dict) -> None:
    from orchestrator import Orchestrator
    from orchestrator.errors import InvalidInputError
    from orchestrator.signing import Keyring

    orch = Orchestrator(base_path=tmp_path, project_id="p", keyring=Keyring.generate())
    with pytest.raises(InvalidInputError) as caught:
        orch.submit("t.echo", 1, **options)
    message = caught.value.message
    assert message.startswith("invalid job options: ") and "\n" not in message
    assert "pydantic" not in message and "http" not in message and "type=" not in message
    for field in options:
        assert f"{field}: " in message
    assert not (tmp_path / "p").exists() or not list((tmp_path / "p").rglob("*.events.jsonl"))  # nothing written
