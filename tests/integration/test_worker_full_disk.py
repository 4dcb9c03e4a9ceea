"""A worker on a full disk: its own files that cannot be written are the store's fault, never the job's (the job is
handed back, no attempt used, and the worker stops: STORAGE_ERROR, exit 10), and the hand-back needs no new folder.
The kernel's way is simulated where it must be (monkeypatch), and met on a real small tmpfs where this process may
mount one (root on Linux)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import events, make_worker
from orchestrator import run_folder
from orchestrator.errors import StorageError

PY = sys.executable
DONE = [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"done\", \"summary\": \"ok\"}')"]


def handed_back(orch, job: str) -> dict:
    """``job`` was given back as if never claimed (no attempt used, not one of its stops); its release's data."""
    assert [e["type"] for e in events(orch, job)] == ["job_submitted", "job_claimed", "job_released"]
    st = orch.load(job).state
    assert (st.state, st.failures, st.stops) == ("queued", 0, 0)
    released = events(orch, job)[-1]["data"]
    assert released["error_code"] == "STORAGE_ERROR"
    return released


def no_room_under(folder: str, monkeypatch: pytest.MonkeyPatch, refusal: int = errno.ENOSPC) -> None:
    """A disk full under ``folder`` (a part of the path) as the kernel says it at a write, after the open succeeded:
    ``ENOSPC`` naming no file (``run_folder.write_private`` opens, then writes); ``refusal``: ``EDQUOT`` for a
    quota used up, which ``statvfs`` does not show."""
    real = run_folder.write_private

    def write_private(path: Path, data: bytes) -> None:
        if folder in path.parts:
            real(path, b"")
            raise OSError(refusal, os.strerror(refusal))
        real(path, data)

    monkeypatch.setattr(run_folder, "write_private", write_private)


# -- a run's own files (1a) ------------------------------------------------------------------------------------------
def test_a_run_file_the_disk_has_no_room_for_is_handed_back_though_the_error_names_no_file(orch, monkeypatch) -> None:
    """``ENOSPC`` at the write names no file: the worker took it for the machine's fault (``HANDLER_START_FAILED``,
    retried), and every job it claimed used up its attempts on the full disk, the worker going on (exit 0)."""
    job = orch.submit("command", {"argv": DONE}, max_attempts=3)
    worker = make_worker(orch)
    no_room_under("runs", monkeypatch)
    with pytest.raises(StorageError, match=r"/runs/run-[0-9a-f]{16}/context\.json: No space left on device") as err:
        worker.run_once()
    assert err.value.exit_code == 10
    assert "context.json" in handed_back(orch, job)["error"]
    runs = orch.settings.state_dir / "runs"
    assert list(runs.iterdir()) == []  # the run's folder, and the copy half written in it, removed
    monkeypatch.undo()
    assert make_worker(orch).run_once().outcome == "succeeded"


def test_a_per_run_handler_whose_result_the_disk_has_no_room_for_is_handed_back_and_the_worker_stops(
        orch, monkeypatch) -> None:
    """The per-run child writes the handler's payload into the run's terminal file, the worker's own file: refused by
    a full disk, the child died and the run was ``NO_TERMINAL_SIGNAL_EXIT`` ("exited with status 1 without writing a
    terminal payload"), an attempt used, every Python job claimed on the disk failed so. The child tells the worker
    now; the handler ran, so its job runs again (as after a worker that died), but is not charged for it."""
    job = orch.submit("t.echo", "x", max_attempts=3)
    worker = make_worker(orch, handler_process="per-run")
    no_room_under("runs", monkeypatch)  # the child is forked from here: the same write fails there
    with pytest.raises(StorageError, match=r"/runs/run-[0-9a-f]{16}/terminal\.json: No space left on device"):
        worker.run_once()
    released = handed_back(orch, job)
    assert released["error"].startswith("worker w1 stopped after running it, its result not kept: ")
    assert list((orch.settings.state_dir / "runs").iterdir()) == []
    monkeypatch.undo()
    assert make_worker(orch, handler_process="per-run").run_once().outcome == "succeeded"


