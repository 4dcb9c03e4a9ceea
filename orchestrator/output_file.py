"""A file a command writes at a path the operator names: an export bundle, a head anchor, benchmark results."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, ClassVar, Iterator

from orchestrator import faults
from orchestrator.config import STATE_DIR
from orchestrator.errors import InvalidInputError, write_error
from orchestrator.store.files import STRAY_AGE, fsync_dir, open_regular
from orchestrator.worker_folders import ARTIFACTS_DIR

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
TEMP_HEX = 8  # hex digits of a temporary file's random part: .<name>.<8 hex>.tmp (``temp_stem``)
NAME_MAX = 255  # bytes of a file name, where the folder's file system does not say (ext4, xfs, btrfs, tmpfs: 255)
STORE_MARKS = ("queue", "audit")  # a ``.orchestrator`` folder holding one of these is a store's


def refusal(path: Path) -> str | None:
    """Why ``path`` may not be written (whole, by a rename over it), or None. A folder; anything but a regular file
    (a device such as ``/dev/null``, a pipe, ``/dev/stdout``'s link to one), which the rename would replace rather
    than write to; a path inside a store (``BASE_PATH/<PROJECT_ID>/.orchestrator``, found through links too),
    whose files only the orchestrator writes (a bundle renamed over the audit log would replace its history), a
    job's artifact folder excepted (a job may keep an export there)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there yet, or a path ``open`` will refuse with its own reason
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        return "it is a folder"
    if mode is not None and not stat.S_ISREG(mode):
        return "it is not a regular file (a device, a pipe or a socket): writing it whole would replace it"
    parts = Path(os.path.realpath(path.parent)).parts
    for i, part in enumerate(parts):
        if part != STATE_DIR or not any(os.path.isdir(os.path.join(*parts[:i + 1], m)) for m in STORE_MARKS):
            continue
        below = parts[i + 1:]
        if len(below) < 2 or below[0] != ARTIFACTS_DIR:
            return (f"it is inside the store {os.path.join(*parts[:i + 1])}, whose files only the orchestrator "
                    f"writes (a job's folder {ARTIFACTS_DIR}/<job_id>/ excepted)")
    return None


def temp_stem(path: Path) -> str:
    """What the temporary files of ``path`` are named after: ``.<stem>.<8 hex>.tmp``. The name itself, unless that
    would be longer than a file name may be (a name of 242 bytes or more): then its start and a digest of the
    whole name (``<start>~<8 hex>``), so that a name the file system takes is written, and its leftovers are
    still its own (``remove_leftovers``), not those of another long name that starts the same way."""
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such folder (``open`` says so), or no answer
        name_max = NAME_MAX
    room = name_max - len(f"..{'0' * TEMP_HEX}.tmp")
    if len(os.fsencode(path.name)) <= room:
        return path.name
    start = path.name
    while len(os.fsencode(start)) > room - 1 - TEMP_HEX:  # whole characters (a UTF-8 name stays UTF-8)
        start = start[:-1]
    return f"{start}~{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:TEMP_HEX]}"


def remove_leftovers(path: Path, now: float, keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove the temporary files of ``path`` that killed writers left (``.<stem>.<8 hex>.tmp``), and return
    their names. One is removed only when it is a regular file of this user (never a link, a folder or a
    FIFO, never followed), untouched for ``STRAY_AGE`` seconds, and no writer holds its lock: a live
    ``OutputFile`` holds one on its temporary file until the rename (the kernel drops it when the process
    dies, SIGKILL included). The age covers the instant between a writer's create and its lock, clocks of a
    shared folder's server, and locks that a file system does not share. ``keep``: names never touched (this
    process's own live temporary files: some file systems emulate these locks per process). Best effort:
    whatever cannot be checked is left."""
    pattern = re.compile(rf"\.{re.escape(temp_stem(path))}\.[0-9a-f]{{{TEMP_HEX}}}\.tmp")
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name) and e.name not in keep]
    except OSError:
        return removed
    for entry in entries:
        try:
            seen = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(seen.st_mode) or seen.st_uid != os.geteuid() or now - seen.st_mtime < STRAY_AGE:
            continue
        if _remove_unheld(entry.path, seen):
            removed.append(entry.name)
    return removed


def _remove_unheld(name: str, seen: os.stat_result) -> bool:
    """Unlink ``name`` if it is still the file ``seen`` and no process holds its lock; the lock is held while
    unlinking, so a writer cannot take it in between (none would: its own file is new)."""
    try:
        fd, opened = open_regular(name)
    except OSError:  # gone, replaced by a link or by something else, not ours to read
        return False
    try:
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: BlockingIOError
        current = os.stat(name, follow_symlinks=False)  # the name still the file judged (not a new one)
        if (current.st_dev, current.st_ino) != (seen.st_dev, seen.st_ino):
            return False
        os.unlink(name)
        return True
    except OSError:  # held, gone, or a file system without these locks: cannot tell, so it stays
        return False
    finally:
        os.close(fd)


class OutputFile:
    """``path`` written whole or not at all, and refused before the work that fills it.

    Creating it opens a temporary file next to ``path`` at once (``.<name>.<8 hex>.tmp``, locked until
    the rename; a shorter name for a long one, ``temp_stem``), so a path that cannot be written is refused
    before anything is read or measured. Leaving the ``with`` block syncs the file, renames it over ``path``
    and syncs the folder (a folder that cannot be synced is an error that says the file is in place); an error
    in the block (or ``discard``) removes it, and a file already at ``path`` is left as it was. A path
    that cannot be written is ``InvalidInputError`` (a missing folder, a file where a folder belongs, a
    folder at ``path``, no permission), a full or failing disk ``StorageError``. A process killed
    before the rename leaves its temporary file: the next ``OutputFile`` of the same ``path`` removes
    it (``remove_leftovers``). Two writers of one ``path`` each write their own temporary file; the
    last rename wins, whole.
    """

    _held: ClassVar[set[Path]] = set()  # this process's live temporary files (``remove_leftovers`` keep)

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path, self.what = Path(path), what
        self._done = False
        self._fh: BinaryIO | None = None
        if not os.fspath(path):  # Path("") is the current folder: named, not taken for it
            raise InvalidInputError(f"cannot write {what}: the path given is empty; nothing was written", path="")
        reason = refusal(self.path)  # before the temporary file's name: "/" or "." has no name to take
        if reason:
            # the reason in brackets (``security.shown``): after "backups/secret: " it would be redacted
            raise InvalidInputError(f"cannot write {what} to {self.path} ({reason}); nothing was written there",
                                    path=str(self.path))
        self._tmp = self.path.with_name(f".{temp_stem(self.path)}.{os.urandom(TEMP_HEX // 2).hex()}.tmp")
        with self._refused():  # owner-only whatever the umask: a bundle holds every job's input and output
            self._fh = os.fdopen(os.open(self._tmp, _NEW_FILE, 0o600), "wb")
        self._held.add(self._tmp)
        with contextlib.suppress(OSError):  # without these locks, leftovers are never removed (nothing else)
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove_leftovers(self.path, time.time(), keep=frozenset(p.name for p in self._held))

    def write(self, data: bytes) -> None:
        assert self._fh is not None and not self._done
        with self._refused():
            self._fh.write(data)

    def flush(self) -> None:
        assert self._fh is not None and not self._done
        with self._refused():
            self._fh.flush()

    def commit(self) -> None:
        """Sync the file, rename it over ``path`` and sync the folder (once; nothing after ``discard``)."""
        if self._done:
            return
        assert self._fh is not None
        with self._refused():
            self._fh.flush()
            os.fsync(self._fh.fileno())
            faults.point("output_file.before_rename")
            os.replace(self._tmp, self.path)  # before the close, which drops the lock: never a stray meanwhile
        self._done = True
        self._release()
        try:
            fsync_dir(self.path.parent)  # the rename too: an anchor that vanishes on a power cut proves nothing
        except OSError as exc:  # written, and in place: say so, not "nothing was written"
            error = write_error(exc)
            raise error(f"{self.what} was written to {self.path}, but its folder could not be synced: "
                        f"{exc.strerror or exc}; the file is in place, but a power cut could still undo the rename "
                        "(write it again once the folder can be synced)", path=str(self.path)) from None

    def discard(self) -> None:
        """Drop what was written: ``path`` stays as it was."""
        self._done = True
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._release()

    def _release(self) -> None:
        self._held.discard(self._tmp)
        if self._fh is not None and not self._fh.closed:
            with contextlib.suppress(OSError):
                self._fh.close()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    @contextlib.contextmanager
    def _refused(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.discard()
            error = write_error(exc)
            raise error(f"cannot write {self.what} to {self.path} ({self._reason(exc)}); nothing was written there",
                        path=str(self.path)) from None

    def _reason(self, exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError):
            if self._fh is not None and self.path.parent.is_dir():  # opened, then taken away
                return f"its temporary file {self._tmp.name} was removed by another process"
            return f"there is no folder {self.path.parent}"
        if isinstance(exc, NotADirectoryError):
            blocking = next((p for p in reversed(self.path.parents) if p.exists() and not p.is_dir()), self.path.parent)
            return f"{blocking} is a file, not a folder"
        return exc.strerror or str(exc)
