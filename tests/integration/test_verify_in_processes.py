"""``verify`` of a large project checks its jobs in several forked processes: the same report as one process gives."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

import jobstates as js
from orchestrator import Orchestrator, audit, integrity, processes, projection
from orchestrator.errors import StorageError
from orchestrator.integrity import verify_project
from orchestrator.key_files import load_keyring
from orchestrator.signing import Keyring

from backends import BACKENDS, with_raw_access


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    """An orchestrator on each backend with raw write access to its storage: on PostgreSQL a forked process must
    open connections of its own."""
    with with_raw_access(request.param, base, keyring) as pair:
        yield pair


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Processes from the first job, two jobs a chunk; each chunk notes the process that read it."""
    monkeypatch.setattr(processes, "PARALLEL_FROM", 1)
    monkeypatch.setattr(processes, "CHUNK", 2)
    monkeypatch.setattr(processes, "may_fork", lambda: True)  # threads an earlier test left are not these tests'
    pids = tmp_path / "pids"
    pids.mkdir()
    for module, name in ((integrity, "_check_chunk"), (projection, "_summarized")):
        def noting(orch, chunk, _real=getattr(module, name), **kw):
            (pids / str(os.getpid())).touch()
            return _real(orch, chunk, **kw)

        monkeypatch.setattr(module, name, noting)
    return pids


def test_a_project_checked_in_processes_gives_the_report_of_one_process(backend, small_chunks: Path) -> None:
    orch, raw = backend
    jobs = [orch.submit("t.echo", i) for i in range(5)]
    asked = js.waiting_human(orch)
    orch.resume(asked, "yes")
    resumed = orch.load(asked).stream.lines[-1].raw
    audit.record(orch, job_id=asked, action="resume", actor="healer", note="yes", event_line=resumed)  # a warning
    tampered = jobs[3]
    raw.write_bytes(tampered, raw.read_bytes(tampered).replace(b'"input":3', b'"input":4', 1))
    alone = verify_project(orch, processes=1)
    checked_here = {p.name for p in small_chunks.iterdir()}
    assert checked_here == {str(os.getpid())}
    in_processes = verify_project(orch, processes=2)
    children = {p.name for p in small_chunks.iterdir()} - checked_here
    assert children and str(os.getpid()) not in children  # the chunks were checked elsewhere
    assert not alone.ok and {p.stream for p in alone.problems} == {tampered}
    assert [w.code for w in alone.warnings] == ["AUDIT_ENTRY_DUPLICATE"]
    assert in_processes.to_dict() == alone.to_dict()
    assert alone.streams == 7 and alone.events == orch.load(asked).head.seq + 5 + 2  # 6 jobs and the audit log


def test_progress_is_reported_per_thousand_jobs_as_from_one_process(monkeypatch, orch: Orchestrator) -> None:
    monkeypatch.setattr(processes, "PARALLEL_FROM", 1)
    monkeypatch.setattr(processes, "CHUNK", 3)
    monkeypatch.setattr(integrity, "_check_chunk", lambda o, chunk: integrity.VerifyReport(streams=len(chunk)))
    monkeypatch.setattr(orch.store, "job_ids", lambda: iter(f"job-{i:05d}" for i in range(2500)))
    seen: list[int] = []
    verify_project(orch, progress=seen.append, processes=1)
    assert seen == [1002, 2001]  # the first chunk to pass each thousand


def test_an_error_in_a_checking_process_reaches_the_caller_whole(backend, monkeypatch, small_chunks: Path) -> None:
    orch, _ = backend
    for i in range(4):
        orch.submit("t.echo", i)
    real = orch.load

    def failing(job_id: str, **kw):
        if os.getpid() != parent:
            raise StorageError("the disk went away", path="/somewhere")
        return real(job_id, **kw)

    parent = os.getpid()
    monkeypatch.setattr(orch, "load", failing)
    with pytest.raises(StorageError) as raised:
        verify_project(orch, processes=2)
    assert raised.value.message == "the disk went away" and raised.value.details == {"path": "/somewhere"}


