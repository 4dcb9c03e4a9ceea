"""Copying the artifact folders a job's input names (``"artifacts_from"``), with ``ORCH_ARTIFACTS_IMPORT`` on.

The copy runs before the handler starts, under the run's lease: a folder of gigabytes takes longer than a lease,
so the copy calls ``between()`` before each file and after each chunk of one, where the worker renews the lease
(or stops the copy: the job was taken over or cancelled, its lease could not be renewed, the worker is stopping).
Only regular files are copied: a link to ``/dev/zero`` would be copied for ever, a FIFO block the worker.

A copy that fails says which side failed (``CopyFailed``): a source that cannot be read is the job's (its input names
a folder the worker cannot read); a target that cannot be written is the store's when the file system takes no more
(a full disk, a quota, read-only) or the job's own folder cannot be made, and the job's otherwise: what is in its
folder is its runs' doing (a handler may chmod it, or leave a file where ``inputs/`` belongs), and what is in
``inputs/<job_id>`` came from the other job, its modes too (a read-only file copied once cannot be copied over by a
worker that is not root).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from orchestrator import faults
from orchestrator.errors import InvalidIdError, InvalidInputError
from orchestrator.security import safe_join, validate_id
from orchestrator.store.files import NotRegularFileError, open_regular
from orchestrator.worker_folders import WorkerFolders

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"  # in the job's folder: inputs/<job_id> holds the copy of that job's folder
CHUNK = 8 << 20  # bytes copied between two calls of ``between`` (shutil copies 8 MiB at a time too)
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV)
# a write the file system refused whatever the file: the host's (free space, raise the quota), never the job's
FILE_SYSTEM_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class CopyFailed(Exception):
    """A copy of ``artifacts_from`` that failed on ``error`` (an ``OSError`` naming the path it failed on); ``store``:
    the store's fault (a target the file system refused, or the job's own folder), else the job's. Not an
    ``OSError``, so that no caller takes it for a failure to start the handler."""

    def __init__(self, error: OSError, *, store: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.store = store


def _failed(error: OSError, *, writing: bool) -> CopyFailed:
    return CopyFailed(error, store=writing and error.errno in FILE_SYSTEM_FULL)


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


def import_artifacts(job_id: str, names: list[str], folders: WorkerFolders, target: Path,
                     between: Callable[[], None]) -> None:
    """Copy (never move) the artifact folders of the jobs ``names`` into ``target/inputs/<job_id>/``; a job
    without a folder (or the job itself) is passed over. ``between`` is called before each file and after each
    chunk of one; what it raises ends the copy. A copy that fails raises ``CopyFailed`` at once."""
    for other in names:
        src = folders.artifacts_dir(other)
        if src.is_dir() and other != job_id:
            try:  # the job's folder: the worker's own, as runs/ (WorkerFolders.made_by_worker)
                os.makedirs(target, exist_ok=True)
            except OSError as exc:
                raise CopyFailed(exc, store=True) from None
            _copy_tree(str(src), str(safe_join(target, INPUTS_DIR, other)), src, other, between)


def _copy_tree(src: str, dst: str, root: Path, other: str, between: Callable[[], None]) -> None:
    """``shutil.copytree(src, dst, dirs_exist_ok=True)`` with ``_copy_file`` (links followed, as it did), except
    that it stops at the first failure and says which side failed (``CopyFailed``): ``copytree`` went on past
    one, and raised them all at the end as one ``shutil.Error``, errors and paths turned into text."""
    try:
        with os.scandir(src) as listing:
            entries = [(entry.name, entry.is_dir()) for entry in listing]  # is_dir follows a link, as copytree
    except OSError as exc:
        raise _failed(exc, writing=False) from None
    try:
        os.makedirs(dst, exist_ok=True)
    except OSError as exc:
        raise _failed(exc, writing=True) from None
    for name, is_dir in entries:
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if is_dir:
            _copy_tree(s, d, root, other, between)
        else:
            _copy_file(s, d, root, other, between)
    _copy_stat(src, dst)


def _copy_stat(src: str, dst: str) -> None:
    """``shutil.copystat``: reads ``src``'s status, then sets ``dst``'s (each ``OSError`` names its path)."""
    try:
        shutil.copystat(src, dst)
    except OSError as exc:
        raise _failed(exc, writing=exc.filename is not None and os.fsdecode(exc.filename) == dst) from None


def _copy_file(src: str, dst: str, root: Path, other: str, between: Callable[[], None]) -> None:
    """``shutil.copy2`` of one regular file (a link followed, as ``copytree`` always did), in chunks."""
    between()
    try:
        fd, _ = open_regular(src, follow=True)
    except NotRegularFileError:
        name = os.path.relpath(src, root)
        raise InvalidInputError(f"input artifacts_from: {other}/{name} is not a regular file (a device, a FIFO "
                                "or a socket, perhaps through a link): nothing of it is copied") from None
    except OSError as exc:
        raise _failed(exc, writing=False) from None
    try:
        try:
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)  # as open(dst, "wb")
        except OSError as exc:
            raise _failed(exc, writing=True) from None
        try:
            _copy_chunks(fd, out, between, src, dst)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    _copy_stat(src, dst)


def _copy_chunks(src: int, dst: int, between: Callable[[], None], src_name: str, dst_name: str) -> None:
    sendfile = getattr(os, "sendfile", None)
    while sendfile is not None:
        try:
            if not sendfile(dst, src, None, CHUNK):
                return
        except OSError as exc:
            if exc.errno not in _NO_SENDFILE:  # one call reads and writes: a full disk is the target's
                writing = exc.errno in FILE_SYSTEM_FULL or exc.errno == errno.EFBIG  # anything else the source's
                raise _failed(OSError(exc.errno, exc.strerror, dst_name if writing else src_name),
                              writing=writing) from None
            sendfile = None  # this file system (or platform) cannot: read and write from where it got to
            break
        faults.point("artifacts_import.after_chunk")
        between()
    while True:
        try:
            data = os.read(src, CHUNK)
        except OSError as exc:
            raise _failed(OSError(exc.errno, exc.strerror, src_name), writing=False) from None
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(dst, view):]
            except OSError as exc:
                raise _failed(OSError(exc.errno, exc.strerror, dst_name), writing=True) from None
        faults.point("artifacts_import.after_chunk")
        between()
