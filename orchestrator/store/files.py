"""The file operations every file of a store goes through: never through a symbolic link, folders that
must be real ones, ``OSError`` mapped to ``StorageError`` where it happens, and durable folder entries.

Used by the file backend (``jsonl``), its queue index, the worker's folders and the files the CLI
writes; kept apart from the JSONL format itself. ``open_regular`` serves any file that something other than
the orchestrator may have replaced: a run's output and terminal files, key files, artifacts.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from orchestrator.errors import PathEscapeError, StorageError

log = logging.getLogger(__name__)


def nofollow_opener(path: str, flags: int) -> int:
    """``open``'s opener for reading an events file or a slot: never through a symbolic link, which
    could lead anywhere (outside ``BASE_PATH/<PROJECT_ID>``); the link itself fails with ``ELOOP``.
    Non-blocking, so a FIFO planted in a file's place reads as empty instead of hanging the reader
    (no effect on a regular file). Free: no extra system call."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


class NotRegularFileError(OSError):
    """What ``open_regular`` found at a path, and opened without waiting, is not a regular file: a FIFO, a
    device, a folder. An ``OSError``, so a caller that treats every failure to open alike needs no case of its own."""

    def __init__(self, path: "Path | str", mode: int) -> None:
        super().__init__(f"{os.fspath(path)} is not a regular file")
        self.path, self.mode, self.strerror = os.fspath(path), mode, "not a regular file"


# O_NONBLOCK: a FIFO opens at once (to read; to write with no reader: ``ENXIO``), where a plain open waits for its
# other end for ever; no effect on a regular file, so no caller clears it. O_NOCTTY: a terminal device opened on the
# way to being refused never becomes the process's controlling terminal.
_REGULAR_ONLY = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular(path: "Path | str", flags: int = os.O_RDONLY, *,
                 follow: bool = False) -> tuple[int, os.stat_result]:
    """Open the regular file at ``path`` and return its descriptor and status, for a file something other than the
    orchestrator may have replaced: checked by ``fstat`` of what was opened, so what is then read or written is
    the file checked (a check of the path, then an open of it, could each meet another file).

    Never through a symbolic link, unless ``follow`` (a path the operator names, who may make it a link): a link is
    ``OSError`` ``ELOOP``. Never waiting on a FIFO. Anything else opened is closed and ``NotRegularFileError``;
    a missing file is ``FileNotFoundError``, any other failure the ``OSError`` of ``os.open``. The caller closes
    the descriptor."""
    fd = os.open(path, flags | _REGULAR_ONLY | (0 if follow else os.O_NOFOLLOW))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


_READ_CHUNK = 1 << 16  # under malloc's mmap threshold: a read of a small file costs no mmap/munmap


def read_all(fd: int) -> bytes:
    """The rest of ``fd``'s bytes, by plain ``read`` calls: a buffered file object (``open(fd, "rb")``) costs four
    system calls more (two ``fstat``, an ``ioctl``, an ``lseek``) and its allocations, on each read of a job and
    of each head record, several per job. A larger file is read on at its size (``fstat``), and a full first read
    of what is no regular file (a device) is ``NotRegularFileError``. A FIFO (opened non-blocking,
    ``nofollow_opener``) with nothing more to read ends it."""
    parts: list[bytes] = []
    size = _READ_CHUNK
    while True:
        try:
            chunk = os.read(fd, size)
        except BlockingIOError:
            break
        if not chunk:
            break
        parts.append(chunk)
        if len(parts) == 1 and len(chunk) == size:  # a large file: the rest in one read
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a device that never ends (``/dev/zero``): read no further
                raise NotRegularFileError(f"descriptor {fd}", st.st_mode)
            size = max(st.st_size - len(chunk), 0) + _READ_CHUNK
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_file(path: str) -> bytes:
    """The whole file at ``path``, never through a symbolic link (``nofollow_opener``), by ``read_all``."""
    fd = nofollow_opener(path, os.O_RDONLY)
    try:
        return read_all(fd)
    except NotRegularFileError as exc:
        raise NotRegularFileError(path, exc.mode) from None
    finally:
        os.close(fd)


