"""Claiming across machines on PostgreSQL: SKIP LOCKED candidates and the pages after them, fencing checked by the
database, and leases and stale recovery that need no shared disk. Waking idle workers (LISTEN/NOTIFY) and what the
threads and forked children sharing an index keep apart: ``test_pg_wakeups.py``.

Each "machine" is its own ``Orchestrator`` with its own store (connections) and its own base
path, so nothing can pass between them through local files; only the database is shared.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator
from orchestrator.errors import ConcurrencyError, LeaseLostError
from orchestrator.store.base import InTransaction

from backends import Cluster, cluster_of, killed_at_the_end
from helpers import REPO, WAIT, submitted_as_before, wait_until

pytestmark = pytest.mark.postgres




@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with cluster_of(tmp_path, monkeypatch) as c:
        yield c


def types(orch: Orchestrator, job_id: str) -> list[str]:
    return [json.loads(line.raw)["type"] for line in orch.store.read(job_id)]


# -- claiming ------------------------------------------------------------------------------------
def test_concurrent_claimers_get_different_candidates_with_skip_locked(cluster: Cluster) -> None:
    a, b = cluster.machine("a"), cluster.machine("b")
    jobs = [a.submit("t.echo", i) for i in range(3)]
    now = a.clock()
    first_a = a.queue.candidates(now)[0].job_id
    first_b = b.queue.candidates(now)[0].job_id
    assert first_a == jobs[0] and first_b == jobs[1], "the second claimer skips the reserved job"
    # a reservation is a hint that lapses: nobody claimed jobs[0], so it is offered again later
    assert b.queue.candidates(now + 5)[0].job_id == jobs[0]


def test_each_job_is_claimed_exactly_once_by_concurrent_workers_on_postgres(cluster: Cluster) -> None:
    machines = [cluster.machine(f"m{i}") for i in range(4)]
    jobs = [machines[0].submit("t.echo", i) for i in range(24)]
    now = machines[0].clock()
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(i: int) -> None:
        w = cluster.worker(machines[i], f"w{i}")
        while (claim := w.claim(now)) is not None:
            with lock:
                claims.append((claim.job_id, w.worker_id))

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(j for j, _ in claims) == sorted(jobs), "every job claimed once, none twice"
    for job in jobs:
        assert types(machines[0], job) == ["job_submitted", "job_claimed"]
    assert machines[0].queue.ready() == [] and sorted(machines[0].queue.running()) == sorted(jobs)


def test_a_job_a_worker_has_no_handler_for_is_not_reserved_again_by_it(cluster: Cluster, monkeypatch) -> None:
    """Workers with different ``--import`` modules share a queue: one without the job's handler reserved it at
    each of its passes (for two seconds each time), so the worker that has the handler never got it."""
    import orchestrator.claiming as claiming
    from orchestrator.errors import HandlerNotFoundError

    a, b = cluster.machine("a"), cluster.machine("b")
    job = a.submit("t.echo", "for b")
    wa, wb = cluster.worker(a, "without-handler"), cluster.worker(b, "with-handler")
    real_lookup = claiming.lookup

    def none_here(kind: str):
        raise HandlerNotFoundError(f"no handler for kind {kind!r} (not imported here)", kind=kind, reason="not imported here")

    now = a.clock()
    monkeypatch.setattr(claiming, "lookup", none_here)
    assert wa.claim(now) is None  # reserved for a moment by this first pass, then left
    assert wa.claim(now + 3) is None  # its reservation lapsed: a later pass must not take it again
    monkeypatch.setattr(claiming, "lookup", real_lookup)
    claim = wb.claim(now + 3)
    assert claim is not None and claim.job_id == job


def test_a_worker_that_leaves_a_job_it_reserved_lets_it_go_at_once_and_wakes_the_others(cluster: Cluster,
                                                                                        monkeypatch) -> None:
    """A worker without the job's handler reserved it for two seconds before leaving it: the worker that has the
    handler, woken by the submit, found it reserved and waited those two seconds. Now the one that leaves it releases
    the row and notifies, so the other is woken and claims it at the same instant."""
    import orchestrator.claiming as claiming
    from orchestrator.errors import HandlerNotFoundError

    a, b = cluster.machine("a"), cluster.machine("b")
    wa, wb = cluster.worker(a, "without-handler"), cluster.worker(b, "with-handler")
    b.queue.wait(0)  # b listens
    try:
        job = a.submit("t.echo", "for b")
        assert b.queue.wait(WAIT)  # the submit's notification
        real_lookup = claiming.lookup

        def none_here(kind: str):
            raise HandlerNotFoundError(f"no handler for kind {kind!r} (not imported here)", kind=kind,
                                       reason="not imported here")

        now = a.clock()
        monkeypatch.setattr(claiming, "lookup", none_here)
        assert wa.claim(now) is None  # reserved by this pass, then left
        monkeypatch.setattr(claiming, "lookup", real_lookup)
        assert b.queue.wait(WAIT), "the release woke the worker that has the handler"
        claim = wb.claim(now)  # the same instant: no reservation left to wait out
        assert claim is not None and claim.job_id == job
    finally:
        b.queue.close()


def test_a_job_left_for_want_of_a_handler_is_released_once_not_at_each_pass_that_reserves_it_again(
        cluster: Cluster, monkeypatch) -> None:
    """A pass never reserves the ``SKIPPED_MAX`` jobs a worker left last (``skip``), but with more queued jobs of a
    kind it has no handler for it reserves one of the others, reads it and leaves it again. It also released it each
    time, and the release's notify woke every listener, this worker too: woken by its own release, it made another
    pass, forever (~130 passes a second with 400 such jobs; one pass in 10 s before releases). A job is released
    when first left; reserved again later, its reservation lapses, as before releases, and nobody is woken."""
    import orchestrator.claiming as claiming

    monkeypatch.setattr(claiming, "SKIPPED_MAX", 1)  # as if it had left more than 256 such jobs
    a = cluster.machine("a")
    for i in range(3):
        a.submit("t.nowhere", i)  # no handler anywhere
    w = cluster.worker(a, "without-handler")
    a.queue.wait(0)  # this worker listens, as its loop does
    try:
        now = a.clock()
        assert w.claim(now) is None  # the first job reserved, left and released; the others listed and left
        assert a.queue.wait(WAIT), "a job left the first time is released, and the others woken"
        for later in (3.0, 6.0):  # each reservation lapsed: the first job, out of skip, is reserved again
            assert w.claim(now + later) is None
            assert not a.queue.wait(0.3), "no release, no notify: the worker is not woken into another pass"
        assert "t.nowhere" in w.unhandled
    finally:
        a.queue.close()


def test_a_reservation_of_a_job_in_skip_is_not_listed_as_one_to_look_at_again(cluster: Cluster) -> None:
    """The claim statement lists the next reservation to lapse, for the worker to look again then (in case its holder
    could not claim the job). One of a job the worker left (``skip``) counted too: a worker with more than
    ``SKIPPED_MAX`` jobs of a kind it has no handler for reserves some of them again (out of ``skip``), and it woke
    at each such reservation's lapse for a pass that made the next: ~3 passes a second for good after 400 such
    jobs (one pass in 10 s before releases)."""
    a = cluster.machine("a")
    left, other = a.submit("t.nowhere", 1), a.submit("t.echo", 2)
    now = a.clock()
    assert a.queue.candidates(now)[0].job_id == left  # reserved by this worker, which then leaves it (no release)
    b = cluster.machine("b")  # another worker (here of that kind only) looks again when it lapses
    assert [e.job_id for e in b.queue.candidates(now + 0.5, kinds=("t.nowhere",))] == [left]
    listed = a.queue.candidates(now + 1.0, skip=[left])
    assert [e.job_id for e in listed] == [other], "a job this worker left is not waited for"


def test_next_page_lists_the_due_rows_after_a_full_page_but_for_the_kinds_left_then_the_lower_priorities(
        cluster: Cluster) -> None:
    """A pass that left a whole page asks for the next (``PgQueueIndex.next_page``): the rest of the last row's
    priority, then the lower ones, reserving none (the first page reserves its first row); the kinds the pass found no handler for are left
    out, and a page that is not full has no next one (no statement)."""
    from orchestrator.store.pg_queue import CANDIDATES

    a = cluster.machine("a")
    page = CANDIDATES + 1
    first = [a.submit("t.a", i, priority=5) for i in range(page + 3)]
    others = [a.submit("t.b", i, priority=5) for i in range(page + 2)]
    low = [a.submit("t.c", i, priority=1) for i in range(2)]
    now = a.clock()
    q = a.queue
    assert [e.job_id for e in q.candidates(now)] == first[:page]
    second = q.next_page(now, left_kinds=["t.a"])
    assert [e.job_id for e in second] == others[:page]
    assert q.reserved_read(second[0]) is None  # a next page reserves none (the claim reads its job)
    assert [e.job_id for e in q.next_page(now, left_kinds=["t.a"])] == others[page:]  # priority 5 all listed
    assert [e.job_id for e in q.next_page(now, left_kinds=["t.a"])] == low
    assert q.next_page(now, left_kinds=["t.a"]) == []
    b = cluster.machine("b")
    assert [e.job_id for e in b.queue.candidates(now + 3, kinds=["t.c"])] == low and b.queue.next_page(now + 3) == []


def test_a_job_of_a_kind_refused_today_in_a_page_left_whole_holds_up_no_claim_of_the_job_after_it(
        cluster: Cluster) -> None:
    """A kind stored before 2026-12-07 may hold a NUL (the file store took one), which no text parameter can carry:
    the next page, asked without the kinds the pass found no handler for, sent it and failed (exit 10), so the job
    after a page of jobs left whole was never claimed. Its row has no kind: nothing of it is left out by kind."""
    from orchestrator.store.pg_queue import CANDIDATES

    a = cluster.machine("a")
    *left, echo = submitted_as_before(a, ["nul\x00kind", *["no.handler"] * CANDIDATES, "t.echo"])
    claim = cluster.worker(a, "w").claim(a.clock())
    assert claim is not None and claim.job_id == echo
    assert {a.status(j).state for j in left} == {"queued"}


def test_a_worker_of_some_kinds_neither_reserves_nor_lists_jobs_of_other_kinds_on_postgres(cluster: Cluster) -> None:
    a, b = cluster.machine("a"), cluster.machine("b")
    echo = a.submit("t.echo", "not for a", priority=5)  # first in claim order
    mine = a.submit("t.payload", {"status": "done", "summary": "mine"})
    wa = cluster.worker(a, "payloads-only", kinds=("t.payload",))
    now = a.clock()
    offered = a.queue.candidates(now, kinds=("t.payload",))
    assert [e.job_id for e in offered] == [mine]
    with a.store._take() as conn:  # noqa: SLF001 - the rows as the database holds them
        rows = dict(conn.execute("SELECT job_id, reserved_until_us FROM orch_ready WHERE project = %s",
                                 (a.project_id,)).fetchall())
    assert rows[echo] == 0, "another kind's job was never reserved by this worker"
    a.queue.release(offered[0])  # (that pass reserved mine: let it go)
    claim = wa.claim(now)
    assert claim is not None and claim.job_id == mine
    assert wa.claim(now) is None and a.status(echo).state == "queued"
    other = cluster.worker(b, "any-kind").claim(now)  # the echo job was left for a worker that runs it
    assert other is not None and other.job_id == echo


def _reads(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs the store reads on their own from now on (``read_with_aux``, ``first_line``), in order."""
    seen: list[str] = []
    for name in ("read_with_aux", "first_line"):
        real = getattr(orch.store, name)
        monkeypatch.setattr(orch.store, name, lambda stream, *a, _real=real: seen.append(stream) or _real(stream, *a))
    return seen


