"""The floor of the W2 path on this machine: the same processes, durable writes, signatures and
wake-ups as a real submit -> terminal-visible round, with none of the orchestrator's code.

What one W2 sample needs, as the spec and this design ask (``docs/performance.md``, "W2 step by
step"), done here by plain Python loops:

1. **submit** (the measuring process): sign the event; create the job's
   events file, write the line, ``fdatasync`` it and ``fsync`` its folder; write the head
   record's file; link the ready entry, which wakes the worker (inotify);
2. **claim** (the worker process, blocked on inotify): read the job, verify its line (the head
   record, a note, names it); sign the claim; append, ``fdatasync``, close, write the head record;
3. **handler round trip** (``--hop``, the default): the request over a pipe to a second
   process, which answers at once (this design runs Python handlers in their own process);
   without it the worker goes straight on;
4. **outcome**: sign, append, ``fdatasync``, close, head record (a note, not signed);
5. **visible** (the measuring process, blocked on inotify of the jobs folder since its submit):
   each time an events file is closed after a write, read the job again and verify it as
   ``status`` does (the line the head record names, and each line after it), until the last line
   is the outcome.

No JSON beyond the canonical encoding of the signed records, no state machine, no index
bookkeeping, no logging: every real implementation in Python of this contract on this machine
pays at least this. ``python -m bench.skeleton --samples 300 [--no-hop]`` prints P50/P95/P99.

"No orchestrator code" means none of its logic: the records are signed and checked with
``signing.Keyring`` (canonical JSON and libsodium, as any implementation would), the wake-ups use
``wakeup.InotifyWatcher`` (inotify through ctypes) and the worker sleeps with the same timer slack
(``runner.precise_sleeps``). It does less than the contract, never more: the ``prev`` hashes and head
record hashes are constants (no SHA-256 per line, ~2 us each) and no sequence numbers are checked.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SLOT = 512


def _sealer() -> tuple[Any, Any]:
    from orchestrator.signing import Keyring

    ring = Keyring.generate()

    def seal(rec: dict[str, Any]) -> bytes:
        return ring.seal(dict(rec))

    def check(raw: bytes) -> bool:
        return ring.check(json.loads(raw)) is None

    return seal, check


def _write_head(path: str, record: bytes) -> None:
    """A head record overwritten in place under the file's lock, as the real store's slots are."""
    import fcntl

    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, record + b"\n" + b" " * (SLOT - 1 - len(record)), 0)
    finally:
        os.close(fd)


def _read_head(path: "str | Path") -> bytes | None:
    """The head record, under a shared lock (never half of a write); None before the first one."""
    import fcntl

    try:
        with open(path, "rb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            return fh.read(SLOT).split(b"\n", 1)[0] or None
    except FileNotFoundError:
        return None


def _append(path: str, line: bytes) -> None:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line + b"\n")
        os.fdatasync(fd)
    finally:
        os.close(fd)  # IN_CLOSE_WRITE: the reader wakes now


def _event(job: str, seq: int, etype: str) -> dict[str, Any]:
    return {"job_id": job, "seq": seq, "type": etype, "ts": "2026-12-01T00:00:00.000000Z", "actor": "bench",
            "v": 1, "prev": "0" * 64, "data": {"summary": "ok"} if etype == "job_succeeded" else {"kind": "k"}}


def _head(seal: Any, name: str, seq: int) -> bytes:
    """A head record: a note with no signature, as the format's since 2026-12-03 (its hash a constant: the
    skeleton hashes no line)."""
    from orchestrator.signing import canonical

    return canonical({"stream": name, "seq": seq, "hash": "0" * 64})


def _lines(path: "str | Path") -> list[bytes]:
    """The file's complete lines (a line being written is not one yet); none when there is no file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return []
    return data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]


def _verified(check: Any, lines: list[bytes], head: bytes | None, known: int = 0) -> bool:
    """The job's lines as a read takes them (``history.check_head``): the line the head record names, when
    there is one yet, verifies (unless it is one of the first ``known``, verified before) and vouches for the
    lines up to it; every line after it (and after the first ``known``) verifies on its own."""
    if head is None:
        return all(check(ln) for ln in lines[known:])
    seq = json.loads(head)["seq"]
    named = lines[seq - 1: seq] if known < seq <= len(lines) else []
    return all(check(ln) for ln in named) and all(check(ln) for ln in lines[max(known, seq):])


