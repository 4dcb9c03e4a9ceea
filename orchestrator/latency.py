"""Measuring how long a result takes to become durable and visible: the harness behind the benchmarks.

Used by ``scripts/bench_terminal_latency.py`` (the release gate) and by the ``bench`` suite
(W1-W4). Three processes take part, as in production:

* a real worker (``Worker.run``) in its own process, which reports, for every run it records,
  the moment its outcome append returned (after ``fdatasync``; stamped at the named point
  ``append.after_event``) on a pipe;
* the handler, run by that worker's handler process as always, which stamps the moment it returns its
  terminal payload (``time.monotonic_ns``: CLOCK_MONOTONIC is one clock for every process);
* this process, the *separate reader*: it waits on inotify for the job's events file to be
  closed after a write and re-reads the job from disk each time (read, verify the chain, the
  line the head record names and every signature it does not vouch for, replay), exactly what ``status``
  does. Nothing is cached between reads.

Terminal latency of one job = ``max(durable, visible) - returned``: the result counts only once
it is both fsynced by the writer and seen by the reader.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

TERMINAL_STATES = frozenset({"succeeded", "failed", "awaiting_audit", "waiting_human", "cancelled"})
ECHO_KIND = "orchestrator.latency:echo_handler"
ASK_KIND = "orchestrator.latency:ask_handler"
NOOP_KIND = "orchestrator.latency:noop_handler"
COUNTED_ASK_KIND = "orchestrator.latency:counted_ask_handler"
RUNS_FILE = "bench-runs-with-answer"
DEFINITION = ("from the handler returning its terminal payload (stamped in the handler's process) to the "
              "terminal state being both durable (the worker's outcome append returned after fdatasync) and "
              "visible to a separate reader process (a fresh read of the events file, verified as status does: "
              "the chain, the line the head record names and each signature it does not vouch for; the state replayed)")


# a small object of a page of records (``records``; ``bench.large_jobs``'s inputs and structured outputs): the costliest
# shape to encode, parse and check per byte
RECORD = {"id": 12345, "name": "some item name", "tags": ["a", "b"], "ok": True}
_RECORD_BYTES = len(json.dumps(RECORD, separators=(",", ":"))) + 1  # with the comma after it


def records(size: int) -> list[dict[str, Any]]:
    """About ``size`` bytes of ``RECORD``s as JSON (at least one), numbered."""
    return [dict(RECORD, id=i) for i in range(max(1, size // _RECORD_BYTES))]


# -- handlers (run in the worker's handler process, named as module:function kinds) ---------------
def echo_handler(ctx: Any) -> dict[str, Any]:
    """Returns at once; ``returned_ns`` is the last thing computed before the payload leaves the handler. Input
    ``pad``: a text of that many bytes in the output; ``records``: that many bytes of small objects."""
    given = ctx.input if isinstance(ctx.input, dict) else {}
    output: dict[str, Any] = {"pad": "x" * given.get("pad", 0)}
    if given.get("records"):
        output["items"] = records(given["records"])
    output["returned_ns"] = time.monotonic_ns()
    return {"status": "done", "summary": "bench", "output": output}


def ask_handler(ctx: Any) -> dict[str, Any]:
    """Human in the loop: asks once, finishes with the answer."""
    if not ctx.answers:
        return {"status": "needs_human", "summary": "bench asks", "question": "go?",
                "output": {"returned_ns": time.monotonic_ns()}}
    return {"status": "done", "summary": f"answered {ctx.answers[-1]}", "output": {"returned_ns": time.monotonic_ns()}}


def counted_ask_handler(ctx: Any) -> dict[str, Any]:
    """``ask_handler`` that also counts its own runs with the answer: one line each in ``RUNS_FILE`` of the job's
    artifact folder, so a run twice is seen however it came about (a second claim, or one claim run twice)."""
    if ctx.answers:
        fd = os.open(ctx.artifacts_dir / RUNS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, b"x\n")
        finally:
            os.close(fd)
    return ask_handler(ctx)


def runs_with_answer(orch: Any, job_id: str) -> int:
    """How many times ``counted_ask_handler`` ran ``job_id`` with its answer (its own count)."""
    from orchestrator.worker_folders import ARTIFACTS_DIR

    try:
        return (orch.settings.state_dir / ARTIFACTS_DIR / job_id / RUNS_FILE).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def noop_handler(ctx: Any) -> dict[str, Any]:
    return {"status": "done", "summary": "noop"}


# -- the worker process --------------------------------------------------------------------------
def peak_rss_kb() -> int:
    """This process's peak resident set: ``VmHWM`` (reset by exec), not ``ru_maxrss``, which Linux carries
    over from the parent across fork + exec and so reports the launcher's size for a small child."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss


