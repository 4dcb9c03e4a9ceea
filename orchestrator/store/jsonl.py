"""The embedded file backend: one JSONL file per job, plus the audit log.

Durability: an append takes an exclusive ``flock`` on the stream's file (held only for the
append), repairs a torn tail left by a crash, checks the expected sequence, writes all new
lines with one ``write`` on an ``O_APPEND`` descriptor and ``fdatasync``s before returning.
The append that writes a file's first line also fsyncs its folder, whoever created the file, so
the file itself survives power loss; and, once per process, the folders above it up to the project
folder, whoever made them (``files.make_folder``).
If a write or sync fails, the file is cut back to where it was and ``StorageError`` is
raised: nothing unacknowledged stays visible, and a failed fsync is never taken as success. A crash
is another matter: the one ``write`` of several lines may leave some of them whole (``import``'s
chunks, the only appends of several lines, resume from any prefix: docs/guarantees.md).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from array import array
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Callable, Iterator

from orchestrator import faults
from orchestrator.errors import (NOTHING_WRITTEN, AuxNotWrittenError, ConcurrencyError, IntegrityError, LockHeldError,
                                 PathEscapeError, StorageError, UnusableFileError)
from orchestrator.security import is_id, validate_id
from orchestrator.store.base import (AUDIT_STREAM, HEADS_AREA, SLOT_BYTES, AuxWrites, Builder, EventStore, Head,
                                     InTransaction, StoredLine, check_aux_name)
from orchestrator.store.files import (check_folders, fsync_dir, holding_files, link_name, linked_file, make_folder,
                                      nofollow_opener, not_regular, open_creating, path_error, read_all, read_file,
                                      refuse_link, remove_file, remove_strays, vacate, write_failure, write_new)
from orchestrator.store.locks import APPENDING, LOCK_SPIN_SECONDS, lock_descriptor, lock_soon

log = logging.getLogger(__name__)

EVENTS_SUFFIX = ".events.jsonl"
# Small records written on every append or heartbeat (head records, leases): a fixed ``SLOT_BYTES`` (512) slot
# written in place (``JsonlStore._put_slot``), not a new file renamed over the old one. Other areas (the metrics
# cache) keep replace-by-rename.
SLOT_AREAS = frozenset({HEADS_AREA, "leases", "audit-head"})
# Records that are only names (audit markers: "this event's entry is in the log"), written on every audited
# action: a hard link of the area's one empty file (``NAME_TEMPLATE``, ``files.link_name``), no new inode, where a
# slot of its own cost a file creation (29 us to 1.4 ms on the benchmark disk). Their bytes are not kept: a
# record there reads as ``NAME_RECORD``; any regular file of that name counts (a slot written before 2026-12-03).
NAME_AREAS = frozenset({"audited"})
NAME_TEMPLATE = ".name"
NAME_RECORD = b"1"
# The store's own folders under its root ("" is the root, ``.orchestrator``): checked once when the
# store is opened (``check_folders``). A new area of ``put_aux`` belongs here too (a test walks a store).
LOCKS_DIR = "locks"  # ``exclusive``'s lock files: made when the first lock is taken, or by ``prepare_locks``
STORE_FOLDERS = ("", "queue", "queue/jobs", "audit", LOCKS_DIR, *sorted(SLOT_AREAS | NAME_AREAS), "projections",
                 "imports")  # ``transfer.IMPORTS_AREA``
# Folders of derived data only: a file in their place is left to the code that uses them (``metrics``
# writes around a blocked cache, with a warning); a link is refused like any other.
DERIVED_FOLDERS = frozenset({"projections"})
_TAIL_CHUNK = 64 * 1024
_FIRST_CHUNK = 8 * 1024  # ``first_line``'s reads: a job's first event (its submission) fits in one, mostly
_APPEND = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW
_U64 = (1 << 64) - 1


def change_stamp(events_ctime_ns: int, head_ctime_ns: int, head_size: int) -> int:
    """One signed 64-bit number of a job's files (``fingerprints``' second): the events file's ctime, plus its head
    record's ctime and size each times an odd constant, modulo 2**64. A change of any one of the three always changes
    it (multiplying by an odd number is a bijection modulo 2**64); two at once could cancel only by an arithmetic
    coincidence of one in 2**64. No record: ctime 0, size -1."""
    mixed = (events_ctime_ns + head_ctime_ns * 0x9E3779B97F4A7C15 + head_size * 0xC2B2AE3D27D4EB4F) & _U64
    return mixed - (1 << 64) if mixed >> 63 else mixed


def _complete_end(fd: int, size: int) -> tuple[int, bytes]:
    """Offset just past the last newline, and the last complete line (without newline)."""
    end = size
    buf = b""
    last_nl = -1
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        last_nl = buf.rfind(b"\n")
        if last_nl == -1:
            continue
        prev_nl = buf.rfind(b"\n", 0, last_nl)
        if prev_nl != -1 or end == 0:
            return end + last_nl + 1, buf[prev_nl + 1:last_nl]
    return 0, b""


def _holds_a_line(path: str) -> bool:
    """False for a file holding only a torn first line (a crash while the job was submitted).

    One byte read in the normal case (the file ends with a newline); the whole file only
    when its tail is torn, which is rare.
    """
    try:
        with open(path, "rb", opener=nofollow_opener) as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return True
            fh.seek(0)
            return b"\n" in fh.read()
    except OSError:
        return False


def _listed(st: os.stat_result, path: Callable[[], str]) -> bool:
    """Whether an entry of the jobs folder, by its ``lstat``, is listed as a job stream: a file or a symbolic link
    holding something, a folder holding an entry (``path()``: looked into only then), and anything else (a FIFO,
    socket or device, never opened), whose read reports what it is."""
    if S_ISREG(st.st_mode) or S_ISLNK(st.st_mode):
        return st.st_size > 0
    return _holds_an_entry(path()) if S_ISDIR(st.st_mode) else True


def _holds_an_entry(path: str) -> bool:
    """Whether the folder at ``path`` holds anything (an empty one in a file's place is no file: an append takes it,
    ``vacate``); one that cannot be read counts as holding something, so it is reported rather than passed over."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return True


