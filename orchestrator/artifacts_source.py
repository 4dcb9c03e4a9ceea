"""The source side of a copy of ``artifacts_from``: walked whole before anything is copied (``measure``).

The other job's folder is what its handler (untrusted code) left, and links there are followed, as ``copytree``
did. So a link to ``.`` was copied 40 levels deep until ``ELOOP``, and the run retried to copy it all again; a
sparse file (``truncate -s 1G``), which takes no room, was written byte for byte; and a folder larger than the
free space filled the disk, which is the store's fault (the job handed back, the worker stopped), so every worker
that claimed the job stopped, for ever. Walking every folder the copy will, before it writes anything, finds a
loop of links (a folder met again on its own path, by ``(st_dev, st_ino)``: ``entered``), a folder reached through
more paths of links than ``MAX_PATHS_TO_A_FOLDER`` (two links to the next folder at each of 30 levels are no loop,
but 2**30 paths, each a copy), a link to nothing (``leads_nowhere``) and anything that is not a regular file or a
folder: the job's bad input, nothing copied. Each entry (a link itself, not what it leads to), each folder walked
and each file copied (one reached through a link too), and each link and folder on a link's way, must be this user's
or root's (``planted``): the source folder is made 0700 before the walk (``worker_folders.trusted_source``), but
what another user put there while it was open to others stays, and a link of theirs would have this user's own
files (a key, a token) copied. Another user who still holds a folder below open may put one there after the walk,
so the walk and the copy both open each entry relative to its folder's descriptor, never through a link, and check
what they opened (``open_entry``): what is copied is what was checked. An entry of the other job's own folder that
its owner may not read (a run's ``chmod 000``) is given its owner's bits first. The walk also adds up the room the
copy takes (the blocks each file has: its holes are copied as holes), less what an earlier copy it replaces gives
back, for ``refusal`` to weigh against the file system of the job's folder.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.errors import InvalidInputError, StorageError
from orchestrator.key_paths import named_user, user_or_root
from orchestrator.run_folder import FOLDER_NO_LINK, PATH_ONLY, PROC_FDS, owner_bits_back, owner_needs
from orchestrator.security import shown as quoted
from orchestrator.security import shown_bytes

# what the store keeps free for its own writes (events, leases, the run's folder): a file system with less is full,
# whatever the copy takes; a copy must leave it free, and 1/64 of what it takes besides (a file system's own
# blocks for the files it makes), or it could pass this check and still fill the disk: the store's fault again
SPARE_BYTES = 1 << 20
SPARE_FRACTION = 64
TARGET_FOLDER = FOLDER_NO_LINK  # a folder of the target side, which the job's runs write
# an entry of the source opened to be read (a folder listed, a file copied): never through a link (``ELOOP``: a link
# is followed part by part, ``open_entry``), never waiting on a FIFO, never taking a terminal as the worker's own
SOURCE_ENTRY = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# a folder on the way a link leads, only to look names up in (``O_PATH``: its search bit is all it needs)
_ON_THE_WAY = PATH_ONLY | FOLDER_NO_LINK
MAX_LINKS = 40  # links followed to reach one entry: the kernel's own limit (``ELOOP`` past it)

# A folder several links lead to is copied at each, as ``copytree`` (and ``cp -rL``) did: a venv's ``lib64 -> lib``,
# a ``latest`` beside the run it names. Past this many paths to one folder the source is refused: each folder is then
# walked at most this many times, so a walk (and a copy) takes at most this many times what the source holds on disk
MAX_PATHS_TO_A_FOLDER = 1000

# Folders one in another that a copy walks, the source's own folder first: each level holds a descriptor of its source
# folder and one of its target's (or the earlier copy's), and a frame of the walk, so a tree of 5,000 raised
# ``RecursionError`` (and past ~500, ``EMFILE`` under the usual limit of 1,024 descriptors); deeper is refused
MAX_FOLDER_DEPTH = 256

Ancestors = dict[tuple[int, int], str]  # (st_dev, st_ino) of each folder on the path walked -> its name, shown
Reached = dict[tuple[int, int], tuple[int, str]]  # (st_dev, st_ino) of each folder walked -> (paths to it, the first)

log = logging.getLogger(__name__)


class Need:
    """What a copy takes on the target's file system: the ``bytes`` (blocks) of what it writes, the ``entries``
    (files and folders) it makes, and the bytes ``freed`` of an earlier copy's files it replaces, each removed
    before its new copy is made (its entry taken again). A plain class: a dataclass took 0.4 ms of every worker's
    start to build, here."""

    __slots__ = ("bytes", "entries", "freed")

    def __init__(self) -> None:
        self.bytes = self.entries = self.freed = 0


def shown(path: str, root: Path, other: str) -> str:
    """``path`` below the folder ``root`` of job ``other``, as messages name it: ``<other>/sub/f.txt``."""
    relative = os.path.relpath(path, root)
    return other if relative == "." else f"{other}/{relative}"


def not_regular(path: str, root: Path, other: str) -> InvalidInputError:
    return InvalidInputError(f"input artifacts_from: {shown(path, root, other)} is not a regular file (a device, a "
                             "FIFO or a socket, perhaps through a link): nothing of it is copied")


def planted(path: str, st: os.stat_result, other: str, reached: str | None = None) -> StorageError:
    """The refusal of an entry at ``path`` (its status ``st``, a link's own) of job ``other``'s folder owned by another
    user than this one or root, as of a source folder another user owns (``worker_folders.trusted_source``): the
    store's fault, the job handed back (``artifacts_import.untrusted_source``), nothing copied. ``reached``: what
    ``st`` is the status of when a link at ``path`` led there (a file, a folder, a link on its way), named first:
    until 2026-12-07 the message said the link was that user's."""
    who = (f"{path} is owned by uid {st.st_uid}" if reached is None else
           f"{reached}, reached through the symbolic link {path}, is owned by uid {st.st_uid}")
    return StorageError(f"{who}, neither {named_user(os.geteuid())} nor root, who may have put it there while its "
                        "folder was open to others: a link to this user's own files (a key, a token) would have them "
                        f"copied where the job's handler reads them: nothing of {other} is copied; check what it is "
                        f"(a link: where it leads), then remove it or, as root: chown -hR {os.geteuid()} "
                        f"{reached or path}", path=path)


def _where(fd: int, name: str | None = None) -> str:
    """The path of the entry ``name`` of the folder ``fd`` (the descriptor's own entry: None), for a message: its
    ``/proc/self/fd`` name, or "what it leads to" without ``/proc``."""
    try:
        at = os.readlink(f"{PROC_FDS}/{fd}")
    except OSError:
        return "what it leads to"
    return at if name is None else os.path.join(at, name)


def leads_nowhere(path: str, error: OSError, root: Path, other: str) -> InvalidInputError | None:
    """The bad input of a symbolic link at ``path`` that ``os.stat`` could not follow (``error``): to a path that is not
    there, below a file, or a loop of links to files (``ELOOP``). It fails every attempt the same way, as a loop of
    folders does: not retried. None when ``path`` is no link (gone since the listing, say): that ``OSError`` is the
    source's, retried."""
    if error.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return None
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return InvalidInputError(f"input artifacts_from: {shown(path, root, other)} is a symbolic link to {quoted(target)}, "
                             f"which leads to nothing ({os.strerror(error.errno)}): nothing of {other} copied")


def entered(path: str, st: os.stat_result, ancestors: Ancestors, reached: Reached, root: Path,
            other: str) -> Ancestors:
    """``ancestors`` and the folder ``path`` (its status ``st``, links followed), about to be walked; counted in
    ``reached`` (the whole walk's). One already on the path walked is a loop of links, copied for ever (40 levels,
    until ``ELOOP``): ``InvalidInputError`` naming the path that leads back and the folder it leads to. A folder two
    links lead to, side by side, is no loop: it is copied at each, as ``copytree`` did, up to
    ``MAX_PATHS_TO_A_FOLDER`` paths to it; one more is ``InvalidInputError`` too, naming the path and the folder; so
    is a folder below ``MAX_FOLDER_DEPTH`` others (the walk and the copy go one level a call, a descriptor or two
    held at each)."""
    key, name = (st.st_dev, st.st_ino), shown(path, root, other)
    if len(ancestors) == MAX_FOLDER_DEPTH:
        raise InvalidInputError(f"input artifacts_from: {name} lies {MAX_FOLDER_DEPTH} folders below {other}, deeper "
                                f"than a copy goes ({MAX_FOLDER_DEPTH} folders, one in another): nothing of {other} "
                                "copied")
    if key in ancestors:
        raise InvalidInputError(f"input artifacts_from: {name} leads back to {ancestors[key]}, a folder that holds it: "
                                "a loop of symbolic links, never copied")
    paths, first = reached.get(key, (0, name))
    if paths == MAX_PATHS_TO_A_FOLDER:
        raise InvalidInputError(f"input artifacts_from: {name} leads to {first}, a folder reached through {paths} "
                                "paths of symbolic links already (each path a copy of it: links to links to it, "
                                "their number doubling where two lead on): never copied")
    reached[key] = (paths + 1, first)
    return {**ancestors, key: name}


def open_source(root: Path, other: str) -> tuple[int, os.stat_result, bool]:
    """Job ``other``'s folder ``root`` (``artifacts/<other>``), opened as an entry of ``artifacts/`` (``open_entry``:
    a link there, which a run may make, followed part by part): its descriptor, its status and whether a link led to
    it. Anything but a folder is ``NotADirectoryError``."""
    parent = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the store's own (checked)
    try:
        fd, st, linked = open_entry(parent, root.name, str(root), root, other, own=True)
    finally:
        os.close(parent)
    if not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(root))
    return fd, st, linked