def linked_file(path: str) -> PathEscapeError:
    """The error for a file of the store that is a symbolic link, never followed."""
    return PathEscapeError(f"{path} is a symbolic link; the store never follows one (it could lead outside "
                           "the project folder): if it leads to this store's own file, move that file into its "
                           "place, else remove the link and restore the file from a backup", path=path)


def refuse_link(path: str, exc: OSError) -> None:
    """Raise ``PathEscapeError`` if ``exc`` is an ``O_NOFOLLOW`` open meeting a symbolic link."""
    if exc.errno == errno.ELOOP:
        raise linked_file(path) from None


def path_error(exc: OSError, given: "Path | str | None" = None) -> StorageError:
    """The ``StorageError`` for a store path that is not what it must be: a file where a folder belongs
    (naming the first such part of the path), a folder where a file belongs, or one this user may not use.
    The store maps its own ``OSError``s here, where they happen, so a Python caller gets it as the CLI does.
    ``given``: the path the call was given, for an error that names none (``os.utime``'s)."""
    filename = exc.filename if exc.filename is not None else given
    name = None if filename is None else os.fsdecode(filename)
    if isinstance(exc, NotADirectoryError) and name is not None:
        path = Path(name)
        for part in [*reversed(path.parents), path]:
            if os.path.lexists(part) and not os.path.isdir(part):
                return StorageError(f"{part} is a file where a folder belongs; move it aside and restore the "
                                    "folder from a backup, then run verify", path=str(part))
    if isinstance(exc, IsADirectoryError):
        reason = " is a folder where a file belongs; move it aside and restore the file from a backup, then run verify"
    elif isinstance(exc, PermissionError):
        reason = ": permission denied; run the command as the store's owner, or fix the owner and mode"
    else:
        reason = f": {exc.strerror or exc}"
    return StorageError(f"{name or 'a path of the store'}{reason}", path=name)


def fsync_dir(path: "Path | str") -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def vacate(path: "Path | str") -> bool:
    """Remove a directory found where a record or index file belongs, if it is empty; True when
    ``path`` is free now. This store never makes a directory there (a stray ``mkdir``), and an empty
    one holds nothing to lose; one that holds anything is left alone for an operator to look at."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    log.warning("removed the empty directory %s, found where a record belongs", path, extra={"path": str(path)})
    return True


def remove_file(path: "Path | str") -> None:
    """Remove a record or index file; one already gone is fine, and a directory in its place goes
    only when empty (``vacate``): one holding files stays, met again and passed over like this.
    Any other failure is ``StorageError`` (``path_error``)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, PermissionError) as exc:  # Linux says EISDIR for a directory, BSDs EPERM
        if not os.path.isdir(path):
            raise path_error(exc) from None
        vacate(path)
    except OSError as exc:
        raise path_error(exc) from None


def open_creating(path: "Path | str", top: "Path | str", flags: int = os.O_WRONLY) -> int:
    """``os.open(path, flags | O_CREAT)``, creating the parent folders when they are missing (``make_folder``,
    up to ``top``), and taking the place of an empty directory (``vacate``); a directory that holds files raises
    ``IsADirectoryError``. Never through a symbolic link (``PathEscapeError``), like every file of
    the store: a planted link would have a lock or a record made anywhere. Non-blocking: a FIFO in the
    file's place fails to open for writing (``ENXIO``) instead of waiting for a reader forever (no effect
    on a regular file)."""
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            make_folder(os.path.dirname(path), top)
        except IsADirectoryError:
            if not vacate(path):
                raise
        return os.open(path, flags, 0o644)
    except OSError as exc:
        refuse_link(str(path), exc)
        raise


