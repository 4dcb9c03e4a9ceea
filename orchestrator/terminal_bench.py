"""The terminal-latency benchmark of the release gate (``scripts/bench_terminal_latency.py``).

One sample = one job of a Python handler that returns at once, run by a real worker process
while this process reads the job as an operator's ``status`` would (see ``orchestrator.latency``
for the exact definition). Jobs are submitted one at a time to an idle worker, so a sample never
waits behind another job. The benchmark writes into a scratch project (and a scratch signing
key) that it deletes afterwards, so it can run next to real projects on the disk being judged. A project
that is kept (``--project-id``, ``--keep``) is signed with the operator's own keys instead: its events must
verify after the run, and a scratch key deleted with the run would leave every one of them UNKNOWN_KEY.

SIGTERM and SIGINT (Ctrl-C) end a run cleanly (``command_stop.COMMAND_STOP``): the worker process is stopped, a scratch
run's project, keys and the ``--base-path`` folders it made are removed, no output file is written, and the
command exits 128 + the signal's number (143, 130). SIGKILL cannot be caught: it leaves the folders behind;
the worker process, told by the kernel that its parent died, stops (``latency._worker_main``; docs/runbook.md).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import latency as lat
from orchestrator.command_stop import COMMAND_STOP
# Interrupted: what COMMAND_STOP raises
from orchestrator.errors import Interrupted, InvalidInputError, OrchestratorError

GATE_P95_MS = 80.0
GATE_P99_MS = 150.0
TARGET_P99_MS = 2.0
MAX_PAD = 512  # payload padding drawn from the seed: results of a few hundred bytes, like real summaries
# the settings a kept project is signed and verified with; every other ORCH_* setting stays out of the benchmark
KEY_VARIABLES = ("ORCH_KEYRING_DIR", "ORCH_SIGNING_KEY", "ORCH_SIGNING_KEY_FILE", "ORCH_TRUSTED_KEYS_DIR")


def scratch_keys(base_path: Path, project_id: str) -> Path:
    """The keyring folder of a scratch project's scratch key, removed with the project."""
    return base_path / f".{project_id}-keys"


@dataclass(frozen=True)
class Settings:
    samples: int
    seed: int
    base_path: Path
    project_id: str
    warmup: int = 10
    kept: bool = False  # the project outlives the run: sign with the operator's keys, not a scratch key


