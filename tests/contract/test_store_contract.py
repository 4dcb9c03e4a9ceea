"""The EventStore contract, run against every backend.

A new backend joins by adding a factory to ``BACKENDS`` (PostgreSQL adds itself when a
server is reachable).
"""
from __future__ import annotations

import json
import threading
from array import array
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.errors import ConcurrencyError
from orchestrator.leases import LEASES_AREA, Lease, read_lease, write_lease
from orchestrator.store.base import AUDIT_STREAM, EventStore, Head
from orchestrator.store.jsonl import JsonlStore
from orchestrator.store.memory import MemoryStore

from backends import TestPostgresStore

BACKENDS: dict[str, Callable[[Path], EventStore]] = {
    "memory": lambda tmp: MemoryStore(),
    "jsonl": lambda tmp: JsonlStore(tmp / "proj" / ".orchestrator"),
    # a fresh project in the test database (ORCH_TEST_PG_URL); fails in CI, skips elsewhere, if unreachable
    "postgres": lambda tmp: TestPostgresStore(),
}
NEEDS_SERVER = {"postgres": pytest.mark.postgres}


@pytest.fixture(params=[pytest.param(name, marks=NEEDS_SERVER.get(name, ())) for name in sorted(BACKENDS)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EventStore:
    s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


def lines(head: Head, *payloads: str) -> list[bytes]:
    return [json.dumps({"seq": head.seq + i, "p": p}).encode() for i, p in enumerate(payloads, 1)]


def append(store: EventStore, stream: str, *payloads: str, expected: int | None = None) -> Head:
    return store.append(stream, lambda h: lines(h, *payloads), expected_seq=expected)


def test_a_missing_stream_reads_empty_and_does_not_exist(store: EventStore) -> None:
    assert store.read("job-1") == []
    assert not store.exists("job-1")


def test_append_returns_the_new_head_and_read_returns_lines_in_order(store: EventStore) -> None:
    head = append(store, "job-1", "a", "b", expected=0)
    assert head.seq == 2 and json.loads(head.last_line)["p"] == "b"
    got = store.read("job-1")
    assert [s.seq for s in got] == [1, 2]
    assert [json.loads(s.raw)["p"] for s in got] == ["a", "b"]


def test_a_stream_larger_than_one_read_is_read_whole(store: EventStore) -> None:
    """The file store reads a file by plain ``read`` calls of 64 KiB (``files.read_all``), then the rest at once."""
    big = [b'{"seq":%d,"x":"%s"}' % (n, b"y" * 50_000) for n in range(1, 7)]
    store.append("job-1", lambda head: big)
    assert [line.raw for line in store.read("job-1")] == big


def test_waiting_for_more_lines_says_whether_the_stream_grew_past_a_sequence(store: EventStore) -> None:
    assert store.wait_for_more("job-w", 0, timeout=0.01) is False  # nothing is being written
    store.append("job-w", lambda h: [b'{"n":1}'])
    assert store.wait_for_more("job-w", 0, timeout=0.01) is True
    assert store.wait_for_more("job-w", 1, timeout=0.01) is False


def test_an_append_decided_from_a_head_that_is_gone_is_built_from_the_head_there_is(store: EventStore) -> None:
    """``expected_last``: a store that writes from the expected head at once (PostgreSQL) must notice, in the
    write itself, that the stream's last line is another one, write nothing from it, and build again."""
    append(store, "job-1", "a")

    def after(h: Head) -> list[bytes]:
        return [json.dumps({"seq": h.seq + 1, "after": h.last_line.decode()}).encode()]

    stale = json.dumps({"seq": 1, "p": "not a"}).encode()  # as many lines, but not the same last one
    head = store.append("job-1", after, expected_seq=1, expected_last=stale)
    got = store.read("job-1")
    assert [json.loads(s.raw).get("after") for s in got] == [None, got[0].raw.decode()]
    assert head == Head(2, got[1].raw)


def test_an_append_expecting_fewer_lines_than_there_are_writes_nothing(store: EventStore) -> None:
    first = append(store, "job-1", "a")
    with pytest.raises(ConcurrencyError):
        store.append("job-1", lambda h: lines(h, "b"), expected_seq=0, expected_last=b"")
    second = append(store, "job-1", "b")
    with pytest.raises(ConcurrencyError):
        store.append("job-1", lambda h: lines(h, "c"), expected_seq=1, expected_last=first.last_line)
    assert [json.loads(s.raw)["p"] for s in store.read("job-1")] == ["a", "b"] and second.seq == 2


def test_read_from_a_sequence_skips_earlier_lines(store: EventStore) -> None:
    append(store, "job-1", "a", "b", "c")
    assert [s.seq for s in store.read("job-1", from_seq=2)] == [2, 3]


def test_builder_sees_the_current_head(store: EventStore) -> None:
    append(store, "job-1", "a")
    seen: list[Head] = []
    store.append("job-1", lambda h: (seen.append(h), lines(h, "b"))[1])
    assert seen[0].seq == 1 and json.loads(seen[0].last_line)["p"] == "a"


def test_conflicting_expected_sequence_raises_and_writes_nothing(store: EventStore) -> None:
    append(store, "job-1", "a", expected=0)
    with pytest.raises(ConcurrencyError):
        append(store, "job-1", "b", expected=0)
    with pytest.raises(ConcurrencyError):
        append(store, "job-1", "b", expected=5)
    assert [json.loads(s.raw)["p"] for s in store.read("job-1")] == ["a"]


def test_creating_an_existing_stream_with_expected_zero_is_a_conflict(store: EventStore) -> None:
    append(store, "job-1", "a", expected=0)
    with pytest.raises(ConcurrencyError):
        append(store, "job-1", "again", expected=0)


def test_a_builder_that_raises_writes_nothing(store: EventStore) -> None:
    append(store, "job-1", "a")

    def boom(head: Head) -> list[bytes]:
        raise RuntimeError("decided not to write")

    with pytest.raises(RuntimeError):
        store.append("job-1", boom)
    assert len(store.read("job-1")) == 1


def test_a_line_with_a_newline_is_refused(store: EventStore) -> None:
    with pytest.raises(ValueError):
        store.append("job-1", lambda h: [b'{"seq":1}\n{"seq":2}'])
    assert store.read("job-1") == []


def test_streams_are_independent_and_job_ids_lists_job_streams_only(store: EventStore) -> None:
    append(store, "job-1", "a")
    append(store, "job-2", "b", "c")
    append(store, AUDIT_STREAM, "audit entry")
    assert sorted(store.job_ids()) == ["job-1", "job-2"]
    assert len(store.read("job-2")) == 2 and len(store.read(AUDIT_STREAM)) == 1


def test_fingerprints_list_the_job_streams_and_change_when_one_is_appended_to(store: EventStore) -> None:
    """What the jobs cache (``projection``) compares to replay only the jobs that changed since it was written."""
    assert store.fingerprints() == ([], array("q"), array("q"))
    append(store, "job-1", "a")
    append(store, "job-2", "b", "c")
    append(store, AUDIT_STREAM, "audit entry")
    ids, first, second = store.fingerprints()
    assert sorted(ids) == ["job-1", "job-2"] and len(first) == len(second) == 2
    before = dict(zip(ids, zip(first, second)))
    assert store.fingerprints() == (ids, first, second)  # the same order while nothing is added
    append(store, "job-1", "d", expected=1)
    ids, first, second = store.fingerprints()
    after = dict(zip(ids, zip(first, second)))
    assert after["job-1"] != before["job-1"] and after["job-2"] == before["job-2"]


def test_concurrent_appends_with_expected_sequence_never_fork_the_stream(store: EventStore) -> None:
    append(store, "job-1", "start")
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def contender(name: str) -> None:
        barrier.wait()
        try:
            append(store, "job-1", name, expected=1)
            wins.append(name)
        except ConcurrencyError:
            pass

    threads = [threading.Thread(target=contender, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert [json.loads(s.raw)["p"] for s in store.read("job-1")] == ["start", wins[0]]


def test_unexpected_appends_from_many_threads_all_land_in_sequence(store: EventStore) -> None:
    def writer(i: int) -> None:
        for j in range(20):
            append(store, AUDIT_STREAM, f"{i}-{j}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = store.read(AUDIT_STREAM)
    assert [json.loads(s.raw)["seq"] for s in got] == list(range(1, 81))


def test_aux_records_replace_and_read_back(store: EventStore) -> None:
    assert store.get_aux("heads", "job-1") is None
    store.put_aux("heads", "job-1", b"one")
    store.put_aux("heads", "job-1", b"two")
    assert store.get_aux("heads", "job-1") == b"two"


def test_the_lease_record_of_a_job_whose_id_is_as_long_as_an_id_may_be_is_written_and_read_back(
        store: EventStore) -> None:
    # a lease is keyed ``<job_id>.<epoch>``: longer than the longest id (128 characters), which a key is not
    job_id = "j" * 128
    lease = Lease(job_id, "run-1", 10**6, "w", 1, 2.0, 1.0)
    write_lease(store, lease)
    assert read_lease(store, job_id, 10**6) == lease
    assert store.aux_keys(LEASES_AREA) == [f"{job_id}.{10**6}"]


def test_aux_present_names_the_keys_that_have_a_record_in_the_area(store: EventStore) -> None:
    store.put_aux("audited", "e1", b"1")
    store.put_aux("audited", "e3", b"3")
    store.put_aux("heads", "e2", b"elsewhere")
    assert store.aux_present("audited", ["e1", "e2", "e3", "e4"]) == {"e1", "e3"}
    assert store.aux_present("audited", []) == set()


def test_aux_records_given_with_an_append_are_written_with_its_new_head(store: EventStore) -> None:
    store.put_aux("leases", "job-1.1", b"old lease")
    seen: list[Head] = []

    def records(head: Head) -> dict[tuple[str, str], bytes | None]:
        seen.append(head)
        return {("heads", "job-1"): str(head.seq).encode(), ("leases", "job-1.1"): None}

    head = store.append("job-1", lambda h: lines(h, "a", "b"), expected_seq=0, aux=records)
    assert seen == [head] and head.seq == 2
    assert store.get_aux("heads", "job-1") == b"2"
    assert not store.get_aux("leases", "job-1.1")  # deleted (a blanked record reads as none)


def test_a_refused_or_empty_append_writes_none_of_its_aux_records(store: EventStore) -> None:
    append(store, "job-1", "a", expected=0)
    called: list[Head] = []

    def records(head: Head) -> dict[tuple[str, str], bytes | None]:
        called.append(head)
        return {("heads", "job-1"): b"must not be written"}

    with pytest.raises(ConcurrencyError):
        store.append("job-1", lambda h: lines(h, "b"), expected_seq=0, aux=records)
    store.append("job-1", lambda h: [], aux=records)
    assert called == [] and store.get_aux("heads", "job-1") is None


def test_a_record_written_if_the_stream_holds_n_lines_is_written_only_then(store: EventStore) -> None:
    append(store, "job-1", "a")
    assert store.put_aux_if_head("job-1", 2, "heads", "job-1", b"two") is False
    assert store.get_aux("heads", "job-1") is None
    assert store.put_aux_if_head("job-1", 1, "heads", "job-1", b"one") is True
    assert store.get_aux("heads", "job-1") == b"one"
    assert store.put_aux_if_head("job-1", 1, "heads", "job-1", b"one again") is True  # a record replaced
    assert store.put_aux_if_head("job-1", 0, "heads", "job-1", b"none") is False
    assert store.get_aux("heads", "job-1") == b"one again"


def test_a_record_written_if_the_stream_holds_n_lines_never_replaces_that_of_an_append_past_n_in_flight(
        store: EventStore) -> None:
    """An append of line 2 has begun (its lines built, its head record not yet written, or not yet committed):
    writing a record for line 1 now must not land over the append's record for line 2, whichever comes first."""
    append(store, "job-1", "a")
    inside, go = threading.Event(), threading.Event()

    def head_record(head: Head) -> dict[tuple[str, str], bytes | None]:
        inside.set()
        assert go.wait(10)
        return {("heads", "job-1"): str(head.seq).encode()}

    appending = threading.Thread(target=store.append, args=("job-1", lambda h: lines(h, "b")),
                                 kwargs={"aux": head_record})
    appending.start()
    assert inside.wait(10)
    results: list[bool] = []
    older = threading.Thread(target=lambda: results.append(store.put_aux_if_head("job-1", 1, "heads", "job-1", b"1")))
    older.start()
    go.set()
    appending.join(10)
    older.join(10)
    assert results == [False] and store.get_aux("heads", "job-1") == b"2"


def test_read_with_aux_returns_the_record_and_the_stream_together(store: EventStore) -> None:
    assert store.read_with_aux("job-1", "heads", "job-1") == (None, [])
    append(store, "job-1", "a", "b")
    assert store.read_with_aux("job-1", "heads", "job-1") == (None, store.read("job-1"))
    store.put_aux("heads", "job-1", b"head")
    record, got = store.read_with_aux("job-1", "heads", "job-1")
    assert record == b"head" and [s.seq for s in got] == [1, 2] and got == store.read("job-1")


def test_the_keys_of_an_aux_area_are_listed_without_other_areas_or_deleted_records(store: EventStore) -> None:
    assert store.aux_keys("leases") == []
    store.put_aux("leases", "J1.1", b"a")
    store.put_aux("leases", "J2.3", b"b")
    store.put_aux("heads", "J1", b"c")
    store.put_aux("leases", "J3.1", b"d")
    store.delete_aux("leases", "J3.1")
    assert store.aux_keys("leases") == ["J1.1", "J2.3"]


def test_has_jobs_is_true_once_a_job_stream_holds_a_line(store: EventStore) -> None:
    assert not store.has_jobs()
    append(store, AUDIT_STREAM, "audit entry")  # the audit stream is not a job
    assert not store.has_jobs()
    append(store, "job-1", "a")
    assert store.has_jobs()


def test_the_first_line_is_line_one_however_long_and_none_without_a_line(
        store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """``first_line``: what ``read(stream)[0].raw`` is, without the lines after it; a first line longer than
    a read's share (the file store's 8 KiB reads, PostgreSQL's ``READ_CHUNK_BYTES``, shrunk here) whole."""
    from orchestrator.store import postgres

    monkeypatch.setattr(postgres, "READ_CHUNK_BYTES", 10_000)
    assert store.first_line("job-1") is None and store.first_line(AUDIT_STREAM) is None
    append(store, "job-1", "x" * 25_000, "b", "c")
    append(store, "job-2", "a")
    append(store, AUDIT_STREAM, "audit entry", "another")
    for stream in ("job-1", "job-2", AUDIT_STREAM):
        assert store.first_line(stream) == store.read(stream)[0].raw, stream
    assert len(store.first_line("job-1") or b"") > 25_000


def test_the_file_store_reads_a_first_line_without_the_rest_of_the_file(tmp_path: Path) -> None:
    """What the kernel counts as read (``rchar``) stays within one 8 KiB read however long the file is; no
    newline is no line (a torn first line), as for ``read``; a link is never followed."""
    from orchestrator.errors import PathEscapeError

    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("no /proc/self/io here")

    def rchar() -> int:
        return int(next(ln for ln in io.read_text().splitlines() if ln.startswith("rchar:")).split()[1])

    store = JsonlStore(tmp_path / "proj" / ".orchestrator")
    append(store, "job-1", "first", *(["y" * 4_000] * 2_000))  # 8 MB after the first line
    before = rchar()
    first = store.first_line("job-1")
    read = rchar() - before
    assert first == store.read("job-1")[0].raw and read <= 8 * 1024 + 1024, read  # the proc file's own read too
    store.path("job-2").write_bytes(b'{"seq": 1, "torn": ')
    assert store.first_line("job-2") is None and store.read("job-2") == []
    store.path("job-3").symlink_to(store.path("job-1"))
    with pytest.raises(PathEscapeError):
        store.first_line("job-3")


def test_the_file_store_takes_the_seq_of_the_line_an_append_was_decided_from_without_parsing_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append names the head it was decided from (``expected_seq``, ``expected_last``: a line the caller
    verified); a last line of those very bytes is not parsed again to learn its ``seq`` (a line holding a 1 MiB
    input took ~13 ms of each append after it). Any other last line is parsed, as without them."""
    from orchestrator.store import jsonl

    store = JsonlStore(tmp_path / "proj" / ".orchestrator")
    first = append(store, "job-1", "x" * 200_000, expected=0)
    parsed: list[bytes] = []
    real_loads = json.loads
    monkeypatch.setattr(jsonl.json, "loads", lambda text, *a, **k: (parsed.append(text), real_loads(text, *a, **k))[1])
    second = store.append("job-1", lambda h: lines(h, "b"), expected_seq=1, expected_last=first.last_line)
    assert second.seq == 2 and parsed == []
    third = store.append("job-1", lambda h: lines(h, "c"), expected_seq=2, expected_last=b'{"seq":2,"p":"not b"}')
    assert third.seq == 3 and parsed == [second.last_line]
    with pytest.raises(ConcurrencyError):  # decided from a head that is gone: the last line, parsed, says so
        store.append("job-1", lambda h: lines(h, "d"), expected_seq=2, expected_last=first.last_line)
    assert [json.loads(s.raw)["p"][:1] for s in store.read("job-1")] == ["x", "b", "c"]


def test_an_index_of_streams_if_the_store_keeps_one_says_what_each_stream_holds(store: EventStore) -> None:
    """``verify`` compares it with the lines (PostgreSQL's ``orch_streams``, derived from them); None: no index."""
    import hashlib

    append(store, "job-1", "a")
    append(store, "job-2", "b", "c")
    append(store, AUDIT_STREAM, "audit entry")
    index = store.indexed_heads()
    if index is None:
        return
    held = {s: (len(got), hashlib.sha256(got[-1].raw).digest()) for s in ("job-1", "job-2", AUDIT_STREAM)
            for got in [store.read(s)]}
    assert {s: index[s] for s in held} == held and set(index) == set(held)