def test_a_per_run_result_refused_by_a_full_disk_is_handed_back_also_when_the_child_ended_before_the_worker_looked(
        orch, monkeypatch) -> None:
    """The child says so on its pipe before it exits; a worker that first looked once the child had exited (a busy
    host) reaped it and closed the pipe unread: the run was ``NO_TERMINAL_SIGNAL_EXIT``, an attempt used."""
    import orchestrator.handlers as handlers
    from orchestrator import faults

    children = []
    real = handlers.fork_call
    monkeypatch.setattr(handlers, "fork_call", lambda *a, **kw: children.append(real(*a, **kw)) or children[-1])
    job = orch.submit("t.echo", "x", max_attempts=3)
    worker = make_worker(orch, handler_process="per-run")
    no_room_under("runs", monkeypatch)
    # the worker looks only once its child has exited (waited for, not reaped)
    faults.arm("worker.after_start", lambda: os.waitid(os.P_PID, children[-1].pid, os.WEXITED | os.WNOWAIT))
    try:
        with pytest.raises(StorageError, match=r"terminal\.json: No space left on device"):
            worker.run_once()
    finally:
        faults.disarm_all()
    handed_back(orch, job)


def test_a_reused_handler_process_writes_no_file_of_its_own_for_a_run(orch, monkeypatch) -> None:
    """Its payload comes back on a pipe: a disk with no room for a run's file does not stop a handler that writes
    none (one that prints fails as its own code fails: ``HANDLER_ERROR``)."""
    job = orch.submit("t.echo", "x", max_attempts=3)
    worker = make_worker(orch)
    no_room_under("runs", monkeypatch)
    assert worker.run_once().outcome == "succeeded"
    assert orch.status(job).state == "succeeded"
    worker.close()


@pytest.mark.parametrize("kind, mode, name", [("command", "reused", "context.json"),
                                              ("t.echo", "per-run", "terminal.json")])
def test_a_run_file_over_the_users_disk_quota_is_handed_back_as_on_a_full_disk(orch, monkeypatch, kind: str,
                                                                              mode: str, name: str) -> None:
    """A quota (``EDQUOT``) is a full disk for this user: the store's fault, never the job's."""
    job = orch.submit(kind, {"argv": DONE} if kind == "command" else "x", max_attempts=3)
    worker = make_worker(orch, handler_process=mode)
    no_room_under("runs", monkeypatch, errno.EDQUOT)
    with pytest.raises(StorageError, match=f"{name}: Disk quota exceeded") as err:
        worker.run_once()
    assert err.value.exit_code == 10
    handed_back(orch, job)
    monkeypatch.undo()
    assert make_worker(orch, handler_process=mode).run_once().outcome == "succeeded"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs, unmounted after the test; skipped where this process may not mount one (not root on Linux)."""
    from orchestrator.reliability.disk import _mount_tmpfs, _umount

    where = tmp_path / "small"
    if not _mount_tmpfs(where, 2 * 1024 * 1024):
        pytest.skip("cannot mount a tmpfs here")
    yield where
    _umount(where)


@pytest.mark.parametrize("kind, mode", [("command", "reused"), ("t.echo", "per-run")])
def test_on_a_real_full_disk_a_run_file_refused_hands_the_job_back(small_disk: Path, keyring, monkeypatch,
                                                                   kind: str, mode: str) -> None:
    """The kernel's own way (the open succeeds, the write fails with no file name), the disk filled between the
    worker's room check and the run."""
    import orchestrator.worker_folders as worker_folders
    from orchestrator import Orchestrator

    orch = Orchestrator(base_path=small_disk, project_id="full", keyring=keyring)
    job = orch.submit(kind, {"argv": DONE} if kind == "command" else "x", max_attempts=3)
    worker = make_worker(orch, handler_process=mode)
    monkeypatch.setattr(worker_folders, "SPARE_BYTES", 0)  # past the check
    subprocess.run(["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=4k"], capture_output=True)
    name = "context.json" if kind == "command" else "terminal.json"
    with pytest.raises(StorageError, match=f"{name}: No space left on device"):
        worker.run_once()
    handed_back(orch, job)
    (small_disk / "filler").unlink()
    monkeypatch.undo()
    assert make_worker(orch, handler_process=mode).run_once().outcome == "succeeded"


