"""Helpers shared by tests (importable as ``helpers`` thanks to pytest's pythonpath)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0  # seconds a test waits for another process before failing


def run_script(name: str, *args: str, env: dict[str, str], check: bool = False, input: str | None = None,
               cwd: "Path | str" = REPO):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], env=env,
                          capture_output=True, text=True, input=input, timeout=60, cwd=str(cwd))
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {args} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    return proc


def run_module(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python3 -m orchestrator ARGS``: every command, those without a script too."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))


def as_user(uid: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python3 -m orchestrator ARGS`` run by ``uid`` (``setpriv``, root's tests only), as a worker that is not root
    runs."""
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", sys.executable,
                           "-m", "orchestrator", *args], env=env, capture_output=True, text=True, timeout=60,
                          cwd=str(REPO))


@contextlib.contextmanager
def folder_of(uid: int | None, prefix: str) -> Iterator[Path]:
    """A new folder under ``/tmp`` (pytest's ``tmp_path`` is root's alone), 0755 and ``uid``'s (root's tests only;
    None: as made, for a test that gives it away itself), removed afterwards whatever modes a run left in it."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if uid is not None:
            os.chmod(top, 0o755)
            os.chown(top, uid, uid)
        yield top
    finally:
        for folder, _, _ in os.walk(top):
            os.chmod(folder, 0o700)
        shutil.rmtree(top)


def store_env_in(top: Path, **settings: str) -> dict[str, str]:
    """The environment of a store in ``top`` (project ``proj``, a new signing key, its keyring in ``top/keys``) for
    a command run by another user (``as_user``), with ``settings``."""
    from orchestrator.signing import new_seed

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(BASE_PATH=str(top), PROJECT_ID="proj", ORCH_SIGNING_KEY=new_seed(), ORCH_KEYRING_DIR=str(top / "keys"),
               PYTHONPATH=str(REPO), **settings)
    return env


def in_a_child_as(uid: int, run: Callable[[], object]) -> str:
    """``run()`` in a forked child as ``uid`` (root's tests only; no ``exec``: the interpreter may lie where that user
    cannot read): what it raised, as ``Type: message``, or "" when it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            run()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
            os.write(write, f"{type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        error = reader.read().decode()
    os.waitpid(pid, 0)
    return error


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``scripts/worker.py ARGS`` as a real process, its output piped."""
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "worker.py"), *args], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# First lines of a child's script: on SIGUSR1 it prints where each of its threads is, which ``finish`` asks for of a
# child that did not exit in time (a hang in CI then shows where it hung)
PRINTS_ITS_STACK = "import faulthandler, signal\nfaulthandler.register(signal.SIGUSR1, all_threads=True)\n"


def finish(proc: subprocess.Popen[str], timeout: float = WAIT) -> tuple[int, str, str]:
    """Wait for a process (a worker, a command sent a stop signal) to exit by itself: (exit code, stdout, stderr); one
    that does not is a failure, which shows its stack when its script begins with ``PRINTS_ITS_STACK``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # the stack, or the end of a process that did not ask for it
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"process did not exit within {timeout} s: {out}\n{err}") from None
    return proc.returncode, out, err


def waits_for_a_stop(started: Path, params: str = "*args, **kwargs") -> str:
    """Source of ``def waits(PARAMS)``, which stands in for a command's work in a child's script: it creates
    ``started`` (the test may send its signal), then waits for ever, in short sleeps: a stop signal that lands in the
    microseconds between the interpreter's last look for signals and the start of a sleep is handled only when the
    sleep ends, and one ``time.sleep(60)`` waited out its 60 s (a CI flake at load ~8, 2026-12-07)."""
    return (f"def waits({params}):\n"
            f"    open({str(started)!r}, 'w').close()\n"
            "    while True:\n"
            "        time.sleep(0.05)\n")


def stop(proc: subprocess.Popen[str] | None) -> None:
    """Kill (if still running) and reap, closing the pipes (``finish`` may have done it already)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    if proc.stdout is not None and not proc.stdout.closed:
        proc.communicate()


def alive(pid: int) -> bool:
    """True for a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while its stat was read (ESRCH)
        return False


