"""Python handlers used by the worker tests (importable in worker subprocesses: --import worker_handlers)."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from orchestrator import handler
from orchestrator.handlers import JobContext
from orchestrator.run_folder import write_json_atomic


@handler("t.echo")
def echo(ctx: JobContext) -> dict:
    return {"status": "done", "summary": f"echo {ctx.input}", "output": ctx.input}


@handler("t.payload")
def payload(ctx: JobContext) -> dict:
    """Returns the payload given as the input."""
    return ctx.input


@handler("t.ask")
def ask(ctx: JobContext) -> dict:
    if ctx.answers:
        return {"status": "done", "summary": f"answered {ctx.answers[-1]}"}
    return {"status": "needs_human", "summary": "need a choice", "question": "blue or green?"}


@handler("t.flaky")
def flaky(ctx: JobContext) -> dict:
    if ctx.attempt < int(ctx.input.get("succeed_on", 2)):
        return {"status": "failed", "summary": f"attempt {ctx.attempt} failed", "retryable": True}
    return {"status": "done", "summary": f"ok on attempt {ctx.attempt}"}


@handler("t.plant_link")
def plant_link(ctx: JobContext) -> dict:
    """A hostile run: its first attempt puts a symbolic link to ``to`` in the place of the file ``at`` of its folder
    (a copied input) and fails, retryable; a later one returns what that file holds."""
    path = Path(ctx.artifacts_dir, ctx.input["at"])
    if ctx.attempt == 1:
        path.unlink()
        path.symlink_to(ctx.input["to"])
        return {"status": "failed", "summary": "planted a link", "retryable": True}
    return {"status": "done", "summary": "read", "output": path.read_text()}


@handler("t.wait")
def wait_for_release(ctx: JobContext) -> dict:
    """Marks itself started, writes optional artifacts, then waits until the release file exists."""
    # written whole, then renamed: whoever sees it can read it
    write_json_atomic(Path(ctx.input["started"]), {"pid": os.getpid(), "run_id": ctx.run_id})
    for name in ctx.input.get("artifacts", []):
        Path(ctx.artifacts_dir, name).write_text("partial")
    deadline = time.monotonic() + float(ctx.input.get("max_wait", 20))
    while not os.path.exists(ctx.input["release"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"status": "done", "summary": f"released in {ctx.run_id}"}


def _alive(pid: int) -> bool:
    """A live process (a zombie nobody reaped yet counts as dead), as ``helpers.alive``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@handler("t.overlap")
def overlap(ctx: JobContext) -> dict:
    """Its first attempt starts ``sleep 313`` in a session of its own (the run's ``ORCH_RUN_ID`` in its environment)
    and forks a copy of itself into another (no ``exec``: ``/proc`` shows it the worker's environment), writes its
    pid and theirs to ``folder/first``, then sleeps ``sleep`` seconds; a later attempt names those still alive."""
    import subprocess

    first = Path(ctx.input["folder"], "first")
    if ctx.attempt == 1:
        child = subprocess.Popen(["sleep", "313"], start_new_session=True)
        while not Path(f"/proc/{child.pid}/comm").read_text().startswith("sleep"):
            time.sleep(0.001)
        copy = os.fork()
        if copy == 0:
            os.setsid()
            time.sleep(313)
            os._exit(0)
        write_json_atomic(first, {"pid": os.getpid(), "left": [child.pid, copy]})
        time.sleep(float(ctx.input.get("sleep", 20)))
        return {"status": "done", "summary": "the first attempt ran to its end"}
    ran = json.loads(first.read_text())
    return {"status": "done", "summary": f"attempt {ctx.attempt}",
            "output": {"alive": [pid for pid in [ran["pid"], *ran["left"]] if _alive(pid)]}}


@handler("t.env")
def env(ctx: JobContext) -> dict:
    return {"status": "done", "summary": "env", "output": sorted(os.environ)}


@handler("t.lease")
def lease(ctx: JobContext) -> dict:
    """Runs for a while, then reports the lease record its worker renewed meanwhile."""
    time.sleep(float(ctx.input["sleep"]))
    folder = Path(ctx.artifacts_dir).parents[1] / "leases"
    records = [json.loads(p.read_text()) for p in folder.iterdir() if p.name.startswith(ctx.job_id)]
    return {"status": "done", "summary": "lease", "output": records}


_RUNS_HERE = [0]  # module state of the process that runs handlers: counts the runs it served


@handler("t.pid")
def pid(ctx: JobContext) -> dict:
    """Which process ran this, and how many runs that process served so far."""
    _RUNS_HERE[0] += 1
    return {"status": "done", "summary": "pid", "output": {"pid": os.getpid(), "runs": _RUNS_HERE[0]}}


@handler("t.whoami")
def whoami(ctx: JobContext) -> dict:
    """Which job this is, and which process ran it (and that one's parent: the worker), after ``sleep`` seconds; each
    run adds its run id to the file ``log`` names, if any."""
    given = ctx.input or {}
    time.sleep(float(given.get("sleep", 0)))
    if "log" in given:
        with open(given["log"], "a") as log:
            log.write(f"{ctx.run_id}\n")
    return {"status": "done", "summary": "whoami", "output": {"job": ctx.job_id, "pid": os.getpid(),
                                                              "worker": os.getppid()}}


@handler("t.die")
def die(ctx: JobContext) -> dict:
    """Ends the process that runs it, with no payload (a crash)."""
    os._exit(int(ctx.input))


