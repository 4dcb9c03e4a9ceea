"""What each step of a W3 round (and W2's submit) costs in CPU, in one process: instructions, not wall time.

    python -m bench.step_cost --jobs 20              # instructions per job of each step (needs valgrind)
    python -m bench.step_cost --jobs 60 --wall       # wall time per job of each step (noisy on a shared host)

Per job, as in W3: submit (W2's submit), the worker's first run (W2's: the claim of a submitted job, its handler's
round trip and its outcome; here the job asks), ``status`` (the reader sees it waiting), ``resume``, ``status``, the
worker's second run, ``status`` (the final read). Two ``Orchestrator`` objects
with a keyring each, as the benchmark's processes have: the submitter, reader and resumer, and the worker. ``resume``
is also run once more per job up to its ready entry (``prewake``: the moment the worker is woken), then stopped.

Each step runs inside a C function of its own (``math.prod``, ``operator.countOf``, ...), so callgrind's inclusive
cost of that function is the step's; the figures are the difference between a run of ``--jobs`` and one of 5 jobs,
divided by the difference (imports, the handler process's start and warm-up cancel out). ``crypto_sign_open`` is
libsodium's verification (~0.67 M instructions each), ``crypto_sign_ed25519_detached`` its signature. Bytecode is
compiled first and ``PYTHONHASHSEED=0``, so two runs of one code agree within ~0.1%.
"""
from __future__ import annotations

import argparse
import array
import functools
import json
import math
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# step -> (how its generator is consumed, the C function callgrind names it by)
STEPS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "submit": (math.prod, "math_prod"),
    "worker's first run": (lambda g: operator.contains(g, 1), "_operator_contains"),
    "waiting status": (lambda g: operator.countOf(g, 1), "_operator_countOf"),
    "resume up to its ready entry": (lambda g: functools.reduce(lambda a, b: a, g), "functools_reduce"),
    "resume": (math.fsum, "math_fsum"),
    "status after the resume": (lambda g: operator.indexOf(g, 0), "_operator_indexOf"),
    "worker's second run": (lambda g: array.array("d", g), "array_new"),
    "final status": (bytearray, "bytearray___init__"),
}
LIBSODIUM = {"verifications (crypto_sign_open)": "crypto_sign_open",
             "signatures (crypto_sign_ed25519_detached)": "crypto_sign_ed25519_detached"}
BASELINE_JOBS = 5


class _Stop(Exception):
    """Ends a resume at its ready entry."""


def _in_step(name: str, fn: Callable[[], Any]) -> None:
    def gen() -> Any:
        fn()
        yield 0

    STEPS[name][0](gen())


def run(jobs: int) -> dict[str, float]:
    """Run ``jobs`` rounds (after one warm-up) with every step in its C function; wall ms per job of each step."""
    from orchestrator import latency as lat
    from orchestrator.api import Orchestrator
    from orchestrator.key_files import load_keyring
    from orchestrator.signing import new_seed

    work = Path(tempfile.mkdtemp(prefix="step-cost-"))
    env = {"ORCH_SIGNING_KEY": new_seed(), "ORCH_KEYRING_DIR": str(work / "keys")}
    spent = dict.fromkeys(STEPS, 0.0)
    try:
        caller, host = (Orchestrator(base_path=work, project_id="bench", store_url="file",  # whatever ORCH_STORE_URL says
                                     keyring=load_keyring(env, announce=False)) for _ in range(2))
        with host.worker() as worker:
            for i in range(jobs + 1):
                job = ""

                def submit() -> None:
                    nonlocal job
                    job = caller.submit(lat.ASK_KIND, {"i": i})

                def prewake() -> None:
                    real, caller.queue.put_ready = caller.queue.put_ready, _raise_stop
                    try:
                        caller.resume(job, "yes")
                    except _Stop:
                        pass
                    finally:
                        caller.queue.put_ready = real

                order: list[tuple[str, Callable[[], Any]]] = [
                    ("submit", submit), ("worker's first run", worker.run_once),
                    ("waiting status", lambda: caller.status(job)),
                    ("resume up to its ready entry", prewake), ("resume", lambda: caller.resume(job, "yes")),
                    ("status after the resume", lambda: caller.status(job)), ("worker's second run", worker.run_once),
                    ("final status", lambda: caller.status(job))]
                for name, fn in order:  # job 0 warms up: imports, the handler process
                    started = time.perf_counter()
                    if i:  # every step is timed, in its own C function (``STEPS``)
                        _in_step(name, fn)
                        spent[name] += time.perf_counter() - started
                    else:
                        fn()
                state = caller.status(job).state
                if state != "succeeded":
                    raise RuntimeError(f"job {job} ended {state}, not succeeded")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {name: s / jobs * 1e3 for name, s in spent.items()}


def _raise_stop(entry: Any) -> None:
    raise _Stop


def _inclusive(jobs: int) -> dict[str, int]:
    """Callgrind's inclusive instructions of each step's function (and libsodium's) over a run of ``jobs``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                        "bench.step_cost", "--jobs", str(jobs), "--child"], check=True, env=env,
                       cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)], check=True,
                              capture_output=True, text=True).stdout
    found: dict[str, int] = {}
    for function in [c for _, c in STEPS.values()] + list(LIBSODIUM.values()):
        m = re.search(rf"^\s*([\d,]+) .*:{re.escape(function)} \[", text, re.M)
        found[function] = int(m.group(1).replace(",", "")) if m else 0
    return found


def instructions(jobs: int) -> dict[str, float]:
    """Instructions per job of each step: (a run of ``jobs`` - a run of ``BASELINE_JOBS``) / the difference."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(__file__).resolve().parents[1] / "orchestrator")],
                   check=True)
    small, large = _inclusive(BASELINE_JOBS), _inclusive(jobs)
    per_job = {function: (large[function] - small[function]) / (jobs - BASELINE_JOBS) for function in large}
    names = {c: name for name, (_, c) in STEPS.items()} | {c: name for name, c in LIBSODIUM.items()}
    return {names[function]: value for function, value in per_job.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.step_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help=f"rounds measured (more than {BASELINE_JOBS})")
    parser.add_argument("--wall", action="store_true", help="wall time per step instead of instructions")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args(argv)
    if args.child or args.wall:
        result = run(args.jobs)
        unit = "ms per job"
    else:
        if args.jobs <= BASELINE_JOBS or shutil.which("valgrind") is None:
            parser.error(f"instruction counts need valgrind and more than {BASELINE_JOBS} jobs (or use --wall)")
        result = instructions(args.jobs)
        unit = "instructions per job"
    if not args.child:
        print(json.dumps({"unit": unit, "steps": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