def libsodium_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many signatures libsodium itself verifies (``[n]``, counted from now): what ``Keyring._verify``
    remembers as verified before is not checked again, so not counted."""
    from nacl.signing import VerifyKey

    calls, real = [0], VerifyKey.verify

    def counting(self: VerifyKey, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VerifyKey, "verify", counting)
    return calls


HIGH_FD = 1100  # a descriptor number ``select`` refuses (FD_SETSIZE is 1024)


@contextlib.contextmanager
def descriptors_numbered_high(above: int = HIGH_FD) -> Iterator[None]:
    """Every free descriptor number below ``above`` taken for the block, so what the block opens (a pipe, a pidfd,
    a PostgreSQL connection's socket) is numbered ``above`` or more: what a long-lived worker reaches with a raised
    ``RLIMIT_NOFILE``. The soft limit is raised to the hard one for the block; a hard limit too low skips."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = above + 500  # room for what the block opens
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}: descriptors numbered {above} and more need {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    taken: list[int] = []
    try:
        while (fd := os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)) < above:
            taken.append(fd)
        os.close(fd)
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SHARED_GID = 54321  # a group no user database knows: never the user's private group (``key_paths.others_may_write``)


def shared_with_a_group(path: "Path | str") -> None:
    """Give ``path`` a group whose members nobody can tell (the tests run as root, who may), so that its group-write
    bit means "others may write": the user's own private group (root's, on this machine) would count as the owner."""
    os.chown(path, -1, SHARED_GID)


def make_worker(orch: Any, **kw: Any) -> Any:
    """A worker of ``orch`` that retries at once and draws the same jitter every run (``worker_id`` w1)."""
    from orchestrator.worker import Worker, WorkerSettings

    kw.setdefault("worker_id", "w1")
    kw.setdefault("retry_base_seconds", 0.0)
    return Worker(orch, WorkerSettings(**kw), rng=random.Random(7))


def taken_over_while_it_runs(worker: Any, claim: Any, takeover: Callable[[], None]) -> Any:
    """``worker.execute(claim)``, with ``takeover`` done once its handler started: a worker paused past its lease in
    the middle of its run, which wakes up and finishes it (its outcome's append, not ``execute``'s read of the job
    before the run, meets the takeover)."""
    from orchestrator import faults

    faults.arm("worker.after_start", takeover)
    try:
        return worker.execute(claim)
    finally:
        faults.disarm_all()


def imported_with_each_chunk(orch: Any, bundle: bytes, meanwhile: Callable[[], object]) -> Any:
    """``import_project(orch, bundle)``, with ``meanwhile`` run after each chunk it writes (``import.after_chunk``,
    armed again each time; after each line with ``transfer.CHUNK`` patched to 1); what ``meanwhile`` raises stops it."""
    import io

    from orchestrator import faults
    from orchestrator.transfer import import_project

    def each_chunk() -> None:
        meanwhile()
        faults.arm("import.after_chunk", each_chunk)

    faults.arm("import.after_chunk", each_chunk)
    try:
        return import_project(orch, io.BytesIO(bundle))
    finally:
        faults.disarm_all()


def after_first_call(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, meanwhile: Callable[[], object],
                     when: Callable[..., bool] = lambda *args, **kwargs: True) -> None:
    """``obj.name``, whose first call (of those ``when`` accepts, given its arguments) then runs ``meanwhile``:
    another machine's writes, between two reads of a command that reads the store."""
    original = getattr(obj, name)
    done: list[bool] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if isinstance(result, Iterator):  # a listing made as it is walked (files): made before the writes
            result = iter(list(result))
        if not done and when(*args, **kwargs):
            done.append(True)
            meanwhile()
        return result

    monkeypatch.setattr(obj, name, racing)


def read_while_an_action_is_in_flight(action: Callable[[], object], read: Callable[[], T]) -> tuple[T, float]:
    """``read()`` while ``action`` (an audited append, run in another thread) is paused between its event and its
    audit entry, holding the job's pending lock; the action goes on a second into the read. What ``read`` returned,
    and how long it took: one that waits for the action takes half a second or more."""
    from orchestrator import faults

    between, release = threading.Event(), threading.Event()

    def pause() -> None:
        between.set()
        release.wait(WAIT)

    faults.arm("append.after_event", pause)
    operator = threading.Thread(target=action, name="an-operator")
    operator.start()
    try:
        assert between.wait(WAIT)
        threading.Timer(1.0, release.set).start()  # once the read has read the job and waits for the lock
        started = time.monotonic()
        return read(), time.monotonic() - started
    finally:
        release.set()
        operator.join(WAIT)