@pytest.mark.parametrize("bounds", [{}, {"READ_FIRST_ROWS": 1}, {"READ_FIRST_ROWS": 2, "READ_CHUNK_BYTES": 600}],
                         ids=["one-chunk", "lines-after-the-first-chunk", "a-line-in-slices"])
def test_the_claim_statement_reads_the_reserved_job_byte_for_byte_as_a_read_of_its_own(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, bounds: dict[str, int]) -> None:
    """Since 2026-12-02 the statement that reserves a job also reads it (head record and first chunk of lines), so
    the claim needs no read of its own: what it returns must be what ``read_with_aux`` returns, for a job longer than
    the first chunk too (the rest read as ``read`` reads it), and a line longer than a chunk (read in slices)."""
    from orchestrator.api import HEADS_AREA
    from orchestrator.store import postgres

    a = cluster.machine("a")
    job = a.submit("t.flaky", {"succeed_on": 9, "pad": "x" * 1500}, max_attempts=5)
    w = cluster.worker(a, "w")
    for _ in range(2):  # submitted, claimed, failed, claimed, failed: queued again, five lines
        assert w.run_once().job_id == job
    for name, value in bounds.items():
        monkeypatch.setattr(postgres, name, value)
    now = a.clock() + 1
    entry = a.queue.candidates(now)[0]
    assert entry.job_id == job
    assert a.queue.reserved_read(replace(entry, job_id="01OTHERJOB")) is None, "another entry: none"
    read = a.queue.reserved_read(entry)
    assert read is not None and read[0] is not None and len(read[1]) == 5
    assert read == a.store.read_with_aux(job, HEADS_AREA, job)
    assert a.queue.reserved_read(entry) is None, "given once"
    [hint] = a.queue.candidates(now)  # reserved already: listed to look at again when that lapses, not reserved
    assert hint.job_id == job and a.queue.reserved_read(hint) is None, "nothing reserved, nothing read"