def link_name(template: "Path | str", path: "Path | str", top: "Path | str", folders: Iterable["Path | str"] = ()) -> bool:
    """Make ``path`` a hard link of the empty file ``template``: a record that is only a name (an index entry, an
    audit marker) costs one ``link`` and no new inode. Creating a file costs 20 us to over 1 ms on the benchmark
    disk, depending on how many files were deleted in the last minutes (``docs/performance.md``); a link ~20 us
    either way, and watchers see it as a creation (``IN_CREATE``) all the same. The template (and the folders) are
    made when missing, and a template out of links (65,000 on ext4) is replaced by a fresh one: one file a 65,000
    names; ``folders`` are made with the template (the other folders of its names). False where no link can be
    made (no hard links on this file system, a directory holding files as the template): the caller creates the file.
    ``FileExistsError`` when something is at ``path``. A template that is not a regular file is replaced first
    (``_usable_template``): a symbolic link planted there would be linked itself, so every name made from it
    would be a link too (``PATH_ESCAPE`` to its reader), and a FIFO's names no records."""
    for attempt in range(3):
        try:
            _usable_template(template, top)
            os.link(template, path, follow_symlinks=False)
            return True
        except FileExistsError:
            raise
        except FileNotFoundError:
            if attempt:
                return False
            for folder in (*folders, os.path.dirname(path)):
                make_folder(folder, top)
            try:
                os.close(open_creating(template, top))
            except OSError:  # a directory holding files in its place, no inode left: the caller's file says which
                return False
        except OSError as exc:
            if exc.errno != errno.EMLINK or attempt:
                return False
            _fresh_template(template, top)
    return False


def _usable_template(template: "Path | str", top: "Path | str") -> None:
    """Make ``template`` a regular file that ``link_name`` can link: anything else there (a symbolic link, a FIFO, a
    socket, a device, an empty directory; never made by the store) is replaced by a fresh one, with a warning. It
    is a derived file (its names are what count), so nothing is lost. One ``lstat``, ``FileNotFoundError`` when it
    is missing; a directory holding files is not ours to remove: ``IsADirectoryError``."""
    mode = os.lstat(template).st_mode
    if stat.S_ISREG(mode):
        return
    log.warning("replacing %s, which is not a regular file, by an empty file to link", template,
                extra={"path": os.fspath(template)})
    if stat.S_ISDIR(mode) and not vacate(template):
        raise IsADirectoryError(errno.EISDIR, "a directory that holds files", os.fspath(template))
    _fresh_template(template, top)


def _fresh_template(template: "Path | str", top: "Path | str") -> None:
    """Put a new empty file in ``template``'s place (by rename: a linker meanwhile links the old one or the new)."""
    fresh = f"{template}.{os.getpid()}.{threading.get_native_id()}.tmp"
    os.close(open_creating(fresh, top))
    os.replace(fresh, template)


