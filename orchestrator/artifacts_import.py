"""Copying the artifact folders a job's input names (``"artifacts_from"``), with ``ORCH_ARTIFACTS_IMPORT`` on.

The copy runs before the handler starts, under the run's lease: a folder of gigabytes takes longer than a lease,
so the copy calls ``between()`` before each file and after each chunk of one, where ``copy_under_lease`` renews the lease
(or stops the copy: the job was taken over or cancelled, its lease could not be renewed, the worker is stopping).
Only regular files are copied: a link to ``/dev/zero`` would be copied for ever, a FIFO block the worker. The
source is walked whole first, nothing written (``artifacts_source``): a loop of links or what is not a regular file
is bad input, an entry another user owns (a link planted while the folder was open) the store's fault, and a copy
the file system has no room for is refused before it fills it; the copy then opens each source entry as the walk
did (``artifacts_source.open_entry``: relative to its folder's descriptor, never through a link another user could
have put there), and copies what it opened and checked. A file's holes are copied as holes
(``SEEK_DATA``/``SEEK_HOLE``): a sparse file's copy takes no more room than the file.

The target side, ``inputs/<job_id>`` in the job's own folder, is written by the job's handler (untrusted code)
between runs. So the copy works relative to descriptors of the target folders, each opened never through a link
(``O_NOFOLLOW``), and sets modes and times on descriptors: it never writes outside the job's folder. What a run
left where the copy goes is replaced, never followed: a symbolic link there (to a file or a folder) is removed and
a real copy made in its place; each file is removed and made anew (``O_EXCL``), so the mode of an earlier copy (a
read-only file) never matters, nor does a FIFO. A copied folder is made writable while it is filled (a read-only
one copied before) and gets the source's mode last, as ``copytree`` did. A file whose copy fails is removed (on a
full disk, the space it took is given back); the files copied before it stay, and the next run copies over them.

A copy that fails says which side failed (``CopyFailed``): a source that cannot be read is the job's (its input names
a folder the worker cannot read), as is one larger than the free space (``_check_room``); a target that cannot be
written is the store's when the file system takes no more (a full disk, a quota, read-only: past the check of the
room, something else filled it) or the job's own folder cannot be made, and the job's otherwise: what is in its
folder is its runs' doing (a handler may chmod it, leave a file where ``inputs/`` belongs, or a folder where a copied
file goes). The job's own folder a link is ``PathEscapeError``, as when the run starts.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from orchestrator import faults
from orchestrator.artifacts_source import (TARGET_FOLDER, Ancestors, Need, Reached, descriptor, entered, leads_nowhere,
                                          measure, not_regular, open_entry, open_source, refusal)
from orchestrator.errors import InvalidIdError, InvalidInputError, StorageError
from orchestrator.run_folder import DISK_REFUSALS, make_private_folder, owner_bits_back
from orchestrator.security import validate_id
from orchestrator.store.files import linked_folder_error, path_error
from orchestrator.worker_folders import WorkerFolders, trusted_source

if TYPE_CHECKING:
    from orchestrator.heartbeat import Heartbeat
    from orchestrator.outcome import Claim

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"  # in the job's folder: inputs/<job_id> holds the copy of that job's folder
CHUNK = 8 << 20  # bytes copied between two calls of ``between`` (shutil copies 8 MiB at a time too)
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV)
# the target side, which the job's runs write: opened relative to a folder's descriptor (``TARGET_FOLDER``), never
# through a link
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# the list of the copy in progress (in this thread: workers of one process are threads) that each link removed on the
# target side is appended to (``import_artifacts(removed=...)``); a context variable, not a parameter of every step
_REMOVED_LINKS: ContextVar[list[str] | None] = ContextVar("removed_links", default=None)
ARTIFACT_LINK_REMOVED = "ARTIFACT_LINK_REMOVED"  # the warning of a run whose copy removed links (links_removed_warning)
# the warning of a run whose artifacts_from names jobs with no folder here (``missing_folders_warning``)
ARTIFACTS_FROM_MISSING = "ARTIFACTS_FROM_MISSING"
_WRITABLE = stat.S_IWUSR | stat.S_IXUSR  # what the owner needs to make and remove entries in a folder


class CopyFailed(Exception):
    """A copy of ``artifacts_from`` that failed on ``error`` (an ``OSError`` naming the path it failed on); ``store``:
    the store's fault (a target the file system refused, or the job's own folder), else the job's. Not an
    ``OSError``, so that no caller takes it for a failure to start the handler."""

    def __init__(self, error: OSError, *, store: bool, refused: StorageError | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.store = store
        self.refused = refused  # ``untrusted_source``'s: said as it is, not as the ``OSError``

    def store_error(self) -> StorageError:
        """The ``StorageError`` a copy failed for the store's fault is handed back with (``Worker._copy_failed``)."""
        return self.refused or path_error(self.error)


