"""The pydantic-free acceptors (events and terminal payload) agree with the pydantic models.

The acceptors may only ever *accept* what the models accept, and return exactly what the
models return; everything else must go to the models (so errors keep their exact text).
"""
from __future__ import annotations

import collections
import enum
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator import events
from orchestrator.errors import InvalidInputError, MalformedPayloadError
from orchestrator.event_models import EVENT_MODELS, validate_with_models
from orchestrator.limits import MAX_JSON_DEPTH, plain_json
from orchestrator.payload import Payload, _accept, parse_payload
from orchestrator.payload_model import TerminalPayload
from orchestrator.security import validation_summary

FOLDER = Path("/nonexistent/artifacts/JOB1")

scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=5)
values = st.recursive(scalars | st.tuples(scalars), lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)
FIELD_NAMES = sorted({n for spec in events.SPECS.values() for n, _, _ in spec} | {"extra"})


def _models_verdict(event_type: str, data: dict) -> object:
    try:
        return validate_with_models(event_type, data)
    except InvalidInputError as exc:
        return exc


def test_each_fast_spec_matches_its_model_field_by_field() -> None:
    for event_type, spec in events.SPECS.items():
        model = EVENT_MODELS[event_type]
        assert [name for name, _, _ in spec] == list(model.model_fields), event_type
        for name, kind, default in spec:
            info = model.model_fields[name]
            if default is events._REQUIRED:
                assert info.is_required(), (event_type, name)
            else:
                assert not info.is_required() and info.get_default(call_default_factory=True) == (
                    list(default) if kind == "strlist" else default), (event_type, name)


@pytest.mark.parametrize("event_type, data", [
    ("job_claimed", {"worker_id": "w", "epoch": 1, "attempt": 2, "lease_expires_at": "2030-01-01T00:00:00Z"}),
    ("job_succeeded", {"summary": "ok", "output": {"n": [1, 2.5, None, "é"]}, "artifacts": ["a.txt"]}),
    ("job_succeeded", {"summary": "ok", "output": None, "artifacts": []}),
    ("audit_requested", {"summary": "check"}),
    ("human_input_requested", {"summary": "", "output": None, "artifacts": [], "question": "go?"}),
    ("job_failed", {"error_code": "HANDLER_FAILED", "error": "x", "retry_at": "2030-01-01T00:00:00Z",
                    "output_tail": "", "summary": ""}),
    ("job_released", {"error_code": "WORKER_STOPPED", "worker_id": "w", "error": "e", "output_tail": ""}),
    ("job_timeout", {"error_code": "NO_TERMINAL_SIGNAL_TIMEOUT", "error": "e", "timeout": 2.5}),  # before 2026-12-01
    ("job_timeout", {"error_code": "NO_TERMINAL_SIGNAL_TIMEOUT", "error": "e", "timeout": 2.5, "output_tail": "t"}),
    ("stale_recovered", {"error_code": "NO_TERMINAL_SIGNAL_STALE", "error": "e", "to": "waiting_human",
                         "stale_worker_id": "w", "lease_expired_at": "2030-01-01T00:00:00Z", "artifacts": ["a"],
                         "question": "q?"}),
    ("stale_recovered", {"error_code": "NO_TERMINAL_SIGNAL_STALE", "to": "queued", "retry_at": None}),
    ("job_resumed", {"answer": "yes", "question": "go?"}),
    ("job_cancelled", {"reason": "r"}),
])
def test_what_workers_write_is_accepted_without_the_models_and_equals_their_dump(event_type: str,
                                                                                  data: dict) -> None:
    fast = events.accept(event_type, data)
    assert fast is not None, "the common case must not need pydantic"
    assert fast == validate_with_models(event_type, data)
    assert json.dumps(fast) == json.dumps(validate_with_models(event_type, data))  # same key order


@pytest.mark.parametrize("event_type, data", [
    ("job_claimed", {"worker_id": "w", "epoch": 0, "attempt": 1, "lease_expires_at": "x"}),
    ("job_claimed", {"worker_id": "w", "epoch": True, "attempt": 1, "lease_expires_at": "x"}),
    ("job_claimed", {"worker_id": "w", "epoch": "1", "attempt": 1, "lease_expires_at": "x"}),
    ("job_succeeded", {"summary": "ok", "surprise": 1}),
    ("job_succeeded", {"summary": 5}),
    ("job_succeeded", {"output": {"x": float("nan")}}),
    ("job_succeeded", {"output": (1, 2)}),
    ("human_input_requested", {"question": ""}),
    ("job_failed", {"error": "no code"}),
    ("job_timeout", {"error_code": "X", "timeout": 3}),
    ("job_timeout", {"error_code": "X", "timeout": float("inf")}),
    ("stale_recovered", {"error_code": "X", "to": "running"}),
])
def test_anything_unusual_goes_to_the_models(event_type: str, data: dict) -> None:
    assert events.accept(event_type, data) is None
    verdict = _models_verdict(event_type, data)
    if isinstance(verdict, InvalidInputError):
        with pytest.raises(InvalidInputError) as err:
            events.validate_data(event_type, data)
        assert err.value.message == verdict.message
    else:
        assert events.validate_data(event_type, data) == verdict


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(events.SPECS)), st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=6))
def test_the_event_acceptor_never_disagrees_with_the_models(event_type: str, data: dict) -> None:
    fast = events.accept(event_type, data)
    if fast is not None:
        assert fast == validate_with_models(event_type, data)


payload_like = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["done", "needs_human", "needs_audit", "failed", "other"]) | values,
    "summary": st.text(max_size=5) | values, "question": st.none() | st.text(max_size=3) | st.just("  ") | values,
    "output": values, "artifacts": st.lists(st.text(max_size=3), max_size=2) | values,
    "retryable": st.booleans() | values, "error_code": st.sampled_from(["E1", "bad", "X_Y", "A\n"]) | values,
    "retry_after": st.integers(-2, 2 ** 64) | st.floats(allow_nan=True) | values, "surprise": values})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_like)
