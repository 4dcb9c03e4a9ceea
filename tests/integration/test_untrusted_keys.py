"""Several machines, each signing with its own key: a worker that lacks one machine's ``.pub`` leaves the jobs that
key signed for a worker that trusts it (``orchestrator/untrusted.py``) instead of refusing them, while any other
problem is refused as before.

Machine A's keyring lacks B's public key (the misconfigured one); B's trusts both (configured right). Both
machines share one store: the file backend here, PostgreSQL at the end.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import run_script
from orchestrator import Orchestrator
from orchestrator.key_files import _private_from_pem_file, write_keypair
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.worker import Worker, WorkerSettings


def make_worker(orch: Orchestrator, name: str, **kw) -> Worker:
    kw.setdefault("retry_base_seconds", 0.0)
    return Worker(orch, WorkerSettings(worker_id=name, **kw), rng=random.Random(7))


def types(orch: Orchestrator, job_id: str) -> list[str]:
    return [json.loads(line.raw)["type"] for line in orch.store.read(job_id)]


def audited(orch: Orchestrator, job_id: str) -> list[str]:
    """The audit actions naming the job."""
    return [rec["data"]["action"] for rec in map(json.loads, (line.raw for line in orch.store.read(AUDIT_STREAM)))
            if rec.get("job_id") == job_id]


class Machines:
    """Two machines on one store: ``a`` trusts only its own key, ``b`` its own and A's. ``b_pub`` is B's ``.pub``,
    and ``a_trusted`` the folder A's keyring reads again (``Keyring.reload``) to trust more keys."""

    def __init__(self, tmp_path: Path, base: Path, store_factory=None, project: str = "proj") -> None:
        self.a_trusted = tmp_path / "a-trusted"
        self.a_trusted.mkdir()
        b_keys = tmp_path / "b-keys"
        b_kid = write_keypair(b_keys)
        self.b_pub = b_keys / f"{b_kid}.pub"
        self.ring_a = Keyring.generate()
        self.ring_a.folders = (str(self.a_trusted),)
        self.ring_b = Keyring()
        self.ring_b.add_signer(_private_from_pem_file(b_keys / f"{b_kid}.key"))
        assert self.ring_b.signer_id == b_kid
        self.ring_b.trusted.update(self.ring_a.trusted)
        store = store_factory or (lambda: None)
        self.a = Orchestrator(base_path=base, project_id=project, keyring=self.ring_a, store=store())
        self.b = Orchestrator(base_path=base, project_id=project, keyring=self.ring_b, store=store())

    @property
    def b_kid(self) -> str:
        return self.ring_b.signer_id or ""

    def give_a_the_key_of_b(self) -> None:
        shutil.copy(self.b_pub, self.a_trusted / self.b_pub.name)


@pytest.fixture
def m(tmp_path: Path, base: Path) -> Machines:
    return Machines(tmp_path, base)


# -- queued jobs ----------------------------------------------------------------------------------------
def test_a_job_signed_by_a_key_the_worker_does_not_trust_stays_queued_for_a_worker_that_trusts_it(m: Machines) -> None:
    job = m.b.submit("t.echo", "from b")
    wa = make_worker(m.a, "a")
    assert wa.run_once() is None
    assert types(m.a, job) == ["job_submitted"]  # not claimed
    assert [e.job_id for e in m.a.queue.ready()] == [job]  # its ready entry kept
    assert audited(m.a, job) == []  # no run_refused
    assert wa.untrusted_keys().details["keys"] == {m.b_kid: 1}
    result = make_worker(m.b, "b").run_once()
    assert result is not None and (result.job_id, result.outcome) == (job, "succeeded")