def untrusted_source(refused: StorageError) -> CopyFailed:
    """The store's failure of a source folder another user could change (``worker_folders.trusted_source``): the
    job is handed back and the worker stops, as for its own folder; nothing is copied."""
    return CopyFailed(PermissionError(errno.EPERM, refused.message, refused.details.get("path")), store=True,
                      refused=refused)


def _failed(error: OSError, *, writing: bool) -> CopyFailed:
    return CopyFailed(error, store=writing and error.errno in DISK_REFUSALS)


def artifacts_from(job_input: Any) -> list[str]:
    """The job ids input ``artifacts_from`` names (one id or a list); anything else is ``InvalidInputError``."""
    names = job_input.get("artifacts_from") if isinstance(job_input, dict) else None
    if not names:
        return []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(other, str) for other in names):
        raise InvalidInputError("input artifacts_from must be a job id or a list of job ids")
    for other in names:
        try:
            validate_id(other)
        except InvalidIdError as exc:
            raise InvalidInputError(f"input artifacts_from: {exc.message}") from None
    return names


def imported_folders(job_id: str, job_input: Any) -> set[str]:
    """The folders inside the job's own (``inputs/<job_id>``, relative) that a copy of ``artifacts_from`` fills,
    whether or not this worker copies: what is in them came from other jobs, not from the job's runs (stale
    recovery does not count it as what a dead run left). An input naming no job id has none (it fails first)."""
    try:
        names = artifacts_from(job_input)
    except InvalidInputError:
        return set()
    return {f"{INPUTS_DIR}/{other}" for other in names if other != job_id}


def links_removed_warning(removed: list[str], target: Path) -> dict[str, str]:
    """The ``{code, message}`` a run reports (``worker --json``'s ``warnings``) when its copy removed symbolic links
    from the job's own folder ``target``: only its handler writes there, so a link there is what a run of the job
    made, worth an operator's look, though the copy never followed it."""
    shown = ", ".join(os.path.relpath(path, target) for path in removed[:5]) + (", ..." if len(removed) > 5 else "")
    return {"code": ARTIFACT_LINK_REMOVED,
            "message": f"removed {len(removed)} symbolic link(s) where the copy of artifacts_from goes, in the job's "
                       f"own folder, never followed: {shown}; a run of this job left them there"}


def missing_folders_warning(missing: list[str], folders: WorkerFolders) -> dict[str, str]:
    """The ``{code, message}`` a run reports when its ``artifacts_from`` names jobs that have no artifact folder on
    this machine: the handler then runs without their files, which may be what it needs."""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    where = os.path.dirname(folders.artifacts_dir(missing[0]))
    return {"code": ARTIFACTS_FROM_MISSING,
            "message": f"artifacts_from names {len(missing)} job(s) with no artifact folder on this machine, so "
                       f"nothing of theirs was copied: {shown}. A job that wrote no file has none; one that ran on "
                       "another machine, or was moved here by `orchestrator import` (a bundle carries no artifact "
                       f"file), has its folder where it ran: copy that folder into {where}/ here before such a job "
                       "runs"}