@handler("t.escape_and_die")
def escape_and_die(ctx: JobContext) -> dict:
    """Starts `sleep 300` in a session of its own with an empty environment, writes its pid to the file named by
    the input once it runs, and crashes (no payload)."""
    import subprocess

    proc = subprocess.Popen(["setsid", "env", "-i", "sleep", "300"])
    while not Path(f"/proc/{proc.pid}/comm").read_text().startswith("sleep"):
        time.sleep(0.001)
    Path(ctx.input).write_text(str(proc.pid))
    os._exit(3)


@handler("t.sysexit")
def sysexit(ctx: JobContext) -> dict:
    raise SystemExit(4)


@handler("t.print")
def print_then(ctx: JobContext) -> dict:
    """Prints ``text`` (stdout) and ``err`` (stderr), then returns ``payload``."""
    print(ctx.input.get("text", ""))
    print(ctx.input.get("err", ""), file=sys.stderr)
    return ctx.input["payload"]


@handler("t.log")
def log_then(ctx: JobContext) -> dict:
    """Logs ``text`` (a warning) through the logger named ``logger``, then returns ``payload`` (default: done)."""
    import logging

    logging.getLogger(ctx.input["logger"]).warning(ctx.input["text"])
    return ctx.input.get("payload", {"status": "done", "summary": "logged"})


@handler("t.print_late")
def print_late(ctx: JobContext) -> dict:
    """Prints ``text``, and leaves a thread behind that prints ``late`` once its worker emptied the output file."""
    print(ctx.input["text"])

    def late() -> None:
        deadline = time.monotonic() + 5
        while os.fstat(1).st_size and time.monotonic() < deadline:
            time.sleep(0.005)
        print(ctx.input["late"], flush=True)

    threading.Thread(target=late, daemon=True).start()
    return ctx.input["payload"]


@handler("t.stop_worker")
def stop_worker(ctx: JobContext) -> dict:
    """Sends its worker (the parent of the process that runs it) ``signal`` (a number; SIGTERM by default), then
    sleeps for ``sleep`` seconds: a job whose run stops every worker that picks it up."""
    import signal

    os.kill(os.getppid(), int(ctx.input.get("signal", signal.SIGTERM)))
    time.sleep(float(ctx.input.get("sleep", 30)))
    return {"status": "done", "summary": "outlived its worker's stop"}


@handler("t.sleep")
def sleep(ctx: JobContext) -> dict:
    time.sleep(float(ctx.input))
    return {"status": "done", "summary": "slept"}


@handler("t.artifact_by_key")
def artifact_by_key(ctx: JobContext) -> dict:
    """Writes an artifact through the context's string path (not the attribute)."""
    Path(ctx["artifacts_dir"], "note.txt").write_text("hi")
    return {"status": "done", "summary": "wrote", "artifacts": ["note.txt"]}


@handler("t.closefds")
def close_fds(ctx: JobContext) -> dict:
    """Closes every descriptor it did not open (the pipes to its worker among them), then keeps running."""
    os.closerange(3, 4096)
    time.sleep(float(ctx.input))
    return {"status": "done", "summary": "never seen"}


@handler("t.stdio")
def take_stdio(ctx: JobContext) -> dict:
    """Leaves its process's standard streams changed: ``close`` closes descriptors 0-2; ``file`` closes 1 and opens
    ``path`` (which gets descriptor 1) and points ``sys.stdout`` elsewhere; ``dup`` makes 1 and 2 copies of ``path``;
    ``closed`` closes ``sys.stdout``; ``with`` points it at ``path`` opened in a ``with`` (closed after it);
    ``partial`` writes an unfinished line to ``sys.stdout`` and closes descriptor 1."""
    how = ctx.input["how"]
    if how == "close":
        for fd in (0, 1, 2):
            os.close(fd)
    elif how == "file":
        os.close(1)
        fd = os.open(ctx.input["path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        assert fd == 1, fd
        os.write(fd, b"the handler's own line\n")
        import io
        sys.stdout = io.StringIO()
    elif how == "dup":
        fd = os.open(ctx.input["path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    elif how == "closed":
        sys.stdout.close()
    elif how == "with":
        with open(ctx.input["path"], "w", encoding="utf-8") as fh:
            sys.stdout = fh
            print("the handler's own line")
    elif how == "partial":
        sys.stdout.write("an unfinished line")
        os.close(1)
    return {"status": "done", "summary": f"stdio: {how}"}


SPEW = ("import sys, time\n"
        "lines, pause = int(sys.argv[1]), float(sys.argv[2])\n"
        "for i in range(lines):\n"
        "    sys.stdout.write(f'{i:09d} ' + 'x' * 90 + '\\n')\n"
        "    if i % 2000 == 1999:\n"
        "        sys.stdout.flush(); time.sleep(pause)\n"
        "print(f'spew done {lines}', flush=True)\n")


@handler("t.spew")
def spew(ctx: JobContext) -> dict:
    """Prints ``lines`` lines of 100 bytes, quickly (a pause of ``pause`` s every 2,000), then fails (its output's
    tail is recorded); the same loop as the command ``python -c SPEW lines pause``."""
    sys.argv = ["spew", str(ctx.input["lines"]), str(ctx.input.get("pause", 0))]
    exec(SPEW, {})  # noqa: S102 - the test's own code
    return {"status": "failed", "summary": "spewed", "retryable": False}