def test_a_claim_reads_nothing_of_its_own_for_the_job_it_reserved_and_respects_kinds(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reserved job comes with the claim statement (one round trip, not two); a worker of some kinds reserves,
    and so reads, only its kinds' jobs, whatever comes first in claim order."""
    a = cluster.machine("a")
    echo = a.submit("t.echo", "not for a", priority=5)  # first in claim order
    mine = [a.submit("t.payload", {"status": "done", "summary": f"mine {i}"}) for i in range(2)]
    reads = _reads(a, monkeypatch)
    w = cluster.worker(a, "payloads-only", kinds=("t.payload",))
    now = a.clock()
    claims = [w.claim(now), w.claim(now)]
    assert [c.job_id for c in claims if c is not None] == mine
    assert reads == [], "each claimed job was read by the statement that reserved it"
    assert w.claim(now) is None and a.status(echo).state == "queued"
    any_kind = cluster.worker(a, "any-kind").claim(now)
    assert any_kind is not None and any_kind.job_id == echo and reads == [echo]  # (``status`` read it)


@pytest.mark.parametrize("change", ["cancelled", "claimed-elsewhere"])
def test_a_reserved_job_that_changes_before_its_claim_is_not_claimed_and_the_next_one_is(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The reserved job is read in the reserving statement's snapshot: if it changes before the claim (a cancel,
    another worker's claim), the claim's append finds a head it did not expect and writes nothing, and the worker
    goes on to the next candidate (read on its own), as it did when the job was read after the reservation."""
    a, b = cluster.machine("a"), cluster.machine("b")
    first, second = a.submit("t.echo", 1), a.submit("t.echo", 2)
    real = a.queue.candidates

    def then_changed(now: float, **kw: Any) -> list:
        out = real(now, **kw)
        if out and out[0].job_id == first:
            if change == "cancelled":
                b.cancel(first)
            else:
                b.append(b.load(first), first, [("job_claimed", {
                    "worker_id": "b", "epoch": 1, "attempt": 1, "lease_expires_at": "2030-01-01T00:00:00.000000Z"})],
                    fence=1)
        return out

    monkeypatch.setattr(a.queue, "candidates", then_changed)
    reads = _reads(a, monkeypatch)
    claim = cluster.worker(a, "w").claim(a.clock())
    assert claim is not None and claim.job_id == second
    assert reads == [second], "the first job was read by the claim statement, the second on its own"
    assert types(a, first) == (["job_submitted", "job_cancelled"] if change == "cancelled"
                               else ["job_submitted", "job_claimed"]), "no claim of the changed job by this worker"
    assert types(a, second) == ["job_submitted", "job_claimed"]


def test_a_refused_claim_leaves_the_index_as_it_was(cluster: Cluster) -> None:
    a, b = cluster.machine("a"), cluster.machine("b")
    job = a.submit("t.echo", 1)
    view = b.load(job)
    a.cancel(job)  # the job changes after b read it
    with pytest.raises(ConcurrencyError):
        b.append(view, job, [("job_claimed", {"worker_id": "b", "epoch": 1, "attempt": 1,
                                              "lease_expires_at": "2030-01-01T00:00:00.000000Z"})], fence=1)
    assert a.queue.running() == [] and a.queue.ready() == []  # the cancel removed it, the refused claim added nothing


def test_a_reservation_commits_asynchronously_and_leaves_appends_synchronous(cluster: Cluster) -> None:
    """The reservation is a hint (``synchronous_commit`` off for its own transaction only); every
    append that follows on the same connections still waits for the WAL flush."""
    a = cluster.machine("a")
    job = a.submit("t.echo", 1)
    assert [e.job_id for e in a.queue.candidates(a.clock())][:1] == [job]
    with a.store._take() as conn:  # noqa: SLF001 - look at the pooled connection the reservation used
        reserved_by = conn.execute("SELECT reserved_by FROM orch_ready WHERE project = %s AND job_id = %s",
                                   (a.project_id, job)).fetchone()[0]
        setting = conn.execute("SHOW synchronous_commit").fetchone()[0]
    assert reserved_by is not None and setting == "on"
    for i in range(3):  # whichever pooled connection the append takes: its statement notes the setting it ran with
        a.store.append("other", lambda h: [b"{}"], in_transaction=InTransaction(writes=((
            "INSERT INTO orch_aux (project, area, key, data) SELECT %s, 'probe', %s, "
            "convert_to(current_setting('synchronous_commit'), 'UTF8') FROM up", (a.project_id, f"k{i}")),)))
    assert [a.store.get_aux("probe", f"k{i}") for i in range(3)] == [b"on"] * 3


# -- fencing ---------------------------------------------------------------------------------------
def test_a_zombie_worker_cannot_append_on_postgres(cluster: Cluster) -> None:
    """The database, not only the worker's own re-read, refuses an append from a superseded epoch."""
    a, b = cluster.machine("zombie-host"), cluster.machine("rescuer-host")
    job = a.submit("t.echo", "late")
    t = a.clock()
    zombie = cluster.worker(a, "zombie", lease_seconds=5)
    claim = zombie.claim(now=t)
    rescuer = cluster.worker(b, "rescuer", lease_seconds=5)
    assert rescuer.recover_stale(now=t + 6) == [job]
    assert rescuer.claim(now=t + 3600).epoch == claim.epoch + 1
    before = types(b, job)
    # A zombie that bypasses every Python check: it re-reads the head (so the expected sequence
    # matches) and appends its outcome. Only its epoch is stale.
    fresh = a.load(job)
    with pytest.raises(LeaseLostError) as refused:
        a.append(fresh, job, [("job_succeeded", {"summary": "late", "output": None, "artifacts": []})],
                 run_id=claim.run_id, actor="worker:zombie", fence=claim.epoch)
    assert refused.value.details.get("fenced") is True and "superseded" in refused.value.message
    assert types(b, job) == before and b.status(job).state == "running"
    # the worker's own path records nothing either
    assert zombie.execute(claim).outcome == "lease_lost"
    assert types(b, job) == before


def test_the_fence_follows_the_latest_claim_and_allows_its_owner(cluster: Cluster) -> None:
    a = cluster.machine("a")
    job = a.submit("t.echo", "x")
    w = cluster.worker(a, "w")
    result = w.run_once()
    assert result is not None and result.outcome == "succeeded"
    with a.store._take() as conn:  # noqa: SLF001 - read the fence the database holds
        fence = conn.execute("SELECT fence FROM orch_streams WHERE project = %s AND stream = %s",
                             (a.project_id, job)).fetchone()[0]
    assert fence == 1


# -- leases and stale recovery across machines ----------------------------------------------------
def test_a_short_run_writes_no_lease_row_and_a_renewed_one_is_dropped_with_the_outcome(cluster: Cluster) -> None:
    a = cluster.machine("a")
    started, release = cluster.tmp / "started", cluster.tmp / "release"
    job = a.submit("t.wait", {"started": str(started), "release": str(release)})
    w = cluster.worker(a, "w", lease_seconds=0.3)
    claim = w.claim(a.clock())
    assert claim is not None
    assert a.store.get_aux("leases", f"{job}.1") is None  # the claim event carries the first expiry: no commit
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(w.execute(claim)))
    runner.start()
    try:
        wait_until(started.exists, what="the job to start")
        wait_until(lambda: a.store.get_aux("leases", f"{job}.1"), what="a heartbeat's lease row")
        lease = json.loads(a.store.get_aux("leases", f"{job}.1"))
        assert (lease["run_id"], lease["epoch"], lease["worker_id"]) == (claim.run_id, 1, "w")
    finally:
        release.write_text("go")
        runner.join(WAIT)
    assert results and results[0].outcome == "succeeded"
    assert a.store.get_aux("leases", f"{job}.1") is None  # deleted in the outcome's transaction


def test_stale_recovery_works_when_the_dead_worker_was_on_another_machine(cluster: Cluster, cli_env) -> None:
    here = cluster.machine("machine-b")
    started, release = cluster.tmp / "started", cluster.tmp / "release"
    job = here.submit("t.wait", {"started": str(started), "release": str(release)})
    env = cluster.process_env(cli_env, "machine-a")
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "worker.py"), "--once", "--worker-id", "machine-a",
                             "--lease-seconds", "1"], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with killed_at_the_end(proc):
        wait_until(started.exists, what="the job to start on machine a")
        # its heartbeats are in the database, not on a disk machine b could not read
        wait_until(lambda: here.store.get_aux("leases", f"{job}.1"), what="a lease record in the database")
        assert not (cluster.tmp / "machine-b" / cluster.project / ".orchestrator" / "leases").exists()
    rescuer = cluster.worker(here, "machine-b", lease_seconds=1)
    assert here.queue.running() == [job]  # machine b sees what ran on machine a
    lease = json.loads(here.store.get_aux("leases", f"{job}.1"))
    assert rescuer.recover_stale(now=lease["expires_at"] - 0.1) == []  # not before the lease ends
    assert rescuer.recover_stale(now=lease["expires_at"] + 0.1) == [job]
    release.write_text("go")
    result = rescuer.run_once(now=lease["expires_at"] + 60)
    assert result is not None and result.outcome == "succeeded"
    assert types(here, job) == ["job_submitted", "job_claimed", "stale_recovered", "job_claimed", "job_succeeded"]
    assert here.status(job).state == "succeeded" and here.queue.running() == []


