"""Handlers the campaigns run (registered on import; worker processes get ``--import`` of this module)."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.handlers import JobContext, handler
from orchestrator.run_folder import write_json_atomic

# One value of each kind README's Security section lists (its tables, which a test holds to these keys), each
# carrying a tag (``TAG``: ``LEAKnn``, any case) that must never be stored. ``SECRETS``: text, each value beginning a
# line of ``SECRET_TEXT`` (a value under its key needs its key to begin its line); ``SECRET_OBJECTS``: the forms
# ``sanitize_obj`` tells from a structure, whose tagged values alone are no secret.
SECRETS = {
    "password": "password=LEAK01pw",
    "passwd": "passwd: LEAK02pw",
    "pwd": "PWD=LEAK03pw",
    "passphrase": "passphrase = 'LEAK04pp'",
    "token": "token=LEAK05tk",
    "secret": "client_secret: LEAK06cs",
    "api_key": "X-Api-Key: LEAK07ak",
    "private_key": "private_key=LEAK08pk",
    "session_id": "sessionid=LEAK09si",
    "credential": "credentials: LEAK10cr",
    "access_key": "AccessKey=LEAK11ak",
    "account_key": "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=LEAK12ak",
    "_pass": "SMTP_PASS=LEAK13sp",
    "suffix": "password_confirmation=LEAK14sf",
    "=>": '{"password"=>"LEAK15rb"}',
    ":=": 'token := "LEAK16go"',
    "==": 'if secret == "LEAK17eq" {',
    "yaml_block": "password: |\n  LEAK18ym",
    "below": "db:\n  password:\n    LEAK19bw",
    "prompt": "Password:\nLEAK20pr",
    "escaped_below": r'{"config": "db:\n  password:\n    LEAK60eb\n  user: bob"}',
    "pass": "https://example.com/login?user=bob&pass=LEAK21ps",
    "pw": '{"pw": "LEAK22pw"}',
    "cli_flag": "--db-password LEAK23fl",
    "pass_flag": "redis-cli --pass LEAK56pf ping",
    "openssl": "openssl enc -aes256 -passout pass:LEAK57os",
    "auth": "auth=bob:LEAK58au",
    "auth_tuple": "requests.get(url, auth=('bob', 'LEAK61at'))",
    "authorization": "Authorization: Bearer LEAK24au",
    "cookie": "Cookie: sid=LEAK25ck",
    "bearer": "curl -H 'Bearer LEAK26br0123'",
    "basic": "curl -H 'Basic dXM6LEAk27cg'",  # "us:" and 6 bytes: the tag in base64 (no case of it spells LEAK)
    "curl_user": "curl -u bob:LEAK28cu",
    "sshpass": "sshpass -p LEAK29sp ssh host",
    "mysql": "mysql -u root -pLEAK30my app",
    "netrc": "machine h login bob password LEAK31nr",
    "url_creds": "https://deploy:LEAK32url@git.example.com/repo.git",
    "url_token": "https://LEAK33abcdefghijklmnop@github.com/o/r.git",
    "openai": "sk-proj-LEAK34abcdefghijklmnopqrstuv",
    "anthropic": "sk-ant-api03-LEAK35abcdefghijklmnopqrstuv",
    "github": "ghp_LEAK36abcdefghijklmnopqrstuvwxy",
    "github_pat": "github_pat_LEAK37_abcdefghijklmnopqrstuv",
    "aws": "AKIALEAK38XYZ1234567",
    "aws_secret": "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/LEAK39bPxRfiCYEXAM",
    "slack": "xoxb-LEAK40-123456789",
    "google": "AIza" + "LEAK41" + "a" * 29,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiLEAK42.c2lnbmF0dXJl",
    "stripe": "sk_live_LEAK43abcdefghijklmn",
    "gitlab": "glpat-LEAK44abcdefghijklmn",
    "npm": "npm_LEAK45" + "a" * 30,
    "sendgrid": "SG.LEAK46abcdefghijkl.mnopqrstuvwxyzABCD",
    "name_value_text": '{"name": "DB_PASSWORD", "value": "LEAK62nt"}',
    "pairs_text": '[["HOME", "/root"], ["API_KEY", "LEAK63pt"]]',
    "pem": "-----BEGIN OPENSSH PRIVATE KEY-----\nLEAK47pk\n-----END OPENSSH PRIVATE KEY-----",
    "openpgp": "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nLEAK48pg\n-----END PGP PRIVATE KEY BLOCK-----",
    "putty": "Private-Lines: 1\nLEAK49pt\nPrivate-MAC: 0a1b2c3d",
}
SECRET_OBJECTS: dict[str, Any] = {
    "under_key": {"db_password": "LEAK50uk", "note": "kept"},
    "under_short_key": {"user": "bob", "pass": "LEAK51us"},
    "under_auth_key": {"registry": "ghcr.io", "auth": "bob:LEAK59ua"},
    "name_value": [{"name": "DB_PASSWORD", "value": "LEAK52nv"}],
    "pairs": [["HOME", "/root"], ["API_KEY", "LEAK53pr"]],
    "argv": ["mysql", "--password", "LEAK54av", "app"],
    "aws_pair": {"id": "AKIAIOSFODNN7EXAMPLE", "key": "wJalrXUtnFEMI/K7MDENG/LEAK55bPxRfiCYEXAM"},
}
TAG = re.compile(r"leak[0-9]{2}", re.I)
SECRET_TEXT = "\n".join(SECRETS.values())


@handler("rel.echo")
def echo(ctx: JobContext) -> dict[str, Any]:
    if isinstance(ctx.input, dict) and ctx.input.get("sleep"):
        time.sleep(float(ctx.input["sleep"]))
    out = {k: v for k, v in ctx.input.items() if k != "pad"} if isinstance(ctx.input, dict) else ctx.input
    return {"status": "done", "summary": "echo", "output": out}


@handler("rel.wait")
def wait_for_release(ctx: JobContext) -> dict[str, Any]:
    """Marks itself started (when given a ``started`` file), then waits for the ``release`` file: the zombie, a
    worker stopped mid-run, the crash workload's run that lasts as many lease renewals as the sweep counts."""
    if "started" in ctx.input:  # written whole, then renamed: whoever sees it can read it
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
            "output": {"text": SECRET_TEXT, "nested": [SECRET_TEXT], "objects": SECRET_OBJECTS}}
