"""An import's record (``imports/<key>``), and who holds it.

``transfer`` puts it before an import's first write and removes it once the import reads its bundle's end record.
While one is there, an audit entry naming an event its job lacks is that import's doing (it writes the audit log
before the jobs): ``IMPORT_INCOMPLETE``, a warning, in ``audit-timeline`` and ``verify``. Since 2026-12-07 (import2)
the record says which process holds it, as ``leftovers`` tells a process from one given its pid later: host name,
pid and the process's start time, with the boot and the pid namespace in which that pid means something. A record
whose import stopped (an error or a stop: its process says so as it leaves, ``stopped``), or whose process is gone
from this host (killed, a crash, the host restarted), is *abandoned*: it no longer makes such an entry the import's
doing (``AUDIT_EVENT_MISSING`` again), and is named (``IMPORT_ABANDONED``, a warning) wherever that is said, so that
a cut job is never hidden for good behind an import nobody completes. A record of another host, of another machine
of this host name (its machine id, since import3), or of another pid namespace of this one, cannot be judged here:
still under way, its host named. A record written before (``began_at`` only) is under way, as it was.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import clock
from orchestrator.errors import OrchestratorError, PathEscapeError, UnusableFileError
from orchestrator.redaction import sanitize_text

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

# Keyed by a digest of the bundle's header, so that the run again that completes an import stopped half way
# replaces (then removes) what that one left
IMPORTS_AREA = "imports"
# ``EventStore.exclusive``, held over every write of a record: a ``stopped`` reads then writes, and what another
# process puts or removes in between would be lost. One for the area, not one a key: a lock file a bundle would be
# left in ``locks/`` for each, and a record's writes are short and rare
IMPORTS_LOCK = "imports"
IMPORT_INCOMPLETE = "IMPORT_INCOMPLETE"  # an entry whose event an import under way has not written yet: a warning
IMPORT_ABANDONED = "IMPORT_ABANDONED"  # an import's record whose process is gone from this host: a warning
# what a record says of its import (``ImportRecord.verdict``)
RUNNING = "running"  # its process is alive on this host (or this host cannot tell)
ABANDONED = "abandoned"  # its process is gone from this host, or this host restarted since
ELSEWHERE = "elsewhere"  # another host or machine, or another pid namespace of this one: not judged here
UNNAMED = "unnamed"  # written before 2026-12-07: no process named, under way as it was


# The files a machine's id is read from (machine-id(5)): the first readable one
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


@functools.cache
def _here() -> tuple[str, str | None, str | None, str | None]:
    """This host's name (``socket.gethostname()``, as a worker id says it), its machine (``_machine``), its boot id,
    and this process's pid namespace (None where the system does not say: not Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot: str | None = fh.read().strip() or None
    except OSError:
        boot = None
    try:
        pid_ns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return os.uname().nodename, _machine(), boot, pid_ns


