"""What a worker that ran nothing says it left queued for other workers (``worker --once``, exit 11 for want of a
handler, exit 8 for want of a trusted key; the ``worker_stopped`` line of a looping worker) counts every such job,
on every store: on PostgreSQL a claim pass lists only the first due rows (``pg_queue.CANDIDATES`` besides the one it
reserves), and until 2026-12-07 the message said "9 queued job(s)" of 60."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator
from orchestrator.store.pg_queue import CANDIDATES
from orchestrator.worker import Worker, WorkerSettings

from backends import BACKENDS, orchestrator_on

MANY = 3 * (CANDIDATES + 1) + 2  # more than a claim pass lists on PostgreSQL, three times over


def worker(orch: Orchestrator, name: str = "w", **settings: object) -> Worker:
    return Worker(orch, WorkerSettings(worker_id=name, retry_base_seconds=0.0, **settings), rng=random.Random(7))


@pytest.fixture(params=BACKENDS)
def orch(request: pytest.FixtureRequest, base: Path) -> Iterator[Orchestrator]:
    with orchestrator_on(request.param, base, keyring=None) as made:
        yield made


def test_worker_once_counts_every_queued_job_of_a_kind_it_has_no_handler_for(orch: Orchestrator) -> None:
    for i in range(MANY):
        orch.submit("t.nowhere", {"n": i})
    for i in range(3):
        orch.submit("t.elsewhere", {"n": i})
    w = worker(orch)
    assert w.run_once() is None
    left = w.handler_not_found()
    assert left is not None
    assert left.details["jobs"] == MANY + 3
    assert {kind: k["jobs"] for kind, k in left.details["kinds"].items()} == {"t.nowhere": MANY, "t.elsewhere": 3}
    assert left.message.startswith(f"{MANY + 3} queued job(s) left for a worker with a handler")


def test_a_looping_worker_that_stops_counts_every_job_its_last_pass_left_for_want_of_a_handler(
        orch: Orchestrator) -> None:
    job = orch.submit("t.echo", {"message": "the one it runs"})
    for i in range(MANY):
        orch.submit("t.nowhere", {"n": i})
    w = worker(orch)
    assert w.run(idle_exit=True) == 1
    assert orch.status(job).state == "succeeded"
    left = w.handler_not_found()
    assert left is not None and left.details["jobs"] == MANY, left.message


def test_a_job_of_a_kind_the_worker_does_not_run_is_not_counted_as_left_for_want_of_a_handler(
        orch: Orchestrator) -> None:
    """``--kind``: a worker of some kinds leaves the others quietly, on every store, however many."""
    for i in range(MANY):
        orch.submit("t.nowhere", {"n": i})
    w = worker(orch, kinds=("t.echo",))
    assert w.run_once() is None
    assert w.handler_not_found() is None


def test_one_pass_reaches_a_runnable_job_behind_more_due_jobs_than_a_page_it_cannot_run(orch: Orchestrator) -> None:
    """``worker --once`` runs the job it can run however many due jobs it cannot run are ahead of it, on every store:
    on PostgreSQL a pass met only the reserved row and ``CANDIDATES`` more (until 2026-12-07: exit 11, the job
    queued). Jobs of two kinds without a handler, the second kind met only on a page after the first."""
    for i in range(MANY):
        orch.submit("t.nowhere", {"n": i}, priority=5)
    for i in range(MANY):
        orch.submit("t.elsewhere", {"n": i}, priority=4)
    job = orch.submit("t.echo", {"message": "behind them"})
    w = worker(orch)
    claim = w.claim()
    assert claim is not None and claim.job_id == job
    assert {kind: k["jobs"] for kind, k in w.handler_not_found().details["kinds"].items()} == {
        "t.nowhere": MANY, "t.elsewhere": MANY}


def test_one_pass_of_a_worker_of_some_kinds_reaches_its_job_behind_jobs_of_its_kind_it_has_no_handler_for(
        orch: Orchestrator) -> None:
    """The same with ``--kind``: rows of the worker's kinds that it has no handler for are left, and the pass goes
    on past them."""
    for i in range(MANY):
        orch.submit("t.nowhere", {"n": i}, priority=5)
    job = orch.submit("t.echo", {"message": "behind them"})
    w = worker(orch, kinds=("t.nowhere", "t.echo"))
    claim = w.claim()
    assert claim is not None and claim.job_id == job
    assert w.handler_not_found().details["jobs"] == MANY