def _slot_record(data: bytes) -> bytes | None:
    """The record in a slot file's bytes: up to its newline when the rest of the 512 bytes is padding
    (also when the write landed on a longer foreign file before its cut: a crash between). Bytes that
    are all NUL (a write a power loss lost, on a file system that shows them) are no record; any
    other content is returned whole, for the caller's check to judge."""
    if not data.strip(b"\0"):
        return None
    if len(data) >= SLOT_BYTES:
        nl = data.find(b"\n", 0, SLOT_BYTES)
        if nl >= 0 and not data[nl + 1:SLOT_BYTES].strip(b" "):
            return data[:nl] or None
    return data


class JsonlStore(EventStore):
    """Files under ``<root>`` (a project's ``.orchestrator`` folder). Opening it checks its folders
    (``check_folders``): one that is a symbolic link is ``PathEscapeError``, a file ``StorageError``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "queue" / "jobs"
        self.audit_path = self.root / "audit" / "audit_events.jsonl"
        self._durable_dirs: set[str] = set()  # the events files' folders ``_ensure_dir`` made durable
        self._root_s, self._jobs_s = str(self.root), str(self.jobs_dir)  # the hot paths join strings, not Paths
        check_folders(self._root_s, STORE_FOLDERS, DERIVED_FOLDERS)

    # -- paths --------------------------------------------------------------------------------
    def path(self, stream: str) -> Path:
        return Path(self._file(stream))

    def _file(self, stream: str) -> str:
        """``path`` as a string: joining ``pathlib`` objects cost ~25 us per job (several per append)."""
        if stream == AUDIT_STREAM:
            return str(self.audit_path)
        return os.path.join(self._jobs_s, validate_id(stream, "job id") + EVENTS_SUFFIX)

    def _ensure_dir(self, folder: str) -> None:
        """Make ``folder`` (``queue/jobs`` or ``audit``), its entry and those above it durable up to the project
        folder, whoever made them (``make_folder``): once per store object and folder, when it first creates a file
        there or writes a file's first line."""
        if folder not in self._durable_dirs:
            make_folder(folder, self._root_s, durable=True)
            self._durable_dirs.add(folder)

    def __repr__(self) -> str:
        return f"JsonlStore({str(self.root)!r})"

    def _open_for_append(self, path: str, new: bool = False) -> int:
        """The events file, created if missing; never through a symbolic link (``PATH_ESCAPE``, dangling
        or not), and a directory in its place is taken when empty (``vacate``), else ``STORAGE_ERROR``.
        ``new``: the file is not expected to be there (a submit): its folders made durable first, and created by
        the first ``open``, where a first ``open`` without ``O_CREAT`` would only fail."""
        try:
            try:
                if new:
                    self._ensure_dir(os.path.dirname(path))
                    return os.open(path, _APPEND | os.O_CREAT, 0o644)
                return os.open(path, _APPEND)
            except FileNotFoundError:
                self._ensure_dir(os.path.dirname(path))
            except IsADirectoryError:
                if not vacate(path):
                    raise
            return os.open(path, _APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            refuse_link(path, exc)
            if isinstance(exc, IsADirectoryError) or exc.errno == errno.ENXIO:  # a folder holding files, a socket
                raise StorageError(write_failure(path, exc)) from None
            raise path_error(exc) from None

    # -- contract -----------------------------------------------------------------------------
    def append(self, stream: str, build: Builder, expected_seq: int | None = None,
               fence: int | None = None, aux: AuxWrites | None = None,
               in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
        self._no_transaction(in_transaction)
        new_head, appended = self._append(stream, build, expected_seq, expected_last)
        if appended and aux is not None:
            faults.point("store.append.before_aux")  # the lines are durable, their head record not yet
            try:
                self._write_aux(aux(new_head))  # after the lines are durable (files cannot do both at once)
            # a link planted in a record's place since the read too, and a record whose lock stays held (a paused
            # process): not written, as on a full disk, rather than waited for
            except (StorageError, PathEscapeError, LockHeldError) as exc:
                raise AuxNotWrittenError(f"{exc.message} (the lines appended to {stream} before it are durable)",
                                         **{**exc.details, "stream": stream, "seq": new_head.seq,
                                            "linked": isinstance(exc, PathEscapeError)}) from None
        return new_head

    def _append(self, stream: str, build: Builder, expected_seq: int | None,
                expected_last: bytes | None = None) -> tuple[Head, bool]:
        path = self._file(stream)
        with APPENDING as under_way, lock_descriptor(lambda: self._open_for_append(path, new=expected_seq == 0)) as fd:
            lock_soon(fd, LOCK_SPIN_SECONDS if under_way == 1 else 0.0, path)  # closing fd unlocks
            st = os.fstat(fd)
            if not S_ISREG(st.st_mode):  # a FIFO would take a write and never sync it, or block on a long one
                raise StorageError(not_regular(path), stream=stream)
            size = st.st_size
            end, last = _complete_end(fd, size)
            head = Head(self._seq_of(path, last, known=(expected_seq, expected_last)), last)
            if expected_seq is not None and expected_seq != head.seq:
                raise ConcurrencyError(f"{stream}: expected {expected_seq} events, found {head.seq}",
                                       stream=stream, expected=expected_seq, found=head.seq)
            new = list(build(head))
            if not new:
                return head, False
            # the torn tail is cut only now: a build that refused (the bytes may be a whole line that lost its
            # newline, which the stream's head record names: ``audit.refuse_cut``) leaves the file as it was
            if end != size:
                log.warning("repairing torn tail of %s: dropping %d bytes after the last complete line",
                            path, size - end, extra={"stream": stream, "torn_bytes": size - end})
                os.ftruncate(fd, end)
                os.fdatasync(fd)
                faults.point("store.append.after_repair")
            data = b"".join(line + b"\n" for line in new)
            if data.count(b"\n") != len(new):
                raise ValueError("a line must not contain a newline")
            if end == 0:  # a file this process may not have created: its folders' entries too
                self._ensure_dir(os.path.dirname(path))
            faults.point("store.append.before_write")
            # a crash in the middle of the write: only part of the bytes reach the file (a torn tail)
            faults.point("store.append.mid_write", lambda: os.write(fd, data[: max(1, len(data) // 2)]))
            try:
                self._write_all(fd, data)
                faults.point("store.append.after_write")
                os.fdatasync(fd)
                if end == 0:  # the file's first line: its folder entry too, whoever created the file (a writer
                    fsync_dir(os.path.dirname(path))  # killed before its first line, or whose line failed, did not)
            except OSError as exc:
                self._cut_back(fd, end)
                raise StorageError(f"could not durably append to {path}: {os.strerror(exc.errno or errno.EIO)}; "
                                   + NOTHING_WRITTEN, stream=stream) from None
            faults.point("store.append.after_fsync")
            return Head(head.seq + len(new), new[-1]), True

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    @staticmethod
    def _cut_back(fd: int, end: int) -> None:
        try:
            os.ftruncate(fd, end)
            os.fdatasync(fd)
        except OSError:  # pragma: no cover - the disk is failing; readers still ignore a torn tail
            log.error("could not cut back a failed append", extra={"offset": end})

    @staticmethod
    def _seq_of(path: str, last: bytes, known: tuple[int | None, bytes | None] = (None, None)) -> int:
        """The ``seq`` of the stream's last line. ``known`` is the head the caller decided from (``expected_seq``,
        ``expected_last``, a line it verified as that one): a last line of those very bytes holds that ``seq``, so it
        is not parsed again, which for a line holding a 1 MiB input took ~13 ms of each append after it."""
        if not last:
            return 0
        if last == known[1] and known[0] is not None:
            return known[0]
        try:
            seq = json.loads(last)["seq"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise IntegrityError(f"{path}: the last line is corrupt; refusing to append (run verify)") from None
        if not isinstance(seq, int):
            raise IntegrityError(f"{path}: the last line has no integer seq; refusing to append (run verify)")
        return seq

    def wait_for_more(self, stream: str, seq: int, timeout: float) -> bool:
        """Poll the file's size (every 50 us, never longer than ``timeout``) and count its lines when
        it changes. The awaited line is there ~0.1-0.3 ms after its ready entry, before its fsync: the
        caller may read and check it meanwhile, but cannot append its own line before that one is
        durable, since its append waits for the lock the writer holds until then. (A worker sleeps
        with 1 us of timer slack, ``runner.precise_sleeps``: a pause is 56 us, not 106.)"""
        path = self._file(stream)
        deadline = time.monotonic() + timeout
        seen = -1
        while True:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:  # a submit between its ready entry and its events file
                size = -1
            except OSError as exc:
                raise path_error(exc) from None
            if size != seen:
                seen = size
                if size > 0 and len(self.read(stream)) > seq:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.00005)  # the writer is ~0.1 ms away: notice it within ~50 us

    def refuse_unusable(self, stream: str) -> bool:
        """See ``EventStore.refuse_unusable``: one ``lstat`` (and, for a directory, a look for one entry in it: an
        empty one is no file, the append takes its place, ``vacate``)."""
        path = self._file(stream)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise path_error(exc) from None
        if S_ISLNK(mode):
            raise linked_file(path)
        if S_ISDIR(mode):
            with os.scandir(path) as entries:
                if next(entries, None) is None:
                    return False
            raise UnusableFileError(holding_files(path), stream=stream)
        if not S_ISREG(mode):
            raise UnusableFileError(not_regular(path, mode), stream=stream)
        return True

    def read(self, stream: str, from_seq: int = 1) -> list[StoredLine]:
        """See ``EventStore.read``. A symbolic link in the file's place is never followed: ``PATH_ESCAPE``
        (``Orchestrator.load`` reports it as the job's problem); a directory there holds no line."""
        path = self._file(stream)
        try:
            data = read_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return []
        except OSError as exc:
            refuse_link(path, exc)
            self.refuse_unusable(stream)  # a socket (``ENXIO``) or a device: what is there, not how its open failed
            raise path_error(exc) from None
        complete = data[: data.rfind(b"\n") + 1]
        lines = complete.split(b"\n")[:-1]
        return [StoredLine(i, raw) for i, raw in enumerate(lines, 1) if i >= from_seq]

    def first_line(self, stream: str) -> bytes | None:
        """See ``EventStore.first_line``: the file from its start, ``_FIRST_CHUNK`` bytes at a time, up to its
        first newline; no newline (an empty file, a torn first line) is no line, as for ``read``. A symbolic
        link is never followed (``PATH_ESCAPE``); a directory holds no line."""
        path = self._file(stream)
        try:
            with open(path, "rb", buffering=0, opener=nofollow_opener) as fh:
                parts: list[bytes] = []
                while block := fh.read(_FIRST_CHUNK):
                    end = block.find(b"\n")
                    if end >= 0:
                        return b"".join(parts) + block[:end]
                    parts.append(block)
                return None
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            refuse_link(path, exc)
            raise path_error(exc) from None

    def _aux_path(self, area: str, key: str) -> str:
        check_aux_name(area, key)
        return os.path.join(self._root_s, area, key)

    def put_aux(self, area: str, key: str, data: bytes) -> None:
        if area in SLOT_AREAS:
            return self._put_slot(self._aux_path(area, key), area, data)
        if area in NAME_AREAS:
            return self._put_name(self._aux_path(area, key), area)
        path = Path(self._aux_path(area, key))
        # the writer's own copy: its pid (for ``remove_strays``), then its thread, since two threads of one process
        # sharing one copy would truncate each other's and rename what the other is still writing
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
        try:
            try:
                write_new(tmp, data)
            except FileNotFoundError:
                make_folder(path.parent, self._root_s)
                write_new(tmp, data)
            try:
                os.replace(tmp, path)
            except IsADirectoryError:  # a stray directory in the record's place: take it if it is empty
                if not vacate(path):
                    raise
                os.replace(tmp, path)
        except OSError as exc:  # a full disk must surface as STORAGE_ERROR (exit 10), not a traceback
            tmp.unlink(missing_ok=True)
            raise StorageError(write_failure(path, exc), area=area) from None
        remove_strays(path)

    def _put_slot(self, path: str, area: str, data: bytes) -> None:
        """Overwrite the record in place: one 512-byte write at offset 0, under the file's lock.

        A rename costs ~0.2 ms here (ext4 creates the file and flushes it before the rename), twice
        per job for head records; a write in place ~5 us. The file keeps its size, so a crash (of
        the process, or of the machine, given sector-atomic writes, the assumption PostgreSQL makes
        for ``pg_control``) leaves the previous record or the new one; readers take a shared lock,
        so they never see half of a write; a file created but never written reads as no record.
        Inside ``bounded_waits`` a lock held on (a paused process) is ``LockHeldError``, nothing written.
        """
        if len(data) >= SLOT_BYTES:  # head, lease and marker records are bounded by design (ids <= 128 chars)
            raise ValueError(f"a record of {len(data)} bytes does not fit the {SLOT_BYTES}-byte slot of {area}/")
        slot = data + b"\n" + b" " * (SLOT_BYTES - 1 - len(data))
        try:
            with lock_descriptor(lambda: open_creating(path, self._root_s)) as fd:
                lock_soon(fd, 0.0, path)  # bounded in ``bounded_waits``: a paused reader or writer holds it for ever
                if os.pwrite(fd, slot, 0) != SLOT_BYTES:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if os.fstat(fd).st_size > SLOT_BYTES:  # not written by this store: keep the slot exact
                    os.ftruncate(fd, SLOT_BYTES)
        except OSError as exc:  # a full disk must surface as STORAGE_ERROR (exit 10), not a traceback
            refuse_link(path, exc)  # never written through a symbolic link: PATH_ESCAPE
            raise StorageError(write_failure(path, exc), area=area) from None

    def _put_name(self, path: str, area: str) -> None:
        """Make the record ``path`` of a name area (``NAME_AREAS``): a hard link of the area's template, or a file of
        its own where no link can be made. A regular file there already is the record; a symbolic link is
        ``PATH_ESCAPE``, and a directory is taken when empty, else ``STORAGE_ERROR``, as for a slot."""
        try:
            try:
                if not link_name(os.path.join(os.path.dirname(path), NAME_TEMPLATE), path, self._root_s):
                    os.close(open_creating(path, self._root_s))
            except FileExistsError:
                if self._name_present(path):
                    return
                if not vacate(path):  # a directory holding files, a FIFO, a socket
                    raise OSError(errno.EISDIR if os.path.isdir(path) else errno.ENXIO, "not a record", path) from None
                self._put_name(path, area)
        except OSError as exc:  # a full disk must surface as STORAGE_ERROR (exit 10), not a traceback
            refuse_link(path, exc)
            raise StorageError(write_failure(path, exc), area=area) from None

    @staticmethod
    def _name_present(path: str) -> bool:
        """Whether a name area's record ``path`` is there: a regular file (one ``lstat``, nothing read). A symbolic
        link is never taken for one (``PATH_ESCAPE``); a directory or a FIFO is no record."""
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise path_error(exc) from None
        if S_ISLNK(mode):
            raise linked_file(path)
        return S_ISREG(mode)

    def aux_keys(self, area: str) -> list[str]:
        """The names of the files in the area: a directory there is no record (``get_aux``)."""
        try:
            entries = os.scandir(self.root / validate_id(area, "aux area"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise path_error(exc) from None
        with entries:  # a dot name is a writer's temporary copy
            return sorted(e.name for e in entries if not e.name.startswith(".") and not e.is_dir(follow_symlinks=False))

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """An ``flock`` on ``locks/<name>.lock``: released by the kernel if the process dies, and
        exclusive between threads too (each call opens its own file)."""
        path = self.root / LOCKS_DIR / f"{validate_id(name, 'lock name')}.lock"
        with contextlib.ExitStack() as stack:
            try:
                fd = stack.enter_context(lock_descriptor(lambda: open_creating(path, self._root_s, os.O_RDWR)))
            except OSError as exc:  # no inode left, or a directory holding files in its place
                raise StorageError(f"could not open the lock {path}: {exc.strerror}") from None
            lock_soon(fd, 0.0, str(path))  # bounded in ``bounded_waits``; another thread here may hold it
            yield

    def prepare_locks(self) -> None:
        """``locks/``, made if missing (``make_folder``: a link is ``PathEscapeError``, anything else
        ``StorageError``). Not durable: a lock file holds nothing."""
        make_folder(os.path.join(self._root_s, LOCKS_DIR), self._root_s)

    def delete_aux(self, area: str, key: str) -> None:
        remove_file(self._aux_path(area, key))

    def get_aux(self, area: str, key: str) -> bytes | None:
        """The record, or None when there is none; a directory in its place (a stray ``mkdir``, not
        something this store writes) is no record, as a damaged cache entry is. No record is read
        through a symbolic link: ``PATH_ESCAPE`` (the areas that are not slots are replaced by rename,
        which replaces a link and never writes through it); a FIFO in a record's place reads as none. A head or lease
        record is read under its shared lock: inside ``bounded_waits`` one a paused writer holds on is
        ``LockHeldError`` (a worker passes over its job, ``status`` reads around it)."""
        path = self._aux_path(area, key)
        if area in NAME_AREAS:
            return NAME_RECORD if self._name_present(path) else None
        try:
            if area not in SLOT_AREAS:
                return read_file(path) or None
            with lock_descriptor(lambda: nofollow_opener(path, os.O_RDONLY)) as fd:
                lock_soon(fd, 0.0, path, fcntl.LOCK_SH)  # never half of an in-place write; bounded in bounded_waits
                data = read_all(fd)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            refuse_link(path, exc)
            raise path_error(exc) from None
        return _slot_record(data)

    def fingerprints(self) -> tuple[list[str], "array[int]", "array[int]"]:
        """See ``EventStore.fingerprints``: each events file's size, and its *change stamp* (``change_stamp``: the
        events file's ctime and its head record's ctime and size), by one listing of the jobs folder and two ``stat``
        calls per job (its file, its record), relative to the open folders; no file is opened. The ctime (the inode's
        change time) moves at every write, ``truncate``, ``chmod`` or ``utime`` and no tool can set it back: a copy
        restored with ``cp -a`` or ``rsync -a``, or an edit followed by ``touch -d``, changes it though size and mtime
        are the old ones (the jobs cache took size and mtime until 2026-12-06). The head record is in it because
        damage there (a torn sector, a hand: ``verify`` says ``TRUNCATED`` or ``HEAD_MISMATCH``) leaves the events
        file alone, and a job with an integrity error gets no new event. Nothing the store does to a job's files
        besides writing them (no hard link, no ``chmod``) moves a ctime: a read leaves both as they were.
        Every non-empty ``*.events.jsonl`` is listed, a symbolic link
        too (its read reports ``PATH_ESCAPE``), and, as ``job_ids`` lists them, a FIFO, socket or device, or a folder
        holding something, in a job file's place (its read reports ``NOT_A_FILE``, never waiting on it; ``metrics``
        counts it in ``integrity_errors``): the jobs cache keeps an entry for a file that holds no job."""
        ids: list[str] = []
        sizes, stamps = array("q"), array("q")
        try:
            dir_fd = os.open(self._jobs_s, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return ids, sizes, stamps
        except OSError as exc:
            raise path_error(exc) from None
        try:
            heads_fd = os.open(os.path.join(self._root_s, HEADS_AREA), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # no record yet, or something that is no folder in its place: every job's record is missing
            heads_fd = None
        try:
            stat, cut = os.stat, -len(EVENTS_SUFFIX)
            # listdir + stat relative to the open folder: ~25% faster than scandir's DirEntry.stat
            for name in os.listdir(dir_fd):
                if name.endswith(EVENTS_SUFFIX):
                    try:
                        st = stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    # most entries are files holding events: listed without a call (100,000 of them at a refresh)
                    if (st.st_size and not S_ISDIR(st.st_mode)) or _listed(st, lambda: os.path.join(self._jobs_s, name)):
                        job_id = name[:cut]
                        try:
                            head = stat(job_id, dir_fd=heads_fd, follow_symlinks=False) if heads_fd is not None else None
                        except (OSError, ValueError):  # none (or a name no record can have: its read says so)
                            head = None
                        ids.append(job_id)
                        sizes.append(st.st_size)
                        stamps.append(change_stamp(st.st_ctime_ns, head.st_ctime_ns, head.st_size) if head is not None
                                      else change_stamp(st.st_ctime_ns, 0, -1))
        finally:
            os.close(dir_fd)
            if heads_fd is not None:
                os.close(heads_fd)
        return ids, sizes, stamps

    def job_ids(self) -> Iterator[str]:
        try:
            entries = os.scandir(self.jobs_dir)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise path_error(exc) from None
        with entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(EVENTS_SUFFIX) or not is_id(name[: -len(EVENTS_SUFFIX)]):
                    continue  # not a job's file: a stray one (``my notes.events.jsonl``) is no job this code wrote
                if entry.is_symlink():  # never followed, but listed: reading it reports PATH_ESCAPE
                    yield name[: -len(EVENTS_SUFFIX)]
                    continue
                st = entry.stat(follow_symlinks=False)
                if S_ISREG(st.st_mode):
                    if st.st_size > 0 and _holds_a_line(entry.path):
                        yield name[: -len(EVENTS_SUFFIX)]
                elif _listed(st, lambda: entry.path):
                    # a FIFO, socket, device or a folder holding files (never made here), never opened, but
                    # listed: reading it reports NOT_A_FILE, not a job silently passed over (an empty folder is none)
                    yield name[: -len(EVENTS_SUFFIX)]