def submitted_as_before(orch: Any, kinds: list[str]) -> list[str]:
    """Jobs of ``kinds`` (inputs ``{"i": n}``) submitted as the code before 2026-12-07 took them: a kind with a control
    character, which ``limits.is_kind`` refuses now (the file store took "nul\\x00kind"), goes in as given."""
    with pytest.MonkeyPatch.context() as patched:
        for checked_at in ("orchestrator.submitting.is_kind", "orchestrator.event_models.is_kind"):  # submit, its event
            patched.setattr(checked_at, lambda kind: True)
        return [orch.submit(kind, {"i": i}) for i, kind in enumerate(kinds)]


def events(orch: Any, job_id: str) -> list[dict]:
    """The job's events as the store holds them, decoded."""
    return [json.loads(line.raw) for line in orch.store.read(job_id)]


def cpu_timed(work: Callable[[], T]) -> tuple[float, T]:
    """The CPU time ``work`` took in this process, and what it returned: what a "linear time" test bounds, since a
    loaded host (other sessions, the suite's own processes) stretches the wall clock but not this; a pass quadratic
    in such a test's input (5 MB, 20,000 items) takes minutes to hours of it."""
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


# How much longer than a half-size input's a full one's CPU time may be: 2 when linear (less, with a fixed cost), 4
# when quadratic. CPU time is not load-proof either: on this 2-core host shared with other sessions (caches, memory
# bandwidth) one 5 MB case's runs went 0.31-0.50 s, its half's 0.15-0.25 s (ratios of single runs up to 3.1). 3.5
# keeps a margin both ways, and a ratio over it is measured again (the smallest of each, alternated) before it fails:
# noise passes, a quadratic pass stays at 4 or more in every run.
LINEAR_RATIO = 3.5
_MEASURES = 4  # at most, each size
_TIME_FLOOR = 0.05  # s: below it, a half's CPU time is mostly noise; the ratio is taken of this much instead
_HANG = 30.0  # s: an input that takes longer is hung, whatever the ratio (the half's bound: half of it)


def linear_timed(half: Callable[[], object], full: Callable[[], T]) -> T:
    """What ``full`` returned, having checked that its CPU time (``cpu_timed``) is at most ``LINEAR_RATIO`` times that
    of ``half``, the same work on an input half as long (``halved``), and under ``_HANG``: linear time, checked without
    a fixed bound, which a loaded host overran (a 5 MB case took 3.07 s of a 5 s bound) and a faster one made loose."""
    half_took = cpu_timed(half)[0]
    assert half_took < _HANG / 2, f"half the input took {half_took:.1f} s"
    full_took, result = cpu_timed(full)
    assert full_took < _HANG, f"the input took {full_took:.1f} s"
    for _ in range(_MEASURES - 1):
        if full_took <= LINEAR_RATIO * max(half_took, _TIME_FLOOR):
            break
        half_took = min(half_took, cpu_timed(half)[0])  # noise, or not linear: the smallest of each
        full_took = min(full_took, cpu_timed(full)[0])
    assert full_took <= LINEAR_RATIO * max(half_took, _TIME_FLOOR), \
        f"not linear: {full_took:.2f} s, half the input {half_took:.2f} s"
    return result


def halved(text: str) -> str:
    """``text`` with about half its length taken out of its middle, whole periods of what repeats there: ``head +
    unit * n + tail`` gives ``head + unit * m + tail`` (a cut of its first half would lose ``tail``, which may be what
    a case's cost is in: ``"password" + " " * n + "= ["``)."""
    start, cut = len(text) // 4, len(text) // 2
    for period in range(1, 2_001):
        length = cut // period * period
        window = min(512, length)
        if text[start:start + window] == text[start + period:start + period + window] \
                and text[start:start + length] == text[start + period:start + period + length]:
            return text[:start] + text[start + length:]
    raise AssertionError("nothing repeats in the middle of the text")


def redacts(text: str, shown: str) -> None:
    """``sanitize_text`` shows ``text`` as ``shown``, and leaves ``shown`` as it is (idempotent)."""
    from orchestrator.security import sanitize_text

    assert sanitize_text(text) == shown
    assert sanitize_text(shown) == shown