def open_entry(folder: int, name: str, path: str, root: Path, other: str, *,
               own: bool) -> tuple[int, os.stat_result, bool]:
    """The entry ``name`` of the source folder ``folder`` (a descriptor; ``path`` names it in messages), opened to be
    read, its status (``fstat``) and whether a link led to it. Opened never through a link (``O_NOFOLLOW``): a link
    is followed part by part (``_Links``), so that each link followed, each folder passed on its way and what is
    opened are each the very one checked to be this user's or root's (``planted``); checked by name, then opened,
    another user who still held a folder below open (from before ``trusted_source``'s ``chmod``) could put a link in
    between. What a link leads to that is neither a regular file nor a folder is ``not_regular`` unopened (a device).
    ``own``: an entry of the other job's own folder, no link on its way, that its owner may not open (a run's ``chmod
    000``) is given the owner's bits it needs (``run_folder.owner_bits_back``), said in a warning; one it cannot give
    them is ``PermissionError`` naming the job and what to run. Any other ``OSError`` names ``path``."""
    links: _Links | None = None
    at, last, given_back = folder, name, False
    try:
        while True:
            try:
                if links is not None:  # what a link leads to: looked at before it is opened
                    _look(at, last, path, root, other)
                fd = os.open(last, SOURCE_ENTRY, dir_fd=at)
                break
            except PermissionError as exc:
                if not own or links is not None or given_back:
                    raise _named(exc, path) from None
                given_back = _given_back(at, last, path, other, exc)
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # a link (O_NOFOLLOW): followed part by part
                    raise _named(exc, path) from None
                links = links or _Links(path, other)
                try:
                    at, last = links.followed(at, last)
                except OSError as again:
                    raise _named(again, path) from None
    finally:
        if links is not None:
            links.held.close()  # the folders on the way: the entry is open
    try:
        st = os.fstat(fd)
        if not user_or_root(st):
            raise planted(path, st, other, None if links is None else _where(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd, st, links is not None


def _look(folder: int, name: str, path: str, root: Path, other: str) -> None:
    """What a link leads to, ``name`` in ``folder``, refused before it is opened when it is another user's or
    neither a regular file, a folder nor another link (followed next)."""
    st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        return
    if not user_or_root(st):
        raise planted(path, st, other, _where(folder, name))
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise not_regular(path, root, other)


def _given_back(folder: int, name: str, path: str, other: str, refused: PermissionError) -> bool:
    """The entry ``name`` of ``folder`` given its owner's bits (``owner_bits_back``), said; else ``refused`` said
    again, naming the job whose run left it so and the ``chmod`` its owner may run."""
    before = owner_bits_back(folder, name)
    if before is None:
        if not _lacks_owner_bits(folder, name):  # refused for another reason (a mount's, a security module's)
            raise _named(refused, path)
        raise PermissionError(refused.errno, f"{refused.strerror}, and this user cannot give it its owner's bits "
                                             f"back (another user's; without /proc, one in a folder others may "
                                             f"write): a run of job {other} may have left it so; as its owner, run: "
                                             f"chmod -R u+rwX {path}", path)
    log.warning("%s was not its owner's to read (mode %o, a run's chmod): its owner's bits given back before it is "
                "copied", path, stat.S_IMODE(before.st_mode), extra={"path": path, "job_id": other})
    return True


def _lacks_owner_bits(folder: int, name: str) -> bool:
    """Whether the entry ``name`` of ``folder`` lacks an owner's bit ``owner_bits_back`` would give it."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except OSError:
        return False
    return mode & owner_needs(mode) != owner_needs(mode)


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path``: a call relative to a folder's descriptor names the entry alone, or nothing."""
    return type(exc)(exc.errno, exc.strerror, path)


class _Links:
    """The links met on the way to one entry of a source (``path``, for messages, of job ``other``), followed one
    part at a time: each link read through a descriptor of itself (``O_PATH``, where there is one) once its owner is
    checked, each folder on the way opened never through a link and checked, and held open (``held``) until the
    entry is. More than ``MAX_LINKS`` links is ``ELOOP``, as the kernel's own limit."""

    __slots__ = ("count", "held", "other", "path")

    def __init__(self, path: str, other: str) -> None:
        self.path, self.other, self.held, self.count = path, other, contextlib.ExitStack(), 0

    def followed(self, folder: int | None, name: str) -> tuple[int | None, str]:
        """Where the link ``name`` of ``folder`` leads: the folder its last part is in (opened) and that part;
        ``(folder, name)`` itself when it is no link (any more)."""
        self.count += 1
        if self.count > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), self.path)
        target = self._target(folder, name)
        if target is None:
            return folder, name
        parts = target.split("/")
        if target.startswith("/"):
            folder = self._folder(None, "/")
        for part in parts[:-1]:
            if part not in ("", "."):
                folder = self._folder(folder, part)
        return folder, parts[-1] or "."

    def _target(self, folder: int | None, name: str) -> str | None:
        """What the link ``name`` of ``folder`` holds, once its owner is checked; None when it is no link."""
        if PATH_ONLY:  # the link itself, then read: the one checked (a link's text never changes)
            fd = os.open(name, PATH_ONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            try:
                st = os.fstat(fd)
                self._check(st, None if self.count == 1 else _where(fd))  # the first: the entry itself
                return os.readlink("", dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
            finally:
                os.close(fd)
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        self._check(st, None if self.count == 1 else _where(folder, name))
        return os.readlink(name, dir_fd=folder) if stat.S_ISLNK(st.st_mode) else None

    def _folder(self, folder: int | None, name: str) -> int:
        """The folder ``name`` of ``folder``, a part of a link's way: opened never through a link (one there followed
        first), checked, held."""
        while True:
            try:
                fd = os.open(name, _ON_THE_WAY, dir_fd=folder)
                break
            except NotADirectoryError:  # a file, or a link (what O_DIRECTORY with O_NOFOLLOW says of one)
                at, last = self.followed(folder, name)
                if (at, last) == (folder, name):
                    raise
                folder, name = at, last
        self.held.callback(os.close, fd)
        self._check(os.fstat(fd), _where(fd))
        return fd

    def _check(self, st: os.stat_result, reached: str | None) -> None:
        """Refuse a link or folder of another user's met on the way (``reached``: its path; None for the entry)."""
        if not user_or_root(st):
            raise planted(self.path, st, self.other, reached)


def measure(root: Path, earlier: int | None, other: str, between: Callable[[], None], need: Need) -> None:
    """Add to ``need`` what copying job ``other``'s folder ``root`` takes where ``earlier`` (a descriptor of the
    earlier copy, None where there is none) is; ``between`` is called before each entry. A loop of links or an entry
    that is neither a regular file nor a folder is ``InvalidInputError``; an entry another user owns ``StorageError``
    (``planted``); a source that cannot be read is its ``OSError``. Walked as the copy walks it (``open_entry``).
    Nothing is written but the owner's bits a run took from an entry of its own folder; the earlier copy is only
    looked at, never through a link (a link a run left there gives back nothing, wherever it leads)."""
    fd, st, linked = open_source(root, other)
    with descriptor(fd):
        if earlier is None:
            _add(need, st)
        _measure(fd, st, str(root), earlier, root, other, ({}, {}), between, need, not linked)


def _measure(folder: int, st: os.stat_result, path: str, earlier: int | None, root: Path, other: str,
             seen: tuple[Ancestors, Reached], between: Callable[[], None], need: Need, own: bool) -> None:
    ancestors, reached = seen
    ancestors = entered(path, st, ancestors, reached, root, other)
    try:
        with os.scandir(folder) as listing:
            items = list(listing)
    except OSError as exc:
        raise _named(exc, path) from None
    for item in items:
        between()
        name, entry = item.name, os.path.join(path, item.name)
        found = item.stat(follow_symlinks=False)  # the entry itself (a link's own owner): one fstatat
        if not user_or_root(found):
            raise planted(entry, found, other)
        if stat.S_ISREG(found.st_mode):
            _add_file(need, found, earlier, name)
            continue
        if not (stat.S_ISDIR(found.st_mode) or stat.S_ISLNK(found.st_mode)):
            raise not_regular(entry, root, other)
        try:
            fd, entry_st, linked = open_entry(folder, name, entry, root, other, own=own)
        except OSError as exc:
            raise leads_nowhere(entry, exc, root, other) or exc from None
        with descriptor(fd):
            if stat.S_ISDIR(entry_st.st_mode):
                below = _earlier_folder(earlier, name)
                if below is None:
                    _add(need, entry_st)
                try:
                    _measure(fd, entry_st, entry, below, root, other, (ancestors, reached), between, need,
                             own and not linked)
                finally:
                    if below is not None:
                        os.close(below)
            elif stat.S_ISREG(entry_st.st_mode):
                _add_file(need, entry_st, earlier, name)
            else:
                raise not_regular(entry, root, other)


@contextlib.contextmanager
def descriptor(fd: int) -> Iterator[int]:
    """``fd``, closed at the end of the block."""
    try:
        yield fd
    finally:
        os.close(fd)


def _add_file(need: Need, st: os.stat_result, earlier: int | None, name: str) -> None:
    """A regular file of status ``st`` copied to ``name`` of the earlier copy ``earlier``, whose file it replaces."""
    replaced = _earlier_file(earlier, name)
    _add(need, st, entry=replaced is None)
    if replaced is not None:
        need.freed += replaced


def _earlier_folder(parent: int | None, name: str) -> int | None:
    """The folder ``name`` of the earlier copy ``parent``, opened never through a link; None if there is none (or
    it cannot be opened: nothing below it is counted as given back)."""
    if parent is None:
        return None
    try:
        return os.open(name, TARGET_FOLDER, dir_fd=parent)
    except OSError:
        return None


def _earlier_file(parent: int | None, name: str) -> int | None:
    """The bytes the regular file ``name`` of the earlier copy ``parent`` takes (never what a link leads to); None
    if there is no such file."""
    if parent is None:
        return None
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    return _blocks(st) if stat.S_ISREG(st.st_mode) else None


def _blocks(st: os.stat_result) -> int:
    """The bytes ``st``'s file takes on its disk: its blocks, not its size (a sparse file's holes take none)."""
    return getattr(st, "st_blocks", (st.st_size + 511) // 512) * 512


def _add(need: Need, st: os.stat_result, *, entry: bool = True) -> None:
    need.bytes += _blocks(st)
    need.entries += entry


def free_bytes(fs: os.statvfs_result) -> int | None:
    """What users other than root may still write on the file system ``fs`` (``f_bavail``); None for one that tells
    no size at all (``f_blocks`` 0, as some FUSE file systems), whose zeros are no full disk."""
    return fs.f_bavail * fs.f_frsize if fs.f_blocks else None


def refusal(need: Need, fs: os.statvfs_result, names: str) -> tuple[str, str] | None:
    """Why the copy of ``names`` that ``need`` describes is not to be made on the file system ``fs`` (of the job's
    folder), or None: ``("store", why)`` for one already full (less free than ``SPARE_BYTES``, or no file left to
    make), whatever the copy takes; ``("never", why)`` for a copy larger than the whole file system (it cannot fit
    there whatever is freed); ``("job", why)`` for one larger than what is free now, with room to spare. Free is
    what users other than root may take (``f_bavail``); a file system that does not count its files (``f_files``
    0, as btrfs) is not asked about them, and one that tells no size at all (``f_blocks`` 0, as some FUSE file
    systems) about nothing: the copy then runs until the disk refuses, as before."""
    free = free_bytes(fs)
    if free is None:
        return None
    whole = fs.f_blocks * fs.f_frsize
    counts_files = fs.f_files > 0
    if free < SPARE_BYTES or (counts_files and fs.f_favail == 0):
        left = f"{shown_bytes(free)} free" + (f", room for {fs.f_favail} more files" if counts_files else "")
        return "store", (f"No space left on device ({left}; the store keeps {shown_bytes(SPARE_BYTES)} free for its "
                         "own writes): nothing of artifacts_from copied")
    what = f"copying {names} takes {shown_bytes(need.bytes)} ({need.entries} files and folders)"
    if need.bytes > whole:
        return "never", f"{what}, more than the whole file system of the job's folder holds ({shown_bytes(whole)})"
    if counts_files and need.entries > fs.f_files:
        return "never", f"{what}, more than the whole file system of the job's folder holds ({fs.f_files} files)"
    retried = ": nothing copied (retried: room may be freed by then)"
    if counts_files and need.entries > fs.f_favail:
        return "job", f"{what}; the file system of the job's folder has room for {fs.f_favail} more files{retried}"
    spare = SPARE_BYTES + need.bytes // SPARE_FRACTION
    if need.bytes - need.freed + spare > free:
        given_back = f", {shown_bytes(need.freed)} of it in place of an earlier copy's files" if need.freed else ""
        return "job", (f"{what}{given_back}; the file system of the job's folder has {shown_bytes(free)} free, "
                       f"{shown_bytes(spare)} of it to be left spare{retried}")
    return None
