"""A real run on the embedded file backend: ``python -m orchestrator.demo [FOLDER]``.

Submits jobs (a command, Python handlers that succeed, ask a human, need an audit, fail
and retry, fail for good), runs a worker until nothing is left to do, shows the derived
states, verifies the signed history, shows that a hand edit is caught, and ends with what
an operator can do next. Everything happens under FOLDER (default ``./demo-base``) with
the project id ``demo``; run it again to start afresh: the project is replaced only if the demo made
it (its folder holds ``MARKER``), so a real project named ``demo`` under that folder is never removed.
It always uses the file backend (``ORCH_STORE_URL`` is not read). No network or LLM is needed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from orchestrator import Orchestrator, stdout
from orchestrator.config import usable_base
from orchestrator.errors import ConfigError
from orchestrator.integrity import verify_project

PROJECT = "demo"
MARKER = ".made-by-orchestrator-demo"  # in the project folder: the demo may replace this project, and no other
AWAY = f".{PROJECT}.replaced-"  # FOLDER/.demo.replaced-<hex>: a demo project being removed
NEXT_STEPS = "== what you can do next (paste into a shell in this folder)"
DEFAULT_FOLDER = "demo-base"
FOLDER = "the demo's FOLDER"  # its argument, named so in its messages: it has no --base-path and ignores BASE_PATH
EXIT_REFUSED = 3  # as the CLI's INVALID_INPUT and CONFIG_ERROR; a usage error is argparse's exit 2, as click's


def say(text: str) -> None:
    print(text, flush=True)


def _fresh_project(base: Path) -> str | None:
    """Make ``base/demo`` anew, holding ``MARKER``; what stops it, or None. Only a real folder holding the marker
    (or empty: a run that died before writing it) is replaced. It is renamed aside (``AWAY``) before it is
    removed, so a run that dies at any point leaves either the old project, none, or a new one, and the
    folders set aside are removed by the next run."""
    project = base / PROJECT
    made_here = project.is_dir() and not project.is_symlink() and (
        (project / MARKER).is_file() or not any(project.iterdir()))
    if os.path.lexists(project) and not made_here:  # a link (even a dangling one) or a file is never the demo's
        return (f"{project} exists and was not made by this demo; nothing was changed. Give another folder "
                "(python -m orchestrator.demo FOLDER), or remove it yourself if it is an old demo.")
    try:
        if made_here:
            os.rename(project, base / f"{AWAY}{os.urandom(4).hex()}")
        project.mkdir(parents=True)
        (project / MARKER).write_text("made by python -m orchestrator.demo, which replaces this project when run again\n")
        for name in os.listdir(base):
            if name.startswith(AWAY):
                shutil.rmtree(base / name, ignore_errors=True)
    except OSError as exc:  # FOLDER is a file, or not writable
        return (f"cannot make the demo project {project}: {exc.strerror}; give another folder "
                "(python -m orchestrator.demo FOLDER)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo", description=(
        f"Run the demo in the project '{PROJECT}' under FOLDER; running it again replaces that project, "
        "only if an earlier run of the demo made it."))
    parser.add_argument("folder", nargs="?", default=DEFAULT_FOLDER, metavar="FOLDER",
                        help=f"folder to hold the demo project (default: ./{DEFAULT_FOLDER}; the environment's "
                             "BASE_PATH is not used)")
    given = parser.parse_args(sys.argv[1:] if argv is None else argv).folder
    try:  # the check of every command's base path, its messages naming the demo's FOLDER: not empty (Path("") is
        # the current folder), a path a folder can be at, not too long, no loop of symbolic links
        if not given:
            raise ConfigError(f"{FOLDER} must not be empty (leave it out for ./{DEFAULT_FOLDER})")
        base = usable_base(Path(given).expanduser(), FOLDER)
    except ConfigError as exc:
        print(f"error[{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    refused = _fresh_project(base)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_REFUSED
    # the file backend, whatever ORCH_STORE_URL says: the marker guards a folder, and a PostgreSQL project named
    # demo (a real one, its queued jobs run by the demo's worker) is not the demo's to write into
    orch = Orchestrator(base_path=base, project_id=PROJECT, store_url="file")
    say(f"== jsonl-orchestrator demo: store at {orch.settings.state_dir}")

    import orchestrator.demo_handlers  # noqa: F401  (registers demo.* handlers)

    script = ("import json, os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write(json.dumps("
              "{'status': 'done', 'summary': 'disk check ok', 'output': {'free_gb': 42}}))")
    jobs = {
        "command": orch.submit("command", {"argv": [sys.executable, "-c", script]}),
        "greet": orch.submit("demo.greet", {"name": "operator"}, key="greet-2026-11-22"),
        "ask": orch.submit("demo.ask", {"task": "paint the shed"}),
        "audit": orch.submit("demo.draft", {"topic": "release notes"}, audit=True, priority=5),
        "flaky": orch.submit("demo.flaky", {"url": "https://example.invalid/data"}, max_attempts=3),
        "broken": orch.submit("demo.broken", {"path": "missing.csv"}),
    }
    again = orch.submit("demo.greet", {"name": "operator"}, key="greet-2026-11-22")
    say(f"submitted {len(jobs)} jobs; the same idempotency key again gives the same id: {again == jobs['greet']}")

    worker = orch.worker(worker_id="demo-worker", retry_base_seconds=0.05, lease_seconds=10)
    say("\n== worker: claims by priority then FIFO, runs each handler in its own process group")
    worker.run(idle_exit=True, on_result=lambda r: say(
        f"  {r.job_id}  {r.outcome:<15}" + (f" ({r.error_code})" if r.error_code else "")))

    say("\n== states (replayed from each job's signed events)")
    names = {v: k for k, v in jobs.items()}
    for st in orch.jobs():
        extra = st.question or (st.last_error or {}).get("code") or (st.result or {}).get("summary") or ""
        say(f"  {names.get(st.job_id, '?'):<8} {st.job_id}  {st.state:<15} attempt={st.attempt}  {extra}")
    draft = orch.settings.state_dir / "artifacts" / jobs["audit"] / "draft.md"
    say(f"  the audit job's artifact: {draft}")

    report = verify_project(orch)
    say(f"\n== verify: {'OK' if report.ok else 'FAILED'} - {report.streams} streams, {report.events} events, "
        "each signed (Ed25519) and hash-chained")
    path = orch.store.path(jobs["command"])
    original = path.read_bytes()
    path.write_bytes(original.replace(b"disk check ok", b"disk check OK!", 1))
    tampered = orch.status(jobs["command"])
    say(f"after editing {path.name} by hand: status shows {tampered.integrity_error['code']} "
        "(a worker would refuse to run it)")
    path.write_bytes(original)
    say("restored the file; the job verifies again: " + str(orch.load(jobs["command"]).ok))

    # copied into a shell as they are: quoted paths, and this interpreter (the Quick start's .venv is not activated,
    # and a python3 without the dependencies fails on its first import)
    # and the demo's store, always named: an ORCH_STORE_URL naming PostgreSQL, in the shell or in a .env where they
    # are pasted (which the scripts read and the demo does not), would send them there. A variable set on the
    # command line wins over a .env's (config.load_dotenv_file never overrides), as BASE_PATH and PROJECT_ID do.
    env = f"BASE_PATH={shlex.quote(str(base))} PROJECT_ID={PROJECT} ORCH_STORE_URL=file {shlex.quote(interpreter())}"
    run = lambda command: f"{env} {runbook_command(command)}"  # noqa: E731
    say(f"\n{NEXT_STEPS}\n"
        f"  {run('status')} --all\n"
        f"  {run('status')} {jobs['ask']}            # the pending question\n"
        f"  {run('control')} resume {jobs['ask']} \"green\"\n"
        f"  {run('control')} approve {jobs['audit']}\n"
        f"  {run('control')} revise {jobs['audit']} \"mention the new worker\"   # instead of approve\n"
        f"  {run('worker')} --import orchestrator.demo_handlers --once   # re-runs a resumed job\n"
        f"  {run('audit-timeline')} --job-id {jobs['flaky']}\n"
        f"  {run('verify')}\n"
        f"  tail -n 3 {shlex.quote(str(orch.store.path(jobs['flaky'])))}")
    return 0


def runbook_command(command: str) -> str:
    """How to call ``command`` from the current folder: the runbook's ``scripts/<name>.py`` in a checkout (the Quick
    start runs the demo there), else the installed package (``-m orchestrator``), which works from any folder."""
    script = Path("scripts") / f"{command.replace('-', '_')}.py"
    return str(script) if script.is_file() else f"-m orchestrator {command}"


def interpreter() -> str:
    """The Python running the demo, as a command: relative to the current folder when inside it (.venv/bin/python)."""
    path = Path(sys.executable)
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if relative.parent != Path(".") else f"./{relative}"


OUTPUT_LOST = "the demo stopped there: run it again where its output fits (it starts afresh)"

if __name__ == "__main__":
    raise SystemExit(stdout.run(main, OUTPUT_LOST))  # a full disk: exit 10, a reader gone (| head): 141, as the CLI