def _machine() -> str | None:
    """What tells this machine from another of the same host name (a cloned VM, a replica given a fixed hostname),
    which a restart keeps: a digest of its machine id, keyed by it as machine-id(5) asks (the id itself is not to be
    shown); None when no machine id can be read."""
    for path in MACHINE_ID_FILES:
        try:
            with open(path, "rb") as fh:
                machine_id = fh.read().strip()
        except OSError:
            continue
        if machine_id and machine_id != b"uninitialized":  # early in a first boot (systemd)
            return hmac.new(machine_id, b"jsonl-orchestrator import record", hashlib.sha256).hexdigest()[:32]
    return None


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot: another process given its pid later has another one)."""
    from orchestrator.leftovers import start_time  # here: that module loads ctypes, which a verify rarely needs

    started = start_time(pid)
    return started.decode("ascii", "replace") if started is not None else None


def held_record(orch: "Orchestrator", header: dict[str, Any], source: object) -> bytes:
    """The record of an import by this process of the bundle whose header is ``header``, read from ``source`` (its
    file's path, when it has one, is kept to name the bundle)."""
    host, machine, boot, pid_ns = _here()
    name = getattr(source, "name", None)
    path = (sanitize_text(os.path.abspath(name)) if isinstance(name, str) and name and not name.startswith("<")
            else None)
    exported = header.get("created_at")
    return json.dumps({"began_at": clock.to_iso(orch.clock()), "host": host, "pid": os.getpid(),
                       "started": _start_time(os.getpid()), "machine": machine, "boot": boot, "pid_ns": pid_ns,
                       "bundle": path,
                       "exported_at": sanitize_text(exported[:40]) if isinstance(exported, str) else None},
                      sort_keys=True).encode()


def hold(orch: "Orchestrator", key: str, record: bytes) -> None:
    """Put ``record`` (``held_record``) as the record of ``key``, before the import's first write. Two imports of one
    bundle share one record (the same key): the last to put it holds it."""
    with orch.store.exclusive(IMPORTS_LOCK):
        orch.store.put_aux(IMPORTS_AREA, key, record)


def release(orch: "Orchestrator", key: str) -> None:
    """Remove the record of ``key``: its import has read its bundle's end record (or wrote nothing)."""
    with orch.store.exclusive(IMPORTS_LOCK):
        orch.store.delete_aux(IMPORTS_AREA, key)


@dataclass(frozen=True)
class ImportRecord:
    """One record of ``IMPORTS_AREA``, as read and judged (``verdict``)."""

    key: str
    began_at: str  # "" when it cannot be read
    verdict: str
    why: str = ""  # of one abandoned: what ended its import
    host: str | None = None
    pid: int | None = None
    bundle: str | None = None
    exported_at: str | None = None

    def holder(self) -> str:
        return f"pid {self.pid} on host {self.host}"

    def bundle_named(self) -> str:
        path = f" {self.bundle}" if self.bundle else ""
        exported = f" (exported at {self.exported_at})" if self.exported_at else ""
        return f"the bundle{path}{exported}" if path or exported else "its bundle"


def _field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


def _judged(key: str, raw: bytes) -> ImportRecord:
    """The record ``raw`` of ``key`` and what it says of its import."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return ImportRecord(key, "", UNNAMED)
    began = _field(data, "began_at") or ""
    host, pid = _field(data, "host"), data.get("pid")
    if host is None or type(pid) is not int or pid <= 0:  # written before 2026-12-07 (or by hand): not judged
        return ImportRecord(key, began, UNNAMED)
    named = dict(host=host, pid=pid, bundle=_field(data, "bundle"), exported_at=_field(data, "exported_at"))
    return ImportRecord(key, began, *_verdict(host, pid, data), **named)  # type: ignore[arg-type]


def _verdict(host: str, pid: int, data: dict[str, Any]) -> tuple[str, str]:
    """Whether the process the record names holds it still (judged only on this host, in this pid namespace), and
    for one abandoned, why."""
    if isinstance(data.get("stopped_at"), str):  # its process said so (``stopped``): wherever it ran
        return ABANDONED, f"it stopped at {data['stopped_at']} (an error, or a stop) and was not run again since"
    here, machine, boot, pid_ns = _here()
    if host != here:
        return ELSEWHERE, ""
    if machine and _field(data, "machine") not in (None, machine):  # another machine of this host name: its boot id
        return ELSEWHERE, ""  # says nothing of this one's (a record of before 2026-12-07, import3, names none)
    if boot and _field(data, "boot") not in (None, boot):  # this host restarted: every process of before is gone
        return ABANDONED, "this host restarted since, and the import was not run again"
    if pid_ns and _field(data, "pid_ns") not in (None, pid_ns):  # another container of this host: its pids, not ours
        return ELSEWHERE, ""
    from orchestrator.leftovers import _stat_fields  # here: that module loads ctypes, which a verify rarely needs
    from orchestrator.store.files import pid_alive

    gone = "its process is gone (killed, or crashed) and the import was not run again"
    if not pid_alive(pid):
        return ABANDONED, gone
    fields = _stat_fields(pid)  # None where there is no /proc: the pid alone says it
    if fields and fields[0] in (b"Z", b"X"):  # exited, not reaped yet by its parent: its pid is still taken
        return ABANDONED, gone
    started = _field(data, "started")
    # its start time, from the same read (``leftovers.start_time``'s field)
    now = fields[19].decode("ascii", "replace") if started and fields and len(fields) > 19 else None
    return (ABANDONED, gone) if started and now is not None and now != started else (RUNNING, "")


def stopped(orch: "Orchestrator", key: str) -> None:
    """The record of ``key``, which this process put, said stopped (its import left by an error or a stop, half way):
    no longer held by a process that lives on (a program that called ``import_project`` and goes on), so judged
    abandoned at once. Left as it is when another process has put it since (the same bundle imported beside), or
    when it cannot be written (a store in error): its process's end then says the same, on this host. Read and
    written under the records' lock, so that no record put (``hold``) or removed (``release``) in between is
    overwritten: another import's, then judged abandoned while it runs, or one that completed, back again."""
    try:
        with orch.store.exclusive(IMPORTS_LOCK):
            raw = orch.store.get_aux(IMPORTS_AREA, key)
            data = json.loads(raw) if raw else None
            if not isinstance(data, dict) or (data.get("host"), data.get("pid")) != (_here()[0], os.getpid()):
                return
            data["stopped_at"] = clock.to_iso(orch.clock())
            orch.store.put_aux(IMPORTS_AREA, key, json.dumps(data, sort_keys=True).encode())
    except (OrchestratorError, OSError, ValueError, RecursionError):
        return


def import_records(orch: "Orchestrator") -> list[ImportRecord]:
    """Every import's record in the project, judged (one listing of ``IMPORTS_AREA``, one read a record)."""
    out = []
    for key in orch.store.aux_keys(IMPORTS_AREA):
        try:
            raw = orch.store.get_aux(IMPORTS_AREA, key)
        except (PathEscapeError, UnusableFileError):  # a link in its place (never followed): none of an import's
            continue
        if raw is None:  # removed since it was listed: that import has read its end record
            continue
        out.append(_judged(key, raw))
    return out


@dataclass(frozen=True)
class UnderWay:
    """The imports into a project that have not completed and are not abandoned (``import_begun``)."""

    records: tuple[ImportRecord, ...]

    @property
    def began_at(self) -> str:
        """When the earliest of them began; "" when its time cannot be read."""
        return min(r.began_at for r in self.records)

    def explained(self, orch: "Orchestrator") -> str:
        """What these imports are, and what to do, for a message about the entries they have not written yet."""
        at = f" at {self.began_at}" if self.began_at else ""
        text = (f"an import into project {orch.project_id} began{at} and has not completed (it writes the audit log "
                "before the jobs): ")
        says = []
        for r in self.records:
            if r.verdict == RUNNING:
                says.append(f"its process ({r.holder()}, this host) is running: let it finish")
            elif r.verdict == ELSEWHERE:
                says.append(f"it is held by {r.holder()}, which cannot be judged from here (another host, or another "
                            f"container of this one): if no import of {r.bundle_named()} runs there, run it again "
                            f"with the whole bundle, or once it is given up remove its record ({place(orch, r.key)})")
            else:
                says.append("it is running, or it stopped half way: run it again with the whole bundle, which "
                            "completes it")
        return (text + "; ".join(dict.fromkeys(says)) + ". Once it has, an entry still naming an event the job lacks "
                "is AUDIT_EVENT_MISSING")


def import_begun(orch: "Orchestrator") -> UnderWay | None:
    """The imports into the project that have not read their bundle's end record (``IMPORTS_AREA``) and are not
    abandoned: running, stopped half way where that cannot be judged, or named by a record of before 2026-12-07.
    None if there is none."""
    records = tuple(r for r in import_records(orch) if r.verdict != ABANDONED)
    return UnderWay(records) if records else None


def location(orch: "Orchestrator", key: str) -> str:
    """The record of ``key`` as ``verify`` names where a warning is: its file's path on files, else
    ``imports/<key>``."""
    root = getattr(orch.store, "root", None)
    return str(root / IMPORTS_AREA / key) if isinstance(root, Path) else f"{IMPORTS_AREA}/{key}"


def place(orch: "Orchestrator", key: str) -> str:
    """Where the record of ``key`` is, as an operator removes it (docs/runbook.md)."""
    if isinstance(getattr(orch.store, "root", None), Path):
        return f"the file {location(orch, key)}"
    return (f"the orch_aux row: DELETE FROM orch_aux WHERE project = '{orch.project_id}' AND area = '{IMPORTS_AREA}' "
            f"AND key = '{key}'")


def abandoned(orch: "Orchestrator") -> list[tuple[ImportRecord, str]]:
    """Each abandoned import's record, with what it means: said wherever an entry names an event its job lacks, so
    that such a record is never what silently makes damage look like an import's doing, nor silently left."""
    return [(r, f"an import into project {orch.project_id} of {r.bundle_named()}, begun at {r.began_at or '?'} by "
                f"{r.holder()}, was abandoned: {r.why}, so its record ({place(orch, r.key)}) no longer makes an audit "
                "entry naming an event its job lacks the import's doing: such an entry is AUDIT_EVENT_MISSING, which "
                "the import may have left. Run the import again with the whole bundle (it completes it and removes "
                "the record); once it is given up, remove the record")
            for r in import_records(orch) if r.verdict == ABANDONED]