def _lines_when_more_than(path: str, known: int, timeout: float = 5.0) -> list[bytes]:
    """The job's complete lines once there are more than ``known`` (its ready entry comes before its
    event, as in the real store: the worker wakes early and waits for the line, polling every 50 us)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = _lines(path)
        if len(lines) > known:
            return lines
        if time.monotonic() > deadline:
            raise SystemExit(f"skeleton: no new line in {path} within {timeout} s")
        time.sleep(0.00005)


def _worker(root: Path, seal: Any, check: Any, req_w: int | None, resp_r: int | None, known: int) -> None:
    """Blocked on inotify of ready/: claim, (hand to the handler process,) record the outcome. The
    first ``known`` lines of a job are ones it verified before (W3: it ran the job up to its question)."""
    from orchestrator.runner import precise_sleeps
    from orchestrator.wakeup import InotifyWatcher

    precise_sleeps()
    ready, jobs, heads = root / "ready", str(root / "jobs"), str(root / "heads")
    watcher = InotifyWatcher(ready)  # watch first, then look: an entry made in between is not missed
    while True:
        for name in os.listdir(ready):
            if name == "stop":
                return
            os.unlink(ready / name)
            path = os.path.join(jobs, name)
            # the head record first, then the lines (a racing writer can only make the lines longer); a new
            # job's first head record comes after its event, so there may be none yet
            head = _read_head(os.path.join(heads, name))
            lines = _lines_when_more_than(path, known)
            if not _verified(check, lines, head, known):
                raise SystemExit("skeleton: a line did not verify")
            seq = len(lines)
            claim = seal(_event(name, seq + 1, "job_claimed"))
            _append(path, claim)  # waits for the writer's lock: its event is durable first
            _write_head(os.path.join(heads, name), _head(seal, name, seq + 1))
            if req_w is not None and resp_r is not None:
                os.write(req_w, name.encode())
                os.read(resp_r, 4096)
            outcome = seal(_event(name, seq + 2, "job_succeeded"))
            _append(path, outcome)
            _write_head(os.path.join(heads, name), _head(seal, name, seq + 2))
        watcher.wait(0.25)


def _handler(req_r: int, resp_w: int) -> None:
    while True:
        msg = os.read(req_r, 4096)
        if not msg or msg == b"stop":
            return
        os.write(resp_w, b'{"status":"done","summary":"ok"}')


def _submit(root: Path, name: str, seal: Any, template: Path) -> None:
    """A new job, in the real store's order: its ready entry (the worker wakes and waits for the
    line), its events file created and locked, the line written and made durable (file and folder),
    then its head record."""
    import fcntl

    from orchestrator.store.files import fsync_dir

    jobs = root / "jobs"
    line, head = seal(_event(name, 1, "job_submitted")), _head(seal, name, 1)
    os.link(template, root / "ready" / name)
    fd = os.open(jobs / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line + b"\n")
        os.fdatasync(fd)
        fsync_dir(jobs)
    finally:
        os.close(fd)
    _write_head(str(root / "heads" / name), head)


def _asked(root: Path, name: str, seal: Any) -> None:
    """W3's untimed part: a job that ran up to its question (submitted, claimed, waiting_human)."""
    path = root / "jobs" / name
    path.write_bytes(b"".join(seal(_event(name, seq, etype)) + b"\n" for seq, etype in
                              ((1, "job_submitted"), (2, "job_claimed"), (3, "job_needs_human"))))
    _write_head(str(root / "heads" / name), _head(seal, name, 3))


def _resume(root: Path, name: str, seal: Any, check: Any, template: Path) -> None:
    """The answer: the job read and verified in full; its ready entry (the worker wakes and waits for
    the line); the resume appended and made durable; its head record; its audit entry made durable
    and its marker."""
    path = str(root / "jobs" / name)
    head = _read_head(root / "heads" / name)
    lines = _lines(path)
    if head is None or not _verified(check, lines, head):
        raise SystemExit("skeleton: a line did not verify")
    line = seal(_event(name, len(lines) + 1, "job_resumed"))
    os.link(template, root / "ready" / name)
    _append(path, line)
    _write_head(str(root / "heads" / name), _head(seal, name, len(lines) + 1))
    audit = str(root / "audit.jsonl")
    if not os.path.exists(audit):
        os.close(os.open(audit, os.O_WRONLY | os.O_CREAT, 0o644))
    _append(audit, seal({"action": "resume", "job_id": name, "seq": 1, "prev": "0" * 64, "v": 1}))
    os.close(os.open(root / "markers" / name, os.O_WRONLY | os.O_CREAT, 0o644))


