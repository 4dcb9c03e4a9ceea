"""A run's folder, ``runs/run-<16 hex>``: the output file its handler writes (held locked by every process of the
run, so the folder is removed only once none is left), files written into it whole, and the sanitized tail of its
output that goes into the run's event."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, TypeVar

from orchestrator.key_paths import others_may_write, user_or_root
from orchestrator.security import cut_read_size, sanitized_cut
from orchestrator.store.files import NotRegularFileError, mkdir_with_parents, open_regular

T = TypeVar("T")
PRIVATE_FOLDER, PRIVATE_FILE = 0o700, 0o600  # a run's folder and its files, a job's artifact folder: the worker's alone
# a folder opened, never through a link in its place (``ELOOP``), nor waiting on a FIFO there (``O_NONBLOCK``: no effect
# on a folder); with ``O_PATH`` (which ignores the other bits) one its owner may not read: the one way of each module
FOLDER_NO_LINK = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
RUN_PREFIX = "run-"  # runs/run-<16 hex>: one run's folder (runs/host-*: a worker's handler process)
# what a disk says when it refuses a write whatever is written: no room, over this user's quota (a full disk for its
# user, which ``statvfs`` does not show), read-only (each < 256: one byte). The host's fault, never a job's: the one
# set the per-run child's terminal file, the copy of ``artifacts_from`` and the worker's probe of its room go by
DISK_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def open_output(path: Path) -> int:
    """Open a run's output file, locked (``flock``) for as long as a process holds it: the handler
    inherits the descriptor as its stdout and stderr, so the lock lives exactly as long as the
    handler (and anything it started that kept them), and ``remove_run_folder`` leaves its folder."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a sweep deciding about a run that is over: the output is not kept anyway
        pass
    return fd


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, ensure_ascii=False, allow_nan=False).encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` as the file ``path``, whole or not at all (a copy renamed over it; one that fails is removed). Its
    ``OSError`` names ``path``: a disk with no room left fails the write after the open succeeded, and that error
    names no file. A worker tells whose fault a failure is by the path it names (``WorkerFolders.made_by_worker``):
    a context file a full disk refused was taken for the machine's fault until 2026-12-07, every job claimed on it
    failed (``HANDLER_START_FAILED``) until its attempts were used up."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_private(tmp, data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno is None:  # not the kernel's
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def make_private_folder(path: "Path | str", exist_ok: bool = True) -> None:
    """``mkdir -p path``, ``path`` itself owner-only (0700) whatever the umask: a run's folder (another user who could
    write in it wrote its ``terminal.json``, and the worker signed that outcome, until 2026-12-07), a job's artifact
    folder (what later runs read, and what ``artifacts_from`` copies into other jobs), a handler process's folder. A
    folder missing above it is made as the store makes its own (``store.files.STORE_FOLDER``). One found there
    already loses what others may do in it (``restrict``): made by a release before 2026-12-07, or a run's
    ``chmod``. Costs what ``Path.mkdir(exist_ok=True)`` did: a ``mkdir``, and an ``lstat`` when it was there."""
    path = os.fspath(path)
    if path in mkdir_with_parents(path, PRIVATE_FOLDER):
        return
    if not exist_ok:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    if restrict(path, PRIVATE_FOLDER) is None and not os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, "exists, and is not a folder", path)


def restrict(folder: "Path | str", allowed: int, follow: bool = False) -> int | None:
    """Take from the real folder ``folder`` (never through a link, unless ``follow``: the project folder, which may
    be one) every permission bit not in ``allowed``: one ``lstat``, and when something is to be taken an ``open`` and
    ``fchmod``. Returns the mode it had, None when it is no such folder. Another user's folder is left as it is (only
    its owner or root may change its mode): a caller that must know looks again."""
    try:
        st = os.stat(folder) if follow else os.lstat(folder)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~allowed:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
        try:
            with contextlib.suppress(PermissionError):  # not ours
                os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & allowed)
        finally:
            os.close(fd)
    return mode


def set_folder_mode(folder: "Path | str", mode: int) -> None:
    """Set the mode of the real folder ``folder`` to ``mode``, never through a link, even when its owner may not open
    it (a run's ``chmod 077`` of its own folder): ``restrict`` opens a folder to ``fchmod`` it, which needs the
    owner's read bit. So it is opened as ``restrict`` opens it (a link in the folder's place refused: ``O_NOFOLLOW``
    with ``O_DIRECTORY``), and only where its owner may not read it, changed as an entry of its parent folder
    (``chmod_entry``). ``OSError`` when it cannot be: another user's folder (``PermissionError``), a link (``ELOOP``)
    or a file (``NotADirectoryError``) in its place."""
    try:
        fd = os.open(folder, FOLDER_NO_LINK)
    except PermissionError:
        _set_unreadable_folder_mode(Path(folder), mode)
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _set_unreadable_folder_mode(folder: Path, mode: int) -> None:
    """``set_folder_mode`` of a folder its owner may not read: as an entry of its parent (``chmod_entry``), once its
    status shows a folder of this user's (a link: ``ELOOP``; a file: ``NotADirectoryError``; another's:
    ``PermissionError``)."""
    def of_ours(st: os.stat_result) -> int:
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(folder))
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(folder))
        return mode

    parent = os.open(folder.parent, FOLDER_NO_LINK)
    try:
        chmod_entry(parent, folder.name, of_ours, str(folder))
    finally:
        os.close(parent)


PATH_ONLY = getattr(os, "O_PATH", 0)  # a descriptor that names an entry (a link itself) and needs no bit of it
PROC_FDS = "/proc/self/fd"  # where a descriptor has a name: missing in a chroot or a container without /proc


def chmod_entry(parent: int, name: str, new_mode: Callable[[os.stat_result], int | None],
                path: str) -> os.stat_result | None:
    """Set the mode of the entry ``name`` of the folder ``parent`` (a descriptor; ``path`` names it in errors) to
    ``new_mode(st)`` of its status ``st`` (a link's own: ``new_mode`` refuses what is not to be changed, by raising,
    or passes it over by returning None), never through a link, even when its owner may not open
    it: the one way both ``set_folder_mode`` and ``owner_bits_back`` do it. Returns ``st`` when the mode was set,
    None when it was not.

    Where there is ``O_PATH``, by descriptor: the entry opened so (no bit of it needed; a link opened is the link
    itself), its ``fstat`` given to ``new_mode``, and its ``/proc/self/fd`` name changed, which is that very entry
    (what the C library's own no-follow ``chmod`` does). Where there is no ``O_PATH`` or no ``/proc`` (a chroot, a
    container without it), by name (``_chmod_by_name``)."""
    if PATH_ONLY:
        fd = os.open(name, PATH_ONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            st = os.fstat(fd)
            mode = new_mode(st)
            if mode is None:
                return None
            try:
                os.chmod(f"{PROC_FDS}/{fd}", mode)
                return st
            except FileNotFoundError:  # no /proc: the descriptor is open, so its name there is missing only so
                pass
        finally:
            os.close(fd)
    return _chmod_by_name(parent, name, new_mode, path)


def _chmod_by_name(parent: int, name: str, new_mode: Callable[[os.stat_result], int | None],
                   path: str) -> os.stat_result | None:
    """``chmod_entry`` by name, without ``O_PATH`` or ``/proc``: the entry looked at in ``parent`` without following
    a link (``fstatat(AT_SYMLINK_NOFOLLOW)``), its status given to ``new_mode``, its mode set by name, then looked at
    again: another entry there since (another ``st_dev``/``st_ino``, a link) is ``PermissionError``. The ``chmod``
    is ``fchmodat(AT_SYMLINK_NOFOLLOW)`` where the C library does it without ``/proc`` (glibc 2.39 with Linux 6.6:
    ``fchmodat2``), else a plain ``chmod`` of the name, which follows a link: not when that no-follow ``chmod`` has
    worked in this process, nor when the entry is another now (its refusal of a link is the ``EOPNOTSUPP`` of a C
    library that cannot; until 2026-12-07 a link swapped in was then followed). Done only when ``parent`` is this
    user's or root's and written by no one else (as the worker keeps ``artifacts/``, a job's folder's parent:
    ``WorkerFolders._trust``), else ``PermissionError`` and nothing is changed: then only this user or root could
    swap the name between the look and the ``chmod``, and either could ``chmod`` what it leads to themselves.

    What this cannot close: with a plain ``chmod``, a swap made in that window (by this user or root) has the mode set
    on what the name then leads to before the second look sees it, which refuses, too late to undo it; a swap put
    back before the second look is not seen at all. By descriptor (``chmod_entry``) there is no such window."""
    held = os.fstat(parent)
    if not user_or_root(held) or others_may_write(held):
        raise PermissionError(errno.EPERM, "its parent folder is not this user's or root's alone, so its mode is not "
                                           "set by name", path)
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    mode = new_mode(st)
    if mode is None:
        return None
    if stat.S_ISLNK(st.st_mode):  # never followed, whatever ``new_mode`` said
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    try:
        os.chmod(name, mode, dir_fd=parent, follow_symlinks=False)
        _NO_FOLLOW_CHMOD_WORKS[0] = True
    except (NotImplementedError, ValueError):  # EOPNOTSUPP (Python says so of a dir_fd with ValueError): no chmod
        # that does not follow a link here, or a link in the entry's place now, which fchmodat2 (and glibc's way by
        # /proc) refuses with the same error: so a plain chmod, which follows, only when nothing says it is the latter
        if _NO_FOLLOW_CHMOD_WORKS[0] or _swapped(parent, name, st):
            raise _swap_refused(path) from None
        os.chmod(name, mode, dir_fd=parent)
    if _swapped(parent, name, st):
        raise _swap_refused(path, "(that chmod may have changed what is there now)")
    return st


_NO_FOLLOW_CHMOD_WORKS = [False]  # a chmod by name that does not follow a link has worked in this process


def _swapped(parent: int, name: str, st: os.stat_result) -> bool:
    """Whether the entry ``name`` of ``parent`` is another than the one of status ``st`` (a link in its place)."""
    after = os.stat(name, dir_fd=parent, follow_symlinks=False)
    return (after.st_dev, after.st_ino) != (st.st_dev, st.st_ino)


def _swap_refused(path: str, more: str = "") -> PermissionError:
    return PermissionError(errno.EPERM, "another entry took its name between its look and its chmod by name"
                           + (f" {more}" if more else ""), path)


def write_private(path: Path, data: bytes) -> None:
    """``data`` as the file ``path``, owner-only (0600) whatever the umask, never through a link: until 2026-12-07
    a context written under a umask of 000 was 0666, and another user could change the input a command read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with open(fd, "wb") as fh:
        fh.write(data)


def remove_run_folder(folder: Path) -> bool:
    """Remove a run's folder (``runs/run-*``) unless a process of that run still holds its output's
    lock (``open_output``): a handler that still runs, whatever its job's events say. The caller
    decides that the run is over; this only refuses to pull a folder from under a live process.
    Returns True if the folder is gone."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return False  # not what a run makes (a symlink, a file): left alone
    except OSError:
        return False  # gone meanwhile (its worker removed it)
    try:
        fd = os.open(folder / "output.log", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        fd = -1  # the handler never started
    except OSError:
        return False
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # held: the run's handler (or a process it started) is alive
        shutil.rmtree(folder, ignore_errors=True)
        return not os.path.lexists(folder)
    finally:
        if fd >= 0:
            os.close(fd)


def output_held(folder: Path) -> bool:
    """Whether a process of the run of ``folder`` (``runs/run-*``) still holds its output's lock (``open_output``): its
    handler, or what a command started that kept its output, alive whatever the job's events say. Never through a
    link; False for a folder gone, or whose output is missing or cannot be opened."""
    try:
        fd = os.open(folder / "output.log", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def sanitized_tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` characters of a run's output, sanitized ("..." first when cut): its last
    ``cut_read_size(limit)`` bytes, cut by ``security.sanitized_cut``, which sanitizes all it looks at before it
    cuts, so a cut never goes through a secret before it is sanitized.

    The file is the one the worker made (``open_output``), but the run can reach its path and put something else
    there: a FIFO (a plain ``open`` blocked the worker for ever), a folder (it stopped the worker), a link (read
    through, any file the worker can read went into the event). None of them is read: the tail says what was
    found instead (``"[the output file ...]"``); a missing file is an empty tail."""
    try:
        fd, _ = open_regular(path)
    except FileNotFoundError:
        return ""
    except NotRegularFileError:
        return "[the output file is not a regular file: the run put something else in its place]"
    except OSError as exc:
        return f"[the output file cannot be read: {exc.strerror or exc}]"
    try:
        with open(fd, "rb", closefd=False) as fh:  # closed below, whatever happens
            size = fh.seek(0, os.SEEK_END)
            start = fh.seek(max(0, size - cut_read_size(limit)))
            data = fh.read(size - start)  # not what a process still writing adds meanwhile
    except OSError as exc:
        return f"[the output file cannot be read: {exc.strerror or exc}]"
    finally:
        os.close(fd)
    return sanitized_cut(data, limit, tail=True)


def owner_bits_back(folder: int, name: str) -> os.stat_result | None:
    """Give the entry ``name`` of the folder ``folder`` (a descriptor) the owner's bits its owner needs to read it,
    when it is this user's own folder (read, write and search: to list, fill and empty it) or regular file (read),
    never through a link: a run's ``chmod 000`` inside its job's folder left them out, and the worker may not open it
    to ``fchmod`` it. So, as ``set_folder_mode``, by ``chmod_entry``: checked on that very entry where there is
    ``/proc``, by name where there is none. Returns its status as it was when its mode was changed; None when nothing
    was (a link, another user's entry, one with those bits, a parent others may write without ``/proc``, gone or
    swapped meanwhile)."""
    def needed(st: os.stat_result) -> int | None:
        bits = owner_needs(st.st_mode)
        if (st.st_uid != os.geteuid() or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode))
                or st.st_mode & bits == bits):
            return None
        return stat.S_IMODE(st.st_mode) | bits

    try:
        return chmod_entry(folder, name, needed, name)
    except OSError:
        return None


def owner_needs(mode: int) -> int:
    """The owner's bits an entry of ``mode`` needs for its owner to read it (``owner_bits_back``): read, write and
    search a folder (to list, fill and empty it), read a file."""
    return stat.S_IRWXU if stat.S_ISDIR(mode) else stat.S_IRUSR


def folders_given_back(folder: Path, skip: set[str]) -> list[str]:
    """After a run: each folder below the job's folder ``folder`` that its owner may not use in full (a run's ``chmod
    000`` or ``chmod 500`` of a folder it made), given its owner's bits back, this user's own only and never through
    a link (opened with ``O_NOFOLLOW``, changed by ``fchmod``, or by ``owner_bits_back`` when it cannot be opened);
    so that a copy of it for ``artifacts_from``, by hand (``cp -r``, to another machine) or its owner's ``rm -r``
    can read and empty it. Returns the paths given back, relative to ``folder``. ``skip``: relative folders not
    walked (the copies of ``artifacts_from``, whose next copy gives its own folders their bits). The job's folder
    itself is left to the check before its next run (``worker_folders._own_job_folder``). Root walks nothing: it uses
    them whatever their mode. Walked by ``walk_folders``: a stack of descriptors, not recursion.

    Files are not looked at, and, where a folder's link count tells how many folders it holds
    (``subfolders_counted``), a folder is listed only until they are all found: one that holds none is not listed
    at all, nor opened when it is this user's with its owner's bits (its status is the listing's ``fstatat``). Its
    files were most of the walk's cost: 0.7-3.4 ms for 1,000 entries before 2026-12-07 (folders4)."""
    if os.geteuid() == 0:
        return []
    try:
        top = os.open(folder, FOLDER_NO_LINK)
    except OSError:  # none made (a Python handler's is made on demand), or the folder itself: see above
        return []
    given: list[str] = []
    try:
        listed = _folders_in(top, os.fstat(top))
    except OSError:
        os.close(top)
        return []

    def enter(fd: int, name: str, path: str, st: os.stat_result) -> tuple[int, Listing[os.stat_result]] | None:
        if path in skip or st.st_uid != os.geteuid():  # another user's: neither changed nor walked
            return None
        if st.st_mode & stat.S_IRWXU == stat.S_IRWXU and _holds_no_folder(st):
            return None  # nothing to give back, nothing below to walk: not even opened
        opened = _opened_with_owner_bits(fd, name, path, given)
        return None if opened is None else (opened[0], _folders_in(*opened))

    walk_folders(top, listed, enter)
    return given


Listing = list[tuple[str, T]]  # a folder's entries a walk looks at: (name, what its lister says of it)


def walk_folders(top: int, listed: Listing[T],
                 enter: Callable[[int, str, str, T], tuple[int, Listing[T]] | None]) -> None:
    """Walk below the folder ``top`` (a descriptor, of entries ``listed``) by descriptor, each folder opened from the
    one above it: ``enter(fd, name, path, what)`` is called for each entry of each folder walked (``fd`` that
    folder, ``path`` the entry's relative to ``top``) and returns the entry opened as a folder to walk, with its
    entries, or None. With a stack of descriptors, not by recursion: folders nested deeper than Python's recursion
    limit stop the walk where no descriptor is left (``EMFILE``), never the worker. Every descriptor, ``top`` too,
    is closed when the walk ends, whatever ends it. The one walk of ``folders_given_back`` and
    ``recovery.files_below``."""
    stack = [(top, "", iter(listed))]
    try:
        while stack:
            fd, above, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                os.close(fd)
                stack.pop()
                continue
            name, what = entry
            path = above + name
            below = enter(fd, name, path, what)
            if below is not None:
                stack.append((below[0], path + "/", iter(below[1])))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _folders_in(fd: int, st: os.stat_result) -> list[tuple[str, os.stat_result]]:
    """The folders in the folder ``fd`` of status ``st`` (not links to one: the listing's own type), each with its
    status (``fstatat``, never through a link); the listing stops once as many were found as its link count says it
    holds (``subfolders_counted``)."""
    wanted = _folders_held(st)
    found: list[tuple[str, os.stat_result]] = []
    if wanted == 0:
        return found
    try:
        with os.scandir(fd) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):  # gone meanwhile
                        found.append((entry.name, entry.stat(follow_symlinks=False)))
                    if len(found) == wanted:
                        break
    except OSError:
        pass
    return found