def write_new(path: "Path | str", data: bytes) -> None:
    """Write ``data`` to ``path``, replacing a file there but never writing through a link in its place, nor
    waiting for a reader of a FIFO there (``ENXIO``, as ``open_creating``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
    with os.fdopen(os.open(path, flags, 0o644), "wb") as fh:
        fh.write(data)


_NOT_REGULAR_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
                      stat.S_IFBLK: "a device"}


def not_regular(path: "Path | str", mode: int | None = None) -> str:
    """Why a FIFO, a socket or a device in the place of a file of the store is not written: this store never
    makes one, and writing to it would block (a FIFO nobody reads) or send the bytes elsewhere. With its ``mode``
    (from ``lstat``), says which of them is there."""
    kind = _NOT_REGULAR_KINDS.get(stat.S_IFMT(mode)) if mode is not None else None
    found = f"{kind}, not a regular file" if kind else "not a regular file (a FIFO, a socket or a device)"
    return f"{path} is {found}, where a file of the store belongs; move it away"


def holding_files(path: "Path | str") -> str:
    """Why a directory in the place of a file of the store is not written: one holding files is not ours to remove
    (an empty one is taken, ``vacate``)."""
    return f"{path} is a directory that holds files, where a file of the store belongs; move it away"


def write_failure(path: "Path | str", exc: OSError) -> str:
    """Why a write to ``path`` failed, for ``StorageError``: a directory in a record's place says so, and
    so does a FIFO or a socket (``open_creating`` refuses one with ``ENXIO``, ``pwrite`` with ``ESPIPE``)."""
    if isinstance(exc, IsADirectoryError):
        return holding_files(path)
    if exc.errno in (errno.ENXIO, errno.ESPIPE):
        return not_regular(path)
    if isinstance(exc, (NotADirectoryError, PermissionError)):
        return path_error(exc).message
    return f"could not write {path}: {os.strerror(exc.errno or errno.EIO)}"


def linked_folder_error(path: str) -> PathEscapeError:
    """The error for a folder of the store that is a symbolic link (``check_folders``,
    ``WorkerFolders.artifacts_dir``)."""
    return PathEscapeError(f"{path} is a symbolic link where a folder of the store belongs; the store never "
                           "follows one (it could lead outside the project folder): remove it (and move the "
                           "folder it leads to into its place, if the store's files are there)", path=path)


def _refuse_as_folder(path: str, mode: int, *, derived: bool = False) -> None:
    """Raise unless ``mode`` (from ``lstat``) is a real folder: a symbolic link is ``PathEscapeError``,
    anything else ``StorageError`` (not for a ``derived`` folder: only a link is refused there)."""
    if stat.S_ISLNK(mode):
        raise linked_folder_error(path)
    if not stat.S_ISDIR(mode) and not derived:
        raise StorageError(f"{path} is a file where a folder belongs; move it aside and restore the folder from a "
                           "backup, then run verify", path=path)


def check_folders(root: "Path | str", names: Iterable[str], derived: frozenset[str] = frozenset()) -> None:
    """Refuse a folder of the store (``names``, under ``root``; "" is ``root``) that is a symbolic link or not a
    folder, when the store is opened: ``O_NOFOLLOW`` guards the last part of a path only, and a linked
    ``queue/`` would have every write land where it leads. One ``lstat`` per folder, once, instead of a
    check per operation. A missing folder is fine: ``make_folder`` makes it, never through a link. The
    folders above ``root`` (``BASE_PATH/<PROJECT_ID>``) are the user's, and may be links. Of the ``derived``
    folders (data rebuilt from the events) only a link is refused."""
    for name in names:
        path = os.path.join(root, name) if name else os.fspath(root)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise path_error(exc) from None
        _refuse_as_folder(path, mode, derived=name in derived)


# The store's folders, as its files (0644): readable as the umask says, never writable by others whatever it says (a
# ``mkdir`` mode is masked by the umask, never widened). Until 2026-12-07 they were made 0777 less the umask: under a
# umask of 000, or 002 with a shared group, another user could rename a run's folder away and put one of their own,
# with the outcome they chose, in its place. What a run works in is owner-only (``run_folder.PRIVATE_FOLDER``).
STORE_FOLDER = 0o755

# The folders of this process's ``make_folder(durable=True)`` whose entry, and every entry above it up to the project
# folder (which holds the store's), this process synced: each chain is synced once per process, whoever made it.
_DURABLE_FOLDERS: set[str] = set()


def make_folder(path: "Path | str", top: "Path | str", durable: bool = False) -> None:
    """``os.makedirs(path, exist_ok=True)`` for a folder of the store, except that a folder found there already
    (at or below ``top``) must be a real one: ``makedirs`` takes a link to a folder for the folder. A link is
    ``PathEscapeError``; a file, or any other ``OSError``, ``StorageError``. Costs nothing when the folder is made;
    an ``lstat`` when it was there.

    ``durable``: when this returns, the folder's entry and each one above it up to the project folder's (``top``'s
    parent: ``BASE_PATH/<PROJECT_ID>``, which the store makes too) are durable, and so is the entry of any folder
    further up that this call made. A folder found there counts too: a process killed between making it and syncing
    its parent (or a non-durable ``make_folder``, the index's) left an entry nobody synced. Synced once per process
    (``_DURABLE_FOLDERS``): a store pays it at its first write, not per file."""
    path, top = os.fspath(path), os.fspath(top)
    try:
        made = mkdir_with_parents(path, found=lambda folder: _check_found(folder, top))
        if durable:
            _sync_entries(path, top, made)
    except OSError as exc:
        raise path_error(exc) from None


def mkdir_with_parents(path: str, mode: int = STORE_FOLDER, found: Callable[[str], None] | None = None) -> list[str]:
    """``mkdir path`` (``mode``), the folders missing above it made too, as the store makes its own
    (``STORE_FOLDER``: ``os.makedirs`` gives them the umask's mode alone); returns the folders it made, top down
    (``path`` last, when it made it). ``found`` is given each folder found there already: ``path``, or one above it
    made meanwhile by another process. The one folder-making of the store (``make_folder``) and of what a run works
    in (``run_folder.make_private_folder``)."""
    try:
        os.mkdir(path, mode)
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if parent == path:
            raise
        made = mkdir_with_parents(parent, STORE_FOLDER, found)
        try:
            os.mkdir(path, mode)
        except FileExistsError:  # made meanwhile
            if found is not None:
                found(path)
            return made
        return [*made, path]
    except FileExistsError:
        if found is not None:
            found(path)
        return []
    return [path]


def _sync_entries(path: str, top: str, made: list[str]) -> None:
    """fsync the folder holding ``path``'s entry, then the one holding that folder's, and so on up to the one holding
    the project folder's (``top``'s parent's), passing over what this process synced already (``_DURABLE_FOLDERS``);
    further up only for the folders this call ``made`` (the folders above the project are the user's). Absolute
    paths: a relative ``top`` has no parent in its name."""
    path, made = os.path.abspath(path), [os.path.abspath(m) for m in made]
    project = os.path.dirname(os.path.abspath(top))
    chain = []
    folder = path
    while (folder not in _DURABLE_FOLDERS and _inside(folder, project)) or folder in made:
        parent = os.path.dirname(folder)
        if parent == folder:  # the file system's root
            break
        fsync_dir(parent)
        chain.append(folder)
        folder = parent
    _DURABLE_FOLDERS.update(chain)  # only once all of them are synced


def _inside(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it (by name: both are the store's own spellings)."""
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _check_found(path: str, top: str) -> None:
    """A folder ``make_folder`` found already there: one of the store's must be real, not a link."""
    if _inside(path, top):
        _refuse_as_folder(path, os.lstat(path).st_mode)
    elif not os.path.isdir(path):  # the user's folders: a link to a folder is theirs to choose
        raise FileExistsError(errno.EEXIST, "exists, and is not a folder", path)


STRAY_AGE = 600.0  # a left-over untouched this long, whose writer's pid is gone here, is a stray


def named_pid(text: str) -> int | None:
    """The pid a left-over's name gives (``host-<pid>-``, ``.probe-<pid>-``, ``.<name>.<pid>.``), None when ``text`` is
    no pid: ASCII digits only (``str.isdigit`` says yes to "²", which ``int`` refuses), as a job running as this user
    may make such a name."""
    return int(text) if text.isascii() and text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is alive on this machine; True when it cannot tell (alive under another user). A pid no
    process can have (past C's int, read from a name a job may make: ``artifacts/.probe-99999999999-x``) is not:
    ``os.kill`` raised ``OverflowError``, and every worker start ended in a traceback."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True
    return True


def remove_strays(path: Path) -> None:
    """Remove the temporary copies of ``path`` left by writers killed before their rename: untouched
    for ``STRAY_AGE`` seconds *and* their pid not alive on this machine (the age keeps a writer in
    another pid namespace safe). Only big, rarely written records (the ``metrics`` cache) take this
    path, so listing their folder here costs nothing that matters."""
    prefix = f".{path.name}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = named_pid(name[len(prefix):-len(".tmp")].split(".", 1)[0])  # <pid>.<thread> (<pid> before 2026-12-02)
        if pid is None or pid == os.getpid():
            continue
        try:
            if time.time() - os.stat(path.parent / name).st_mtime < STRAY_AGE or pid_alive(pid):
                continue  # recent, or its writer is still alive
        except OSError:  # gone already
            continue
        with contextlib.suppress(OSError):
            os.unlink(path.parent / name)