def run(samples: int, hop: bool = True, base: Path | None = None, workload: str = "w2") -> dict[str, Any]:
    """``samples`` rounds, one job at a time; latencies in ms: W2 from the submit, W3 from the resume,
    to the outcome visible to this process."""
    from bench.common import WARMUP, summarize  # the suite's untimed rounds, as for ours and the peers
    from orchestrator.wakeup import InotifyWatcher

    if workload not in ("w2", "w3"):
        raise ValueError(f"workload must be w2 or w3, not {workload!r}")
    root = Path(tempfile.mkdtemp(prefix="bench-skeleton-", dir=base))
    for sub in ("ready", "jobs", "heads", "markers"):
        (root / sub).mkdir()
    template = root / ".entry"
    template.touch()
    seal, check = _sealer()
    children: list[int] = []
    req_w = resp_r = None
    try:
        if hop:
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            children.append(_child(_handler, req_r, resp_w))
        children.append(_child(_worker, root, seal, check, req_w, resp_r, 3 if workload == "w3" else 0))
        reader = InotifyWatcher(root / "jobs")
        out: list[float] = []
        for i in range(WARMUP + samples):  # the first rounds (imports, first writes) are not counted
            name = f"job-{i:06d}"
            if workload == "w3":
                _asked(root, name, seal)
                reader.wait(0.0)  # forget the untimed writes
            t0 = time.monotonic_ns()
            if workload == "w2":
                _submit(root, name, seal, template)
            else:
                _resume(root, name, seal, check, template)
            # the separate reader: a fresh, verified read each time a job file is closed
            give_up = time.monotonic() + 10.0
            while True:
                record = _read_head(root / "heads" / name)
                lines = _lines(root / "jobs" / name)
                if _verified(check, lines, record) and lines and b'"job_succeeded"' in lines[-1]:  # verified first, as status
                    if i >= WARMUP:
                        out.append((time.monotonic_ns() - t0) / 1e6)
                    break
                reader.wait(0.25)  # as the real reader (latency.Reader): a wake-up missed costs 0.25 s, not more
                if time.monotonic() > give_up or any(os.waitpid(pid, os.WNOHANG)[0] for pid in children):
                    raise RuntimeError(f"skeleton: {name} did not finish (a child process ended or hangs)")
        reader.close()
        return {"workload": workload, "hop": hop, **summarize(out)}
    finally:
        (root / "ready" / "stop").touch()
        if req_w is not None:
            with contextlib.suppress(OSError):  # the handler process may be gone already
                os.write(req_w, b"stop")
        for pid in children:
            _reap(pid)
        shutil.rmtree(root, ignore_errors=True)


def _child(fn: Any, *args: Any) -> int:
    """Fork a process that runs ``fn(*args)`` and exits; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(0)
    return pid


def _reap(pid: int, grace: float = 2.0) -> None:
    """Wait for a child that was told to stop; kill it if it hangs. One reaped already is fine."""
    deadline = time.monotonic() + grace
    with contextlib.suppress(ChildProcessError):
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.01)


def measure(params: Any) -> dict[str, Any]:
    """The suite's ``skeleton`` workload: W2 (``w2_samples``) and W3 (``w3_samples``), each in a fresh
    process the size of this module's imports (the suite's own process holds every peer's library)."""
    import subprocess

    from bench.common import progress

    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    out: dict[str, Any] = {}
    for workload, samples in (("w2", params.w2_samples), ("w3", params.w3_samples)):
        progress(f"skeleton {workload.upper()}: {samples} rounds of the path with no orchestrator code")
        proc = subprocess.run([sys.executable, "-m", "bench.skeleton", "--json", "--samples", str(samples),
                               "--workload", workload, "--base", str(params.base)],
                              env=env, capture_output=True, text=True, timeout=600, check=True)
        out[workload.upper()] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.cli_args import positive_int

    ap = argparse.ArgumentParser(prog="python -m bench.skeleton", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=positive_int, default=300, help="rounds of the path (default 300)")
    ap.add_argument("--workload", choices=("w2", "w3"), default="w2",
                    help="w2: submit -> outcome visible (default); w3: resume of a waiting job -> outcome visible")
    ap.add_argument("--no-hop", action="store_true", help="no handler process: the worker goes straight on")
    ap.add_argument("--base", type=Path, help="folder on the disk to measure (default: the temp folder)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    result = run(args.samples, hop=not args.no_hop, base=args.base, workload=args.workload)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['workload'].upper()} skeleton ({'with' if result['hop'] else 'without'} the handler hop), {result['n']} samples: "
              f"P50 {result['p50']:.2f} / P95 {result['p95']:.2f} / P99 {result['p99']:.2f} / max {result['max']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