def _holds_no_folder(st: os.stat_result) -> bool:
    return _folders_held(st) == 0


def _folders_held(st: os.stat_result) -> int | None:
    """How many folders a folder of status ``st`` holds, from its link count (its own ``.`` and its name above, and
    each folder's ``..``), where its file system counts them so (``subfolders_counted``); None when unknown (another
    file system, or ext4's 1 past 65,000 folders)."""
    if st.st_nlink < 2 or not subfolders_counted(st.st_dev):
        return None
    return st.st_nlink - 2


# file systems whose folder's link count is 2 plus the folders in it, always (gnulib's ``fts`` leaves out of this
# "leaf optimization" only those that do not: NFS, CIFS, AFS, /proc, and any it cannot name)
COUNTS_SUBFOLDERS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})
_SUBFOLDERS_COUNTED: dict[int, bool] = {}  # by device, once a process


def subfolders_counted(dev: int) -> bool:
    """Whether a folder's link count on the device ``dev`` tells how many folders it holds (``COUNTS_SUBFOLDERS``):
    the type of its mount, read once a process from ``/proc/self/mountinfo``. False where it is not found there (no
    ``/proc``, a btrfs subvolume's own device) and for any other type (btrfs says 1, overlayfs 1 for a merged
    folder, NFS what its server says): such folders are listed in full, as before."""
    counted = _SUBFOLDERS_COUNTED.get(dev)
    if counted is None:
        counted = _SUBFOLDERS_COUNTED[dev] = _mount_type(dev) in COUNTS_SUBFOLDERS
    return counted