def test_queued_jobs_imported_into_postgres_are_claimed(cluster: Cluster, base: Path) -> None:
    import io

    from orchestrator.transfer import export_project, import_project

    source = Orchestrator(base_path=base, project_id=cluster.project)  # the file backend, same key
    job = source.submit("t.echo", "moved")
    here = cluster.machine("a")
    w = cluster.worker(here, "w")
    assert w.claim() is None  # the index is built (empty) before the import
    bundle = io.BytesIO()
    export_project(source, bundle)
    bundle.seek(0)
    import_project(here, bundle)
    claim = cluster.worker(cluster.machine("b"), "w2").claim()
    assert claim is not None and claim.job_id == job


def test_a_row_from_before_0004_of_another_kind_is_released_when_a_worker_of_some_kinds_leaves_it(
        cluster: Cluster) -> None:
    """A row written before migration 0004 holds no kind, so a worker of some kinds reserves it and reads the job's
    first line to learn it (``Claimer._of_my_kinds``). Left, it was not released: the workers of its kind waited out
    the reservation (``RESERVATION_SECONDS``), where a job left at the claim (no handler, key, kind) is released."""
    a, b = cluster.machine("a"), cluster.machine("b")
    echo = a.submit("t.echo", "not for a")
    with a.store._take() as conn:  # noqa: SLF001 - as a release before 0004 wrote it
        conn.execute("UPDATE orch_ready SET kind = NULL WHERE project = %s AND job_id = %s", (a.project_id, echo))
    wa = cluster.worker(a, "payloads-only", kinds=("t.payload",))
    now = a.clock()
    assert wa.claim(now) is None and a.status(echo).state == "queued"
    with a.store._take() as conn:  # noqa: SLF001
        [(until,)] = conn.execute("SELECT reserved_until_us FROM orch_ready WHERE project = %s AND job_id = %s",
                                  (a.project_id, echo)).fetchall()
    assert until == 0, "left and released: no reservation for the workers of its kind to wait out"
    other = cluster.worker(b, "any-kind").claim(now + 0.1)
    assert other is not None and other.job_id == echo


