"""The system calls of each step of a W2 and a W3 round, counted with strace: deterministic, unlike wall time.

    python -m bench.syscalls --jobs 10                 # calls per job of each step (needs strace)
    python -m bench.syscalls --jobs 3 --show resume    # also every call of that step, for the last job

Per job, one process per role as ``bench.step_cost`` does (two ``Orchestrator`` objects, one the worker's, whose
Python handler runs in its own handler process): W2 (``submit`` of an echo job, the worker's run, the final
``status``) and W3 (a job that asks: its submit and first run, untimed; then ``resume``, the ``status`` right after,
the worker's second run, the final ``status``). Steps run one after another, so no call depends on timing: a worker
woken early, a reader reading twice and the waits on inotify of the real W2/W3 (``bench.trace``) are not here. Each
step is framed by two ``stat`` calls of a path that does not exist, which name it in strace's output; the calls
between are counted, with those of the handler process. ``inodes`` is how many files and folders the step made
(inodes in the project's folder after the step that were not there before it; a hard link makes none), ``O_CREAT`` how many of its ``openat`` calls
may create a file. The first round warms up (imports, the handler process, folders, and every one of the 64 pending-lock files a
control action takes one of: a project that has seen a few hundred actions has them all) and is not counted.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cli_args import positive_int, results_file  # noqa: E402 - after the path it is found by

if TYPE_CHECKING:
    from orchestrator.output_file import OutputFile

MARK = "/__orch_syscalls__/"
STEPS = ["W2 submit", "W2 worker run", "W2 final status",
         "W3 resume", "W3 status after the resume", "W3 worker's second run", "W3 final status"]
# the calls shown one by one in the summary (the rest are summed in "other")
KINDS = ["openat", "O_CREAT", "close", "flock", "read", "pread64", "write", "pwrite64", "fdatasync", "fsync",
         "linkat", "unlink", "rename", "mkdir", "utimensat", "newfstatat", "getdents64", "pselect6"]
_CALL = re.compile(r"^(\d+) +(?:<\.\.\. )?(\w+)\(")


def _mark(name: str) -> None:
    try:
        os.stat(MARK + name)
    except OSError:
        pass


def _inodes(root: Path) -> set[int]:
    """The inodes of every file and folder under ``root``."""
    found = set()
    for folder, dirs, files in os.walk(root):
        found.update(os.lstat(os.path.join(folder, name)).st_ino for name in dirs + files)
    return found


def run(jobs: int, inode_log: Path) -> None:
    """The rounds, each step framed by marks; free inodes before and after each step appended to ``inode_log``."""
    from orchestrator import audit
    from orchestrator import latency as lat
    from orchestrator.api import Orchestrator
    from orchestrator.key_files import load_keyring
    from orchestrator.signing import new_seed

    work = Path(tempfile.mkdtemp(prefix="syscalls-"))
    env = {"ORCH_SIGNING_KEY": new_seed(), "ORCH_KEYRING_DIR": str(work / "keys")}
    inodes: list[dict[str, Any]] = []
    try:
        caller, host = (Orchestrator(base_path=work, project_id="bench", store_url="file",  # whatever ORCH_STORE_URL says
                                     keyring=load_keyring(env, announce=False)) for _ in range(2))
        for bucket in range(audit.LOCK_BUCKETS):
            with caller.store.exclusive(f"audit-{bucket:02d}"):
                pass
        with host.worker() as worker:
            for i in range(jobs + 1):
                state: dict[str, str] = {}

                def step(name: str, fn: Callable[[], Any]) -> None:
                    before = _inodes(work)
                    _mark(f"{i}/{name}/begin")
                    fn()
                    _mark(f"{i}/{name}/end")
                    inodes.append({"job": i, "step": name, "inodes": len(_inodes(work) - before)})

                step("W2 submit", lambda: state.update(w2=caller.submit(lat.ECHO_KIND, {"pad": 64, "i": i})))
                step("W2 worker run", worker.run_once)
                step("W2 final status", lambda: caller.status(state["w2"]))
                state["w3"] = caller.submit(lat.ASK_KIND, {"i": i})
                worker.run_once()
                caller.status(state["w3"])
                step("W3 resume", lambda: caller.resume(state["w3"], "yes"))
                step("W3 status after the resume", lambda: caller.status(state["w3"]))
                step("W3 worker's second run", worker.run_once)
                step("W3 final status", lambda: caller.status(state["w3"]))
                for job in (state["w2"], state["w3"]):
                    if caller.status(job).state != "succeeded":
                        raise RuntimeError(f"job {job} did not succeed")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    inode_log.write_text(json.dumps(inodes))


def parse(trace: str, jobs: int) -> tuple[dict[str, collections.Counter[str]], dict[tuple[int, str], list[str]]]:
    """Calls per job of each step (jobs 1..``jobs``), and every call line of each (job, step)."""
    totals: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in STEPS}
    lines: dict[tuple[int, str], list[str]] = {}
    current: tuple[int, str] | None = None
    for line in trace.splitlines():
        if MARK in line:
            if "resumed>" in line:
                continue
            job, name, edge = line.split(MARK, 1)[1].split('"', 1)[0].split("/")
            current = (int(job), name) if edge == "begin" else None
            continue
        m = _CALL.match(line)
        if current is None or m is None or "resumed>" in line or line.endswith("+++"):
            continue
        call = m.group(2)
        lines.setdefault(current, []).append(line)
        if current[0] == 0:
            continue
        counts = totals[current[1]]
        counts[call] += 1
        counts["total"] += 1
        if call == "openat" and "O_CREAT" in line:
            counts["O_CREAT"] += 1
    return {s: collections.Counter({k: v / jobs for k, v in c.items()}) for s, c in totals.items()}, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=positive_int, default=10, help="rounds counted (after one warm-up round)")
    parser.add_argument("--show", action="append", default=[], metavar="STEP",
                        help="also print every call of the steps whose name contains this (the last job's)")
    parser.add_argument("--json", dest="json_path",
                        help="also write the counts as JSON to this file (checked before the run, written whole)")
    parser.add_argument("--child", nargs=1, metavar="INODES", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run(args.jobs, Path(args.child[0]))
        return 0
    if shutil.which("strace") is None:
        parser.error("strace is needed (apt-get install strace)")
    with results_file(parser, args.json_path, "the counts") as json_file:
        return _count(args, json_file)


def _count(args: argparse.Namespace, json_file: OutputFile | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out, inode_log = Path(tmp) / "strace.out", Path(tmp) / "inodes.json"
        subprocess.run(["strace", "-f", "-qq", "-s", "200", "-o", str(out), sys.executable, "-m", "bench.syscalls",
                        "--jobs", str(args.jobs), "--child", str(inode_log)], check=True,
                       cwd=Path(__file__).resolve().parents[1])
        counts, lines = parse(out.read_text(), args.jobs)
        inodes = json.loads(inode_log.read_text())
    for row in inodes:
        if row["job"]:
            counts[row["step"]]["inodes"] += row["inodes"] / args.jobs
    shown = ["total", "inodes", *KINDS]
    width = max(map(len, STEPS))
    print(f"system calls per job (strace -f, {args.jobs} jobs after one warm-up)")
    print(f"{'step':<{width}} " + " ".join(f"{k[:9]:>9}" for k in shown) + "     other")
    for step in STEPS:
        c = counts[step]
        other = c["total"] - sum(c[k] for k in KINDS if k != "O_CREAT")
        print(f"{step:<{width}} " + " ".join(f"{c[k]:>9.4g}" for k in shown) + f" {other:>9.4g}")
    for wanted in args.show:
        for (job, step), calls in sorted(lines.items()):
            if job == args.jobs and wanted in step:
                print(f"\n-- {step} (job {job}) --")
                print("\n".join(re.sub(r'"/tmp/syscalls-[^/]+/bench/\.orchestrator/', '"', c)[:220] for c in calls))
    if json_file is not None:
        json_file.write(json.dumps({s: dict(c) for s, c in counts.items()}, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
