"""Handlers the campaigns run (registered on import; worker processes get ``--import`` of this module)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.handlers import JobContext, handler
from orchestrator.run_folder import write_json_atomic

# One value per pattern ``sanitize_text`` covers; each carries a ``LEAKnn`` tag that must never be stored.
SECRETS = {
    "password": "password=LEAK01pw",
    "token": "token=LEAK02tk",
    "cookie": "Cookie: sid=LEAK03ck",
    "bearer": "Authorization: Bearer LEAK04br",
    "api_key": "api_key=LEAK05ak",
    "secret": "client_secret: LEAK06cs",
    "cli_flag": "--db-password LEAK07fl",
    "url_creds": "https://deploy:LEAK08url@git.example.com/repo.git",
    "openai": "sk-proj-LEAK09abcdefghijklmnopqrstuv",
    "github": "ghp_LEAK10abcdefghijklmnopqrstuvwxy",
    "aws": "AKIALEAK11XYZ1234567",
    "slack": "xoxb-LEAK12-123456789",
    "google": "AIza" + "LEAK13" + "a" * 29,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiLEAK14.c2lnbmF0dXJl",
    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nLEAK15pk\n-----END OPENSSH PRIVATE KEY-----",
}
SECRET_TEXT = "\n".join(f"{name} {value}" for name, value in SECRETS.items())


@handler("rel.echo")
def echo(ctx: JobContext) -> dict[str, Any]:
    if isinstance(ctx.input, dict) and ctx.input.get("sleep"):
        time.sleep(float(ctx.input["sleep"]))
    out = {k: v for k, v in ctx.input.items() if k != "pad"} if isinstance(ctx.input, dict) else ctx.input
    return {"status": "done", "summary": "echo", "output": out}


@handler("rel.wait")
def wait_for_release(ctx: JobContext) -> dict[str, Any]:
    """Marks itself started, then waits for the release file (the zombie scenario)."""
    # written whole, then renamed: whoever sees it can read it
    write_json_atomic(Path(ctx.input["started"]), {"pid": os.getpid(), "run_id": ctx.run_id})
    deadline = time.monotonic() + 30
    while not os.path.exists(ctx.input["release"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"status": "done", "summary": f"released in {ctx.run_id}"}


@handler("rel.ask")
def ask(ctx: JobContext) -> dict[str, Any]:
    if ctx.answers:
        return {"status": "done", "summary": f"answered {ctx.answers[-1]}"}
    return {"status": "needs_human", "summary": "need an answer", "question": "go on?"}


@handler("rel.leak")
def leak(ctx: JobContext) -> dict[str, Any]:
    """Puts every secret pattern into every channel the worker captures (stdout, stderr, payload)."""
    print(SECRET_TEXT, flush=True)
    print(SECRET_TEXT, file=sys.stderr, flush=True)
    how = ctx.input.get("how", "done")
    if how == "raise":
        raise RuntimeError(f"handler crashed: {SECRET_TEXT}")
    if how == "exit":
        os._exit(3)
    status = {"done": "done", "ask": "needs_human", "fail": "failed", "audit": "needs_audit"}[how]
    return {"status": status, "summary": SECRET_TEXT, "question": SECRET_TEXT, "retryable": False,
            "output": {"text": SECRET_TEXT, "password": "LEAK16pw", "nested": [SECRET_TEXT]}}