# -- a clock stepped back (migration 0007) ------------------------------------------------------------------------
def test_a_job_queued_before_the_servers_clock_stepped_back_is_run_at_once_on_postgres(cluster: Cluster) -> None:
    """Only a retry's backoff makes a queued job wait: its row's time orders it (FIFO), and a server clock stepped
    back 10 minutes (NTP, a failover) does not hold up the jobs submitted, resumed or revised in those minutes. Until
    2026-12-07 the claim statement took only rows whose time had come (``runnable_at_us <= now``), as the file index
    did until 2026-12-06: each such job waited 10 minutes."""
    a = cluster.machine("a")
    submitted = a.submit("t.echo", 1)
    asked = a.submit("t.ask", 1, priority=-1)
    w = cluster.worker(a, "w")
    back = a.clock() - 600
    assert w.run_once(now=back).job_id == submitted and w.next_due is None
    assert w.run_once(now=back).outcome == "waiting_human"
    a.resume(asked, "blue")
    assert w.claim(now=back).job_id == asked


def test_a_job_submitted_with_a_clock_ahead_of_the_servers_is_claimed_at_once_by_a_worker_on_the_servers(
        cluster: Cluster) -> None:
    """The job's time is 10 minutes ahead of the server's clock (a machine given its own clock, or the server's own
    before it stepped back): the worker, on the server's clock, claims it at once."""
    worker_side = cluster.machine("worker")
    ahead = cluster.machine("ahead", clock=lambda: worker_side.clock() + 600)
    job = ahead.submit("t.echo", 1)
    [entry] = worker_side.queue.ready()
    assert entry.runnable_at > worker_side.clock() + 500  # its row's time: 10 minutes ahead
    claim = cluster.worker(worker_side, "w").claim()
    assert claim is not None and claim.job_id == job


def test_a_retry_still_waits_its_backoff_after_the_servers_clock_stepped_back_on_postgres(cluster: Cluster) -> None:
    a = cluster.machine("a")
    job = a.submit("t.flaky", {"succeed_on": 2}, max_attempts=3)
    w = cluster.worker(a, "w", retry_base_seconds=10.0)
    assert w.run_once().outcome == "retry"
    retry_at = a.load(job).state.retry_at
    [entry] = a.queue.ready()
    assert not entry.at_once and entry.runnable_at == pytest.approx(retry_at, abs=1e-6)
    assert w.run_once(now=retry_at - 600) is None and w.next_due == pytest.approx(retry_at, abs=1e-3)
    assert w.run_once(now=retry_at).outcome == "succeeded"
