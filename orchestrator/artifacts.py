"""A job's artifact names: the name an event records is the name the file has on disk.

Artifact names are recorded sanitized, since a handler may put a secret in a file name
(``token=abc123.txt`` is recorded as ``token=[REDACTED]``). A file kept under its raw name would
leave the secret in every listing, backup and copy of the store, and an operator could not find the
file by the name the event shows. So the worker moves it to the recorded name before recording it:
its run is over, and the folder is the job's own, inside the store.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from orchestrator.limits import is_unicode
from orchestrator.run_folder import FOLDER_NO_LINK, PRIVATE_FOLDER
from orchestrator.security import sanitize_text

log = logging.getLogger(__name__)

MAX_TAKEN = 1000  # names tried (``2-token=[REDACTED]``, ``3-...``) before a file is left where it is


def recorded_names(folder: Path, paths: Iterable[str]) -> list[str]:
    """The names to record for the artifacts ``paths`` (relative to ``folder``): each one sanitized
    whole, as events always recorded them, and the file or folder whose name that changes moved to
    it (``password=x/report.md`` -> ``password=[REDACTED]``); a name already taken gets a ``2-``
    prefix on its last part (``3-``, ...). Then a folder such a file was in that is still there (it holds
    another file) is moved to its sanitized name too (``_move_secret_folders``). A name whose bytes are not
    UTF-8 is recorded, and the file moved, with U+FFFD for each such byte (``_unicode``). A name that needs no
    change costs what recording it always did: one ``sanitize_text`` (and one ``encode``).

    The moves go by the descriptor of ``folder``, opened once at the first (``_JobFolder``), folder by folder below
    it, never through a link: ``paths`` were listed (stale recovery's walk) or named (a payload) before, and a folder
    on the way swapped for a link since (by a process of the run still alive, or one that kept a folder below open)
    is not followed (until 2026-12-07, later still, the moves went by path, and the file a link led to, outside the
    store, was moved into the job's folder). ``folder`` itself is the job's, checked before the run or the walk."""
    moved: dict[str, str] = {}  # a path named twice is moved once
    tried: dict[str, int] = {}  # ``_move``'s
    names = []
    with _JobFolder(folder) as job:
        for path in paths:
            name = sanitize_text(_unicode(path))
            if name != path:
                if path not in moved:
                    moved[path] = _move(job, path, name, tried)
                name = moved[path]
            names.append(name)
        if moved:
            _move_secret_folders(job, moved, tried)
    return names


class _JobFolder:
    """The job's folder, opened at the first move (a name that needs none costs no ``open``) and closed at the end;
    ``fd`` raises the ``OSError`` of an open that failed (each move then says so, and nothing is moved)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        if self._fd is None:  # the job's folder as checked: a link to one inside the store followed (``artifacts_dir``)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def __enter__(self) -> "_JobFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def open_parent(self, path: str, make: bool = False) -> tuple[int, str]:
        """The descriptor of the folder ``path`` (relative to the job's folder) is in, and its last name: each folder
        on the way opened by the one above it with ``O_NOFOLLOW`` (a link there: ``ELOOP``; a file: ``ENOTDIR``);
        ``make``: one missing is made first (0700, the run's own, as ``os.makedirs`` made it). ``release`` it."""
        *folders, last = parts = [part for part in path.split("/") if part not in ("", ".")] or ["."]
        if ".." in parts:  # never a listed or checked name's (``validate_artifact_path``): never out of the folder
            raise PermissionError(errno.EPERM, "a '..' in it leads out of the job's folder", path)
        fd = self.fd
        try:
            for name in folders:
                if make:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, PRIVATE_FOLDER, dir_fd=fd)
                below = os.open(name, FOLDER_NO_LINK, dir_fd=fd)
                self.release(fd)
                fd = below
        except BaseException:
            self.release(fd)
            raise
        return fd, last

    def release(self, fd: int) -> None:
        """Close a descriptor ``open_parent`` gave, unless it is the job's folder's own."""
        if fd != self._fd:
            os.close(fd)

    @contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """``open_parent``, released at the end of the block."""
        fd, last = self.open_parent(path)
        try:
            yield fd, last
        finally:
            self.release(fd)


def _move_secret_folders(job: _JobFolder, sources: Iterable[str], tried: dict[str, int]) -> None:
    """Move each folder one of ``sources`` (moved to their sanitized names) was in that is still there and whose
    path sanitizing changes (``password=x/`` of ``password=x/report.md``, holding another file) to its sanitized
    name, as a file is: the file's move took the secret out of its own name only, not out of the folder's on
    disk. Outermost first, each looked for where the folder above it went (``2-password=[REDACTED]/token=y``)."""
    where: dict[str, str] = {}  # a folder as the run left it -> where it is now
    above = {source.rsplit("/", n)[0] for source in sources for n in range(1, source.count("/") + 1)}
    for path in sorted(above, key=lambda path: path.count("/")):
        head, _, last = path.rpartition("/")
        now = f"{where.get(head, head)}/{last}" if head else last
        name = sanitize_text(now)
        if name != now:
            moved_to = _move(job, now, name, tried)
            now = now if _still_there(job, now) else moved_to  # not moved: still there
        where[path] = now


def _unicode(path: str) -> str:
    """``path`` as text an event can hold: a name whose bytes are not UTF-8 (a file a dead run left, listed by
    ``os.walk`` with lone surrogates, which cannot be signed) has each such byte replaced by U+FFFD."""
    if is_unicode(path):
        return path
    try:  # the bytes back as the file system has them, then decoded with U+FFFD where they are not UTF-8
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no byte gives: not a listed name, but never a traceback
        return path.encode("utf-8", "replace").decode()


def _move(job: _JobFolder, source: str, target: str, tried: dict[str, int]) -> str:
    """Move ``source`` to ``target``, or to ``2-target``, ... when that is taken; the name it has now
    (``target`` when there is nothing to move, or it cannot be moved: the record stays sanitized). ``tried``: the
    number each name was last given or found taken at: the next file moved to that name tries from there (a name
    taken stays taken while the run's names are recorded), so 1,000 files of one name cost 1,000 tries, not
    500,000 (6 s: recording one payload's artifacts, the lease unrenewed). Both ends by descriptor (``parent``): a
    link on the way to ``source`` is not followed (nothing moved, said); one where the recorded folder would be keeps
    the file in the job's folder under one name (``[REDACTED]_report.md``), as does a file there."""
    why = "every name is taken"
    try:
        with job.parent(source) as (from_fd, from_name):
            try:
                os.stat(from_name, dir_fd=from_fd, follow_symlinks=False)
            except FileNotFoundError:  # named in the payload but never written, or gone since
                return target
            to_fd, head, last = _target_folder(job, target)
            try:
                first = f"{head}/{last}" if head else last
                for n in range(tried.get(first, 1), MAX_TAKEN + 1):
                    tried[first] = n
                    taken = last if n == 1 else f"{n}-{last}"
                    candidate = f"{head}/{taken}" if head else taken
                    if _taken(to_fd, taken) or sanitize_text(candidate) != candidate:
                        continue
                    try:
                        _rename_no_replace(from_fd, from_name, to_fd, taken)
                    except FileExistsError:  # taken since the check (another process moving a file to that name)
                        continue
                    _remove_emptied(job, os.path.dirname(source))
                    return candidate
            finally:
                job.release(to_fd)
    except FileNotFoundError:  # a folder on the way to it gone: nothing to move
        return target
    except OSError as exc:  # a link or a file on the way to it (``ELOOP``, ``ENOTDIR``), a permission, the disk
        why = exc.strerror or str(exc)
    log.warning("could not move the artifact %s of %s to the name its event records: %s", target, job.path, why,
                extra={"folder": str(job.path), "artifact": target})
    return target


def _target_folder(job: _JobFolder, target: str) -> tuple[int, str, str]:
    """The descriptor of the folder ``target`` goes into (made as needed, the run's own; ``job.release`` it), that
    folder's path and the last name; where a link or a file stands in the way (a link the run left where the
    recorded folder would be), the job's folder itself and ``target`` as one name (``[REDACTED]/report.md`` ->
    ``[REDACTED]_report.md``)."""
    head, _, last = target.rpartition("/")
    if head:
        try:
            fd, name = job.open_parent(target, make=True)
            return fd, head, name
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
    return job.fd, "", target.replace("/", "_")


def _taken(fd: int, name: str) -> bool:
    """Whether ``name`` is there in the folder ``fd`` (a link counted as itself)."""
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _still_there(job: _JobFolder, path: str) -> bool:
    """Whether ``path`` is in the job's folder still (never through a link: one on the way, and it was not moved)."""
    try:
        with job.parent(path) as (fd, name):
            return _taken(fd, name)
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _rename_no_replace(from_fd: int, source: str, to_fd: int, target: str) -> None:
    """``os.rename`` that never replaces a file at ``target`` (``FileExistsError``): a file is linked to its
    new name, then unlinked from the old one. A folder is renamed (a rename onto a folder that holds files
    fails; onto an empty one, nothing is lost). Both names in their folders' descriptors, neither followed."""
    if stat.S_ISDIR(os.stat(source, dir_fd=from_fd, follow_symlinks=False).st_mode):
        try:
            if not stat.S_ISDIR(os.stat(target, dir_fd=to_fd, follow_symlinks=False).st_mode):
                raise FileExistsError(errno.EEXIST, "File exists", target)
        except FileNotFoundError:
            pass
        os.rename(source, target, src_dir_fd=from_fd, dst_dir_fd=to_fd)
        return
    os.link(source, target, src_dir_fd=from_fd, dst_dir_fd=to_fd, follow_symlinks=False)
    os.unlink(source, dir_fd=from_fd)


def _remove_emptied(job: _JobFolder, parent: str) -> None:
    """Remove the folders a move left empty (``password=x/`` once its one file moved): their names hold the secret."""
    while parent:
        try:
            with job.parent(parent) as (fd, name):
                os.rmdir(name, dir_fd=fd)
        except OSError:  # not empty: another file is still there
            return
        parent = os.path.dirname(parent)