def import_artifacts(job_id: str, names: list[str], folders: WorkerFolders, target: Path,
                     between: Callable[[], None], removed: list[str] | None = None,
                     missing: list[str] | None = None) -> None:
    """Copy (never move) the artifact folders of the jobs ``names`` into ``target/inputs/<job_id>/``; a job
    without a folder (or the job itself) is passed over, the former appended to ``missing``. Every source folder is
    walked first, nothing written (``artifacts_source.measure``): a loop of links or what is not a regular file is
    ``InvalidInputError``, an entry another user owns ``CopyFailed`` (``untrusted_source``), a copy the file system
    of ``target`` has no room for ``CopyFailed`` (``_check_room``).
    ``between`` is called before each entry walked, each file copied and after each chunk of one; what it raises
    ends the copy. A copy that fails raises ``CopyFailed`` at once. The path of each symbolic link removed on the target side is appended to
    ``removed`` as it goes (the caller's list: it holds them however the copy ends)."""
    sources = [(other, folders.artifacts_dir(other)) for other in dict.fromkeys(names) if other != job_id]
    try:  # its links are followed: none another user could have put there
        for _, src in sources:
            trusted_source(str(src))
    except StorageError as exc:
        raise untrusted_source(exc) from None
    found = {other: src.is_dir() for other, src in sources}
    if missing is not None:
        missing.extend(other for other, is_dir in found.items() if not is_dir)
    sources = [(other, src) for other, src in sources if found[other]]
    if not sources:
        return
    token = _REMOVED_LINKS.set(removed)
    try:
        with descriptor(_job_folder(target)) as job_folder:
            _check_room(job_folder, target, sources, between)
            inputs = os.path.join(target, INPUTS_DIR)
            for other, src in sources:
                with descriptor(_target_folder(job_folder, INPUTS_DIR, inputs, copied=False)) as inputs_fd:
                    try:
                        fd, st, linked = open_source(src, other)
                    except (StorageError, OSError) as exc:
                        raise _source_failed(exc, str(src), src, other) from None
                    with descriptor(fd):
                        _copy_tree((fd, st, str(src)), inputs_fd, other, os.path.join(inputs, other), src, other,
                                   between, ({}, {}), not linked)
    finally:
        _REMOVED_LINKS.reset(token)


def _check_room(job_folder: int, target: Path, sources: list[tuple[str, Path]], between: Callable[[], None]) -> None:
    """Walk every source (``measure``) and refuse a copy the file system of the job's folder has no room for
    (``refusal``), before anything is written: one larger than the whole file system is bad input; one larger
    than what is free now the job's failure, retried (copied until the disk refused, it was the store's fault,
    the job handed back and the worker stopped, every worker that claimed it); a file system already full the
    store's. What fills the disk during the copy, past this check, is the store's too (``_failed``)."""
    need = Need()
    for other, src in sources:
        earlier = _earlier_copy(job_folder, other)
        try:
            measure(src, earlier, other, between, need)
        except OSError as exc:
            raise _failed(exc, writing=False) from None
        except StorageError as exc:  # an entry another user owns (``planted``): as a source folder of theirs
            raise untrusted_source(exc) from None
        finally:
            if earlier is not None:
                os.close(earlier)
    try:
        fs = os.fstatvfs(job_folder)
    except OSError as exc:
        raise _failed(_at(exc, str(target)), writing=True) from None
    refused = refusal(need, fs, ", ".join(other for other, _ in sources))
    if refused is None:
        return
    whose, why = refused
    if whose == "never":
        raise InvalidInputError(f"input artifacts_from: {why}")
    raise CopyFailed(OSError(errno.ENOSPC, why, str(target)), store=whose == "store")


def _earlier_copy(job_folder: int, other: str) -> int | None:
    """``inputs/<other>`` of an earlier copy in the job's folder, opened never through a link; None if none."""
    try:
        inputs = os.open(INPUTS_DIR, TARGET_FOLDER, dir_fd=job_folder)
    except OSError:
        return None
    with descriptor(inputs):
        try:
            return os.open(other, TARGET_FOLDER, dir_fd=inputs)
        except OSError:
            return None


class _CopyEnded(Exception):
    """Ends a copy from inside ``between``: how the run was cut short (``copy_under_lease``)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class HeartbeatFailed(Exception):
    """An error of a heartbeat during the copy, carried past the handling of the job's own errors (bad input, a
    missing program): it is the worker's, which stops on it, as on one while a handler runs
    (``RunSupervisor.supervise``)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def copy_under_lease(claim: Claim, names: list[str], heart: Heartbeat, folders: WorkerFolders, target: Path,
                     stopping: Callable[[], bool]) -> tuple[str | None, Claim]:
    """``import_artifacts`` for a claimed job, its lease renewed by ``heart`` as while a handler runs. Returns how
    the copy was cut short (``lost``, ``unrenewed``; ``stopped`` as soon as ``stopping()``, since no handler is
    started after a stop) or None, and the claim to go on with: marked ``renewed`` once a heartbeat may have written
    a lease record, noting the links the copy removed (``links_removed_warning``)."""
    def between() -> None:  # before each file and after each 8 MiB
        nonlocal claim
        if stopping():  # the handler would not be started: the rest of the copy would be for nothing
            raise _CopyEnded("stopped")
        if heart.past_margin():
            raise _CopyEnded("unrenewed")
        if time.monotonic() >= heart.next_at:
            try:
                end, claim = heart.beat(claim)
            except Exception as exc:  # noqa: BLE001 - the worker's error, not the job's: re-raised as it was
                raise HeartbeatFailed(exc) from exc
            if end:
                raise _CopyEnded(end)

    removed: list[str] = []  # links a run left where the copy goes: removed, never followed, and reported
    missing: list[str] = []  # jobs named with no folder here: reported, as the handler runs without their files
    how = None
    try:
        import_artifacts(claim.job_id, names, folders, target, between, removed, missing)
    except _CopyEnded as ended:
        how = ended.how
    if missing:
        claim = claim.noting(missing_folders_warning(missing, folders))
        log.warning("job %s: %s", claim.job_id, claim.notes[-1]["message"],
                    extra={"job_id": claim.job_id, "code": ARTIFACTS_FROM_MISSING})
    return how, claim.noting(links_removed_warning(removed, target)) if removed else claim