# -- the hand-back on a full disk (1b) -------------------------------------------------------------------------------
def no_new_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with no block left for a new folder (ext4 full but for what files already hold): every ``mkdir``
    refused, ``ENOSPC`` naming the folder."""
    def mkdir(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_job_whose_run_folder_cannot_be_made_is_handed_back_without_a_new_folder(orch, monkeypatch) -> None:
    """The hand-back takes the job's audit lock, in ``locks/``, which the project's first audited action makes: a
    worker that met a full disk there could not hand its job back (``locks: No space left on device``), which stayed
    running, to be recovered as stale 30 s later (an attempt used); a supervisor restarting the worker stranded one
    job per restart. The worker makes ``locks/`` when it starts. The release's audit entry, whose log needed a
    folder too here (the project's first entry), is missing: the release stands without it, saying why itself."""
    from orchestrator.store.base import AUDIT_STREAM

    job = orch.submit("command", {"argv": DONE}, max_attempts=3)
    worker = make_worker(orch)
    no_new_folder(monkeypatch)
    with pytest.raises(StorageError, match=f"/artifacts/{job}: No space left on device") as err:
        worker.run_once()
    assert "handed back" not in err.value.message
    assert handed_back(orch, job)["error"].startswith("worker w1 stopped before running it: ")
    monkeypatch.undo()
    assert orch.store.read(AUDIT_STREAM) == []
    assert make_worker(orch).run_once().outcome == "succeeded"


def test_a_hand_back_the_store_cannot_take_says_the_job_stays_running_until_its_lease_expires(
        orch, monkeypatch) -> None:
    """A disk with no byte left for the release's line: nothing can be promised but the truth (the error said only
    what failed first, and the job was found running, then recovered as stale with an attempt used)."""
    from orchestrator import faults

    def full() -> None:
        raise StorageError("could not durably append: No space left on device; nothing was written")

    job = orch.submit("command", {"argv": DONE}, max_attempts=3)
    worker = make_worker(orch)
    no_room_under("runs", monkeypatch)
    faults.arm("worker.before_outcome", full)
    try:
        with pytest.raises(StorageError) as err:
            worker.run_once()
    finally:
        faults.disarm_all()
    assert err.value.message.startswith(f"{orch.settings.state_dir}/runs/run-")
    assert err.value.message.endswith(
        "context.json: No space left on device; and the job could not be handed back (could not durably append: No "
        "space left on device; nothing was written): it stays running until its lease expires, then stale recovery "
        "ends its run as one whose worker died (NO_TERMINAL_SIGNAL_STALE, an attempt used)")
    assert orch.status(job).state == "running"


# -- room: a worker claims nothing on a full disk --------------------------------------------------------------------
def free_space(free: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk of the store holding 64 MiB, ``free`` bytes of them free to users other than root, as ``statvfs``
    says (root's reserve, 1 MiB more, is not counted)."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        return os.statvfs_result((4096, 4096, 16384, free // 4096 + 256, free // 4096, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_worker_does_not_start_on_a_full_disk_and_claims_nothing(orch, monkeypatch) -> None:
    """Its probe makes a folder, which a disk full but for a few blocks still allowed: the job it claimed then could
    not start, nor, often, be handed back."""
    job = orch.submit("command", {"argv": DONE}, max_attempts=3)
    free_space(64 * 1024, monkeypatch)
    with pytest.raises(StorageError) as err:
        make_worker(orch)
    assert err.value.message == (
        f"{orch.settings.state_dir}/runs: the disk is full (64.0 KiB free, less than the 1.0 MiB the store keeps for "
        "its own writes): no job is claimed until space is freed")
    assert err.value.exit_code == 10
    assert [e["type"] for e in events(orch, job)] == ["job_submitted"]


def test_a_worker_whose_disk_fills_up_stops_before_its_next_claim(orch, monkeypatch) -> None:
    """A Python handler whose print a full disk refuses fails as its own code fails (``HANDLER_ERROR``): the worker
    cannot tell whose write that was, and went on claiming, every job on the disk charged its attempts. An idle
    worker goes on waiting: only a claim needs the room."""
    worker = make_worker(orch)
    free_space(512 * 1024, monkeypatch)
    assert worker.run_once() is None
    job = orch.submit("t.echo", "x", max_attempts=3)
    with pytest.raises(StorageError, match="the disk is full"):
        worker.run_once()
    assert [e["type"] for e in events(orch, job)] == ["job_submitted"]
    monkeypatch.undo()
    assert worker.run_once().outcome == "succeeded"
    worker.close()


def writes_to_the_probe(monkeypatch: pytest.MonkeyPatch, refusal: int | None = None) -> list[int]:
    """The sizes written to files in a probe's folder of ``runs/`` (its spare room, a file no name leads to), as
    ``os.write`` got them; with ``refusal``, each refused so."""
    real, sizes = os.write, []

    def write(fd: int, data) -> int:
        if os.path.basename(os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))).startswith("run-probe-"):
            sizes.append(len(data))
            if refusal is not None:
                raise OSError(refusal, os.strerror(refusal))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return sizes


def test_a_worker_over_its_disk_quota_does_not_start_and_claims_nothing(orch, monkeypatch) -> None:
    """``statvfs`` shows the disk's room, not what a quota leaves this user: the room check passed, a job was
    claimed, and the first file of its run was refused (``EDQUOT``), or its hand-back. The worker now writes the
    store's spare room when it starts, which a quota refuses as a full disk does."""
    job = orch.submit("command", {"argv": DONE}, max_attempts=3)
    writes_to_the_probe(monkeypatch, errno.EDQUOT)
    with pytest.raises(StorageError) as err:
        make_worker(orch)
    assert err.value.exit_code == 10
    assert err.value.message == (
        f"{orch.settings.state_dir}/runs: no room for the 1.0 MiB the store keeps for its own writes (Disk quota "
        "exceeded): no job is claimed until space is freed")
    assert [e["type"] for e in events(orch, job)] == ["job_submitted"]
    assert list((orch.settings.state_dir / "runs").iterdir()) == []  # the probe's file and folder removed


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "removed-at-once"])
def test_the_room_written_when_a_worker_starts_is_given_back(orch, monkeypatch, tmpfile: bool) -> None:
    """The spare room is written into a file of the probe's folder that no name leads to (``O_TMPFILE``, else one
    removed right after it is made), then the file is closed and the folder removed."""
    if not tmpfile:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    sizes = writes_to_the_probe(monkeypatch)
    make_worker(orch)
    assert sum(sizes) == 1 << 20
    assert list((orch.settings.state_dir / "runs").iterdir()) == []


