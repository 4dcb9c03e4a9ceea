"""The command-line sweep's commands that write outside the store: ``export`` (its bundle), ``keys rotate`` and
``keys revoke`` (the keyring folder) and ``db migrate`` (a PostgreSQL database's schema).

Each set-up here, and what a kill of its command may leave, checked before the command is run again (``crash_cli``
names it ``left``): the file an export writes is the bundle an earlier export left there, byte for byte, or a whole
bundle of the project, never part of one under its name (``OutputFile``: a temporary file renamed over it at the
end); every key file of the keyring folder is whole and named by its key, its active key the set-up's or a new
whole pair, its revoked list the set-up's or that and the key revoked, never less (each file a synced temporary
file renamed over it, ``key_files._write_whole``); every migration applied whole or not at all (each commits with
its version row). What the command run again must have done (``done``) is checked here too. The checks read the
files as any reader would (the ``cryptography`` parsers, the bundle's own lines), not through the code they check.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

from orchestrator.api import Orchestrator
from orchestrator.head_records import head_key
from orchestrator.key_files import (ACTIVE_FILE, PRIVATE_SUFFIX, PUBLIC_SUFFIX, REVOKED_FILE, load_keyring, revoke,
                                    write_keypair)
from orchestrator.output_file import OutputFile
from orchestrator.reliability import crash
from orchestrator.reliability.common import PROJECT, Project
from orchestrator.signing import key_id
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.transfer import BUNDLE_FORMAT, export_project
from orchestrator.worker import Worker, WorkerSettings

EXPORTED = "export.jsonl"  # beside the base folder, kept with the set-up: the bundle an earlier export left


def export_set_up(project: Project, orch: Orchestrator) -> dict[str, str]:
    """Jobs, one of them awaiting audit, exported to ``EXPORTED``; then the job approved and one more submitted, so
    that the bundle there is an older one than ``export`` writes."""
    jobs = [orch.submit("rel.echo", {"i": 1}), orch.submit("rel.echo", {"i": 2}, audit=True)]
    with Worker(orch, WorkerSettings(worker_id="set-up", retry_base_seconds=0)) as worker:
        crash.drain(worker)
    with OutputFile(project.base.parent / EXPORTED, "the bundle") as fh:
        export_project(orch, fh)  # type: ignore[arg-type]
    orch.approve(jobs[1], "looks right")
    orch.submit("rel.echo", {"i": 3})
    return {"export": str(project.base.parent / EXPORTED)}


def bundle_problem(path: Path, orch: Orchestrator, earlier: bytes | None) -> str:
    """What is wrong with the file at ``path`` ("": nothing): it must be the bundle an earlier export left there
    (``earlier``, None: there was none, and there may still be none) or a whole bundle of the project as it is."""
    if not path.exists():
        return "" if earlier is None else "the bundle an earlier export left is gone"
    data = path.read_bytes()
    if data == earlier:
        return ""
    carried = _carried(data)
    if isinstance(carried, str):
        return f"{path.name} is no whole bundle: {carried}"
    held = {s: [x.raw for x in orch.store.read(s)] for s in [AUDIT_STREAM, *sorted(orch.store.job_ids())]}
    expected = [s for s, lines in held.items() if lines]  # no empty log
    if list(carried) != expected:
        return f"{path.name} carries the streams {list(carried)}, not {expected}"
    for stream, (lines, head) in carried.items():
        stored = orch.store.get_aux(*head_key(stream)) or None
        if lines != held[stream] or head != stored:
            return f"{path.name} carries stream {stream} unlike the store's"
    return ""


def _carried(data: bytes) -> dict[str, tuple[list[bytes], bytes | None]] | str:
    """The streams a bundle carries (its lines, its head record), read as its format says; or why it is not whole."""
    if not data:
        return "it is empty"
    if not data.endswith(b"\n"):
        return "its last line is cut"
    lines = data[:-1].split(b"\n")
    try:
        if json.loads(lines[0]).get("format") != BUNDLE_FORMAT:
            return "its first line is no bundle's"
        carried: dict[str, tuple[list[bytes], bytes | None]] = {}
        i = 1
        while i < len(lines):
            header = json.loads(lines[i])
            if header.get("end"):
                events = sum(len(v[0]) for v in carried.values())
                whole = i == len(lines) - 1 and (header["streams"], header["events"]) == (len(carried), events)
                return carried if whole else f"its end line at line {i + 1} does not count what it carries"
            count, head = header["lines"], header["head"]
            carried[header["stream"]] = (lines[i + 1:i + 1 + count], base64.b64decode(head) if head else None)
            if i + 1 + count > len(lines):
                return f"stream {header['stream']} is cut"
            i += 1 + count
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"a header line does not read ({type(exc).__name__}: {exc})"
    return "it has no end line"


def keys_set_up(project: Project, orch: Orchestrator) -> dict[str, str]:
    """A project the keyring folder's active key signs (a job run, one queued, which the recovery runs with the key
    then active), with two keys revoked already (``keys-revoked``: with one, half of the file a revoke writes is
    the old file, byte for byte, and a revoke written in place passed) and one more the folder trusts that never
    signed: ``keys rotate`` makes a key active, ``keys revoke`` revokes that one."""
    assert project.keyring_signs
    with Worker(orch, WorkerSettings(worker_id="set-up", retry_base_seconds=0)) as worker:
        orch.submit("rel.echo", {"for": "keys"})
        crash.drain(worker)
    orch.submit("rel.echo", {"for": "after the keys"})
    folder = project.keyring_folder
    active = orch.keyring.signing_key_id()
    assert active is not None
    revoked = [write_keypair(folder, activate=False) for _ in range(2)]
    for kid in revoked:
        revoke(kid, project.env)
    return {"keys-rotate": active, "keys-revoked": " ".join(revoked),
            "keys-revoke": write_keypair(folder, activate=False)}


def keyring_state(project: Project) -> tuple[str | None, frozenset[str], str]:
    """The keyring folder's active key, its revoked ids, and what is wrong with its files ("": nothing): each key
    file whole, named by its key's id and owner-only when private, the active key a whole pair, every line of
    ``revoked`` a key id; and the keyring loads, and its signer with it, as every command's does."""
    from cryptography.hazmat.primitives import serialization

    folder = project.keyring_folder
    keys: dict[str, set[str]] = {}
    try:
        for name in sorted(os.listdir(folder)):
            path = folder / name
            if name.endswith(PRIVATE_SUFFIX):
                if stat.S_IMODE(path.stat().st_mode) & 0o077:
                    return None, frozenset(), f"{name} may be read by others"
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
                public = private.public_key()  # type: ignore[union-attr]
            elif name.endswith(PUBLIC_SUFFIX):
                public = serialization.load_pem_public_key(path.read_bytes())  # type: ignore[assignment]
            else:
                continue
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            kid = name.rsplit(".", 1)[0]
            if key_id(raw) != kid:
                return None, frozenset(), f"{name} holds the key {key_id(raw)}"
            keys.setdefault(kid, set()).add(name)
        active = (folder / ACTIVE_FILE).read_text().strip()
        revoked_file = folder / REVOKED_FILE
        revoked = revoked_file.read_text().split() if revoked_file.exists() else []
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        return None, frozenset(), f"a key file does not read ({type(exc).__name__}: {exc})"
    if keys.get(active) != {f"{active}{PRIVATE_SUFFIX}", f"{active}{PUBLIC_SUFFIX}"}:
        return active, frozenset(revoked), f"the active key {active} is no whole pair ({sorted(keys.get(active, []))})"
    if len(set(revoked)) != len(revoked):
        return active, frozenset(revoked), f"revoked lists an id twice: {revoked}"
    try:
        ring = load_keyring(project.env, announce=False)
        ring.ensure_signer(create=False)
    except Exception as exc:  # noqa: BLE001 - what a command would meet, said
        return active, frozenset(revoked), f"the keyring does not load: {type(exc).__name__}: {exc}"
    return active, frozenset(revoked), ""