def _mount_type(dev: int) -> str | None:
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split(" - ", 1)
                if len(fields) == 2 and fields[0].split()[2:3] == [wanted]:
                    return fields[1].split()[0]
    except OSError:
        pass
    return None


def _opened_with_owner_bits(fd: int, name: str, path: str,
                            given: list[str]) -> tuple[int, os.stat_result] | None:
    """The folder ``name`` of ``fd``, opened never through a link once it has its owner's bits (``path`` appended to
    ``given`` when it had to be given them), with its status; None when it is another user's (neither changed nor
    walked) or cannot be opened (a link, gone meanwhile, no descriptor left)."""
    try:
        below = os.open(name, FOLDER_NO_LINK, dir_fd=fd)
    except PermissionError:  # its owner may not read it: given its bits through an O_PATH descriptor
        if owner_bits_back(fd, name) is None:
            return None
        given.append(path)
        try:
            below = os.open(name, FOLDER_NO_LINK, dir_fd=fd)
        except OSError:
            return None
    except OSError:
        return None
    try:
        st = os.fstat(below)
        if st.st_uid == os.geteuid():
            if st.st_mode & stat.S_IRWXU != stat.S_IRWXU:
                os.fchmod(below, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
                given.append(path)
            return below, st
    except OSError:
        pass
    os.close(below)
    return None
