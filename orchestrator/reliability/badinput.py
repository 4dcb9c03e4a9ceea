"""Bad input and secrets: hostile ids, paths, JSON and payloads, and secrets in every channel.

Every hostile input goes through the real entry point (the click CLI in-process, the payload
validator, the line parser, a worker) and counts as

* *accepted* when it was not refused with an expected error code;
* *crashed* when it raised anything but an ``OrchestratorError`` (exit 1, a traceback);
* *harmed* when a stored file changed or a file appeared outside the project.

Secrets: handlers put one value of every ``sanitize_text`` pattern into stdout, stderr,
summary, question, output, error text, exception and exit paths; afterwards no file under
``.orchestrator`` and no log record may hold any of them.
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable

from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.errors import MalformedPayloadError
from orchestrator.history import verify_stream
from orchestrator.payload import parse_payload
from orchestrator.reliability.common import PROJECT, Project, new_project, progress, tree_digest
from orchestrator.reliability.handlers import SECRET_OBJECTS, SECRETS, TAG
from orchestrator.signing import Keyring
from orchestrator.store.base import StoredLine
from orchestrator.worker import Worker, WorkerSettings

HOSTILE_IDS = ["..", "../x", "../../etc/passwd", "/etc/passwd", "a/b", "x\x00y", "", ".hidden", "-rf", "a" * 200,
               "é", "a..b", "a\\b", "%2e%2e", "x\n", "CON/../x"]
HOSTILE_ARTIFACTS = ["../escape.txt", "/etc/passwd", "a/../../x", "x\x00y", "C:\\x", "a\\..\\b", "", ".",
                     "link/out.txt", "link"]
DEEP = "[" * 100_000 + "]" * 100_000
# (a leading UTF-8 byte order mark is no longer among them: dropped on every path since 2026-12-06)
HOSTILE_JSON = ["NaN", "[Infinity]", '{"a": -Infinity}', DEEP, "[" * 65 + "]" * 65, '{"a":', '{"a": 1, "a": 2}',
                '"' + "x" * (1024 * 1024 + 1) + '"']
BAD_UTF8 = [b'{"a": "\xff\xfe"}', b"\xc0\xaf", b'{"a": "\xed\xa0\x80"}', '{"a": 1}'.encode("utf-16")]
EXPECTED_CODES = {"INVALID_ID", "INVALID_INPUT", "PATH_ESCAPE", "JOB_NOT_FOUND", "RUN_NOT_FOUND", "CONFIG_ERROR",
                  "CHAT_MESSAGE_INVALID", "JOB_ID_MISMATCH"}


class Tally:
    def __init__(self) -> None:
        self.cases = self.accepted = self.crashed = self.harmed = 0
        self.failures: list[str] = []

    def add(self, what: str, *, refused: bool, crashed: bool = False, harmed: bool = False) -> None:
        self.cases += 1
        self.accepted += not refused
        self.crashed += crashed
        self.harmed += harmed
        if not refused or crashed or harmed:
            self.failures.append(what)

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "accepted": self.accepted, "crashed": self.crashed, "harmed": self.harmed,
                "failures": self.failures[:20]}


def _cli(project: Project, args: list[str], input: bytes | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, env=project.env, input=input, catch_exceptions=True)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result.exit_code, text


def _outside(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def cli_inputs(root: Path) -> dict[str, Any]:
    """Hostile ids in every id argument, hostile JSON and bytes in ``submit``."""
    project = new_project(root, "cli-inputs")
    orch = project.orch()
    job = orch.submit("rel.ask", {"ok": True})
    store = project.state_dir
    truth = lambda: {**tree_digest(store / "queue"), **tree_digest(store / "audit")}  # noqa: E731 - caches may change
    before, around = truth(), _outside(root)
    tally = Tally()

    def case(what: str, args: list[str], input: bytes | None = None) -> None:
        code, text = _cli(project, ["--json"] if False else args, input)
        crashed = code == 1 or "Traceback" in text or "No such command" in text  # a case that did not run fails
        refused = code not in (0, 1) and any(c in text for c in EXPECTED_CODES | {"Usage:", "Error:"})
        appeared = {p for p in _outside(root) - around if not p.startswith(str(project.base / PROJECT))}
        harmed = truth() != before or appeared
        tally.add(f"{what}: exit {code} {text[-160:]!r}{' appeared ' + str(sorted(appeared)[:2]) if appeared else ''}",
                  refused=refused, crashed=crashed, harmed=bool(harmed))

    for bad in HOSTILE_IDS:
        for args in (["status", bad], ["control", "cancel", bad, "why"], ["control", "approve", bad],
                     ["control", "resume", bad, "yes"], ["control", "revise", bad, "notes"],
                     ["resume-from-chat", bad, f"job_id: {bad}; yes"], ["audit-timeline", "--job-id", bad],
                     ["audit-timeline", "--run-id", bad], ["verify", "--job-id", bad],
                     ["status", job, "--project-id", bad], ["worker", "--once", "--worker-id", bad]):
            if bad == "" and any(a.startswith("--") for a in args[:-1] if a != "--once"):
                continue  # an empty option value means "not given" (click's convention), not a hostile id
            case(f"id {bad[:20]!r} in {args[0]}", args)
    for text in HOSTILE_JSON:
        case(f"submit --input {text[:20]!r}", ["submit", "--kind", "rel.echo", "--input", text])
    for raw in BAD_UTF8:
        case(f"submit --input-file {raw[:20]!r}", ["submit", "--kind", "rel.echo", "--input-file", "-"], raw)
    out = tally.to_dict()
    progress(f"bad CLI input: {out['cases']} cases, {out['accepted']} accepted, {out['crashed']} crashed")
    return out


def payloads(root: Path) -> dict[str, Any]:
    """The terminal-payload validator against hostile paths, JSON and sizes."""
    folder = root / "payloads" / "artifacts"
    folder.mkdir(parents=True)
    outside = root / "payloads" / "outside"
    outside.mkdir()
    (outside / "out.txt").write_text("secret")
    (folder / "link").symlink_to(outside)
    tally = Tally()
    cases: list[tuple[str, Any]] = [(f"artifact {a!r}", {"status": "done", "summary": "s", "artifacts": [a]})
                                    for a in HOSTILE_ARTIFACTS]
    cases += [(f"json {t[:20]!r}", t) for t in HOSTILE_JSON + ['{"status":"done","summary":"s","output":NaN}']]
    cases += [(f"bytes {b[:20]!r}", b) for b in BAD_UTF8]
    cases += [("not an object", "[1]"), ("unknown status", {"status": "ok", "summary": "s"}),
              ("missing summary", {"status": "done"}), ("needs_human without question", {"status": "needs_human",
                                                                                       "summary": "s"}),
              ("extra field", {"status": "done", "summary": "s", "rm": "-rf"}),
              ("deep output", {"status": "done", "summary": "s", "output": json.loads("[" * 80 + "]" * 80)}),
              ("2 MiB", json.dumps({"status": "done", "summary": "x" * (2 * 1024 * 1024)})),
              ("bad error code", {"status": "failed", "summary": "s", "error_code": "../x"})]
    for what, raw in cases:
        try:
            parse_payload(raw, folder)
            tally.add(what, refused=False)
        except MalformedPayloadError:
            tally.add(what, refused=True)
        except Exception as exc:  # noqa: BLE001 - counted, never raised
            tally.add(f"{what}: {type(exc).__name__}", refused=True, crashed=True)
    return tally.to_dict()


def lines(root: Path, samples: int = 300, seed: int = 5) -> dict[str, Any]:
    """The line parser (``verify_stream``) on hostile lines: each is reported, none is accepted or crashes."""
    ring = Keyring.generate()
    rng = random.Random(seed)
    good = ring.seal({"v": 1, "seq": 1, "prev": "0" * 64, "job_id": "j", "type": "job_submitted", "data": {}})
    hostile = [DEEP.encode(), b"NaN", b'{"v":1,"seq":1,"x":NaN}', b"\xff\xfe", b"{}", b"[]", b"1e999999",
               b'{"seq":1,"seq":2}', b"\xef\xbb\xbf" + good, good.replace(b",", b", ", 1),
               b"\x00" * 100]
    hostile += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"")
                for _ in range(samples)]
    tally = Tally()
    for raw in hostile:
        try:
            result = verify_stream("j", [StoredLine(1, raw)], ring)
            tally.add(f"line {raw[:20]!r}", refused=bool(result.problems))
        except Exception as exc:  # noqa: BLE001
            tally.add(f"line {raw[:20]!r}: {type(exc).__name__}", refused=True, crashed=True)
    return tally.to_dict()


def symlinked_artifacts(root: Path) -> dict[str, Any]:
    """A job whose artifact folder is a symlink out of the store: the worker writes nothing there."""
    project = new_project(root, "symlink")
    orch = project.orch()
    outside = root / "symlink" / "outside"
    outside.mkdir()
    job = orch.submit("rel.echo", {"x": 1})
    (project.state_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    (project.state_dir / "artifacts" / job).symlink_to(outside)
    crashed = False
    try:
        Worker(orch, WorkerSettings(worker_id="sym")).run_once()
    except Exception:  # noqa: BLE001 - the worker must record the refusal, not die (and leave the job running)
        crashed = True
    st = orch.status(job)
    refused = st.state == "failed" and (st.last_error or {}).get("code") == "PATH_ESCAPE"
    tally = Tally()
    tally.add("symlinked artifact folder", refused=refused, crashed=crashed, harmed=any(outside.iterdir()))
    return tally.to_dict()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(self.format(record) + json.dumps(getattr(record, "__dict__", {}), default=str))


def _tags() -> dict[str, str]:
    """Each kind's tag, as its value writes it (``TAG``: one in each value, text or structure)."""
    values = {**SECRETS, **{name: json.dumps(value) for name, value in SECRET_OBJECTS.items()}}
    return {name: TAG.search(value).group() for name, value in values.items()}  # type: ignore[union-attr]