def left_over(project: Project) -> list[str]:
    """The temporary files of a key file's writer in the keyring folder (a killed one's, until a writer removes
    them)."""
    return sorted(n for n in os.listdir(project.keyring_folder) if n.startswith(".") and n.endswith(".tmp"))


# -- db migrate: a database of its own, emptied again before each kill ----------------------------------------
SCHEMA = ("SELECT 'column', table_name, column_name, concat_ws(' ', data_type, is_nullable, column_default) "
          "FROM information_schema.columns WHERE table_schema = 'public' "
          "UNION ALL SELECT 'index', tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
          "UNION ALL SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
          "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
          "UNION ALL SELECT 'trigger', tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger "
          "WHERE NOT tgisinternal "
          "UNION ALL SELECT 'function', proname, md5(prosrc), '' FROM pg_proc "
          "WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2, 3, 4")


class ScratchDatabase:
    """A database of its own on the server ``url`` names (made empty by ``reset``, dropped by ``drop``): what ``db
    migrate`` migrates from nothing, at each kill."""

    def __init__(self, url: str) -> None:
        base, query = url.split("?", 1) if "?" in url else (url, "")
        self.name = f"orch_cli_sweep_{uuid.uuid4().hex[:12]}"
        self.admin_url = url
        self.url = f"{base.rpartition('/')[0]}/{self.name}" + (f"?{query}" if query else "")
        self.reset()

    def _admin(self, *statements: str) -> None:
        from orchestrator.store.pg_connection import connect

        conn = connect(self.admin_url, autocommit=True)
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    def reset(self) -> None:
        """The database made again, empty (a killed command's session ended with it)."""
        self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)", f"CREATE DATABASE {self.name}")

    def drop(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def schema(self) -> tuple[int, list[int], list[tuple[Any, ...]]]:
        """Its schema version, the versions its version table lists, and every column, index, constraint, trigger
        and function of it."""
        from orchestrator.store.pg_connection import connect
        from orchestrator.store.pg_schema import MIGRATIONS_TABLE, current_version

        conn = connect(self.url, autocommit=True)
        try:
            version = current_version(conn)
            listed = [r[0] for r in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")] \
                if version else []
            return version, listed, [tuple(r) for r in conn.execute(SCHEMA)]
        finally:
            conn.close()

    def used(self, project: Project) -> str:
        """What fails when a project is run on it ("": nothing): a job submitted, run, and every history verified."""
        from orchestrator.integrity import verify_project
        from orchestrator.store.postgres import PostgresStore

        store = PostgresStore(self.url, PROJECT)
        try:
            orch = Orchestrator(base_path=project.base, project_id=PROJECT, keyring=project.keyring(), store=store)
            job_id = orch.submit("rel.echo", {"on": "postgres"})
            with Worker(orch, WorkerSettings(worker_id="after-migrate", retry_base_seconds=0)) as worker:
                crash.drain(worker)
            state, report = orch.status(job_id).state, verify_project(orch)
            return "" if state == "succeeded" and report.ok else f"a job {state}, verify: {report.problems[:3]}"
        except Exception as exc:  # noqa: BLE001 - a schema the store cannot use, said
            return f"{type(exc).__name__}: {exc}"
        finally:
            store.close()
