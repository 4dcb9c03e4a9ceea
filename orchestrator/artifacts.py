"""A job's artifact names: the name an event records is the name the file has on disk.

Artifact names are recorded sanitized, since a handler may put a secret in a file name
(``token=abc123.txt`` is recorded as ``token=[REDACTED]``). A file kept under its raw name would
leave the secret in every listing, backup and copy of the store, and an operator could not find the
file by the name the event shows. So the worker moves it to the recorded name before recording it:
its run is over, and the folder is the job's own, inside the store.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from orchestrator.limits import is_unicode
from orchestrator.errors import PathEscapeError
from orchestrator.run_folder import PRIVATE_FOLDER
from orchestrator.security import safe_join, sanitize_text

log = logging.getLogger(__name__)

MAX_TAKEN = 1000  # names tried (``2-token=[REDACTED]``, ``3-...``) before a file is left where it is


def recorded_names(folder: Path, paths: Iterable[str]) -> list[str]:
    """The names to record for the artifacts ``paths`` (relative to ``folder``): each one sanitized
    whole, as events always recorded them, and the file or folder whose name that changes moved to
    it (``password=x/report.md`` -> ``password=[REDACTED]``); a name already taken gets a ``2-``
    prefix on its last part (``3-``, ...). Then a folder such a file was in that is still there (it holds
    another file) is moved to its sanitized name too (``_move_secret_folders``). A name whose bytes are not
    UTF-8 is recorded, and the file moved, with U+FFFD for each such byte (``_unicode``). A name that needs no
    change costs what recording it always did: one ``sanitize_text`` (and one ``encode``)."""
    moved: dict[str, str] = {}  # a path named twice is moved once
    tried: dict[str, int] = {}  # ``_move``'s
    names = []
    for path in paths:
        name = sanitize_text(_unicode(path))
        if name != path:
            if path not in moved:
                moved[path] = _move(folder, path, name, tried)
            name = moved[path]
        names.append(name)
    if moved:
        _move_secret_folders(folder, moved, tried)
    return names


def _move_secret_folders(folder: Path, sources: Iterable[str], tried: dict[str, int]) -> None:
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
            moved_to = _move(folder, now, name, tried)
            now = now if os.path.lexists(folder / now) else moved_to  # not moved: still there
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


def _move(folder: Path, source: str, target: str, tried: dict[str, int]) -> str:
    """Move ``source`` to ``target``, or to ``2-target``, ... when that is taken; the name it has now
    (``target`` when there is nothing to move, or it cannot be moved: the record stays sanitized). ``tried``: the
    number each name was last given or found taken at: the next file moved to that name tries from there (a name
    taken stays taken while the run's names are recorded), so 1,000 files of one name cost 1,000 tries, not
    500,000 (6 s: recording one payload's artifacts, the lease unrenewed)."""
    if not os.path.lexists(folder / source):  # named in the payload but never written, or gone since
        return target
    head, _, last = target.rpartition("/")
    if head and not _stays_inside(folder, head):  # a link the run left where the recorded folder would be
        head, last = "", target.replace("/", "_")  # kept in the job's folder, one name: ``[REDACTED]_report.md``
    why = "every name is taken"
    first = f"{head}/{last}" if head else last
    for n in range(tried.get(first, 1), MAX_TAKEN + 1):
        tried[first] = n
        taken = last if n == 1 else f"{n}-{last}"
        candidate = f"{head}/{taken}" if head else taken
        if os.path.lexists(folder / candidate) or sanitize_text(candidate) != candidate:
            continue
        try:
            if head:
                os.makedirs(folder / head, PRIVATE_FOLDER, exist_ok=True)  # the run's own, inside the job's
            _rename_no_replace(folder / source, folder / candidate)
        except FileExistsError:  # taken since the check (another process moving a file to that name)
            continue
        except OSError as exc:
            why = exc.strerror or str(exc)
            break
        _remove_emptied(folder, os.path.dirname(source))
        return candidate
    log.warning("could not move the artifact %s of %s to the name its event records: %s", target, folder, why,
                extra={"folder": str(folder), "artifact": target})
    return target


def _stays_inside(folder: Path, sub: str) -> bool:
    """Whether ``folder/sub`` (made or not) is inside ``folder`` once every link on the way is followed."""
    try:
        safe_join(folder, sub)
    except PathEscapeError:
        return False
    return True


def _rename_no_replace(source: Path, target: Path) -> None:
    """``os.rename`` that never replaces a file at ``target`` (``FileExistsError``): a file is linked to its
    new name, then unlinked from the old one. A folder is renamed (a rename onto a folder that holds files
    fails; onto an empty one, nothing is lost)."""
    if os.path.isdir(source) and not os.path.islink(source):
        if os.path.lexists(target) and not os.path.isdir(target):
            raise FileExistsError(17, "File exists", str(target))
        os.rename(source, target)
        return
    os.link(source, target, follow_symlinks=False)
    os.unlink(source)


def _remove_emptied(folder: Path, parent: str) -> None:
    """Remove the folders a move left empty (``password=x/`` once its one file moved): their names hold the secret."""
    while parent:
        try:
            os.rmdir(folder / parent)
        except OSError:  # not empty: another file is still there
            return
        parent = os.path.dirname(parent)