def leaked(text: str) -> set[str]:
    """The kinds of secret whose tag ``text`` holds."""
    return {name for name, tag in _tags().items() if tag in text}


def secrets(root: Path) -> dict[str, Any]:
    """Run handlers that leak every pattern through every channel; scan the store and the logs."""
    project = new_project(root, "secrets")
    orch = project.orch()
    capture = _Capture()
    logging.getLogger("orchestrator").addHandler(capture)
    level = logging.getLogger("orchestrator").level
    logging.getLogger("orchestrator").setLevel(logging.DEBUG)
    logging.getLogger("orchestrator").propagate = False  # captured here, not printed
    channels = ["done", "ask", "fail", "audit", "raise", "exit"]
    try:
        jobs = {how: orch.submit("rel.leak", {"how": how}, max_attempts=1) for how in channels}
        script = ("import os,sys,json;t=" + repr(project.base.parent.name) + ";s=os.environ['LEAKS'];print(s);"
                  "print(s,file=sys.stderr);open(os.environ['ORCH_TERMINAL_FILE'],'w').write(json.dumps("
                  "{'status':'failed','summary':s,'retryable':False,'output':{'log':s}}))")
        import sys as _sys

        jobs["command"] = orch.submit("command", {"argv": [_sys.executable, "-c", script],
                                                  "env": {"LEAKS": "see environment"}}, max_attempts=1)
        os.environ["LEAKS"] = "\n".join(SECRETS.values())
        worker = Worker(orch, WorkerSettings(worker_id="leaky", retry_base_seconds=0))
        for _ in range(20):
            if worker.run_once() is None:
                break
        for how in ("ask",):
            orch.resume(jobs[how], "fine")
        for _ in range(5):
            if worker.run_once() is None:
                break
        for _ in (1,):
            runner = CliRunner()
            for job in jobs.values():
                result = runner.invoke(cli, ["status", job, "--json"], env=project.env)
                capture.text.append(result.output)
            capture.text.append(runner.invoke(cli, ["audit-timeline", "--job-id", jobs["done"]], env=project.env).output)
    finally:
        os.environ.pop("LEAKS", None)
        logging.getLogger("orchestrator").removeHandler(capture)
        logging.getLogger("orchestrator").setLevel(level)
        logging.getLogger("orchestrator").propagate = True
    found: dict[str, set[str]] = {}
    for path in project.state_dir.rglob("*"):
        if path.is_file():
            names = leaked(path.read_bytes().decode("utf-8", "replace"))
            if names:
                found[str(path.relative_to(project.state_dir))] = names
    in_logs = leaked("\n".join(capture.text))
    states = {how: orch.status(job).state for how, job in jobs.items()}
    out = {"patterns": len(SECRETS) + len(SECRET_OBJECTS), "channels": len(jobs), "states": states,
           "leaked_in_files": sum(len(v) for v in found.values()), "leaked_in_logs": len(in_logs),
           "where": {k: sorted(v) for k, v in found.items()}, "log_patterns": sorted(in_logs)}
    out["leaked"] = out["leaked_in_files"] + out["leaked_in_logs"]
    progress(f"secrets: {out['patterns']} kinds x {out['channels']} channels, {out['leaked']} leaked")
    return out


def campaign(root: Path, line_samples: int = 300) -> dict[str, Any]:
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "cli": lambda: cli_inputs(root), "payload": lambda: payloads(root),
        "lines": lambda: lines(root, samples=line_samples), "symlink": lambda: symlinked_artifacts(root)}
    out = {name: fn() for name, fn in parts.items()}
    out["total"] = {k: sum(p[k] for p in out.values()) for k in ("cases", "accepted", "crashed", "harmed")}
    return out