def run(settings: Settings, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; one dict per sample (the raw JSONL lines)."""
    from orchestrator.api import Orchestrator
    from orchestrator.key_files import load_keyring
    from orchestrator.signing import new_seed

    rng = random.Random(settings.seed)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ORCH_") or (settings.kept and k in KEY_VARIABLES)}
    if not settings.kept:
        env["ORCH_SIGNING_KEY"] = new_seed()  # a scratch key, shared with the worker process only
        env["ORCH_KEYRING_DIR"] = str(scratch_keys(settings.base_path, settings.project_id))
    # files, as the worker process (no ORCH_STORE_URL reaches it): the benchmark measures the file backend
    orch = Orchestrator(base_path=settings.base_path, project_id=settings.project_id, store_url="file",
                        keyring=load_keyring(env, announce=settings.kept))
    refuse_foreign_jobs(orch)  # before anything is written, a key included
    if settings.kept:  # created (on first use) here, before the worker process starts: both sign with one key
        orch.keyring.ensure_signer()
    reader = lat.Reader(orch)
    worker: lat.WorkerProcess | None = None
    rows: list[dict[str, Any]] = []
    try:  # from the worker's start: whatever fails after it stops it, never leaves it running
        with COMMAND_STOP.deferred():  # a stop waits for it to have started (or failed to), then stops it below
            # it claims the benchmark's own jobs only: one submitted to the project meanwhile is never run here
            worker = lat.WorkerProcess(str(settings.base_path), settings.project_id, env,
                                       kinds=(lat.ECHO_KIND,)).start()
        total = settings.warmup + settings.samples
        for i in range(total):
            pad = rng.randrange(MAX_PAD + 1)
            submitted_ns = time.monotonic_ns()
            with COMMAND_STOP.deferred():
                job_id = orch.submit(lat.ECHO_KIND, {"pad": pad, "sample": i})
            st, visible_ns = reader.wait_for(job_id, lat.TERMINAL_STATES)
            durable_ns = worker.wait_durable(job_id, 1)
            returned_ns = int((st.result or {}).get("output", {}).get("returned_ns", 0))
            if st.state != "succeeded" or not returned_ns:
                raise RuntimeError(f"sample {i}: job {job_id} ended {st.state}: {st.last_error}")
            if i < settings.warmup:
                continue
            done_ns = max(durable_ns, visible_ns)
            rows.append({
                "sample": i - settings.warmup, "job_id": job_id, "run_id": st.run_id, "state": st.state,
                "latency_ms": round((done_ns - returned_ns) / 1e6, 4),
                "returned_to_durable_ms": round((durable_ns - returned_ns) / 1e6, 4),
                "returned_to_visible_ms": round((visible_ns - returned_ns) / 1e6, 4),
                "submit_to_visible_ms": round((visible_ns - submitted_ns) / 1e6, 4),
                "payload_pad_bytes": pad, "events": st.events,
                "measured": "handler return -> terminal state durable (fdatasync) and visible to a separate reader",
            })
            if progress and (len(rows) % 100 == 0 or len(rows) == settings.samples):
                progress(f"terminal latency: {len(rows)}/{settings.samples} samples")
    finally:
        with COMMAND_STOP.deferred():
            reader.close()
            if worker is not None:
                worker.stop()
    return rows


def refuse_foreign_jobs(orch: Any) -> None:
    """``InvalidInputError`` (exit 3) if the project holds a job the benchmark did not submit (of another kind than
    ``lat.ECHO_KIND``) that is not finished: its worker would run it (a queued job, a retry coming due, one an operator
    answers or sends back meanwhile) or recover it, as the project's own worker. A project that holds only earlier
    benchmark runs' jobs (``--project-id``, ``--keep``) and finished jobs (succeeded, failed, cancelled: never run
    again) is taken; a finished job is one whose history verifies (one that does not is refused, as not known
    finished).

    A job's kind is its first event's (``job_submitted``; no later event changes it), so only each job's first
    line is read (``store.first_line``), unverified: a guard, not a verification (the worker verifies what it
    runs). A first line that names no kind (none, not JSON, not a submission) is refused as another kind is.
    Measured on 5,000 kept jobs (3 lines each; medians of 5, two rounds): 0.93 / 1.21 s (187 / 241 us a job)
    when each job was read as ``status`` reads it (the line the head record names, the chain, replay), 0.12 / 0.14 s
    now, of which 0.07 / 0.09 s is listing the jobs (docs/decisions.md, 2026-12-02). Only a job of another kind is
    read whole (``orch.load``, verified), to see whether it is finished."""
    from orchestrator.history import submitted_kind
    from orchestrator.security import shown
    from orchestrator.state import FINAL_STATES

    for job_id in orch.store.job_ids():
        kind = submitted_kind(orch.store.first_line(job_id))
        if kind != lat.ECHO_KIND and not _finished(orch, job_id, FINAL_STATES):
            raise InvalidInputError(
                f"project {orch.project_id} already holds jobs the benchmark did not submit (job {job_id}, kind "
                f"{shown(kind)}), which its worker would run; nothing was written. Name a new project with "
                "--project-id, or leave it out (a scratch project)", job_id=job_id)


def _finished(orch: Any, job_id: str, final: frozenset[str]) -> bool:
    """Whether the job is known finished: its history verifies and ends in a final state (a job removed meanwhile,
    or unreadable: not known finished)."""
    try:
        view = orch.load(job_id)
    except OrchestratorError:
        return False
    return view.ok and view.state is not None and view.state.state in final


def verdicts(stats: dict[str, float]) -> dict[str, bool]:
    return {"gate_p95": stats["p95"] <= GATE_P95_MS, "gate_p99": stats["p99"] <= GATE_P99_MS,
            "gate": stats["p95"] <= GATE_P95_MS and stats["p99"] <= GATE_P99_MS,
            "target_p99": stats["p99"] <= TARGET_P99_MS}


def summary(rows: list[dict[str, Any]], settings: Settings, elapsed_s: float) -> dict[str, Any]:
    stats = lat.summarize([r["latency_ms"] for r in rows])
    return {"definition": lat.DEFINITION, "latency_ms": stats,
            "components_ms": {k: lat.summarize([r[k] for r in rows]) for k in
                              ("returned_to_durable_ms", "returned_to_visible_ms", "submit_to_visible_ms")},
            "verdicts": verdicts(stats), "gate": {"p95_ms": GATE_P95_MS, "p99_ms": GATE_P99_MS},
            "target": {"p99_ms": TARGET_P99_MS}, "machine": lat.machine(),
            "settings": {"code": lat.code_measured(), "samples": settings.samples, "seed": settings.seed,
                         "warmup": settings.warmup,
                         "percentiles": "nearest rank: P99 of n samples is the ceil(0.99 n)-th smallest (the maximum "
                                        "below 100 samples)",
                         "filesystem": lat.filesystem_of(settings.base_path), "fsync": "fdatasync per append",
                         "verification": "every read verifies the chain, the line the head record names and each line it does not vouch for (as status)",
                         "worker": "one worker process (Worker.run), Python handler in its reused handler process",
                         "elapsed_s": round(elapsed_s, 2)}}


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def report_markdown(result: dict[str, Any]) -> str:
    s, v, st, m = result["latency_ms"], result["verdicts"], result["settings"], result["machine"]
    lines = [
        "# Terminal latency benchmark", "",
        f"**Terminal latency**: {result['definition']}.", "",
        "| statistic | ms |", "|---|---:|",
        *(f"| {k.upper()} | {s[k]:.3f} |" for k in ("p50", "p95", "p99", "max")),
        f"| mean | {s['mean']:.3f} |", f"| samples | {s['n']} |", "",
        "| check | threshold | measured | verdict |", "|---|---|---:|---|",
        f"| release gate v1.2.3: P95 | <= {GATE_P95_MS:g} ms | {s['p95']:.3f} ms | {_ok(v['gate_p95'])} |",
        f"| release gate v1.2.3: P99 | <= {GATE_P99_MS:g} ms | {s['p99']:.3f} ms | {_ok(v['gate_p99'])} |",
        f"| our target: P99 | <= {TARGET_P99_MS:g} ms | {s['p99']:.3f} ms | {_ok(v['target_p99'])} |", "",
        f"Release gate: **{_ok(v['gate'])}**. Our target: **{_ok(v['target_p99'])}**.", "",
        "## Components (ms)", "", "| component | P50 | P95 | P99 | max |", "|---|---:|---:|---:|---:|",
        *(f"| {name} | {c['p50']:.3f} | {c['p95']:.3f} | {c['p99']:.3f} | {c['max']:.3f} |"
          for name, c in result["components_ms"].items()), "",
        "## Machine and settings", "",
        *(f"- {k}: {val}" for k, val in m.items()),
        *(f"- {k}: {val}" for k, val in st.items()), "",
        "Raw samples: one JSON line per sample with `latency_ms` and its components.", "",
    ]
    return "\n".join(lines)


def execute(samples: int, seed: int, base_path: str | None, project_id: str | None, raw_output: str | None,
            report: str | None, keep: bool, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The command: scratch project unless ``project_id`` is given; writes the raw JSONL and the report.

    The project id and both output files are checked before measuring (``OutputFile`` opens them at once):
    a bad one is refused in a second, not after a benchmark whose results would then be lost."""
    from orchestrator.output_file import OutputFile
    from orchestrator.security import validate_id

    if raw_output is not None and report is not None and os.path.realpath(raw_output) == os.path.realpath(report):
        raise InvalidInputError(f"--raw-output and --report name one file ({report}): the report would replace the "
                                "samples; give each a path of its own")
    scratch = project_id is None
    project = validate_id(f"bench-latency-{os.urandom(4).hex()}" if scratch else project_id, "project id")
    delete = scratch and not keep
    try:
        with COMMAND_STOP.handled(), contextlib.ExitStack() as outputs:  # an error or a stop discards both outputs
            with COMMAND_STOP.deferred():
                # a path given empty is refused there (``OutputFile``), never taken for none given
                raw = None if raw_output is None else outputs.enter_context(OutputFile(raw_output, "the raw samples"))
                md = None if report is None else outputs.enter_context(OutputFile(report, "the report"))
            rows, result = _measure(samples, seed, base_path, project, delete, progress)
            if raw:
                raw.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())
            if md:
                md.write(report_markdown(result).encode())
    except Interrupted as stop:
        stop.message += (": the benchmark's worker process was stopped, "
                         + ("the scratch project and the folders made for it removed" if delete
                            else f"project {project} keeps the jobs submitted before the stop")
                         + "; no results were written")
        raise
    return result


