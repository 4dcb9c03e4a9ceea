"""Copying the artifact folders a job's input names (``"artifacts_from"``), with ``ORCH_ARTIFACTS_IMPORT`` on.

The copy runs before the handler starts, under the run's lease: a folder of gigabytes takes longer than a lease,
so the copy calls ``between()`` before each file and after each chunk of one, where the worker renews the lease
(or stops the copy: the job was taken over or cancelled, its lease could not be renewed, the worker is stopping).
Only regular files are copied: a link to ``/dev/zero`` would be copied for ever, a FIFO block the worker.
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
    chunk of one; what it raises ends the copy."""
    for other in names:
        src = folders.artifacts_dir(other)
        if src.is_dir() and other != job_id:
            shutil.copytree(src, safe_join(target, INPUTS_DIR, other), dirs_exist_ok=True,
                            copy_function=lambda s, d, root=src, other=other: _copy_file(s, d, root, other, between))


def _copy_file(src: str, dst: str, root: Path, other: str, between: Callable[[], None]) -> None:
    """``shutil.copy2`` of one regular file (a link followed, as ``copytree`` always did), in chunks."""
    between()
    try:
        fd, _ = open_regular(src, follow=True)
    except NotRegularFileError:
        name = os.path.relpath(src, root)
        raise InvalidInputError(f"input artifacts_from: {other}/{name} is not a regular file (a device, a FIFO "
                                "or a socket, perhaps through a link): nothing of it is copied") from None
    try:
        with open(dst, "wb") as out:
            _copy_chunks(fd, out.fileno(), between)
    finally:
        os.close(fd)
    shutil.copystat(src, dst)


def _copy_chunks(src: int, dst: int, between: Callable[[], None]) -> None:
    sendfile = getattr(os, "sendfile", None)
    while sendfile is not None:
        try:
            if not sendfile(dst, src, None, CHUNK):
                return
        except OSError as exc:
            if exc.errno not in _NO_SENDFILE:
                raise
            sendfile = None  # this file system (or platform) cannot: read and write from where it got to
            break
        faults.point("artifacts_import.after_chunk")
        between()
    while True:
        data = os.read(src, CHUNK)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]
        faults.point("artifacts_import.after_chunk")
        between()