def test_an_orchestrator_error_pickles_with_its_details() -> None:
    """What carries a checking process's error to its parent (an exception's pickle keeps its ``__dict__``)."""
    again = pickle.loads(pickle.dumps(StorageError("gone", path="/x", attempt=2)))
    assert type(again) is StorageError and again.message == "gone" and again.details == {"path": "/x", "attempt": 2}
    assert again.to_dict() == StorageError("gone", path="/x", attempt=2).to_dict()


def _columns(refreshed) -> tuple:
    cols = refreshed.columns
    return (list(cols.ids), bytes(cols.state), bytes(cols.ok), list(cols.runs),
            *[getattr(cols, name).tobytes() for name, _ in cols.NUMERIC])


def test_a_jobs_cache_made_in_processes_is_the_one_made_here_and_its_missing_entries_are_healed(
        backend, monkeypatch, small_chunks: Path) -> None:
    """``metrics`` and ``status --all --state`` on a project without the cache (or ``--rebuild``): the jobs are read
    by forked processes, the cache is built and the entries a crash left missing are written by this process."""
    orch, _ = backend
    for i in range(5):
        orch.submit("t.echo", i)
    js.awaiting_audit(orch)
    crashed = js.waiting_human(orch)
    view = orch.load(crashed)
    orch.append(view, crashed, [("job_resumed", {"answer": "yes", "question": "Deploy to prod?"})])  # no entry
    monkeypatch.setattr(audit, "HEAL_BATCH", 2)  # the chunks a refresh hands out
    monkeypatch.setattr(processes, "usable_cpus", lambda: 1)
    here = projection.refresh(orch, rebuild=True, heal=False)
    checked_here = {p.name for p in small_chunks.iterdir()}
    assert checked_here == {str(os.getpid())}
    monkeypatch.setattr(processes, "usable_cpus", lambda: 2)
    in_processes = projection.refresh(orch, rebuild=True)
    assert {p.name for p in small_chunks.iterdir()} - checked_here, "read by other processes"
    assert _columns(in_processes) == _columns(here) and in_processes.replayed == here.replayed == 7
    assert in_processes.healed == 1 and [w.code for w in verify_project(orch).warnings] == []
    assert projection.refresh(orch).replayed == 0  # the cache written is the one read back


def test_a_program_with_other_threads_reads_every_job_itself(orch: Orchestrator, monkeypatch, tmp_path: Path) -> None:
    """A fork copies only the calling thread: a lock another thread holds (logging's, a driver's) would never be
    released in the child. The Python API inside a threaded service does the work in its own process."""
    import threading

    monkeypatch.setattr(processes, "PARALLEL_FROM", 1)
    monkeypatch.setattr(processes, "CHUNK", 1)
    for i in range(3):
        orch.submit("t.echo", i)
    seen: set[int] = set()
    real = integrity._check_chunk  # noqa: SLF001
    monkeypatch.setattr(integrity, "_check_chunk", lambda o, chunk: seen.add(os.getpid()) or real(o, chunk))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert verify_project(orch, processes=2).streams == 3
    finally:
        stop.set()
        other.join()
    assert seen == {os.getpid()}


