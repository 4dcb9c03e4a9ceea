"""An ``import`` that meets a stream holding another history: the rest of the bundle is still imported, every
conflict is reported at the end (exit 3), and nothing of a conflicting stream is overwritten."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import jobstates as js
from backends import BACKENDS, TestPostgresStore, unique_project
from orchestrator import Orchestrator
from orchestrator.errors import ImportConflictError
from orchestrator.integrity import verify_project
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.transfer import export_project, import_project

REPO = Path(__file__).resolve().parents[2]


def bundle(source: Orchestrator) -> bytes:
    buf = io.BytesIO()
    export_project(source, buf)
    return buf.getvalue()


def submitted_here(orch: Orchestrator, job_id: str) -> None:
    """A job of that id with another history: what a submit here with the same idempotency key writes."""
    orch.append(None, job_id, [("job_submitted", {"kind": "other", "input": None, "options": {},
                                                  "context_digest": "x"})])


def test_a_job_that_conflicts_leaves_the_other_jobs_of_the_bundle_imported_and_every_conflict_is_named(
        base: Path, keyring: Keyring) -> None:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    jobs = sorted(source.submit("echo", {"i": i}) for i in range(5))
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    conflicting = [jobs[1], jobs[3]]
    for job_id in conflicting:
        submitted_here(dest, job_id)
    before = {j: dest.store.read(j) for j in conflicting}
    with pytest.raises(ImportConflictError) as refused:
        import_project(dest, io.BytesIO(bundle(source)))
    for job_id in set(jobs) - set(conflicting):  # the streams after the first conflict too
        assert dest.store.read(job_id) == source.store.read(job_id)
    assert {j: dest.store.read(j) for j in conflicting} == before  # never overwritten
    err = refused.value
    assert [c["stream"] for c in err.details["conflicts"]] == conflicting
    assert err.details["imported"] == {"streams": 3, "events": 3, "written": 3}
    message = err.message
    assert all(j in message for j in conflicting), message
    assert "2 stream(s)" in message and "the other 3 stream(s)" in message and "were imported" in message, message
    assert "audit-timeline --job-id" in message, message  # what to do


def test_an_audit_log_that_conflicts_stops_the_import_before_any_job_and_says_so(
        base: Path, keyring: Keyring) -> None:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    job_id = source.submit("echo", {"i": 1})
    source.cancel(job_id, "theirs")
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    dest.cancel(dest.submit("echo", {"i": 2}), "ours")  # the destination has an audit log of its own
    with pytest.raises(ImportConflictError) as refused:
        import_project(dest, io.BytesIO(bundle(source)))
    assert dest.store.read(job_id) == []
    assert refused.value.details["conflicts"] == [{"stream": AUDIT_STREAM, "events_here": 1}]
    assert refused.value.details["imported"] == {"streams": 0, "events": 0, "written": 0}
    assert "no stream of the bundle was imported" in refused.value.message, refused.value.message


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from orchestrator.cli import main; main(sys.argv[1:])",
                           *args], env=env, capture_output=True, timeout=60, cwd=str(REPO))


def test_cli_a_conflict_exits_3_and_json_says_what_was_imported_and_what_was_not(cli_env, tmp_path) -> None:
    src, dst = {**cli_env, "BASE_PATH": str(tmp_path / "src")}, {**cli_env, "BASE_PATH": str(tmp_path / "dst")}
    for i in range(3):
        assert _cli("submit", "--kind", "echo", "--key", f"k{i}", "--input", json.dumps({"i": i}),
                    env=src).returncode == 0
    # the same idempotency key submitted at the destination too, with another input: the same job id
    job_id = _cli("submit", "--kind", "echo", "--key", "k1", "--input", '{"i": 9}', env=dst).stdout.decode().strip()
    bundle_path = tmp_path / "p.bundle"
    assert _cli("export", "-o", str(bundle_path), env=src).returncode == 0
    proc = _cli("import", str(bundle_path), "--json", env=dst)
    assert proc.returncode == 3, proc.stderr
    err = json.loads(proc.stdout)
    assert err["error"] == "IMPORT_CONFLICT" and [c["stream"] for c in err["details"]["conflicts"]] == [job_id]
    assert err["details"]["imported"]["streams"] == 2, err
    assert b"Traceback" not in proc.stderr


# -- two imports of one bundle at once -------------------------------------------------------------

@pytest.fixture(params=BACKENDS)
def destination(request: Any, base: Path, keyring: Keyring) -> Iterator[Callable[[str], Orchestrator]]:
    """``Orchestrator`` objects on one destination store (each a process's view of it) of a project."""
    stores: list[TestPostgresStore] = []

    def make(project: str) -> Orchestrator:
        if request.param == "file":
            return Orchestrator(base_path=base / "dst", project_id=project, keyring=keyring)
        stores.append(TestPostgresStore(project))
        return Orchestrator(base_path=base / "dst", project_id=project, keyring=keyring, store=stores[-1])

    yield make
    for store in stores:
        store.close()


@pytest.mark.parametrize("first_writes", ["every line", "part of the job"])
def test_two_imports_of_one_bundle_at_once_both_complete_each_taking_the_others_lines_as_its_own(
        base: Path, keyring: Keyring, destination: Callable[[str], Orchestrator], first_writes: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second import's append meets the lines the first wrote meanwhile: it reads the stream again and goes on
    from there (until 2026-12-07: CONCURRENT_APPEND, exit 6, "nothing was written", after it had written some)."""
    from orchestrator import faults, transfer

    monkeypatch.setattr(transfer, "CHUNK", 2)
    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = source.submit("echo", {"i": 1})
    for run in ("run-1", "run-2"):  # 5 events: 3 chunks of CHUNK lines
        js.claim(source, job_id, run)
        js.finish(source, job_id, "job_released", {})
    whole = bundle(source)
    first, second = destination(source.project_id), destination(source.project_id)

    append = second.store.append

    def first_import_meanwhile(stream: str, *args: Any, **kwargs: Any) -> Any:
        if stream == job_id and not done:
            if first_writes == "part of the job":  # the first import dies after its first chunk of the job
                faults.arm("import.after_chunk", lambda: (_ for _ in ()).throw(Died()), nth=1)
            try:
                done.append(import_project(first, io.BytesIO(whole)))
            except Died:
                done.append(None)
            finally:
                faults.disarm_all()
        return append(stream, *args, **kwargs)

    done: list[object] = []
    second.store.append = first_import_meanwhile  # type: ignore[method-assign]
    result = import_project(second, io.BytesIO(whole))
    assert done and result["events"] == 5
    assert [s.raw for s in second.store.read(job_id)] == [s.raw for s in source.store.read(job_id)]
    assert result["written"] == (0 if first_writes == "every line" else 3)
    assert verify_project(second).ok


class Died(Exception):
    """The first import's process dying at a crash point."""