def handler_memory_kb(pid: int | None) -> dict[str, int]:
    """The handler process's peak resident set (``VmHWM``: mostly pages it shares with the worker it was forked
    from) and its own pages now (``Private_Clean`` + ``Private_Dirty``: what it adds to the worker's); empty where
    /proc cannot tell."""
    out: dict[str, int] = {}
    if pid is None:
        return out
    try:
        with open(f"/proc/{pid}/status") as fh:
            out.update(("hwm_kb", int(ln.split()[1])) for ln in fh if ln.startswith("VmHWM:"))
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            private = [int(ln.split()[1]) for ln in fh if ln.startswith(("Private_Clean:", "Private_Dirty:"))]
        if private:
            out["private_kb"] = sum(private)
    except (OSError, ValueError):
        pass
    return out


def _not_the_stop_notice(record: logging.LogRecord) -> bool:
    """False for the worker's notice of a SIGTERM: the benchmark stops its worker so at the end of every workload
    (``WorkerProcess.stop``), and a line per stop in the benchmark's progress is noise, not news. Every other record of
    the worker, a notice of another signal included, is shown as the ``worker`` command would."""
    return getattr(record, "signal", None) != signal.SIGTERM


def _worker_main() -> None:
    """Entry of the worker process: ``Worker.run`` reporting each recorded outcome as a JSON line."""
    from orchestrator import faults
    from orchestrator.api import Orchestrator
    from orchestrator.config import DEFAULT_LEASE_SECONDS
    from orchestrator.runner import die_with_parent
    from orchestrator.worker import Worker, WorkerSettings
    from orchestrator.worker_stop import log as stop_log

    cfg = json.loads(os.environ["ORCH_BENCH_WORKER"])
    # stops (SIGTERM: gracefully) when the benchmark that started it dies, SIGKILL included, as the `worker` command
    # would be left running otherwise; a benchmark already gone before the signal was asked for is seen here
    die_with_parent(signal.SIGTERM)
    if os.getppid() != cfg.get("parent", os.getppid()):
        return
    stop_log.addFilter(_not_the_stop_notice)  # the logger of the notice itself
    orch = Orchestrator(base_path=cfg["base_path"], project_id=cfg["project_id"])
    worker = Worker(orch, WorkerSettings(lease_seconds=cfg.get("lease_seconds", DEFAULT_LEASE_SECONDS),
                                         worker_id=cfg.get("worker_id") or "bench-worker",
                                         kinds=tuple(cfg.get("kinds") or ())))
    out = sys.stdout
    appended: list[int] = []

    def stamp() -> None:  # "append.after_event": the store append returned (fdatasync done, head record written)
        appended.append(time.monotonic_ns())
        faults.arm("append.after_event", stamp)  # a named point fires once per arming

    faults.arm("append.after_event", stamp)

    def report(result: Any) -> None:
        # the outcome is the worker's last append before it reports the run
        durable = appended[-1] if appended else time.monotonic_ns()
        out.write(json.dumps({"job_id": result.job_id, "outcome": result.outcome, "state": result.state,
                              "durable_ns": durable}) + "\n")
        out.flush()

    handler: dict[str, int] = {}
    reported = [0]

    def timed_report(result: Any) -> None:
        reported[0] += 1
        if reported[0] == cfg.get("max_jobs"):  # the last job: its handler process is still there to look at
            handler.update(handler_memory_kb(worker.handler_pid))
        report(result)

    # "ready" once its signals are handled: a benchmark that stops it at once (SIGTERM) then stops it gracefully (it
    # was killed by the signal, exit -15, now and then on a loaded machine)
    with worker.handle_signals():
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        gate = cfg.get("gate")  # workers started together: each waits, ready, until the benchmark opens the gate
        while gate and not os.path.exists(gate) and not worker.stopping:
            time.sleep(0.001)
        started_ns = time.monotonic_ns()
        started = time.perf_counter()
        done = worker.run(max_jobs=cfg.get("max_jobs"), idle_exit=cfg.get("idle_exit", False), on_result=timed_report)
    elapsed = time.perf_counter() - started
    out.write(json.dumps({"summary": True, "done": done, "elapsed_s": elapsed, "started_ns": started_ns,
                          "ended_ns": time.monotonic_ns(), "races": worker.claimer.races, "maxrss_kb": peak_rss_kb(),
                          "handler_kb": handler}) + "\n")
    out.flush()


