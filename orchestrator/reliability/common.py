"""Shared pieces: a throw-away project, forked children that crash, acknowledgements, checks."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.api import Orchestrator
from orchestrator.key_files import load_keyring
from orchestrator.signing import Keyring, line_hash, new_seed
from orchestrator.state import replay, Event

PROJECT = "rel"
HANDLERS_MODULE = "orchestrator.reliability.handlers"  # what a worker process imports to run the campaigns' jobs
FINAL_STATES = {"succeeded", "failed", "cancelled"}
# events after which the job is final (or, for job_failed/job_timeout/stale_recovered, may be)
TERMINAL_TYPES = {"job_succeeded", "job_approved", "job_cancelled", "job_failed", "job_timeout", "stale_recovered"}
OUTCOME_TYPES = {"job_succeeded", "job_failed", "job_timeout", "audit_requested", "human_input_requested",
                 "job_released"}


def progress(message: str) -> None:
    print(f"[reliability] {message}", file=sys.stderr, flush=True)


@dataclass
class Project:
    """A project folder and a signing key shared by this process and its children."""

    base: Path
    seed: str = field(default_factory=new_seed)
    keyring_signs: bool = False  # the keyring folder's active key signs (no ORCH_SIGNING_KEY): ``keys rotate`` swept

    @property
    def env(self) -> dict[str, str]:
        env = {"BASE_PATH": str(self.base), "PROJECT_ID": PROJECT, "ORCH_KEYRING_DIR": str(self.keyring_folder)}
        return env if self.keyring_signs else {**env, "ORCH_SIGNING_KEY": self.seed}

    @property
    def keyring_folder(self) -> Path:
        return self.base.parent / "keyring"

    def keyring(self) -> Keyring:
        return load_keyring(self.env, announce=False)

    def orch(self, clock: Callable[[], float] | None = None) -> Orchestrator:
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        return Orchestrator(base_path=self.base, project_id=PROJECT, keyring=self.keyring(), **kwargs)

    @property
    def state_dir(self) -> Path:
        return self.base / PROJECT / ".orchestrator"

    @property
    def acks_file(self) -> Path:
        """Where ``record_acks`` notes the appends that returned (beside the base folder, as the keyring)."""
        return self.base.parent / "acks"

    def command_env(self, **settings: str) -> dict[str, str]:
        """The environment of an ``orchestrator`` command on this project: this one's without its ``ORCH_*``
        settings, the project's, the campaigns' handlers, and ``settings`` (``ORCH_LEASE_SECONDS="1"``, ...)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(self.env, ORCH_HANDLERS=HANDLERS_MODULE, **settings)
        return env


def new_project(root: Path, name: str, *, keyring_signs: bool = False) -> Project:
    base = root / name / "base"
    base.mkdir(parents=True)
    return Project(base, keyring_signs=keyring_signs)


@dataclass
class ChildResult:
    status: int  # raw waitpid status
    stderr: str

    @property
    def killed(self) -> bool:
        return os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == signal.SIGKILL

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None


def run_forked(body: Callable[[], int | None], timeout: float = 60.0) -> ChildResult:
    """Run ``body`` in a forked child (a real process that can die anywhere) and wait for it."""
    err = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.dup2(err.fileno(), 2)
            code = body() or 0
        except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
            traceback.print_exc()
            code = 99
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    err.close()
    return ChildResult(status, text)


def keep_aside(folder: Path, kept: Path) -> None:
    """Copy ``folder`` (a project a crash left, a set-up) to ``kept``, for ``put_back``."""
    shutil.copytree(folder, kept, symlinks=True)


def put_back(kept: Path, folder: Path) -> None:
    """Make ``folder`` again what ``keep_aside`` kept, where it was: the jobs name files by their path."""
    shutil.rmtree(folder)
    shutil.copytree(kept, folder, symlinks=True)


# -- acknowledgements: an append is acknowledged when it returned ---------------------------------------
def record_acks(orch: Orchestrator, path: Path) -> None:
    """Make every append that returns write ``stream seq hash`` to ``path`` (one write, before anything else)."""
    real = orch.store.append
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def acking(stream: str, build: Any, expected_seq: int | None = None, **options: Any) -> Any:
        head = real(stream, build, expected_seq, **options)
        os.write(fd, f"{stream} {head.seq} {line_hash(head.last_line)}\n".encode())
        return head

    orch.store.append = acking  # type: ignore[method-assign]


def read_acks(path: Path) -> dict[str, tuple[int, str]]:
    """stream -> (highest acknowledged seq, its line hash)."""
    acks: dict[str, tuple[int, str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            stream, seq, digest = line.split()
            if int(seq) >= acks.get(stream, (0, ""))[0]:
                acks[stream] = (int(seq), digest)
    return acks


def acked_lost(orch: Orchestrator, acks: dict[str, tuple[int, str]]) -> int:
    """How many acknowledged heads are missing or changed (each implies its whole prefix by the chain)."""
    lost = 0
    for stream, (seq, digest) in acks.items():
        if seq == 0:
            continue
        lines = orch.store.read(stream)
        if len(lines) < seq or line_hash(lines[seq - 1].raw) != digest:
            lost += 1
    return lost


def streams(orch: Orchestrator) -> Iterator[str]:
    from orchestrator.store.base import AUDIT_STREAM

    yield from sorted(orch.store.job_ids())
    yield AUDIT_STREAM


def finished_twice(orch: Orchestrator, job_id: str) -> int:
    """1 if the job reached a final state more than once or one run recorded two outcomes, else 0."""
    records = orch.load(job_id).stream.records  # the verified prefix: damage is verify's figure, not this one
    finals, outcomes = 0, {}
    for i in range(1, len(records) + 1):
        try:
            st = replay([Event.from_record(r) for r in records[:i]])
        except Exception:  # noqa: BLE001 - a broken history is counted by verify, not here
            return 0
        rec = records[i - 1]
        if rec["type"] in TERMINAL_TYPES and st.state in FINAL_STATES:
            finals += 1
        if rec["type"] in OUTCOME_TYPES:
            outcomes[rec.get("run_id")] = outcomes.get(rec.get("run_id"), 0) + 1
    return int(finals > 1 or any(n > 1 for n in outcomes.values()))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the hash of its bytes (to prove nothing stored was harmed)."""
    import hashlib

    out = {}
    if root.exists():
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