def _job_folder(target: Path) -> int:
    """The job's own folder, made if missing and opened as a folder, never through a link: the worker's (as
    ``runs/``, ``WorkerFolders.made_by_worker``), so one that cannot be made or opened is the store's fault; a link
    in its place is ``PathEscapeError``, as when the run starts (``WorkerFolders.artifacts_dir``)."""
    try:
        make_private_folder(target)
        return os.open(target, TARGET_FOLDER)
    except OSError as exc:
        if os.path.islink(target):
            raise linked_folder_error(str(target)) from None
        raise CopyFailed(exc, store=True) from None


def _copy_tree(src: tuple[int, os.stat_result, str], parent: int, name: str, dst: str, root: Path, other: str,
               between: Callable[[], None], seen: tuple[Ancestors, Reached], own: bool) -> None:
    """``shutil.copytree(src, dst, dirs_exist_ok=True)`` with ``_copy_file`` (links followed on the source side, as
    it did), from the source folder ``src`` (its descriptor, status and path, for messages) into the folder ``name``
    of the descriptor ``parent`` (``dst`` is its path, for messages), except that it never writes through a link on
    the target side (``_target_folder``, ``_new_file``), opens each source entry never through a link another user
    could have put there and copies what it checked (``artifacts_source.open_entry``: ``own``, an entry of the other
    job's own folder, reached through no link), never follows a loop of links on the source side, nor a folder more
    paths of links lead to than ``MAX_PATHS_TO_A_FOLDER`` (``entered``: ``measure`` found any before the copy; this
    one is for a folder changed since), and it stops at the first failure and says which side failed
    (``CopyFailed``): ``copytree`` went on past one, and raised them all at the end as one ``shutil.Error``, errors
    and paths turned into text."""
    fd, st, path = src
    ancestors, reached = seen
    ancestors = entered(path, st, ancestors, reached, root, other)
    try:
        with os.scandir(fd) as listing:  # a file, a folder or a link: opened; anything else refused unopened
            entries = [(entry.name, entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)
                        or entry.is_symlink()) for entry in listing]
    except OSError as exc:
        raise _failed(_at(exc, path), writing=False) from None
    with descriptor(_target_folder(parent, name, dst, copied=True)) as folder:
        for entry, opened in entries:
            s, d = os.path.join(path, entry), os.path.join(dst, entry)
            if not opened:
                raise not_regular(s, root, other)
            try:
                entry_fd, entry_st, linked = open_entry(fd, entry, s, root, other, own=own)
            except (StorageError, OSError) as exc:
                raise _source_failed(exc, s, root, other) from None
            with descriptor(entry_fd):
                if stat.S_ISDIR(entry_st.st_mode):
                    _copy_tree((entry_fd, entry_st, s), folder, entry, d, root, other, between, (ancestors, reached),
                               own and not linked)
                elif stat.S_ISREG(entry_st.st_mode):
                    _copy_file((entry_fd, entry_st, s), folder, entry, d, between)
                else:
                    raise not_regular(s, root, other)
        _set_status(folder, st, dst)  # last, as copytree: a read-only folder is filled first