# -- a run that failed on a disk full when it ended ------------------------------------------------------------------
NO_SPACE = [PY, "-c", "import sys; sys.exit('cannot write report.csv: [Errno 28] No space left on device')"]


@pytest.fixture
def disk_full_while_it_runs(monkeypatch: pytest.MonkeyPatch):
    """Call it, and the disk of the store fills up (by the run, or anything else) once the next run's handler
    started."""
    from orchestrator import faults

    yield lambda: faults.arm("worker.after_start", lambda: free_space(64 * 1024, monkeypatch))
    faults.disarm_all()


@pytest.mark.parametrize("kind, value, code", [
    ("command", {"argv": NO_SPACE}, "NO_TERMINAL_SIGNAL_EXIT"),
    ("t.payload", {"status": "failed", "summary": "cannot write: disk full"}, "HANDLER_FAILED"),
])
def test_a_run_that_fails_with_the_disk_full_when_it_ends_is_handed_back_and_the_worker_stops(
        orch, disk_full_while_it_runs, kind: str, value: dict, code: str) -> None:
    """A handler's own writes a full disk refuses fail its run, which the worker cannot tell from any failure (its
    stderr is the handler's text); it can tell that the disk is full now. The run was charged an attempt (with
    ``max_attempts`` 1 the job failed for good, for the host's fault), then the worker stopped at its next claim.
    The hand-back is no failed attempt, so not counted against ``max_attempts``: with 1, the job runs again once
    space is freed (a failure that must not be run again says ``retryable: false``, below)."""
    from orchestrator.state import WORKER_STOPPED

    job = orch.submit(kind, value, max_attempts=1)
    worker = make_worker(orch)
    disk_full_while_it_runs()
    with pytest.raises(StorageError, match="the disk is full") as err:
        worker.run_once()
    assert err.value.exit_code == 10
    assert [e["type"] for e in events(orch, job)] == ["job_submitted", "job_claimed", "job_released"]
    released = events(orch, job)[-1]["data"]
    assert released["error_code"] == WORKER_STOPPED and code in released["error"], released
    assert "the disk is full" in released["error"]
    st = orch.load(job).state
    assert (st.state, st.failures, st.stops) == ("queued", 0, 1)
    if kind == "command":
        assert "No space left on device" in released["output_tail"]
    worker.close()