@dataclass
class WorkerProcess:
    """A real worker in another process; ``durable[job_id]`` lists the moments its outcomes were fsynced."""

    base_path: str
    project_id: str
    env: dict[str, str]
    max_jobs: int | None = None
    idle_exit: bool = False
    kinds: tuple[str, ...] | None = None  # the only kinds it claims (None: any it has a handler for)
    worker_id: str | None = None  # its ``WorkerSettings.worker_id`` (default "bench-worker"): several need their own
    gate: str | None = None  # a path: once ready, it waits for that file before it runs (workers started together)
    durable: dict[str, list[int]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> "WorkerProcess":
        cfg = {"base_path": self.base_path, "project_id": self.project_id, "max_jobs": self.max_jobs,
               "idle_exit": self.idle_exit, "kinds": self.kinds, "parent": os.getpid(), "worker_id": self.worker_id,
               "gate": self.gate}
        env = dict(self.env, ORCH_BENCH_WORKER=json.dumps(cfg))
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", "from orchestrator.latency import _worker_main; _worker_main()"],
                                     env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark worker did not start (exit {self.proc.wait()})")
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout:  # closed at its end here, the one reader of it (not left to the collector)
            for line in self.proc.stdout:
                msg = json.loads(line)
                with self._cond:
                    if msg.get("summary"):
                        self.summary = msg
                    else:
                        self.durable.setdefault(msg["job_id"], []).append(msg["durable_ns"])
                    self._cond.notify_all()

    def wait_durable(self, job_id: str, count: int, timeout: float = 30.0) -> int:
        """The moment the ``count``-th outcome of ``job_id`` was durable (monotonic ns)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.durable.get(job_id, ())) >= count, timeout)
            if not ok:
                raise TimeoutError(f"the worker recorded no outcome #{count} for job {job_id} within {timeout}s")
            return self.durable[job_id][count - 1]

    def stop(self, timeout: float = 30.0, *, at_once: bool = False) -> dict[str, Any]:
        """Its summary once it has ended: an ``idle_exit`` worker is waited for (it ends once the queue is empty)
        unless ``at_once`` (a run stopped or failed), any other is told to stop (SIGTERM); killed after ``timeout``."""
        if self.proc is None:
            return self.summary
        if self.proc.poll() is None and (at_once or not self.idle_exit):
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5
        with self._cond:
            self._cond.wait_for(lambda: bool(self.summary) or time.monotonic() > deadline, 5)
        return self.summary


# -- the separate reader --------------------------------------------------------------------------
class Reader:
    """Sees job states as any other process would: a fresh read and full verification per look."""

    POLL = 0.0005  # without inotify: appends do not change the folder's mtime, so poll the job itself

    def __init__(self, orch: Any) -> None:
        from orchestrator.store.files import make_folder
        from orchestrator.wakeup import InotifyWatcher, make_watcher

        self.orch = orch
        jobs_dir = orch.store.jobs_dir
        make_folder(jobs_dir, orch.store.root)
        self.watcher = make_watcher(jobs_dir)  # IN_CLOSE_WRITE: an appender closes only after its fsync
        self.inotify = isinstance(self.watcher, InotifyWatcher)

    def wait_for(self, job_id: str, states: Iterable[str], timeout: float = 30.0,
                 accept: Callable[[Any], bool] | None = None) -> tuple[Any, int]:
        """Block until the job is in one of ``states``; returns its status and when it was seen."""
        from orchestrator.errors import JobNotFoundError

        wanted = frozenset(states)
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.orch.status(job_id)
            except JobNotFoundError:
                st = None
            if st is not None and st.state in wanted and (accept is None or accept(st)):
                return st, time.monotonic_ns()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} did not reach {sorted(wanted)} within {timeout}s "
                                   f"(last seen: {st.state if st else None})")
            if self.inotify:
                self.watcher.wait(min(left, 0.25))
            else:
                time.sleep(self.POLL)

    def close(self) -> None:
        self.watcher.close()


# -- statistics -------------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the value at or above which ``100 - p`` % of samples lie)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def summarize(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else float("nan"),
            "mean": sum(values) / len(values) if values else float("nan")}


def machine() -> dict[str, Any]:
    """What the numbers were measured on (no host names, no user names)."""
    import platform

    info: dict[str, Any] = {"python": f"{platform.python_implementation()} {platform.python_version()}",
                            "os": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
                            "cpus": os.cpu_count()}
    try:
        info["loadavg_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    return info


def code_revision() -> str | None:
    """The commit of the code measured (``git rev-parse --short HEAD`` of the checkout holding this package),
    ``+changes`` when the package or the benchmark differ from it; None outside a git checkout (an installed copy)
    or without git. Printed with every result (the suite's JSON, the release gate's report), so that a figure names
    the code that made it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        changed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "orchestrator", "bench"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or changed.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def code_measured() -> str:
    """``code_revision`` with the installed version: what a report says it measured."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("jsonl-orchestrator")
    except PackageNotFoundError:
        installed = "not installed"
    return f"jsonl-orchestrator {installed}, commit {code_revision() or 'unknown (not a git checkout)'}"


def filesystem_of(path: Path) -> str:
    """The mount (device and type) holding ``path``, from /proc/mounts when there is one."""
    try:
        target = str(Path(path).resolve())
        best = ("", "?", "?")
        with open("/proc/mounts") as fh:
            for ln in fh:
                dev, mnt, fstype = ln.split()[:3]
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, dev, fstype)
        return f"{best[2]} on {best[1]} (mounted at {best[0]})"
    except OSError:
        return "unknown"