def test_a_job_claimed_and_handed_back_by_another_machine_is_left_too(m: Machines) -> None:
    """Written by both machines (submitted on A, retried by B's stale recovery): A can check its own lines, not B's,
    nor the head record B signed; the part it can check says "queued", the rest only B can tell."""
    job = m.a.submit("t.echo", "mixed")
    t = m.a.clock()
    assert make_worker(m.b, "b-dead", lease_seconds=30).claim(now=t) is not None
    assert make_worker(m.b, "b-rescuer").recover_stale(now=t + 31) == [job]
    wa = make_worker(m.a, "a")
    assert wa.claim(now=t + 32) is None
    assert types(m.a, job) == ["job_submitted", "job_claimed", "stale_recovered"]
    assert [e.job_id for e in m.a.queue.ready()] == [job] and audited(m.a, job) == ["stale_recovered"]
    assert make_worker(m.b, "b").claim(now=t + 32) is not None


def test_the_worker_warns_once_per_key_and_passes_over_the_job_without_reading_it_until_its_keys_change(
        m: Machines, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    jobs = [m.b.submit("t.echo", i) for i in range(2)]
    wa = make_worker(m.a, "a")
    with caplog.at_level(logging.WARNING, logger="orchestrator.untrusted"):
        assert wa.run_once() is None
        assert wa.claimer.left_for_others  # left for a worker that trusts the key: an idle A gives its turn up
        reads: list[str] = []
        real = m.a.load
        monkeypatch.setattr(m.a, "load", lambda job_id, **kw: reads.append(job_id) or real(job_id, **kw))
        assert wa.run_once() is None
        assert reads == []  # both passed over at the entries it left them at: no read, no signature checked
        assert wa.claimer.left_for_others
        assert wa.untrusted_keys().details == {"worker_id": "a", "jobs": 2, "keys": {m.b_kid: 2}}
    warnings = [r.getMessage() for r in caplog.records if m.b_kid in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{m.b_kid}.pub" in warnings[0] and "ORCH_TRUSTED_KEYS_DIR" in warnings[0]
    m.give_a_the_key_of_b()  # the operator mends A's keyring; A reads it again at its sweep, once a minute
    assert wa.run_once() is None and reads == []  # not yet read again: the keys A trusts are as they were
    wa._next_sweep = 0.0  # a minute later
    ran = [wa.run_once(), wa.run_once()]
    assert sorted(r.job_id for r in ran if r) == sorted(jobs) and all(r.outcome == "succeeded" for r in ran if r)


def test_a_job_queued_again_since_it_was_left_is_read_again(m: Machines, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry a job was left at names one stretch of its life: once the job is queued again (a new entry), it is
    read again, and left again while its keys are still missing."""
    job = m.b.submit("t.echo", "b")
    wa = make_worker(m.a, "a")
    reads: list[str] = []
    real = m.a.load
    monkeypatch.setattr(m.a, "load", lambda job_id, **kw: reads.append(job_id) or real(job_id, **kw))
    t = m.a.clock()
    assert wa.claim(now=t) is None and wa.claim(now=t + 1) is None
    assert reads == [job]  # read once
    assert make_worker(m.b, "b-dead", lease_seconds=30).claim(now=t + 1) is not None
    assert make_worker(m.b, "b-rescuer").recover_stale(now=t + 32) == [job]  # queued again: another entry
    assert wa.claim(now=t + 33) is None and reads == [job, job]
    assert [e.job_id for e in m.a.queue.ready()] == [job] and audited(m.a, job) == ["stale_recovered"]
    m.give_a_the_key_of_b()
    m.ring_a.reload()  # A's keyring read again (its sweep, or a claim that meets a job it cannot check)
    assert wa.claim(now=t + 34) is not None


# -- running jobs whose lease expired ---------------------------------------------------------------------
def test_a_stale_job_signed_by_a_key_the_worker_does_not_trust_keeps_its_running_entry_for_one_that_trusts_it(
        m: Machines) -> None:
    job = m.a.submit("t.echo", "claimed by b")  # submitted on A, claimed on B, whose worker then dies
    t = m.a.clock()
    assert make_worker(m.b, "b-dead", lease_seconds=30).claim(now=t) is not None
    wa = make_worker(m.a, "a")
    assert wa.recover_stale(now=t + 31) == []
    assert [j for j, _ in m.a.queue.running_entries()] == [job]  # its running entry kept
    assert types(m.a, job) == ["job_submitted", "job_claimed"] and audited(m.a, job) == []
    assert wa.recover_stale(now=t + 32) == []  # passed over, without a read, on every later pass
    assert make_worker(m.b, "b-rescuer").recover_stale(now=t + 33) == [job]
    assert m.b.status(job).state == "queued"


# -- other problems are refused as before -----------------------------------------------------------------
def test_a_bad_signature_beside_lines_of_an_unknown_key_is_still_refused_and_its_entry_dropped(m: Machines) -> None:
    """One line the worker can check was edited: the job is refused, whatever the lines it cannot check say."""
    job = m.a.submit("t.echo", "aaaa")
    t = m.a.clock()
    assert make_worker(m.b, "b-dead", lease_seconds=30).claim(now=t) is not None
    assert make_worker(m.b, "b-rescuer").recover_stale(now=t + 31) == [job]  # queued again, by B
    path = m.a.store.path(job)
    path.write_bytes(path.read_bytes().replace(b'"input":"aaaa"', b'"input":"bbbb"', 1))  # A's own line
    codes = {p.code for p in m.a.load(job, every_signature=True).problems}
    assert {"SIGNATURE_INVALID", "UNKNOWN_KEY"} <= codes  # (and CHAIN_BROKEN at line 2, which names line 1's hash)
    wa = make_worker(m.a, "a")
    assert wa.claim(now=t + 32) is None
    assert audited(m.a, job)[-1] == "run_refused" and m.a.queue.ready() == []
    assert wa.untrusted_keys() is None


def test_a_job_signed_by_a_key_the_worker_revoked_is_still_refused(m: Machines) -> None:
    job = m.b.submit("t.echo", "revoked")
    m.ring_a.revoked = frozenset({m.b_kid})  # revoked on A, whether or not A trusted it before
    assert make_worker(m.a, "a").run_once() is None
    assert audited(m.a, job) == ["run_refused"] and m.a.queue.ready() == []
    assert "KEY_REVOKED" in m.a.status(job).integrity_error["message"]


def test_a_key_id_no_key_can_have_is_refused_not_left(base: Path, m: Machines) -> None:
    forger = Keyring.generate()
    forger.signer_id = "nobody"  # no key's id has this form: these lines were made without one
    job = Orchestrator(base_path=base, project_id="proj", keyring=forger).submit("t.echo", "forged")
    assert make_worker(m.a, "a").run_once() is None
    assert audited(m.a, job) == ["run_refused"] and m.a.queue.ready() == []


# -- worker --once and the stop line ----------------------------------------------------------------------
def test_worker_once_exits_8_naming_the_key_of_the_jobs_it_left_and_runs_them_once_it_trusts_it(
        cli_env: dict[str, str], base: Path, tmp_path: Path) -> None:
    env = {**cli_env, "PYTHONPATH": f"{cli_env['PYTHONPATH']}{os.pathsep}{Path(__file__).parents[1]}",
           "ORCH_HANDLERS": "worker_handlers"}  # worker A signs with ORCH_SIGNING_KEY and trusts only that key
    m = Machines(tmp_path, base)
    job = m.b.submit("t.echo", "b")
    once = run_script("worker", "--once", "--json", env=env)
    assert once.returncode == 8, once.stderr
    error = json.loads(once.stdout)
    assert error["error"] == "UNKNOWN_KEY" and error["details"]["keys"] == {m.b_kid: 1}
    assert f"{m.b_kid}.pub" in once.stderr  # the warning says what to do
    looping = run_script("worker", "--idle-exit", "--json", env=env)
    assert looping.returncode == 0, looping.stderr
    stopped = json.loads(looping.stdout.splitlines()[-1])
    assert stopped["event"] == "worker_stopped" and stopped["unknown_keys"] == {"jobs": 1, "keys": {m.b_kid: 1}}
    assert types(m.b, job) == ["job_submitted"] and audited(m.b, job) == []
    env["ORCH_TRUSTED_KEYS_DIR"] = str(m.a_trusted)
    m.give_a_the_key_of_b()
    ran = run_script("worker", "--once", "--json", env=env)
    assert ran.returncode == 0 and json.loads(ran.stdout)["outcome"] == "succeeded", ran.stderr


# -- PostgreSQL -------------------------------------------------------------------------------------------
@contextmanager
def pg_machines(tmp_path: Path, base: Path) -> Iterator["Machines"]:
    """Machines A and B sharing one PostgreSQL project (a store of its own each), every store closed after."""
    from backends import TestPostgresStore, require_pg
    from orchestrator.store.postgres import PostgresStore

    require_pg()
    home = TestPostgresStore()
    stores: list[PostgresStore] = []

    def store() -> PostgresStore:
        stores.append(PostgresStore(home.url, home.project))
        return stores[-1]
    try:
        yield Machines(tmp_path, base, store, project=home.project)
    finally:
        for s in stores:
            s.close()
        home.close()


@pytest.mark.postgres
def test_on_postgres_a_job_left_for_want_of_a_key_keeps_its_row_and_is_never_reserved_again_by_that_worker(
        tmp_path: Path, base: Path) -> None:
    """A worker that leaves a job does not reserve it at its next passes: reserved at every pass, it would keep
    the workers that trust its key waiting for the reservation to lapse, and its own claims from the rows after it."""
    with pg_machines(tmp_path, base) as m:
        job = m.b.submit("t.echo", "pg")
        t = m.a.clock()
        wa = make_worker(m.a, "a")
        assert wa.claim(now=t) is None  # reserves it (2 s), leaves it
        assert wa.claim(now=t + 3) is None  # the reservation lapsed: not reserved again
        assert [e.job_id for e in m.b.queue.ready()] == [job] and audited(m.b, job) == []
        claim = make_worker(m.b, "b").claim(now=t + 3)
        assert claim is not None and claim.job_id == job


@pytest.mark.postgres
def test_worker_once_on_postgres_counts_every_queued_job_signed_by_a_key_it_does_not_trust(
        tmp_path: Path, base: Path) -> None:
    """A claim pass lists only the first due rows (``pg_queue.CANDIDATES`` besides the one it reserves): until
    2026-12-07 exit 8 said "9 queued job(s) left for a worker that trusts the key" of 20, and exit 11 as few."""
    from orchestrator.store.pg_queue import CANDIDATES

    many = 2 * (CANDIDATES + 1) + 2
    with pg_machines(tmp_path, base) as m:
        for i in range(many):
            m.b.submit("t.echo", {"n": i})
        for i in range(4):
            m.a.submit("t.nowhere", {"n": i})
        w = make_worker(m.a, "a")
        assert w.run_once() is None
        untrusted = w.untrusted_keys()
        assert untrusted is not None and untrusted.details["jobs"] == many
        assert untrusted.details["keys"] == {m.b_kid: many}
        left = w.handler_not_found()
        assert left is not None and left.details["jobs"] == 4


@pytest.mark.postgres
def test_one_pass_on_postgres_reaches_a_job_behind_more_jobs_signed_by_a_key_it_does_not_trust_than_a_page(
        tmp_path: Path, base: Path) -> None:
    """Jobs signed by an unknown key have no kind to leave out of the statement: the pass pages on past them. Until
    2026-12-07 it met the reserved row and ``CANDIDATES`` more, and ``worker --once`` exited 8 with the job queued."""
    from orchestrator.store.pg_queue import CANDIDATES

    many = 2 * (CANDIDATES + 1) + 2
    with pg_machines(tmp_path, base) as m:
        for i in range(many):
            m.b.submit("t.echo", {"n": i}, priority=3)
        job = m.a.submit("t.echo", {"message": "behind them"})
        w = make_worker(m.a, "a")
        claim = w.claim()
        assert claim is not None and claim.job_id == job
        assert w.untrusted_keys().details["jobs"] == many


@pytest.mark.postgres
def test_a_looping_workers_later_passes_on_postgres_neither_list_nor_reserve_the_jobs_it_left_for_a_key(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review (2026-12-07): with 4,000 due jobs signed by a key it did not trust, an idle looping worker
    made 67,000 transactions in 40 s (7 before paging): each pass paged past them all, read those it no longer
    remembered, and each page reserved a row it passed over, whose lapse or release woke it into the next pass. Its
    later passes now page past none of the jobs it remembers leaving (``UntrustedJobs.jobs_to_leave_out``), and a next page
    reserves nothing; the job behind them is still reached."""
    from orchestrator import untrusted
    from orchestrator.store.pg_queue import CANDIDATES

    monkeypatch.setattr(untrusted, "SKIPPED_MAX", 1)  # as if it had left more than 256 such jobs
    many = 3 * (CANDIDATES + 1)
    with pg_machines(tmp_path, base) as m:
        for i in range(many):
            m.b.submit("t.echo", {"n": i})
        w = make_worker(m.a, "a")
        t = m.a.clock()
        assert w.claim(now=t) is None
        met: list[str] = []
        listed = w.claimer._listed

        def counted(now: float, skip: list[str]):
            for entry in listed(now, skip):
                met.append(entry.job_id)
                yield entry
        monkeypatch.setattr(w.claimer, "_listed", counted)
        assert w.claim(now=t + 0.5) is None
        assert len(met) <= CANDIDATES + 1, "the first page only: the rest it left are not listed again"
        rows = m.a.store._run(lambda conn: conn.execute(
            "SELECT count(*) FROM orch_ready WHERE project = %s AND reserved_until_us > %s",
            (m.a.project_id, int((t + 0.5) * 1e6))).fetchone()[0], write=False)
        assert rows == 0, "a next page reserves no row, nor the first page one of the key (twenty-ninth session)"
        job = m.a.submit("t.echo", {"message": "behind them"})
        claim = w.claim(now=t + 1)
        assert claim is not None and claim.job_id == job


def reads_of(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs ``orch`` loads from now on (each read and checked)."""
    reads: list[str] = []
    real = orch.load
    monkeypatch.setattr(orch, "load", lambda job_id, **kw: reads.append(job_id) or real(job_id, **kw))
    return reads


@pytest.mark.postgres
def test_a_ready_row_on_postgres_names_the_key_that_signed_its_jobs_first_line_whoever_queued_it_since(
        tmp_path: Path, base: Path) -> None:
    """The key of a job's submission is in its ready row (``signer``, migration 0008), written with the event that
    queues the job: a retry queued by a worker of another machine keeps the submitting machine's key."""
    with pg_machines(tmp_path, base) as m:
        from_a = m.a.submit("t.flaky", {"succeed_on": 2}, max_attempts=3)
        from_b = m.b.submit("t.echo", "b")
        assert {e.job_id: e.signer for e in m.b.queue.ready()} == {from_a: m.ring_a.signer_id, from_b: m.b_kid}
        assert make_worker(m.b, "b", kinds=("t.flaky",)).run_once().outcome == "retry"  # queued again by B
        assert {e.job_id: e.signer for e in m.b.queue.ready()} == {from_a: m.ring_a.signer_id, from_b: m.b_kid}


@pytest.mark.postgres
def test_a_ready_row_a_claimer_puts_in_place_of_a_left_over_one_names_the_key_of_the_jobs_first_line(
        tmp_path: Path, base: Path) -> None:
    """A left-over row (a crash's: another time, no key) is replaced by the one the job's state gives, from the job's
    view: with the key, as the event's own row has it, so that a worker lacking it still leaves the row out unread."""
    from orchestrator.queue import ReadyEntry

    with pg_machines(tmp_path, base) as m:
        job = m.b.submit("t.flaky", {"succeed_on": 2}, max_attempts=3)
        assert make_worker(m.b, "b", retry_base_seconds=1000.0).run_once().outcome == "retry"  # due in minutes
        (row,) = m.b.queue.ready()
        m.b.queue.drop_ready(row)
        m.b.queue.put_ready(ReadyEntry(row.neg_priority, row.runnable_at_us - 10**9, job, None))  # left over, no key
        assert make_worker(m.b, "b").claim() is None  # met, put right, not due yet
        assert [(e.job_id, e.runnable_at_us, e.signer) for e in m.b.queue.ready()] == [
            (job, row.runnable_at_us, m.b_kid)]


@pytest.mark.postgres
def test_worker_once_on_postgres_reads_one_page_of_a_keys_jobs_not_each_to_reach_the_job_behind_them(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured (2026-12-07): ``worker --once`` took 2.3-2.9 s past 4,000 due jobs signed by a key it did not trust,
    reading each to learn it could not check it. It learns the key from the first page's jobs, and its next pages
    leave out every row that key signed (``orch_ready.signer``), unread; they are counted by their rows too."""
    from orchestrator.store.pg_queue import CANDIDATES

    many = 3 * (CANDIDATES + 1)
    with pg_machines(tmp_path, base) as m:
        for i in range(many):
            m.b.submit("t.echo", {"n": i})
        job = m.a.submit("t.echo", {"message": "behind them"})
        w = make_worker(m.a, "a")
        reads = reads_of(m.a, monkeypatch)
        claim = w.claim()
        assert claim is not None and claim.job_id == job
        assert len(reads) <= CANDIDATES + 2, f"{len(reads)} jobs read: a page and the job it ran"
        assert reads[-1] == job
        reads.clear()
        assert w.untrusted_keys().details["keys"] == {m.b_kid: many} and reads == []


@pytest.mark.postgres
def test_a_looping_worker_on_postgres_reads_none_of_a_keys_jobs_again_however_many_more_than_it_remembers(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``LEFT_KEPT`` such jobs (8,192) the entries it remembered leaving were forgotten, and read again at each
    pass that paged past them. The key is remembered instead: no job it signed is read again until the keys this
    worker trusts change, and then every one is (the keys it remembers forgotten with the entries)."""
    from orchestrator import untrusted
    from orchestrator.store.pg_queue import CANDIDATES

    monkeypatch.setattr(untrusted, "LEFT_KEPT", 2)  # as if it had met more than 8,192 such jobs
    many = 3 * (CANDIDATES + 1)
    with pg_machines(tmp_path, base) as m:
        jobs = [m.b.submit("t.echo", {"n": i}) for i in range(many)]
        w = make_worker(m.a, "a")
        t = m.a.clock()
        assert w.claim(now=t) is None
        reads = reads_of(m.a, monkeypatch)
        assert w.claim(now=t + 3) is None and w.claim(now=t + 6) is None
        assert reads == [], f"{len(reads)} jobs read again"
        assert w.untrusted_keys().details["keys"] == {m.b_kid: many}
        m.give_a_the_key_of_b()
        m.ring_a.reload()
        claim = w.claim(now=t + 9)
        assert claim is not None and claim.job_id == jobs[0]


def queued_again_by_b(m: Machines, many: int) -> list[str]:
    """``many`` jobs submitted on A and queued again by B (its stale recovery of its dead worker's claims): their lines
    are signed by both keys. Shared by the tests of the rows naming both (migration 0009) and of those from before."""
    jobs = [m.a.submit("t.echo", {"n": i}) for i in range(many)]
    t = m.a.clock() - 100  # so that a job submitted next is behind them
    dead = make_worker(m.b, "b-dead", lease_seconds=30)
    for _ in jobs:
        assert dead.claim(now=t) is not None
    assert sorted(make_worker(m.b, "b-rescuer").recover_stale(now=t + 31)) == sorted(jobs)
    return jobs


@pytest.mark.postgres
def test_a_job_submitted_under_a_trusted_key_and_queued_again_under_another_is_left_out_by_that_key_on_postgres(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noted by the twenty-ninth session, reproduced there: a row named only its first line's key, so a job
    submitted on A and queued again by B (here B's stale recovery) named a key A trusts, and A's ``worker --once`` read
    each of them to reach the job behind them (28 of 28 here, 10,000 in ``bench/pg_untrusted.py --queued-again``), a
    looping worker those past ``LEFT_KEPT`` at each pass. The row names every key of its job's lines (``signers``,
    migration 0009)."""
    from orchestrator import untrusted
    from orchestrator.store.pg_queue import CANDIDATES

    monkeypatch.setattr(untrusted, "LEFT_KEPT", 2)  # as if it had met more than 8,192 such jobs
    many = 3 * (CANDIDATES + 1)
    with pg_machines(tmp_path, base) as m:
        queued_again_by_b(m, many)
        assert {e.signers for e in m.a.queue.ready()} == {(m.ring_a.signer_id, m.b_kid)}
        job = m.a.submit("t.echo", {"message": "behind them"})
        w = make_worker(m.a, "a")
        reads = reads_of(m.a, monkeypatch)
        claim = w.claim()
        assert claim is not None and claim.job_id == job
        assert len(reads) <= CANDIDATES + 2, f"{len(reads)} jobs read: a page and the job it ran"
        reads.clear()
        assert w.claim() is None and reads == [], f"{len(reads)} jobs read again"
        assert w.untrusted_keys().details["keys"] == {m.b_kid: many}


@pytest.mark.postgres
def test_a_row_from_before_0009_of_a_job_queued_again_under_another_key_names_that_key_once_a_worker_read_it(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noted by the review of the 0009 work: a row written before 0009 names no ``signers`` (NULL), so a job
    submitted on A and queued again by B stayed behind A's key alone until it ran: every ``worker --once`` of A read
    each such job, and a looping worker those past ``LEFT_KEPT`` at each pass. The worker that reads such a job and
    finds it cannot check it writes the keys of its lines into the row (once: a hint, as the writer's), so it is
    then left out by the key, as a row written since 0009 is."""
    from orchestrator import untrusted
    from orchestrator.store.pg_queue import CANDIDATES

    monkeypatch.setattr(untrusted, "LEFT_KEPT", 2)  # as if it had met more than 8,192 such jobs
    many = 3 * (CANDIDATES + 1)
    with pg_machines(tmp_path, base) as m:
        jobs = queued_again_by_b(m, many)
        m.a.store._run(lambda conn: conn.execute("UPDATE orch_ready SET signers = NULL WHERE project = %s",
                                                 (m.a.project_id,)), write=True)  # as written before 0009
        assert {e.signers for e in m.a.queue.ready()} == {()}
        job = m.a.submit("t.echo", {"message": "behind them"})
        reads = reads_of(m.a, monkeypatch)
        first = make_worker(m.a, "a-first")
        claim = first.claim()
        assert claim is not None and claim.job_id == job
        assert sorted(reads[:-1]) == sorted(jobs), "each row naming no key read once, to learn its keys"
        assert {e.signers for e in m.a.queue.ready()} == {(m.ring_a.signer_id, m.b_kid)}
        reads.clear()
        assert first.claim() is None and reads == [], f"{len(reads)} jobs read again by the same worker"
        assert make_worker(m.a, "a-next").claim() is None  # a `worker --once` after it: a page, not each job
        assert len(reads) <= CANDIDATES + 1, f"{len(reads)} jobs read by the next worker"


@pytest.mark.postgres
def test_a_worker_that_found_it_does_not_trust_a_key_reserves_no_row_naming_it_on_postgres(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noted by the twenty-ninth session, reproduced there: since the twenty-eighth a row naming a key found
    missing is passed over unread, and so no longer released, yet the first page's pick still reserved one at each
    pass (the first not among the ``SKIPPED_MAX`` left last): held 2 s from the workers that trust the key, one more
    row written a pass. The pick leaves those rows out too; the job behind them is reserved, and read, by the first
    page's statement."""
    from orchestrator.store.pg_queue import CANDIDATES

    many = 3 * (CANDIDATES + 1)
    with pg_machines(tmp_path, base) as m:
        for i in range(many):
            m.b.submit("t.echo", {"n": i})
        w = make_worker(m.a, "a")
        t = m.a.clock()
        assert w.claim(now=t) is None  # learns the key (the row it read released)

        def reserved(now: float) -> list[str]:
            return m.a.store._run(lambda conn: [job for job, in conn.execute(
                "SELECT job_id FROM orch_ready WHERE project = %s AND reserved_until_us > %s",
                (m.a.project_id, int(now * 1e6))).fetchall()], write=False)
        for later in (0.5, 1.0):
            assert w.claim(now=t + later) is None
            assert reserved(t + later) == [], "no row of the key left reserved"
        job = m.a.submit("t.echo", {"message": "behind them"})
        statements = []
        real = m.a.queue._sql
        monkeypatch.setattr(m.a.queue, "_sql", lambda sql, *a, **kw: statements.append(sql) or real(sql, *a, **kw))
        claim = w.claim(now=m.a.clock())
        assert claim is not None and claim.job_id == job
        assert len(statements) == 1, "the first page's statement reserved it and read it: no next page"


# -- an anchor signed on another machine ---------------------------------------------------------------------------

def anchor_from_another_machine(base: Path, tmp_path: Path) -> tuple[Path, Keyring, Keyring]:
    """An anchor of project ``proj`` written with machine A's key; (the anchor, A's keyring, B's: its own key only)."""
    from orchestrator.integrity import export_anchor

    a, b = Keyring.generate(), Keyring.generate()
    there = Orchestrator(base_path=base, project_id="proj", keyring=a)
    there.submit("echo", {})
    anchor = tmp_path / "anchor.json"
    export_anchor(there, anchor)
    return anchor, a, b


def test_verify_against_an_anchor_signed_by_a_key_this_machine_does_not_trust_names_the_key_and_the_pub_to_copy(
        base: Path, tmp_path: Path) -> None:
    """As ``import`` does (2026-12-02): until 2026-12-07, ``SIGNATURE_INVALID``, "is not an anchor signed by a
    trusted key", naming neither the key nor what to copy."""
    from orchestrator.integrity import check_anchor

    anchor, a, b = anchor_from_another_machine(base, tmp_path)
    here = Orchestrator(base_path=base, project_id="proj", keyring=b)
    [problem] = check_anchor(here, anchor)
    assert (problem.stream, problem.code, problem.kid) == ("anchor", "UNKNOWN_KEY", a.signer_id)
    assert f"key {a.signer_id}" in problem.message and f"{a.signer_id}.pub" in problem.message, problem.message
    assert "ORCH_TRUSTED_KEYS_DIR" in problem.message, problem.message
    b.trusted[a.signer_id] = a.trusted[a.signer_id]  # A's .pub copied over
    assert check_anchor(here, anchor) == []


def test_verify_against_an_anchor_whose_key_was_revoked_here_says_so(base: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from orchestrator.integrity import check_anchor

    anchor, a, _ = anchor_from_another_machine(base, tmp_path)
    here = Orchestrator(base_path=base, project_id="proj", keyring=replace(a, revoked=frozenset({a.signer_id})))
    [problem] = check_anchor(here, anchor)
    assert problem.code == "KEY_REVOKED" and f"key {a.signer_id}" in problem.message, problem.message


def test_verify_against_an_anchor_edited_after_it_was_signed_is_still_signature_invalid(
        base: Path, tmp_path: Path) -> None:
    from orchestrator.integrity import check_anchor

    anchor, a, _ = anchor_from_another_machine(base, tmp_path)
    doc = json.loads(anchor.read_text())
    anchor.write_text(json.dumps({**doc, "created_at": "2030-01-01T00:00:00.000000Z"}))
    here = Orchestrator(base_path=base, project_id="proj", keyring=a)
    assert [p.code for p in check_anchor(here, anchor)] == ["SIGNATURE_INVALID"]