def test_the_payload_acceptor_never_disagrees_with_the_model(data: dict) -> None:
    fast = _accept(data)
    if fast is None:
        return
    model = TerminalPayload.model_validate(data)
    assert fast == Payload(model.status, model.summary, model.question, model.output, list(model.artifacts),
                           model.retryable, model.error_code, model.retry_after)


def _plain_by_the_definition(value: object, depth: int = 0) -> bool:
    """What ``plain_json`` must answer, spelled out: exactly these types (no subclass, no tuple), keys that are
    strings, strings without a lone surrogate, finite floats, no container at ``MAX_JSON_DEPTH`` or deeper."""
    def text(s: object) -> bool:
        return type(s) is str and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)

    if value is None or type(value) in (bool, int):
        return True
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is str:
        return text(value)
    if type(value) is list:
        return depth < MAX_JSON_DEPTH and all(_plain_by_the_definition(v, depth + 1) for v in value)
    if type(value) is dict:
        return depth < MAX_JSON_DEPTH and all(text(k) and _plain_by_the_definition(v, depth + 1)
                                              for k, v in value.items())
    return False


class _Str(str):
    pass


class _Level(enum.IntEnum):
    ONE = 1


plain_texts = st.text(st.sampled_from("ab\u00e9\u2028\U0001f600"), max_size=3)
plain_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                            | plain_texts, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(plain_texts, inner, max_size=3), max_leaves=12)
# one thing that is not plain JSON, put into an otherwise plain value (a value with several says no for any of them)
odd_values = st.sampled_from([float("nan"), float("inf"), -float("inf"), "\ud800", "a\udfff", _Level.ONE, _Str("s"),
                              b"x", frozenset(), (1,), collections.OrderedDict(), [("t",)]])
odd_keys = st.sampled_from([0, None, 1.5, True, "\ud800", _Str("z"), ("t",)])  # "z": no plain key is one


def _containers(value: object) -> list:
    found = [value] if type(value) in (list, dict) else []
    for item in value if type(value) is list else value.values() if type(value) is dict else ():
        found += _containers(item)
    return found


@settings(max_examples=1500, deadline=None)
@given(plain_values, st.integers(0, 3), st.integers(MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH + 1), st.data())
def test_plain_json_is_true_exactly_for_plain_json_values(value: object, wraps: int, at: int, data: st.DataObject
                                                          ) -> None:
    """Every value an acceptor takes without the models passes ``plain_json``; a value holding one thing that is not
    plain JSON (a subclass, a tuple, bytes, a key that is not a string, a lone surrogate, NaN or infinity) anywhere,
    or a container too deep, must not: around the depth limit too."""
    for level in range(wraps):
        value = [value] if level % 2 else {"k": value}
    assert plain_json(value) == _plain_by_the_definition(value) is True
    assert plain_json(value, at) == _plain_by_the_definition(value, at)
    odd = data.draw(odd_values)
    assert plain_json(odd) is _plain_by_the_definition(odd) is False
    holders = _containers(value)
    if not holders:
        return
    holder = data.draw(st.sampled_from(holders))
    if type(holder) is list:
        holder.insert(data.draw(st.integers(0, len(holder))), data.draw(odd_values))
    elif data.draw(st.booleans()):
        holder[data.draw(odd_keys)] = 1
    else:
        holder[data.draw(plain_texts)] = data.draw(odd_values)
    assert plain_json(value) is _plain_by_the_definition(value) is False
    assert plain_json(value, at) is _plain_by_the_definition(value, at) is False


def test_payload_errors_still_come_from_the_model_word_for_word() -> None:
    raw = json.dumps({"status": "needs_human", "summary": "x", "question": "  "})
    assert _accept(json.loads(raw)) is None
    with pytest.raises(MalformedPayloadError) as err:
        parse_payload(raw, FOLDER)
    with pytest.raises(ValidationError) as model_err:
        TerminalPayload.model_validate(json.loads(raw))
    assert err.value.message == f"invalid terminal payload: {validation_summary(model_err.value.errors(), 'payload')}"
    assert err.value.message.endswith("needs a non-empty 'question'")


def test_a_worker_running_well_formed_jobs_never_imports_pydantic(tmp_path: Path) -> None:
    code = f"""
import sys
from pathlib import Path
from orchestrator import events
from orchestrator.payload import parse_payload
import orchestrator.worker
events.validate_data("job_claimed", {{"worker_id": "w", "epoch": 1, "attempt": 1, "lease_expires_at": "x"}})
p = parse_payload(b'{{"status": "done", "summary": "ok", "output": {{"a": 1}}}}', Path({str(tmp_path)!r}))
events.validate_data("job_succeeded", {{"summary": p.summary, "output": p.output, "artifacts": p.artifacts}})
print(sorted(m for m in sys.modules if m.startswith("pydantic")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_real_worker_claims_runs_and_records_a_job_without_pydantic(base: Path, cli_env: dict[str, str]) -> None:
    from orchestrator import Orchestrator
    from orchestrator.key_files import load_keyring

    orch = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
    job_id = orch.submit("orchestrator.latency:noop_handler", {"n": 1})
    code = f"""
import sys
from orchestrator import Orchestrator
orch = Orchestrator(base_path={str(base)!r}, project_id="proj")
result = orch.worker(worker_id="w-lean").run_once()
print(orch.status({job_id!r}).state, sorted(m for m in sys.modules if m.startswith("pydantic")))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(None, 1) == ["succeeded", "[]\n"]