def test_ctrl_c_stops_the_checking_processes_with_one_message_not_one_per_process(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: each pool process raised ``KeyboardInterrupt`` and printed its own
    traceback ("Process ForkPoolWorker-1: ...") over the command's message. They leave it to the caller."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO

    started = tmp_path / "started"
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "from orchestrator import processes\n"
              "processes.PARALLEL_FROM = 1\n"
              f"def work(orch, chunk): open({str(started)!r} + str(chunk[0]), 'w').close(); time.sleep(60)\n"
              "list(processes.in_chunks(None, work, [[1], [2]], 2, processes=2))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"started{i}").exists() for i in (1, 2)) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == -signal.SIGINT and err.count("KeyboardInterrupt") == 1, err  # the caller's alone
    assert "ForkPoolWorker" not in err, err


def test_a_checking_process_killed_mid_chunk_is_an_error_not_a_wait_for_ever(monkeypatch) -> None:
    """The OOM killer, a signal: ``multiprocessing.Pool`` waited for ever for the lost chunk's result."""
    import signal
    import time

    from orchestrator.errors import OrchestratorError

    monkeypatch.setattr(processes, "PARALLEL_FROM", 1)
    monkeypatch.setattr(processes, "may_fork", lambda: True)
    parent = os.getpid()

    def work(orch, chunk):
        if chunk[0] == 2 and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return chunk[0]

    started = time.monotonic()
    with pytest.raises(OrchestratorError, match="ended abruptly"):
        list(processes.in_chunks(None, work, [[1], [2], [3]], 3, processes=2))
    assert time.monotonic() - started < 30
    assert list(processes.in_chunks(None, work, [[1], [3]], 2, processes=2)) == [1, 3]  # in order, and again


def test_a_stop_that_misses_the_wait_for_a_chunks_result_is_raised_within_a_slice_not_when_the_chunk_ends(
        monkeypatch) -> None:
    """A signal handled just before the wait for a child's result began, or by another thread of the caller (where a
    process-directed signal may land), is raised only when that wait returns: with one wait without end, when the
    chunk was done (a job whose record a paused process holds: never). A signal sent to another thread of the
    caller makes that race sure: the caller waits in slices, so the stop is raised within one."""
    import signal
    import threading
    import time

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop()

    monkeypatch.setattr(processes, "PARALLEL_FROM", 1)
    monkeypatch.setattr(processes, "may_fork", lambda: True)  # the thread below is the test's
    parent = os.getpid()

    def work(orch, chunk):
        if os.getpid() != parent:
            time.sleep(30)  # a chunk that takes long
        return chunk[0]

    def signals_itself() -> None:
        time.sleep(1)  # the children started, the caller waiting for the first result
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, stop)
    other = threading.Thread(target=signals_itself)
    try:
        other.start()
        started = time.monotonic()
        with pytest.raises(Stop):
            list(processes.in_chunks(None, work, [[1], [2]], 2, processes=2))
        took = time.monotonic() - started
    finally:
        other.join()
        signal.signal(signal.SIGUSR1, previous)
    assert took < 1 + 5 * processes.RESULT_WAIT_SLICE, took  # not the chunk's 30 s


def _metrics(env: dict[str, str], *args: str, **extra: str):
    from click.testing import CliRunner

    from orchestrator.cli import cli

    return CliRunner().invoke(cli, ["metrics", "--json", *args], env={**env, **extra})


@pytest.mark.parametrize("how", [("--processes", "1"), ("ORCH_METRICS_PROCESSES", "1"), ("--processes", "2")])
def test_metrics_replays_in_as_many_processes_as_it_is_told(cli_env: dict[str, str], monkeypatch, small_chunks: Path,
                                                             how: tuple[str, str]) -> None:
    """``metrics --processes N`` (``ORCH_METRICS_PROCESSES``), as ``verify``: one process on a shared machine, or as
    many as wanted; the figures are the same."""
    keyring = load_keyring(cli_env, announce=False)
    orch = Orchestrator(base_path=cli_env["BASE_PATH"], project_id="proj", keyring=keyring)
    for i in range(5):
        orch.submit("t.echo", i)
    monkeypatch.setattr(audit, "HEAL_BATCH", 2)  # the chunks a refresh hands out
    monkeypatch.setattr(processes, "usable_cpus", lambda: 2)  # the default would fork
    option, value = how
    result = (_metrics(cli_env, "--rebuild", option, value) if option.startswith("--")
              else _metrics(cli_env, "--rebuild", **{option: value}))
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["replayed"] == 5 and figures["counts"]["queued"] == 5
    readers = {p.name for p in small_chunks.iterdir()}
    assert (readers == {str(os.getpid())}) is (value == "1"), readers