DECLINED = [PY, "-c", "import os; open(os.path.join(os.environ['ORCH_ARTIFACTS_DIR'], 'big'), 'wb').write(bytes(1 << 16)); "
            "open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"failed\", \"summary\": \"card declined: do "
            "not retry\", \"retryable\": false}')"]


@pytest.mark.parametrize("kind, value", [
    ("command", {"argv": DECLINED}),
    ("t.payload", {"status": "failed", "summary": "card declined: do not retry", "retryable": False}),
])
def test_a_failed_payload_that_says_retryable_false_is_final_whatever_the_disk(
        orch, disk_full_while_it_runs, kind: str, value: dict) -> None:
    """Its handler said the failure must not be run again (a card charged and declined): handed back for a full
    disk, the job ran again once space was freed, charging the card twice. It is recorded as it ended, final with
    attempts left; the worker stops at its next claim, as after a run that succeeded."""
    job = orch.submit(kind, value, max_attempts=3)
    worker = make_worker(orch)
    disk_full_while_it_runs()
    result = worker.run_once()
    assert (result.outcome, result.error_code) == ("failed", "HANDLER_FAILED")
    assert [e["type"] for e in events(orch, job)] == ["job_submitted", "job_claimed", "job_failed"]
    st = orch.load(job).state
    assert (st.state, st.failures) == ("failed", 1)
    orch.submit("t.echo", "x")
    with pytest.raises(StorageError, match="the disk is full"):
        worker.run_once()
    worker.close()


def test_a_job_whose_runs_end_on_a_full_disk_run_after_run_is_charged_from_the_fourth(orch, monkeypatch,
                                                                                      disk_full_while_it_runs) -> None:
    """A job that fills the disk itself would be handed back for ever, every worker that claims it stopping: it is
    one of the job's stops in a row, and from the fourth on each counts as a failed attempt, as for a run that
    stops its own worker (docs/worker.md, "Graceful stop")."""
    job = orch.submit("command", {"argv": NO_SPACE}, max_attempts=3)
    for _ in range(4):
        worker = make_worker(orch)
        disk_full_while_it_runs()
        with pytest.raises(StorageError, match="the disk is full"):
            worker.run_once()
        monkeypatch.undo()
    kinds = [e["type"] for e in events(orch, job)]
    assert kinds == ["job_submitted", *["job_claimed", "job_released"] * 3, "job_claimed", "job_failed"]
    st = orch.load(job).state
    assert (st.state, st.failures) == ("queued", 1)


def test_a_run_that_succeeds_with_the_disk_full_when_it_ends_is_recorded(orch, disk_full_while_it_runs) -> None:
    """Only a failure may be the disk's; the worker then stops at its next claim."""
    job = orch.submit("command", {"argv": DONE}, max_attempts=3)
    worker = make_worker(orch)
    disk_full_while_it_runs()
    assert worker.run_once().outcome == "succeeded"
    assert orch.status(job).state == "succeeded"
