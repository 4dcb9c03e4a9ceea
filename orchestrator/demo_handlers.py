"""Python handlers for ``python -m orchestrator.demo`` (no network, no LLM).

A worker process can load them too: ``scripts/worker.py --import orchestrator.demo_handlers``.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.handlers import JobContext, handler


@handler("demo.greet")
def greet(ctx: JobContext) -> dict:
    return {"status": "done", "summary": f"greeted {ctx.input['name']}", "output": {"greeting": f"hello {ctx.input['name']}"}}


@handler("demo.ask")
def ask(ctx: JobContext) -> dict:
    """Asks a human once; re-run after ``resume`` with the answer in ``ctx.answers``."""
    if ctx.answers:
        return {"status": "done", "summary": f"painting the shed {ctx.answers[-1]}"}
    return {"status": "needs_human", "summary": "the colour is not specified",
            "question": "Which colour should the shed be?"}


@handler("demo.draft")
def draft(ctx: JobContext) -> dict:
    """Writes a draft into its own artifact folder; the job is submitted with audit: true."""
    notes = "".join(f"\n- revised: {n}" for n in ctx.revisions)
    Path(ctx.artifacts_dir, "draft.md").write_text(f"# Release notes\n\n- faster claims{notes}\n")
    return {"status": "done", "summary": "drafted the release notes", "artifacts": ["draft.md"]}


@handler("demo.flaky")
def flaky(ctx: JobContext) -> dict:
    """Fails its first attempt (a transient error), succeeds on the retry."""
    if ctx.attempt < 2:
        return {"status": "failed", "summary": "upstream returned 503, try again", "error_code": "UPSTREAM_503",
                "retryable": True}
    return {"status": "done", "summary": f"fetched on attempt {ctx.attempt}"}


@handler("demo.broken")
def broken(ctx: JobContext) -> dict:
    return {"status": "failed", "summary": "the input file does not exist", "error_code": "NO_INPUT",
            "retryable": False}
