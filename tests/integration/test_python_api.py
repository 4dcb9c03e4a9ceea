"""The Python API as the README's "Python API" section describes it: what each call returns, and that a bad
argument is an ``OrchestratorError`` with a code (never a bare ``TypeError`` or ``AttributeError``)."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

import jobstates as js
import orchestrator
import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, OrchestratorError, handler
from orchestrator.config import Settings
from orchestrator.errors import InvalidInputError
from orchestrator.metrics import Thresholds
from orchestrator.worker import Worker, WorkerSettings

REPO = Path(__file__).resolve().parents[2]


def python_api_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Python API")
    return text[start:text.index("\n## ", start + 1)]


def test_every_orch_method_and_exported_name_the_readme_uses_exists() -> None:
    section = python_api_section()
    methods = set(re.findall(r"\borch\.(\w+)\(", section))
    assert {"submit", "status", "jobs", "approve", "resume_from_chat", "timeline", "verify", "metrics"} <= methods
    assert [m for m in sorted(methods) if not callable(getattr(Orchestrator, m, None))] == []
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None
    assert (REPO / "orchestrator" / "py.typed").exists()


def test_each_exported_name_is_its_modules_own_and_dir_lists_them_all() -> None:
    import importlib

    for name, module in orchestrator._SOURCES.items():  # noqa: SLF001
        assert getattr(orchestrator, name) is getattr(importlib.import_module(module), name), name
    assert sorted(orchestrator._SOURCES) == sorted(orchestrator.__all__)  # noqa: SLF001
    assert set(orchestrator.__all__) <= set(dir(orchestrator))
    with pytest.raises(AttributeError, match="has no attribute 'Orchestrater'"):
        orchestrator.Orchestrater  # noqa: B018


def test_importing_the_package_imports_none_of_its_modules_until_a_name_is_used() -> None:
    """A command's start imports the package before any code of its own runs (its stop handlers: ``entry``): it
    imported ``orchestrator.api`` (the store, the signing, the state), half of that start, until 2026-12-07; and
    ``start_folder``, which only ``python3 -m`` needs (``tests/integration/test_cold_start.py``)."""
    import subprocess
    import sys

    code = ("import sys, orchestrator\n"
            "print(sorted(m for m in sys.modules if m.startswith('orchestrator')))\n"
            "from orchestrator import Orchestrator\n"
            "print('orchestrator.api' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.splitlines() == ["['orchestrator', 'orchestrator.installed']", "True"]


def test_the_readme_example_runs_as_written(base: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", python_api_section(), re.S)[1]
    exec(compile(code.replace('"/srv/jobs"', repr(str(base))), "README.md", "exec"), {})  # noqa: S102


def file_bytes(orch: Orchestrator) -> dict[str, bytes]:
    root = orch.settings.state_dir
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "locks" not in p.parts}


@pytest.mark.parametrize("text", [b"yes", 5, ["yes"]])
def test_an_answer_that_is_not_text_is_invalid_input_and_nothing_is_written(orch: Orchestrator, text: object) -> None:
    """bytes were written as their repr (the answer ``b'yes'``, signed for good); an int raised AttributeError."""
    job_id = js.waiting_human(orch)
    before = file_bytes(orch)
    for act in (lambda: orch.resume(job_id, text), lambda: orch.cancel(job_id, text),
                lambda: orch.approve(job_id, note=text), lambda: orch.resume_from_chat(job_id, text)):
        with pytest.raises(InvalidInputError, match="text"):
            act()
    assert file_bytes(orch) == before


@pytest.mark.parametrize("value", [(1, 2), {1: "one"}, {"nested": ({"a": 1},)}])
def test_the_same_key_and_the_same_input_again_is_the_same_job_whatever_form_json_gives_the_input(
        orch: Orchestrator, value: object) -> None:
    """A tuple is stored as a list, an int key as a string: the repeat compared the stored form with the one
    given and refused its own job (``INVALID_INPUT``, "a different kind, input or options")."""
    first = orch.submit_job("t.echo", value, key="same")
    again = orch.submit_job("t.echo", value, key="same")
    assert first.created and not again.created and again.job_id == first.job_id
    with pytest.raises(InvalidInputError, match="different"):
        orch.submit_job("t.echo", [9], key="same")


def bad_arguments(orch: Orchestrator, base: Path) -> dict[str, object]:
    return {
        "base_path an int": lambda: Orchestrator(base_path=5, project_id="p"),
        "base_path bytes": lambda: Orchestrator(base_path=str(base).encode(), project_id="p"),
        "store_url an int": lambda: Orchestrator(base_path=base, project_id="p", store_url=5),
        "project_id empty": lambda: Orchestrator(base_path=base, project_id=""),  # was: PROJECT_ID or "default"
        "base_path empty": lambda: Orchestrator(base_path="", project_id="p"),  # was: BASE_PATH or ./data
        "store_url empty": lambda: Orchestrator(base_path=base, project_id="p", store_url=""),
        "actor an int": lambda: Orchestrator(base_path=base, project_id="p", actor=5),
        "kind bytes": lambda: orch.submit(b"t.echo", {}),
        "input a set": lambda: orch.submit("t.echo", {1, 2}),
        "input NaN": lambda: orch.submit("t.echo", {"x": math.nan}),
        "input bytes": lambda: orch.submit("t.echo", b"data"),
        "input over 1 MiB": lambda: orch.submit("t.echo", "x" * (1 << 20)),
        "key an int": lambda: orch.submit("t.echo", {}, key=5),
        "audit text": lambda: orch.submit("t.echo", {}, audit="yes"),  # was: True (and "no" too)
        "max_attempts text": lambda: orch.submit("t.echo", {}, max_attempts="3"),
        "priority a bool": lambda: orch.submit("t.echo", {}, priority=True),  # was: 1
        "timeout text": lambda: orch.submit("t.echo", {}, timeout="5"),
        "states one string": lambda: orch.jobs(states="queued"),
        "an unknown state": lambda: orch.jobs(states=["done"]),
        "kinds not a list": lambda: orch.jobs(kinds=5),
        "lease_seconds text": lambda: orch.worker(lease_seconds="5"),
        "imports one string": lambda: orch.worker(imports="worker_handlers"),
        "kinds None": lambda: orch.worker(kinds=None),
        "handler_max_runs text": lambda: orch.worker(handler_max_runs="5"),
        "artifacts_import text": lambda: orch.worker(artifacts_import="no"),  # was: on ("no" is truthy)
        "pass_store_credentials text": lambda: orch.worker(pass_store_credentials="no"),
        "max_jobs text": lambda: Worker(orch, WorkerSettings(worker_id="w1")).run(max_jobs="2"),
        "since an int": lambda: orch.timeline(js.waiting_human(orch), since=5),
        "processes 0": lambda: orch.verify(processes=0),
        "processes text": lambda: orch.metrics(processes="2"),
        "a threshold text": lambda: orch.metrics(thresholds=Thresholds(stalled_max="5")),
        "a threshold a bool": lambda: orch.metrics(thresholds=Thresholds(waiting_human_max=True)),
        "a threshold an infinity": lambda: orch.metrics(thresholds=Thresholds(awaiting_audit_max=math.inf)),
        "a handler without a name": lambda: handler(lambda ctx: None),
        # found by an operator's session, 2026-12-06: these raised deep inside, or read "no" as True
        "idle_exit text": lambda: Worker(orch, WorkerSettings(worker_id="w1")).run(idle_exit="no", max_jobs=1),
        "on_result an int": lambda: Worker(orch, WorkerSettings(worker_id="w1")).run(on_result=5, idle_exit=True),
        "on_recovered text": lambda: Worker(orch, WorkerSettings(worker_id="w1")).run(on_recovered="x", idle_exit=True),
        "rebuild text": lambda: orch.metrics(rebuild="no"),
        "thresholds a dict": lambda: orch.metrics(thresholds={"stalled_max": 1}),
        "progress an int": lambda: orch.verify(progress=5),
        "against an int": lambda: orch.verify(against=5),
        "clock text": lambda: Orchestrator(base_path=base, project_id="p", clock="x"),
        "keyring text": lambda: Orchestrator(base_path=base, project_id="p", keyring="x"),
        "store text": lambda: Orchestrator(base_path=base, project_id="p", store="x"),
        "base_path with a NUL": lambda: Orchestrator(base_path=f"{base}/a\0b", project_id="p"),
        "base_path below a file": lambda: Orchestrator(base_path=Path(__file__) / "x", project_id="p"),
        "a kind no job can have": lambda: orch.jobs(kinds=[""]),
        "a kind too long": lambda: orch.jobs(kinds=["x" * 300]),
        "input keys one JSON writes alike": lambda: orch.submit("t.echo", {1: "a", "1": "b"}),
        "again text": lambda: orch.resume(js.waiting_human(orch), "yes", again="no"),  # was: a new decision
        # found by a bug hunt, 2026-12-06: AttributeError, TypeError, ValueError, OverflowError, or stored (True)
        "imports an int": lambda: orch.worker(imports=[1]),
        "imports None": lambda: orch.worker(imports=[None]),
        "imports a set of ints": lambda: orch.worker(imports={1, 2}),
        **{f"{action} now {label}": (lambda action=action, now=now: act(orch, action, now))
           for action in ("approve", "revise", "resume", "cancel", "resume_from_chat")
           for label, now in BAD_TIMES.items()},
        **{f"{call} now {label}": (lambda call=call, now=now: getattr(
            Worker(orch, WorkerSettings(worker_id="w1")), call)(now))
           for call in ("run_once", "recover_stale", "claim") for label, now in BAD_TIMES.items()},
        "lease_expiry now text": lambda: orch.lease_expiry(js.waiting_human(orch), now="x"),
    }


# a ``now`` that is no time the clock writes: text, a bool (1970-01-01T00:00:01Z), NaN, infinities, before 1970, and
# past the last second of 9999 (1e12: the year 33658, which no ISO time holds)
BAD_TIMES = {"text": "x", "True": True, "NaN": math.nan, "inf": math.inf, "-inf": -math.inf, "-1": -1, "1e12": 1e12,
             "a list": [1.0]}


def act(orch: Orchestrator, action: str, now: object) -> object:
    job = js.awaiting_audit(orch) if action in ("approve", "revise") else js.waiting_human(orch)
    args = {"approve": (), "revise": ("notes",), "resume": ("blue",), "cancel": (),
            "resume_from_chat": (f"job_id: {job}\nanswer: blue",)}[action]
    return getattr(orch, action)(job, *args, now=now)


def test_a_bad_argument_is_an_orchestrator_error_with_a_code_never_a_bare_python_error(
        orch: Orchestrator, base: Path) -> None:
    """Each of these raised TypeError or AttributeError (or, for a single string, read it letter by letter and
    answered nothing: no job in state "q", "u", ...), or went through and was stored as given (an int actor)."""
    bare = {}
    for what, call in bad_arguments(orch, base).items():
        try:
            call()
        except OrchestratorError as exc:
            assert exc.code and exc.exit_code in (3, 4), what
        except Exception as exc:  # noqa: BLE001 - reported below
            bare[what] = f"{type(exc).__name__}: {exc}"
        else:
            bare[what] = "accepted"
    assert bare == {}


def test_a_bad_now_given_to_run_once_leaves_the_worker_as_it_was(orch: Orchestrator) -> None:
    """``run_once("x")`` went through, kept "x" as its last look's time, and every later ``run_once()`` raised
    ``TypeError``."""
    job = orch.submit("t.echo", 1)
    w = Worker(orch, WorkerSettings(worker_id="w1"))
    for now in ("x", math.nan, 1e12):
        with pytest.raises(InvalidInputError, match="now must be"):
            w.run_once(now)
    assert w.run_once().job_id == job and orch.status(job).state == "succeeded"


def test_an_integer_or_a_float_now_in_range_is_taken(orch: Orchestrator) -> None:
    job = js.waiting_human(orch)
    when = int(orch.clock())
    assert orch.resume(job, "blue", now=when).state == "queued"
    assert orch.status(job).updated_at == orchestrator.clock.to_iso(when)


def test_an_actor_given_is_stored_sanitized(base: Path, keyring) -> None:
    orch = Orchestrator(base_path=base, project_id="p", keyring=keyring, actor="ci token=abc123")
    job_id = orch.submit("t.echo", {})
    first = json.loads(orch.store.read(job_id)[0].raw)
    assert first["actor"] == "ci token=[REDACTED]"
    per_call = orch.submit_job("t.echo", {"n": 2}, actor="me password=hunter2").job_id  # the submit's own actor
    assert json.loads(orch.store.read(per_call)[0].raw)["actor"] == "me password=[REDACTED]"
    with pytest.raises(InvalidInputError):
        orch.submit_job("t.echo", {"n": 3}, actor=123)  # was: stored as the number 123


def test_reprs_name_the_project_and_never_show_the_store_password(orch: Orchestrator) -> None:
    url = "postgresql://orch:s3cret-pw@db.example:5432/jobs"
    settings = Settings.load("/tmp", "p", env={}, store_url=url)
    assert "s3cret-pw" not in repr(settings) and "db.example" in repr(settings)
    assert repr(orch).startswith("Orchestrator(project_id='proj', store=JsonlStore(")
    with Worker(orch, WorkerSettings(worker_id="w1")) as w:
        assert repr(w) == "Worker(worker_id='w1', project_id='proj', stopping=False)"


def test_the_commands_of_the_observing_side_are_methods_too(orch: Orchestrator) -> None:
    """resume-from-chat, audit-timeline, verify and metrics had no method: a user had to call internals."""
    job_id = js.waiting_human(orch)
    result = orch.resume_from_chat(job_id, f"job_id: {job_id}; yes")
    assert result.applied and orch.resume_from_chat(job_id, f"job_id: {job_id}; yes").already_applied
    timeline = orch.timeline(job_id)
    assert timeline["ok"] and "job_resumed" in [line["what"] for line in timeline["lines"]]
    report = orch.verify()
    assert report.ok and report.streams == 2 and report.to_dict()["problems"] == []
    figures = orch.metrics()
    assert figures.counts["queued"] == 1 and figures.stalled_count == 0 and figures.to_dict()["jobs"] == 1


def test_metrics_gives_its_warnings_and_what_it_replayed_to_a_python_caller_as_the_command_prints_them(
        orch: Orchestrator) -> None:
    """Before: ``orch.metrics()`` only logged a cache it could not write; the caller had no way to see it (the
    command's ``--json`` printed it as ``"warnings"``)."""
    orch.submit("t.echo", {})
    note = orch.settings.state_dir / "projections" / "jobs-v2" / "note"  # a folder of files in the cache's place
    note.parent.mkdir(parents=True)
    note.write_text("an operator's file")
    figures = orch.metrics()
    assert figures.jobs == 1 and figures.replayed == 1
    assert [w["code"] for w in figures.warnings] == ["CACHE_NOT_WRITTEN"]
    assert "metrics cache was not written" in figures.warnings[0]["message"]
    assert figures.to_dict()["warnings"] == figures.warnings and note.read_text() == "an operator's file"
    note.unlink()
    note.parent.rmdir()
    assert orch.metrics().warnings == [] and orch.metrics().replayed == 0  # written now: nothing replayed again


def test_a_dotenv_is_read_by_the_commands_not_by_orchestrator_unless_the_caller_loads_it(
        base: Path, keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the README says: a library does not read a file of whatever folder its program runs in into the process's
    environment (every thread and child would see it); ``load_dotenv_file()`` does, for a caller that wants it."""
    from orchestrator.config import load_dotenv_file

    folder = tmp_path / "service"
    folder.mkdir()
    (folder / ".env").write_text("PROJECT_ID=from-dotenv\n")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PROJECT_ID", raising=False)  # and removed again after the test, once loaded below
    assert Orchestrator(base_path=base, keyring=keyring).project_id == "default"
    load_dotenv_file()
    assert Orchestrator(base_path=base, keyring=keyring).project_id == "from-dotenv"


@pytest.mark.parametrize("variable", ["PROJECT_ID", "BASE_PATH", "ORCH_STORE_URL"])
def test_a_store_setting_set_empty_in_the_environment_is_refused_from_python_too(
        base: Path, keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """``Orchestrator(base_path=...)`` with ``PROJECT_ID=''`` acted on project ``default``; one loaded from a ``.env``
    line by ``load_dotenv_file()`` names the file and line."""
    from orchestrator.config import load_dotenv_file
    from orchestrator.errors import ConfigError

    monkeypatch.setenv(variable, "")
    with pytest.raises(ConfigError, match=f"^{variable} is set but empty \\(in the environment\\)"):
        Orchestrator(keyring=keyring)
    assert Orchestrator(base_path=base, project_id="p", store_url="file", keyring=keyring).project_id == "p"
    monkeypatch.delenv(variable)
    (tmp_path / ".env").write_text(f"{variable}=\n")
    monkeypatch.chdir(tmp_path)
    load_dotenv_file()
    assert os.environ[variable] == ""
    monkeypatch.setenv(variable, "")  # so that it is removed again after the test
    where = re.escape(f"({tmp_path / '.env'}, line 1)")
    with pytest.raises(ConfigError, match=f"^{variable} is set but empty {where}"):
        Settings.load()


def test_a_submit_encodes_its_input_once_and_its_line_holds_those_bytes(orch, monkeypatch) -> None:
    """The submit encodes the input to measure it, check its depth and hash it; the sealed line holds those very bytes:
    no second encoding, and no model's copy (~30 ms of a 900 KB input). A ``dict`` subclass counts its encodings."""
    from orchestrator import event_models

    class Counted(dict):
        encodings = 0

        def items(self):  # noqa: ANN202 - what the encoder calls to sort a subclass's keys
            Counted.encodings += 1
            return super().items()

    given_to_models: list[object] = []
    real = event_models.JobSubmitted.model_validate
    monkeypatch.setattr(event_models.JobSubmitted, "model_validate",
                        lambda data: (given_to_models.append(data.get("input")), real(data))[1])
    rows = list(range(2000))  # ~9 KB: a long input (a short one is encoded again, which costs less than the splice)
    job = orch.submit("echo", Counted(rows=rows, name="x"))
    assert Counted.encodings == 1 and given_to_models == [None]  # the model checked the rest of the event
    view = orch.load(job)
    assert view.ok and view.state.input == {"name": "x", "rows": rows}
    assert b'"input":{"name":"x","rows":[0,1,2,' in view.stream.lines[0].raw


def test_a_view_appended_to_keeps_the_records_it_had_made_and_parses_only_the_new_lines(orch, monkeypatch) -> None:
    from orchestrator import history

    job = orch.submit("echo", {"x": 1})
    claimed = orch.append(orch.load(job), job, [("job_claimed", {"worker_id": "w", "epoch": 1, "attempt": 1,
                                                                  "lease_expires_at": "2099-01-01T00:00:00Z"})],
                          run_id="r1")
    assert [r["type"] for r in claimed.stream.records] == ["job_submitted", "job_claimed"]
    parsed: list[bytes] = []
    real = history.parse_line
    monkeypatch.setattr(history, "parse_line", lambda raw: (parsed.append(raw), real(raw))[1])
    cancelled = orch.append(claimed, job, [("job_cancelled", {"reason": "test"})], run_id="r1")
    assert [r["type"] for r in cancelled.stream.records] == ["job_submitted", "job_claimed", "job_cancelled"]
    assert parsed == [cancelled.stream.lines[-1].raw]


@pytest.mark.parametrize(("given", "stored"), [({None: 1}, {"null": 1}), ({3: (1, None)}, {"3": [1, None]}),
                                                ({"a": {None: [None]}}, {"a": {"null": [None]}}),
                                                ({1: 2, "a": {None: 3, "b": 4}}, {"1": 2, "a": {"null": 3, "b": 4}})])
def test_an_input_is_stored_as_its_json_says_and_its_job_verifies(orch, given: object, stored: object) -> None:
    """An input is what its JSON says: a ``None`` key is ``"null"``, as in the digest the submit makes from its
    encoding (a model's copy wrote ``"None"`` in the line, and the job failed its own check: ``CONTEXT_MISMATCH``)."""
    job = orch.submit("echo", given)
    view = orch.load(job)
    assert view.ok, view.problems
    assert view.state.input == stored
    assert orch.submit("echo", given, key="k1") == orch.submit("echo", stored, key="k1")  # one job, the same input


CLAIM = ("job_claimed", {"worker_id": "w", "epoch": 1, "attempt": 1, "lease_expires_at": "2099-01-01T00:00:00Z"})


@pytest.mark.parametrize(("given", "stored"), [({None: 1}, {"null": 1}), ((1, {2: None}), [1, {"2": None}]),
                                                ({"a": {True: [(None,)]}}, {"a": {"true": [[None]]}})])
def test_an_output_appended_is_stored_as_its_json_says_and_the_view_returned_holds_that(orch, given: object,
                                                                                         stored: object) -> None:
    """``append`` writes an ``Any`` field (a result's ``output``, a submit's ``input``) as JSON does, and the view it
    returns holds what a read gives (the models' dump wrote a ``None`` key ``"None"``)."""
    job = orch.submit("echo", {"x": 1})
    claimed = orch.append(orch.load(job), job, [CLAIM], run_id="r1")
    done = orch.append(claimed, job, [("job_succeeded", {"output": given})], run_id="r1")
    read = orch.load(job)
    assert read.ok and read.state.result["output"] == stored and done.state.result["output"] == stored
    submitted = orch.append(None, "01JNULLKEYINPUT0000000000", [("job_submitted", {
        "kind": "echo", "input": given, "options": {}, "context_digest": "0" * 64})])
    assert submitted.state.input == stored == orch.load("01JNULLKEYINPUT0000000000").state.input


def _deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("event", "refused"), [
    (("job_succeeded", {"output": {"x": [math.nan]}}), "output is not plain JSON: it holds NaN or an infinity"),
    (("audit_requested", {"output": math.inf}), "output is not plain JSON: it holds NaN or an infinity"),
    (("job_succeeded", {"output": {1, 2}}), "output is not plain JSON: Object of type set"),
    (("job_succeeded", {"output": b"bytes"}), "output is not plain JSON: Object of type bytes"),
    (("job_succeeded", {"output": object()}), "output is not plain JSON: Object of type object"),
    (("job_succeeded", {"output": {"k": "\udcff"}}), "output holds text that is not valid Unicode"),
    (("job_succeeded", {"summary": "\ud800", "output": (1,)}), "summary holds text that is not valid Unicode"),
    (("job_succeeded", {"output": _deep(65)}), "output is nested deeper than 64 levels"),
    (("job_timeout", {"error_code": "X", "timeout": math.inf}),
     "timeout is not plain JSON: it holds NaN or an infinity"),
])
def test_a_value_json_cannot_hold_is_refused_by_append_and_nothing_is_written(orch, event, refused: str) -> None:
    """What no line can hold (a NaN, an infinity, a lone surrogate, a set, bytes, nesting past ``MAX_JSON_DEPTH``)
    is ``InvalidInputError`` naming the field, before anything is written: the models took a NaN as ``null``, a set
    as a list, and a lone surrogate or an infinite timeout raised a bare ``UnicodeEncodeError`` / ``ValueError``
    from the encoding."""
    job = orch.submit("echo", {"x": 1})
    claimed = orch.append(orch.load(job), job, [CLAIM], run_id="r1")
    before = orch.store.path(job).read_bytes()
    with pytest.raises(InvalidInputError) as err:
        orch.append(claimed, job, [event], run_id="r1")
    assert err.value.code == "INVALID_INPUT" and f"invalid {event[0]} data: {refused}" in err.value.message
    assert orch.store.path(job).read_bytes() == before and orch.load(job).state.state == "running"
    assert orch.append(orch.load(job), job, [("job_succeeded", {"output": _deep(63)})], run_id="r1").ok


def test_a_write_does_not_parse_back_its_lines_and_a_view_makes_their_records_only_when_asked(orch, monkeypatch) -> None:
    """``submit`` returns the job's id and ``append`` the job's view, neither parsing back the lines it sealed (~10-16
    ms a MB: a worker recording a handler's large output never reads its record); the view's ``records`` are made
    the first time they are asked for, and are those a fresh read gives. The view it was made from is left as it was."""
    from orchestrator import history

    parsed: list[bytes] = []
    real = history.parse_line
    monkeypatch.setattr(history, "parse_line", lambda raw: (parsed.append(raw), real(raw))[1])
    job = orch.submit("echo", {"x": [1, "d\u00e9j\u00e0"]})
    assert parsed == []
    view = orch.load(job)
    assert view.ok and view.state.input == {"x": [1, "d\u00e9j\u00e0"]}
    parsed.clear()
    claimed = orch.append(view, job, [("job_claimed", {"worker_id": "w", "epoch": 1, "attempt": 1,
                                                        "lease_expires_at": "2099-01-01T00:00:00Z"})], run_id="r1")
    cancelled = orch.append(claimed, job, [("job_cancelled", {"reason": "test"})], run_id="r1")
    assert parsed == [] and cancelled.state.state == "cancelled"
    records = cancelled.stream.records
    assert parsed == [line.raw for line in cancelled.stream.lines[1:]]
    assert records == orch.load(job).stream.records and [r["type"] for r in records][1:] == ["job_claimed",
                                                                                                "job_cancelled"]
    assert len(view.stream.records) == 1 and [r["type"] for r in claimed.stream.records] == ["job_submitted",
                                                                                                "job_claimed"]


def test_a_closed_orchestrator_refuses_every_call_with_store_closed_and_writes_nothing(orch: Orchestrator) -> None:
    """On files too, though there is no connection to close: a program that closes one is told at once it used it
    after that, whichever backend it runs on (``close()`` and ``with``: README, "Python API")."""
    job_id = orch.submit("t.echo")
    with orch as same:
        assert same is orch
    orch.close()  # again: nothing left to close, no error
    before = file_bytes(orch)
    for call in (lambda: orch.status(job_id), lambda: orch.submit("t.echo"), lambda: orch.cancel(job_id),
                 lambda: orch.worker().run_once(), lambda: orch.verify(), lambda: orch.queue.ready()):
        with pytest.raises(OrchestratorError) as caught:
            call()
        assert (caught.value.code, caught.value.exit_code) == ("STORE_CLOSED", 10)
    assert file_bytes(orch) == before
    assert Orchestrator(base_path=orch.settings.base_path, project_id="proj", keyring=orch.keyring).status(job_id).state == "queued"