def _measure(samples: int, seed: int, base_path: str | None, project: str, delete: bool,
             progress: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the benchmark in ``project`` under ``base_path``; the rows and the summary. Without ``base_path``, a
    scratch run uses a temporary folder, and a kept project the folder every other command uses without one
    (``config.DEFAULT_BASE_PATH``, the current folder): kept in a temporary folder, it was deleted with it."""
    import tempfile

    from orchestrator.config import DEFAULT_BASE_PATH

    tmp = None
    made: list[Path] = []
    given = DEFAULT_BASE_PATH if base_path is None and not delete else base_path  # None: a temporary folder
    base: Path | None = None
    try:
        with COMMAND_STOP.deferred():  # what is made here is known to the cleanup below before a stop can cut in
            if given is None:
                tmp = tempfile.mkdtemp(prefix="orch-bench-")
                base = Path(tmp)
            else:
                made = make_base_path(given, project)  # "" refused there: Path("") would be the current folder
                base = Path(given)
        if made and progress:
            progress(f"made --base-path {base} (it did not exist)"
                     + ("; this scratch run removes it again" if delete else ""))
        settings = Settings(samples=samples, seed=seed, base_path=base, project_id=project, kept=not delete)
        t0 = time.perf_counter()
        rows = run(settings, progress)
    finally:
        with COMMAND_STOP.deferred():
            if delete and base is not None:  # the scratch project and keys; a kept project's keys are the operator's
                shutil.rmtree(base / project, ignore_errors=True)
                shutil.rmtree(scratch_keys(base, project), ignore_errors=True)
                for folder in made:  # and the folders made for it: a scratch run leaves the disk as it found it
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty: whatever else came to be there stays
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    result = summary(rows, settings, time.perf_counter() - t0)
    result["settings"]["project"] = "scratch (deleted)" if delete else project
    return rows, result


def make_base_path(base: str | Path, project: str) -> list[Path]:
    """Make ``base`` with its missing parents, as any command that writes does: a path the settings refuse (one given
    empty too) is ``ConfigError`` (exit 3), one that cannot be made ``StorageError`` (exit 10), as for a ``submit``,
    and before the scratch keyring below it is read. The folders made, deepest first (a scratch run removes them
    again)."""
    from orchestrator import config
    from orchestrator.store.files import make_folder

    resolved = config.Settings.load(base, project, env={}, store_url="file").base_path
    missing = []
    folder = resolved
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    make_folder(resolved, resolved / project)  # the store's folders are below it: base itself is the user's
    return missing


def text_summary(result: dict[str, Any]) -> str:
    s, v = result["latency_ms"], result["verdicts"]
    return (f"terminal latency over {s['n']} samples: P50 {s['p50']:.3f} ms, P95 {s['p95']:.3f} ms, "
            f"P99 {s['p99']:.3f} ms, max {s['max']:.3f} ms\n"
            f"release gate (P95 <= {GATE_P95_MS:g} ms, P99 <= {GATE_P99_MS:g} ms): {_ok(v['gate'])}\n"
            f"our target (P99 <= {TARGET_P99_MS:g} ms): {_ok(v['target_p99'])}")


if __name__ == "__main__":  # pragma: no cover - use scripts/bench_terminal_latency.py
    sys.exit("run scripts/bench_terminal_latency.py")