def _source_failed(exc: StorageError | OSError, path: str, root: Path, other: str) -> Exception:
    """A failure to open the source entry ``path`` (``open_source``, ``open_entry``) as the copy says it: an entry
    another user owns as a source folder of theirs (``untrusted_source``), a link to nothing as bad input
    (``leads_nowhere``), any other ``OSError`` the source's (``_failed``)."""
    if isinstance(exc, StorageError):
        return untrusted_source(exc)
    return leads_nowhere(path, exc, root, other) or _failed(exc, writing=False)


def _target_folder(parent: int, name: str, path: str, *, copied: bool) -> int:
    """The folder ``name`` of ``parent`` (``path``, for messages), made if missing, opened never through a link. A
    symbolic link in its place (a run's: the handler writes the job's folder) is removed, never followed, and a
    folder made instead; anything else that is not a folder there is the job's failure. A ``copied`` folder
    (``inputs/<job_id>`` and below) that its owner cannot write in, a read-only one copied before, is made
    writable until ``_set_status`` gives it the source's mode again. One its owner cannot even open (a handler's
    ``chmod 000``) is given the owner's bits first (``_opened_after_chmod``)."""
    try:
        fd = os.open(name, TARGET_FOLDER, dir_fd=parent)
    except PermissionError as exc:
        opened = _opened_after_chmod(parent, name)
        if opened is None:
            raise _failed(_at(exc, path), writing=True) from None
        fd = opened
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError) and not _removed_link(parent, name, path):
            raise _failed(_at(exc, path), writing=True) from None
        fd = _made_folder(parent, name, path)
    try:
        mode = os.fstat(fd).st_mode
        if copied and mode & _WRITABLE != _WRITABLE:
            os.chmod(fd, stat.S_IMODE(mode) | _WRITABLE)
    except OSError as exc:
        os.close(fd)
        raise _failed(_at(exc, path), writing=True) from None
    return fd


def _opened_after_chmod(parent: int, name: str) -> int | None:
    """The folder ``name`` of ``parent``, which its owner may not open (a run's ``chmod 000`` of its copy, or of
    ``inputs``), opened once given the owner's read, write and search bits (``run_folder.owner_bits_back``: never
    through a link, checked on that very entry, by name where there is no ``/proc``); None when it is not a folder of
    this user's, or that cannot be done. Root never gets here."""
    given = owner_bits_back(parent, name)
    if given is None or not stat.S_ISDIR(given.st_mode):
        return None
    try:
        return os.open(name, TARGET_FOLDER, dir_fd=parent)
    except OSError:
        return None


def _made_folder(parent: int, name: str, path: str) -> int:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)  # its mode is the source's once filled (_set_status)
        return os.open(name, TARGET_FOLDER, dir_fd=parent)
    except OSError as exc:
        raise _failed(_at(exc, path), writing=True) from None


def _removed_link(parent: int, name: str, path: str) -> bool:
    """Whether ``name`` in ``parent`` was a symbolic link, now removed (never followed: it may lead anywhere)."""
    try:
        if not stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            return False
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise _failed(_at(exc, path), writing=True) from None
    log.warning("removed the symbolic link %s, where a copy of artifacts_from goes; it was never followed", path,
                extra={"path": path})
    found = _REMOVED_LINKS.get()
    if found is not None:
        found.append(path)
    return True


def _new_file(parent: int, name: str, path: str) -> int:
    """A new, empty file ``name`` in ``parent`` for a copy, owner-only until it is whole: whatever is there is
    removed first, so neither the mode of an earlier copy (read-only) matters nor a link or a FIFO a run left there
    (never followed nor opened) does; a folder there is the job's failure. Created with ``O_EXCL``: the file written
    is the one made here."""
    try:
        return os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _failed(_at(exc, path), writing=True) from None
    try:
        if not _removed_link(parent, name, path):
            os.unlink(name, dir_fd=parent)
        return os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
    except OSError as exc:
        raise _failed(_at(exc, path), writing=True) from None


def _set_status(fd: int, st: os.stat_result, path: str) -> None:
    """What ``shutil.copystat`` set (times, then mode: the source's ``st``), on the descriptor: never through a
    link."""
    try:
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(fd, stat.S_IMODE(st.st_mode))
    except OSError as exc:
        raise _failed(_at(exc, path), writing=True) from None


