"""Physical floors on this machine: what no design on this disk and CPU can go below.

Plain Python loops, no orchestrator code in the timed part: an fdatasync'd append of one line,
a file created and made durable (file + folder fsync, as a new job's first event needs), an
empty file created (an index entry), fork
and exit of a process the size of a worker, one Ed25519 signature and one verification; and what group commit
would pay: two files appended to (one job's outcome, the next job's claim), then both made durable, one
fdatasync after the other or at once (a helper thread that waits for work, as a worker would keep one); and what a
batch commit would pay: a line appended to each of ``SYNCFS_BATCH`` files (as many jobs' claims, or outcomes), all
made durable by one ``syncfs`` of their file system; and what
a wait costs the code after it: the same plain-Python work (encoding, parsing and hashing an event) back to back,
and right after a sleep of ``IDLE_GAP_S``, as every step of W2 and W3 runs right after its process waited; and what a
hand-off between two processes costs: a request and its answer over pipes, with no work in between (``round_trip``),
back to back and right after a wait, as the worker reaches its handler process, and as each process of W2's path is
woken by the one before it.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from bench.common import Params, percentile, progress, scratch_dir


def _median_us(fn: Callable[[int], None], n: int, sleep_before: float = 0.0) -> dict[str, float]:
    """P50 and P99 of ``n`` timed runs of ``fn``; with ``sleep_before``, each comes right after a sleep (untimed)."""
    out = []
    for i in range(n):
        if sleep_before:
            time.sleep(sleep_before)
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1e6)
    return {"p50_us": percentile(out, 50), "p99_us": percentile(out, 99)}  # the suite's one definition


IDLE_GAP_S = 0.002  # W2's worker and handler process wait ~2-3 ms between jobs; W3's longer


def python_work(record: dict[str, Any], n: int) -> dict[str, dict[str, float]]:
    """The same plain-Python work (ten encodings, parses and hashes of an event, ~80 us on a quiet host) timed back
    to back, and right after a sleep of ``IDLE_GAP_S`` (untimed). On a host whose idle CPU slows down, or is given to
    another guest, the second is slower, though the work is the same: that slowness is part of every step of W2 and
    W3 (and of the skeleton's) that runs right after its process waited (docs/performance.md, "What a wait costs")."""
    import hashlib
    import json

    from orchestrator.signing import canonical

    def work(_: int) -> None:
        for _ in range(10):
            line = canonical(record)
            json.loads(line)
            hashlib.sha256(line).hexdigest()

    for i in range(n // 10):  # warm: the first runs of any code are slower for reasons of their own
        work(i)
    return {"python_work": _median_us(work, n), "python_work_after_idle": _median_us(work, n, IDLE_GAP_S)}


def round_trip_loop() -> tuple[Callable[[int], None], Callable[[], int]]:
    """A request (the size of a handler's request for a small job) written to a forked process, which answers at once
    with a payload's size; the loop returns once the answer is read. Both wait blocked in ``read`` as the worker
    and its handler process do (the worker spins 0.2 ms first, not here). Returns the loop, and what ends the child
    (and returns its wait status)."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the answering process: ends when the loop's end of the request pipe closes
        try:
            os.close(req_w)
            os.close(resp_r)
            while os.read(req_r, 4096):
                os.write(resp_w, b"y" * 53)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(resp_w)
    request = b"x" * 427

    def round_trip(_: int) -> None:
        os.write(req_w, request)
        if not os.read(resp_r, 4096):
            raise RuntimeError("the answering process is gone")

    def stop() -> int:
        os.close(req_w)
        os.close(resp_r)
        return os.waitpid(pid, 0)[1]

    return round_trip, stop


def run(params: Params, n: int = 300) -> dict[str, Any]:
    """In a fresh process that imports what a worker imports: the suite's own process holds the
    peers' libraries too (~140 MB), and fork time grows with the size of the process."""
    import json
    import subprocess
    import sys

    progress("floors: fdatasync'd append, two appends made durable together, a batch made durable by one syncfs, "
             "durable file creation, fork+exit, "
             "sign, verify, the same Python work back to back and after a wait, a round trip between two processes")
    root = scratch_dir(params, "floor")
    try:
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-c", f"import json, sys; from bench.floor import measure; "
                               f"print(json.dumps(measure(sys.argv[1], {n})))", str(root)],
                              env=env, capture_output=True, text=True, timeout=300, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(root_dir: str, n: int) -> dict[str, Any]:
    """The timed loops; run by ``run`` in a process the size of a worker."""
    import orchestrator.worker  # noqa: F401  (the fork below is of a process of a worker's size)
    from orchestrator.latency import peak_rss_kb
    from orchestrator.signing import Keyring, canonical

    root = Path(root_dir)
    fd = _append_only(root / "log")
    line = b"x" * 360 + b"\n"  # the size of a typical event line

    def append(_: int) -> None:
        os.write(fd, line)
        os.fdatasync(fd)

    def create(i: int) -> None:
        f = os.open(root / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(f, line)
        os.fdatasync(f)
        os.close(f)
        d = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(d)
        os.close(d)

    def fork(_: int) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    ring = Keyring.generate()
    record = {"job_id": "J", "type": "job_succeeded", "ts": "2026-11-22T00:00:00.000000Z", "actor": "w",
              "data": {"summary": "ok"}, "seq": 3, "prev": "0" * 64, "v": 1}
    verify_one = verification_loop(ring, record, n)
    def empty_create(i: int) -> None:  # an index entry, a lock or a head record's first write
        os.close(os.open(root / f"e{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    batches, batch = {}, syncfs_batch_loop(root, line)
    if batch is not None:  # (no syncfs here: the floor is left out)
        try:
            batches["syncfs_batch"] = _median_us(batch[0], n // 3)
        finally:
            batch[1]()
    pair_one_after_other, pair_at_once, stop_helper = pair_loops(root, line)
    try:  # the helper thread is gone before the fork loop
        pairs = {"fdatasync_pair_one_after_other": _median_us(pair_one_after_other, n),
                 "fdatasync_pair_at_once": _median_us(pair_at_once, n)}
    finally:
        stop_helper()
    round_trip, stop_child = round_trip_loop()
    try:
        for i in range(n // 10):  # warm, as the Python work is
            round_trip(i)
        trips = {"round_trip": _median_us(round_trip, n), "round_trip_after_idle": _median_us(round_trip, n, IDLE_GAP_S)}
    finally:
        stop_child()
    out = {"fdatasync_append": _median_us(append, n), **pairs, **batches,
           "durable_create": _median_us(create, n // 3),
           "empty_create": _median_us(empty_create, n),
           "fork_exit": _median_us(fork, n // 3), "sign": _median_us(lambda _: ring.seal(dict(record)), n),
           "verify": _median_us(verify_one, n),
           "canonical": _median_us(lambda _: canonical(record), n), **python_work(record, n), **trips,
           "process_rss_mb": peak_rss_kb() / 1024}
    os.close(fd)
    return out


def _append_only(path: Path) -> int:
    """A file opened to append lines to, as an events file is (created if missing)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def pair_loops(root: Path, line: bytes) -> tuple[Callable[[int], None], Callable[[int], None], Callable[[], None]]:
    """Group commit's floor: a line appended to each of two files (job N's outcome, job N+1's claim), then both
    made durable before either is acknowledged, by two fdatasyncs one after the other, or at once (the second in
    a helper thread that waits for work). On ext4 the first fdatasync commits the journal transaction that holds
    both files' new sizes, so the second pays little more than its data block. Returns both loops and the
    helper's stop. The helper's failure is raised by the loop that waits for it, never a wait for ever."""
    fds = [_append_only(root / name) for name in ("pair-a", "pair-b")]
    work: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[OSError | None] = queue.SimpleQueue()

    def helper() -> None:
        while (fd := work.get()) is not None:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                done.put(exc)
            else:
                done.put(None)

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()

    def one_after_other(_: int) -> None:
        os.write(fds[0], line)
        os.write(fds[1], line)
        os.fdatasync(fds[0])
        os.fdatasync(fds[1])

    def at_once(_: int) -> None:
        os.write(fds[0], line)
        os.write(fds[1], line)
        work.put(fds[1])
        os.fdatasync(fds[0])
        failed = done.get()
        if failed is not None:
            raise failed

    def stop() -> None:
        work.put(None)
        thread.join()
        _close_all(fds)

    return one_after_other, at_once, stop


SYNCFS_BATCH = 8  # jobs whose claims (or outcomes) one ``syncfs`` would make durable together


def syncfs_batch_loop(root: Path, line: bytes) -> tuple[Callable[[int], None], Callable[[], None]] | None:
    """A batch commit's floor: a line appended to each of ``SYNCFS_BATCH`` files, then all of them made durable by one
    ``syncfs`` (their file system's dirty data and its journal, written back and flushed once) instead of an
    fdatasync each. Returns the loop and what closes its files; None where the C library has no ``syncfs`` (not
    Linux). Not a design: ``syncfs`` writes back every process's dirty files on that file system, and reports a
    write error only since Linux 5.8."""
    import ctypes

    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fds = [_append_only(root / f"batch-{i}") for i in range(SYNCFS_BATCH)]

    def batch(_: int) -> None:
        for fd in fds:
            os.write(fd, line)
        if syncfs(fds[0]) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    return batch, lambda: _close_all(fds)


def verification_loop(signer: Any, record: dict[str, Any], n: int) -> Callable[[int], None]:
    """The ``i``-th of ``n`` verifications, each of a line the verifying keyring has never seen: a keyring remembers
    the signatures that verified in its process and those it made (``Keyring._verify``), so checking one line over
    and over (or a line it signed) would time a set lookup, not Ed25519. The lines are signed beforehand, untimed,
    by ``signer``; a reader that only trusts its public key checks them, as a worker checks a submitter's lines."""
    import json

    from orchestrator.signing import Keyring

    lines = [json.loads(signer.seal({**record, "seq": 3 + i})) for i in range(n)]
    reader = Keyring(trusted=dict(signer.trusted))

    def verify(i: int) -> None:
        if reader.check(lines[i]) is not None:
            raise AssertionError("a floor's line did not verify")

    return verify


# Per W1 job, since 2026-12-03 (head records are notes with no signature): the worker verifies the submitted
# event, which the job's head record names (1 verification), and signs its claim and its outcome (2 signatures);
# until then each append also signed a head record and the claim verified the submit's (4 and 2).
SIGNATURES_PER_JOB, VERIFICATIONS_PER_JOB, FDATASYNCS_PER_JOB = 2, 1, 2


def w1_ceiling(floor: dict[str, Any]) -> dict[str, float]:
    """What one job of W1 costs at the least, from the floors, and the throughput that allows: the format's
    signatures, verifications and fdatasyncs per job, with no scheduling, no JSON, no Python in between. With
    group commit (not built: job N's outcome and job N+1's claim made durable together) a job's two fdatasyncs
    cost one pair of the floor's, the cheaper way of making it (a floor from before those loops gives none); with a
    batch commit (not built either: ``SYNCFS_BATCH`` jobs' claims made durable by one ``syncfs``, then their outcomes
    by another) each of its two durable writes costs a share of the batch's."""
    crypto_us = SIGNATURES_PER_JOB * floor["sign"]["p50_us"] + VERIFICATIONS_PER_JOB * floor["verify"]["p50_us"]
    io_us = FDATASYNCS_PER_JOB * floor["fdatasync_append"]["p50_us"]
    out = {"crypto_us": crypto_us, "fsync_us": io_us, "crypto_jobs_per_s": 1e6 / crypto_us,
           "crypto_and_fsync_jobs_per_s": 1e6 / (crypto_us + io_us)}
    pairs = [floor[k]["p50_us"] for k in ("fdatasync_pair_one_after_other", "fdatasync_pair_at_once") if k in floor]
    if pairs:
        out.update(group_commit_fsync_us=min(pairs), group_commit_jobs_per_s=1e6 / (crypto_us + min(pairs)))
    if "syncfs_batch" in floor:  # (not built) each of a job's durable writes shared with SYNCFS_BATCH - 1 other jobs'
        batch_us = FDATASYNCS_PER_JOB * floor["syncfs_batch"]["p50_us"] / SYNCFS_BATCH
        out.update(batch_commit_fsync_us=batch_us, batch_commit_jobs_per_s=1e6 / (crypto_us + batch_us))
    return out
