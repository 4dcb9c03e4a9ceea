"""An event that is durable is acknowledged when the queue index cannot be brought up to date after it.

The index (``index/ready``, ``index/running``) is a cache of the events: an entry is put before the event that needs
it and dropped, or announced, after the event (``QueueIndex.after_append``). When that last step fails (a file put
in a folder's place, a disk that refuses the change) the event stands; every append goes on with a warning,
``INDEX_NOT_UPDATED``, instead of ``STORAGE_ERROR`` ("nothing was acknowledged"), which had an operator run a
``submit`` again (a second job) and stopped an audited action before its audit entry (docs/decisions.md, "An event
after which the queue index fails is acknowledged").
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator import Orchestrator, audit, faults
from orchestrator.errors import INDEX_NOT_UPDATED

importlib.import_module("worker_handlers")  # registers the t.* handlers


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    yield
    faults.disarm_all()


def file_in_place_of(folder: Path) -> Path:
    """Move ``folder`` aside and leave a regular file in its place: every name under it is refused from now on
    (``ENOTDIR``: ``STORAGE_ERROR`` naming the file). Returns where the folder went."""
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("an operator's file")
    return aside


def after_the_event(folder: Path, nth: int = 1) -> list[Path]:
    """Put a file in ``folder``'s place once the ``nth`` append's event is durable, before its index step; returns
    the list that gets where the folder went (one item once done, to show the fault fired)."""
    moved: list[Path] = []
    faults.arm("append.after_event", lambda: moved.append(file_in_place_of(folder)), nth=nth)
    return moved


def codes(warnings: object) -> list[str]:
    return [w["code"] for w in warnings]  # type: ignore[attr-defined]


def verified(orch: Orchestrator, job_id: str) -> bool:
    """The job verifies, and no audited event of it misses its entry (that would be a warning)."""
    report = orch.verify(job_id)
    return report.ok and not report.warnings


def test_a_submit_whose_announcement_fails_is_acknowledged_and_its_job_runs_after_a_rebuild(
        orch: Orchestrator, caplog: pytest.LogCaptureFixture) -> None:
    """The one case that leaves a job without its ready entry (its folder went with the entry in it): once the file
    in the folder's place is moved away, the next worker rebuilds the index by itself. Before: STORAGE_ERROR, the
    job queued all the same."""
    ready = orch.queue.ready_dir
    moved = after_the_event(ready)
    sub = orch.submit_job("t.echo", {"x": 1})
    assert moved and codes(sub.warnings) == [INDEX_NOT_UPDATED]
    message = sub.warnings[0]["message"]
    assert f"event 1 (job_submitted) of job {sub.job_id} is durable" in message
    assert f"{ready} is a file where a folder belongs" in message and message in caplog.text
    assert "index/built is removed" in message
    assert orch.status(sub.job_id).state == "queued" and verified(orch, sub.job_id)
    ready.unlink()  # the operator moves the file away: the job has no entry, and ready/ no mark (a new folder)
    assert not orch.queue.is_built()  # so the next worker rebuilds the index (until 2026-12-06: `rm index/built`)
    ran = orch.worker(worker_id="w2").run_once()
    assert ran is not None and (ran.job_id, ran.state) == (sub.job_id, "succeeded")
    assert len(orch.load(sub.job_id).events) == 3


def test_a_cancel_whose_ready_entry_cannot_be_dropped_is_done_and_its_audit_entry_written(orch: Orchestrator) -> None:
    """The index step runs between the event and its audit entry: before, its STORAGE_ERROR stopped the command
    there, the job cancelled and its entry missing until a heal. The entry left over is dropped by a worker."""
    job = orch.submit("t.echo", {"x": 1})
    ready = orch.queue.ready_dir
    moved = after_the_event(ready)
    result = orch.cancel(job, "no longer needed")
    assert moved and result.applied and result.state == "cancelled" and codes(result.warnings) == [INDEX_NOT_UPDATED]
    assert "event 2 (job_cancelled)" in result.warnings[0]["message"]
    assert verified(orch, job) and orch.verify().ok
    assert [entry["data"]["event_type"] for _, entry in audit.entries_for(orch, job_id=job)[1]] == ["job_cancelled"]
    ready.unlink()
    moved[0].rename(ready)  # the folder back, with the cancelled job's entry in it
    assert [e.job_id for e in orch.queue.ready()] == [job]
    assert orch.worker(worker_id="w").run_once() is None  # it meets the entry, reads the job, drops the entry
    assert orch.queue.ready() == [] and orch.status(job).state == "cancelled"


def test_a_claim_and_an_outcome_whose_index_steps_fail_run_the_job_once(orch: Orchestrator) -> None:
    """The claim's step drops the ready entry, the outcome's the running entry: each failure is the append's warning
    (the claim's is the result's too) and the job runs once. The running entry left over is dropped by the next
    stale recovery, which finds the job finished."""
    job = orch.submit("t.echo", {"x": 1})
    worker = orch.worker(worker_id="w")
    ready_moved = after_the_event(orch.queue.ready_dir)  # the claim's event
    claim = worker.claim()
    assert ready_moved and claim is not None and codes(claim.view.warnings) == [INDEX_NOT_UPDATED]
    running = orch.queue.running_dir
    running_moved = after_the_event(running)  # the outcome's event
    result = worker.execute(claim)
    assert running_moved and result.outcome == "succeeded"
    assert codes(result.warnings) == [INDEX_NOT_UPDATED, INDEX_NOT_UPDATED]
    assert "event 3 (job_succeeded)" in result.warnings[1]["message"] and f"{running}" in result.warnings[1]["message"]
    assert [json.loads(line.raw)["type"] for line in orch.store.read(job)] == [
        "job_submitted", "job_claimed", "job_succeeded"]
    for folder, moved in ((orch.queue.ready_dir, ready_moved), (running, running_moved)):  # the operator's fix
        folder.unlink()
        moved[0].rename(folder)
    assert orch.queue.running() == [job] and orch.queue.is_built()
    assert orch.worker(worker_id="w2").recover_stale() == [] and orch.queue.running() == []
    assert orch.status(job).state == "succeeded" and verified(orch, job)


def test_submit_on_the_command_line_exits_0_with_the_warning_in_its_json(cli_env: dict[str, str], base: Path) -> None:
    """`submit --json`: exit 0, the job id, and the warning under `"warnings"` (logged on stderr as well, the line
    of any append's warning: tests/acceptance/test_head_record_ack_cli.py), so that an operator does not submit
    again. Before: exit 10, STORAGE_ERROR, and the job queued all the same."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    ready = base / "proj" / ".orchestrator" / "index" / "ready"
    ready.mkdir(parents=True)  # the folder the submit's entry goes in, moved away once its event is durable
    moved = after_the_event(ready)
    done = CliRunner().invoke(cli, ["submit", "--kind", "t.echo", "--input", "{}", "--json"], env=cli_env)
    assert done.exit_code == 0 and moved, done.output
    out = json.loads(done.stdout)
    assert out["created"] and codes(out["warnings"]) == [INDEX_NOT_UPDATED]
    assert f"event 1 (job_submitted) of job {out['job_id']} is durable" in out["warnings"][0]["message"]