def _at(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path``: a call relative to a folder's descriptor names the entry alone."""
    return OSError(exc.errno, exc.strerror, path)


def _copy_file(src: tuple[int, os.stat_result, str], parent: int, name: str, dst: str,
               between: Callable[[], None]) -> None:
    """``shutil.copy2`` of one regular file, ``src`` (its descriptor, opened by ``open_entry``, its status and path),
    to a new file ``name`` of ``parent`` (``_new_file``), in chunks. A copy that fails removes what it wrote of the
    file: half a file is no copy, and on a full disk the space it took is given back (the files copied before it
    stay)."""
    fd, st, path = src
    between()
    with descriptor(_new_file(parent, name, dst)) as out:
        try:
            _copy_chunks(fd, out, between, path, dst)
            _set_status(out, st, dst)
        except CopyFailed:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=parent)
            raise


def _copy_chunks(src: int, dst: int, between: Callable[[], None], src_name: str, dst_name: str) -> None:
    """The bytes of ``src`` into the new file ``dst``: only the stretches that hold data (``_data_stretches``), each
    in chunks with ``between`` after each; a hole stays a hole (``truncate -s 1G big`` takes no room, nor does its
    copy), and ``dst`` gets ``src``'s length last. By ``sendfile`` where it can, else ``read`` and ``write`` from
    where it got to."""
    sendfile = getattr(os, "sendfile", None)
    for start, end in _data_stretches(src, src_name):
        try:
            os.lseek(dst, start, os.SEEK_SET)
        except OSError as exc:
            raise _failed(OSError(exc.errno, exc.strerror, dst_name), writing=True) from None
        sendfile = _copy_stretch(src, dst, None if end is None else end - start, sendfile, between, src_name,
                                 dst_name)
    try:
        length = os.fstat(src).st_size
    except OSError as exc:
        raise _failed(OSError(exc.errno, exc.strerror, src_name), writing=False) from None
    try:
        os.ftruncate(dst, length)  # a hole at the end: no byte written there
    except OSError as exc:
        raise _failed(OSError(exc.errno, exc.strerror, dst_name), writing=True) from None


def _data_stretches(fd: int, name: str) -> Iterator[tuple[int, int | None]]:
    """``(start, end)`` of each stretch of ``fd`` that holds data, from its start, the file's position left at
    ``start`` (``SEEK_DATA``, ``SEEK_HOLE``); ``end`` None: to the end of the file, for a file system (or
    platform) that cannot tell holes."""
    end = 0
    seek_data = getattr(os, "SEEK_DATA", None)
    while True:
        try:
            if seek_data is None:
                raise OSError(errno.EINVAL, "no SEEK_DATA here")
            start = os.lseek(fd, end, seek_data)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            os.lseek(fd, start, os.SEEK_SET)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from ``end`` on: the rest is a hole (or the file shrank)
                return
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise _failed(OSError(exc.errno, exc.strerror, name), writing=False) from None
            try:
                os.lseek(fd, end, os.SEEK_SET)
            except OSError as again:
                raise _failed(OSError(again.errno, again.strerror, name), writing=False) from None
            yield end, None
            return
        yield start, end


def _copy_stretch(src: int, dst: int, length: int | None, sendfile: Any, between: Callable[[], None],
                  src_name: str, dst_name: str) -> Any:
    """``length`` bytes (None: up to the end) from ``src``'s position to ``dst``'s, in chunks of ``CHUNK``,
    ``between`` after each; fewer if the file ends first. Returns ``sendfile``, or None once it was refused (this
    file system or platform cannot: read and write from then on)."""
    while length is None or length > 0:
        count = CHUNK if length is None else min(CHUNK, length)
        copied = None
        if sendfile is not None:
            try:
                copied = sendfile(dst, src, None, count)
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:  # one call reads and writes: a full disk is the target's
                    writing = exc.errno in DISK_REFUSALS or exc.errno == errno.EFBIG  # anything else the source's
                    raise _failed(OSError(exc.errno, exc.strerror, dst_name if writing else src_name),
                                  writing=writing) from None
                sendfile = None  # read and write from where it got to
        if copied is None:
            copied = _read_write(src, dst, count, src_name, dst_name)
        if not copied:
            break
        if length is not None:
            length -= copied
        faults.point("artifacts_import.after_chunk")
        between()
    return sendfile


def _read_write(src: int, dst: int, count: int, src_name: str, dst_name: str) -> int:
    try:
        data = os.read(src, count)
    except OSError as exc:
        raise _failed(OSError(exc.errno, exc.strerror, src_name), writing=False) from None
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(dst, view):]
        except OSError as exc:
            raise _failed(OSError(exc.errno, exc.strerror, dst_name), writing=True) from None
    return len(data)