@pytest.mark.parametrize("value", ["0", "257", "many"])
def test_metrics_refuses_a_count_of_processes_that_is_not_one_to_256(cli_env: dict[str, str], value: str) -> None:
    for result in (_metrics(cli_env, "--processes", value), _metrics(cli_env, ORCH_METRICS_PROCESSES=value)):
        assert result.exit_code == 2 and "processes" in result.output.lower(), result.output


def test_a_job_without_its_index_entry_is_warned_of_by_the_checking_processes_too(orch: Orchestrator,
                                                                                 small_chunks: Path) -> None:
    jobs = [orch.submit("t.echo", i) for i in range(5)]
    [entry] = [p for p in orch.queue.ready_dir.iterdir() if p.name.endswith(jobs[3])]
    entry.unlink()
    alone = verify_project(orch, processes=1)
    in_processes = verify_project(orch, processes=2)
    assert [(w.code, w.stream) for w in alone.warnings] == [("INDEX_ENTRY_MISSING", jobs[3])]
    assert in_processes.to_dict() == alone.to_dict()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.parametrize("default", ["spawn", "forkserver"])
def test_the_checking_processes_say_why_they_wait_for_a_record_a_paused_writer_holds_whatever_the_default_start_method(
        cli_env: dict[str, str], base: Path, tmp_path: Path, monkeypatch, default: str) -> None:
    """``verify --processes N`` waits for a record a paused writer holds, saying so (``LOCK_HELD``), in the process
    that meets it: a child. A child is a fork of the caller whatever the program's default start method (``spawn``,
    Python 3.14's ``forkserver``): the caller's orchestrator, its work and its thread's rule for such waits
    (``waiting_said``) reach a child only as the fork's copy (``processes.in_chunks``). A pool started the default
    way had children with none of them."""
    import subprocess

    from helpers import REPO, wait_until

    monkeypatch.setenv("ORCH_SIGNING_KEY", cli_env["ORCH_SIGNING_KEY"])
    orch = Orchestrator(base_path=base, project_id="proj")
    jobs = [orch.submit("t.echo", i) for i in range(6)]
    pids = tmp_path / "pids"
    pids.mkdir()
    script = (f"import multiprocessing, os, sys\nmultiprocessing.set_start_method({default!r}, force=True)\n"
              "from orchestrator import integrity, processes\n"
              "processes.PARALLEL_FROM, processes.CHUNK = 1, 2\n"
              "real = integrity._check_chunk\n"
              f"def noting(orch, chunk): open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close(); "
              "return real(orch, chunk)\n"
              "integrity._check_chunk = noting\n"
              "from orchestrator.cli import main\nmain(['verify', '--processes', '2'])\n")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, signal, sys\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "os.kill(os.getpid(), signal.SIGSTOP)\n",
                               str(orch.settings.state_dir / "heads" / jobs[4])])
    said = tmp_path / "stderr"
    try:
        wait_until(lambda: Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
                   what="the stand-in writer to stop with the record's lock held")
        with said.open("w") as err:
            verifying = subprocess.Popen([sys.executable, "-c", script], env=cli_env, cwd=str(REPO),
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            wait_until(lambda: "LOCK_HELD" in said.read_text() or verifying.poll() is not None, timeout=30,
                       what="the checking process to say why it waits")
            assert verifying.poll() is None and "LOCK_HELD" in said.read_text(), said.read_text()
        except BaseException:
            verifying.kill()
            verifying.communicate()
            raise
    finally:
        holder.kill()
        holder.wait()
    out, _ = verifying.communicate(timeout=30)
    assert verifying.returncode == 0 and out.startswith("OK: 6 stream(s)"), (out, said.read_text())
    assert f"heads/{jobs[4]}" in said.read_text() and "fuser -v" in said.read_text()
    assert {p.name for p in pids.iterdir()} - {str(verifying.pid)}, "checked by forked processes"
