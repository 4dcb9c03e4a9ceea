"""Where a worker's runs and artifacts live: ``runs/`` and ``artifacts/<job_id>`` under the state folder,
never outside the store. A worker checks them when it starts (``WORKER_FOLDERS``, ``check_folders``; and that it
can write in them, ``WorkerFolders.probe``; the folders above the project folder, ``_trust_folders_above``), who may
change them again each time it reads its keyring again (``WorkerFolders.trust_again``, once a minute), and
again whenever something is not as last checked (``WorkerFolders.artifacts_dir``); a job's folder before it is used
(``WorkerFolders.artifacts_dir(trusted=True)``: a run in it, stale recovery's walk of what a dead run left in it;
``trusted_source``: a copy of ``artifacts_from`` from it); the room left on their disk before each claim
(``WorkerFolders.check_room``); the probes a killed worker left (``WorkerFolders.sweep_probes``)."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from pathlib import Path

from orchestrator import faults
from orchestrator.artifacts_source import SPARE_BYTES, free_bytes
from orchestrator.errors import SigningKeyError, StorageError
from orchestrator.key_paths import (check_folders_above, forget_checked_folders, may_write, named_user,
                                    others_may_write, user_or_root)
from orchestrator.run_folder import (DISK_REFUSALS, PRIVATE_FILE, PRIVATE_FOLDER, RUN_PREFIX, restrict,
                                     set_folder_mode)
from orchestrator.security import safe_join, shown_bytes, validate_id
from orchestrator.store.files import (STRAY_AGE, linked_folder_error, make_folder, named_pid, path_error,
                                      pid_alive)

RUNS_DIR = "runs"
ARTIFACTS_DIR = "artifacts"
WORKER_FOLDERS = ("", RUNS_DIR, ARTIFACTS_DIR)  # under the state dir, on any store: checked when a worker starts
STORE_WRITE_FOR_OTHERS = stat.S_IWGRP | stat.S_IWOTH
TAKES_RUNS = "rename a run's folder, or a job's, or .orchestrator away and put their own in its place"
TAKES_ARTIFACTS = "put files of their own among the job's artifacts, or links its run would write through"
TAKES_SOURCE = "put links there that a copy of artifacts_from follows, to this user's own files"
NOT_COPIED = "nothing of it is copied"
# ``O_TMPFILE`` refused by a file system without it (an old kernel, which reads it as ``O_DIRECTORY``: ``EISDIR``)
TMPFILE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.EISDIR})
PROBE_PREFIX = ".probe-"  # artifacts/.probe-<pid>-<8 hex>: a worker's probe (``WorkerFolders.probe``), never a job's
# why a worker that is not root runs no job in a job's folder root owns (``_own_job_folder``, ``loose_job_folders``)
ROOTS_FOLDER = ("may neither make a folder of root's its own (700) nor use one but as other users may (something run "
                "as root made it: a worker, a copy, a restore)")
# why a worker that is not root refuses ``.orchestrator``, ``runs/`` or ``artifacts/`` of root's it cannot write
ROOTS_STORE_FOLDER = "who may not write in it, as a worker must (the store's files, its runs, its jobs' folders)"
JOB_FOLDERS_NAMED = 10  # job folders ``verify`` names one by one (``loose_job_folders``); more are counted in one line

log = logging.getLogger(__name__)


def trusted_folders(state_dir: Path) -> tuple[str, str, str, str]:
    """The folders a worker runs jobs in only while no other user could change them (``WorkerFolders._trust``), in
    the order it checks them: the project folder (a symbolic link to one is followed), the state folder (the
    store's ``.orchestrator``), ``runs/`` and ``artifacts/``."""
    state = str(state_dir)
    return os.path.dirname(state), state, os.path.join(state, RUNS_DIR), os.path.join(state, ARTIFACTS_DIR)


def folder_status(folder: str, follow: bool = False) -> os.stat_result | None:
    """The status of ``folder`` (``follow``: through a symbolic link); None when nothing is there, or something
    other than a folder (a file, a link not followed). ``OSError`` when it cannot be looked at."""
    try:
        st = os.stat(folder) if follow else os.lstat(folder)
    except FileNotFoundError:
        return None
    return st if stat.S_ISDIR(st.st_mode) else None


def loose_folders(state_dir: Path) -> list[tuple[str, str]]:
    """(folder, what is wrong and what to do) for each of the ``trusted_folders`` that a worker of the store's user
    (``store_user``) would refuse (root's, not for that user to write, too), or change as it starts
    (``WorkerFolders._trust``), for a project folder below a folder it would refuse (``_trust_folders_above``), and
    for the job folders it would refuse to run or copy, or others may write (``loose_job_folders``): what
    ``verify`` warns of. Nothing is changed; a folder not there, or that cannot be looked at, is passed (the
    worker's own checks name it). The folders above are looked at afresh (``key_paths.forget_checked_folders``): a
    process remembers those it found safe, and a second ``verify`` in one process missed a folder made loose since
    the first."""
    found = []
    project, *_ = folders = trusted_folders(state_dir)
    statuses = [_looked_at(folder, follow=i == 0) for i, folder in enumerate(folders)]  # each read once
    uid = store_user(statuses[0], statuses[1])
    forget_checked_folders()
    try:
        check_folders_above(Path(project), "project folder", uid)
    except SigningKeyError as exc:
        found.append((project, exc.message))
    for folder, st in zip(folders, statuses):
        if st is None:
            continue
        written = folder != project  # a worker writes nothing in the project folder: root may keep it
        if not user_or_root(st, uid):
            found.append((folder, f"{owned_by_another(folder, st, TAKES_RUNS, uid)}: a worker run by "
                                  f"{named_user(uid)} refuses to run jobs (STORAGE_ERROR, exit 10); check what it "
                                  f"holds, then, as root: chown {uid} {folder}"))
        elif others_may_write(st):
            found.append((folder, f"{written_by_others(folder, st, 'written', TAKES_RUNS)}: a worker takes their "
                                  f"write bits off as it starts, or refuses to run jobs (STORAGE_ERROR, exit 10) when "
                                  f"it cannot; check what the store holds (verify --against an anchor), then, as its "
                                  f"owner (uid {st.st_uid}) run: chmod go-w {folder}"))
        elif written and st.st_uid != uid and not may_write(folder, st, uid):  # root's, the store's user not root
            found.append((folder, f"{owned_by_root(folder, st, uid)}, {ROOTS_STORE_FOLDER}: a worker run by "
                                  f"{named_user(uid)} refuses to run jobs (STORAGE_ERROR, exit 10); check what it "
                                  f"holds, then, as root: chown -R {uid} {folder}, or run the worker as root"))
    return found + loose_job_folders(folders[3], uid)


def _looked_at(folder: str, follow: bool) -> os.stat_result | None:
    """``folder_status``, None also when the folder cannot be looked at (``verify`` passes it: the worker names it)."""
    try:
        return folder_status(folder, follow)
    except OSError:
        return None


def store_user(project: os.stat_result | None, state: os.stat_result | None) -> int:
    """The user whose worker ``verify`` judges the store's ``trusted_folders`` for, from the status of the project
    folder and of ``.orchestrator`` (None: not there, or not to be looked at), read once with the others
    (``loose_folders``; until 2026-12-07 these two were read here, then again to be judged): this user when it owns
    either (it runs the workers, or could), else the owner of ``.orchestrator`` (an auditor's or root's ``verify``:
    judged for themselves, every folder was "another user's"). A store whose ``.orchestrator`` another user put in
    place is still told: the project folder is then not its owner's."""
    owners = [None if st is None else st.st_uid for st in (project, state)]
    if os.geteuid() in owners or state is None:
        return os.geteuid()
    return state.st_uid


def loose_job_folders(artifacts: str, uid: int | None = None) -> list[tuple[str, str]]:
    """(folder, what is wrong and what to do) for each job's folder in ``artifacts`` (a link in it followed, as a run
    follows it) that another user than ``uid`` (this one) or root owns, which a worker run by that user refuses to
    run the job in, or to copy for ``artifacts_from`` (``_own_job_folder``, ``trusted_source``), or that root owns
    when that user is not root, whatever its mode (the worker refuses to run the job in it), or that others may
    write, whose files (what a human checks, what later jobs copy) they could have changed: a worker makes it its
    owner's alone only when the job next runs or is copied. The first ``JOB_FOLDERS_NAMED`` are named, the rest
    counted in one line: a store made under a umask of 000 has thousands (runbook H). A folder others may only read
    is not warned of (the umask's to decide, as for the store's files). One ``stat`` a folder."""
    uid = os.geteuid() if uid is None else uid
    found: list[tuple[str, str]] = []
    more = 0
    try:
        entries = sorted(os.scandir(artifacts), key=lambda entry: entry.name)
    except OSError:  # none yet, or the worker's own checks name it
        return found
    for entry in entries:
        if entry.name.startswith(PROBE_PREFIX):
            continue
        try:
            st = entry.stat()  # a link followed: the folder a run would use
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if not user_or_root(st, uid):
            why = (f"{owned_by_another(entry.path, st, TAKES_ARTIFACTS, uid)}: a worker run by {named_user(uid)} "
                   f"refuses to run the job, or to copy its folder for artifacts_from (STORAGE_ERROR, exit 10, the "
                   f"job handed back); check what it holds, then, as root: chown -R {uid} {entry.path}")
        elif st.st_uid != uid:  # root's, the store's user not root
            why = (f"{owned_by_root(entry.path, st, uid)}: a worker run by {named_user(uid)} refuses to run the job "
                   f"in it (STORAGE_ERROR, exit 10, the job handed back): a worker that is not root {ROOTS_FOLDER}; "
                   f"check what it holds, then, as root: chown -R {uid} {entry.path}")
        elif others_may_write(st):
            why = (f"{written_by_others(entry.path, st, 'written', TAKES_ARTIFACTS)}: a worker makes it its owner's "
                   f"alone only when the job next runs or is copied; check what it holds, then, as its owner (uid "
                   f"{st.st_uid}) run: chmod 700 {entry.path}")
        else:
            continue
        if len(found) < JOB_FOLDERS_NAMED:
            found.append((entry.path, why))
        else:
            more += 1
    if more:
        found.append((artifacts, f"{more} more job folder(s) in {artifacts} another user owns or others may write, "
                                 f"as the {JOB_FOLDERS_NAMED} named: check what they hold, then, as their owner: "
                                 f"chmod -R go-w {artifacts} (runbook H), or as root: chown -R {uid} "
                                 f"{artifacts}"))
    return found


class WorkerFolders:
    """The run and artifact folders of one worker's store (``state_dir``), and what was last checked of them."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._runs_root: Path | None = None
        self._artifacts_root: str | None = None  # ``artifacts_dir``: the folder's path,
        self._artifacts_root_id: tuple[int, int] | None = None  # ...and the (device, inode) last checked in full
        self._job_folder: Path | None = None  # the last ``artifacts_dir`` returned as its path is (``_job_path``)

    def probe(self) -> None:
        """Make ``runs/`` and ``artifacts/`` if missing, then make and remove a folder in each, as every run does
        (its run folder, its job's folder), write the store's spare room in the run folder's for a moment
        (``_room_refused``: a quota used up, which ``check_room`` cannot see), and check the room left
        (``check_room``): ``StorageError`` naming the path and the reason (a permission, a read-only or full file
        system, a quota) when one cannot be, before the worker claims anything. Found only at a
        run, the job was claimed, then handed back, and a supervisor restarting the worker at once wrote that pair
        of events per restart. A real write, not ``os.access``, which says yes to root whatever the file system
        says. The names cannot be a run's or a job's; one a crash left in ``runs/`` is swept as a run's, one in
        ``artifacts/`` by ``sweep_probes``."""
        tag = f"{os.getpid()}-{os.urandom(4).hex()}"
        _, _, runs, artifacts = trusted_folders(self.state_dir)
        self._trust_project()
        for folder, entry in ((runs, f"{RUN_PREFIX}probe-{tag}"), (artifacts, f"{PROBE_PREFIX}{tag}")):
            make_folder(folder, self.state_dir)  # a link: PathEscapeError; anything else: StorageError
            self._trust(folder)
            path = os.path.join(folder, entry)
            try:
                os.mkdir(path, 0o700)
                faults.point("worker.probe.after_mkdir")
                refused = _room_refused(path) if folder == runs else None
                with contextlib.suppress(FileNotFoundError):  # another worker's sweep of runs/ took it: it was made
                    os.rmdir(path)
            except OSError as exc:  # named by the folder, what the operator must fix (the entry is the probe's)
                raise path_error(type(exc)(exc.errno, exc.strerror, folder)) from None
            if refused is not None:
                raise StorageError(f"{folder}: no room for the {shown_bytes(SPARE_BYTES)} the store keeps for its own "
                                   f"writes ({refused.strerror}): no job is claimed until space is freed", path=folder)
        self.check_room()

    def trust_again(self) -> None:
        """Look again at what ``probe`` looked at when the worker started: the folders above the project folder
        (afresh: ``key_paths.forget_checked_folders``), the project folder, ``.orchestrator``, ``runs/`` and
        ``artifacts/`` (``_trust``): one made loose since (a ``chmod 777`` of ``BASE_PATH``) is ``StorageError``,
        and the worker stops (exit 10) before its next claim, as it would have refused to start. Called with each
        reading of the keyring (``recovery.sweep_leftovers``, every ``SWEEP_EVERY``; not at the first, right after
        ``probe``), whose folders are looked at again then too: 0.1 to 0.2 ms a minute (measured), where before each claim it would add that to every job's
        ~8 ms, and still not close the window between two checks (a folder loosened and used during a run)."""
        forget_checked_folders()
        self._trust_project()
        _, _, runs, artifacts = trusted_folders(self.state_dir)
        self._trust(runs)
        self._trust(artifacts)

    def _trust_project(self) -> None:
        """The folders above the project folder, the project folder (a link to one is allowed) and ``.orchestrator``,
        in that order (``_trust_folders_above``, ``_trust``)."""
        project, state, _, _ = trusted_folders(self.state_dir)
        _trust_folders_above(project)
        self._trust(project, follow=True, written=False)
        self._trust(state)

    @staticmethod
    def _trust(folder: str, follow: bool = False, written: bool = True) -> None:
        """Refuse to run jobs in the project folder (``follow``: it may be a link), the state folder, ``runs/`` or
        ``artifacts/`` when another user could change it: whoever may write in one can rename a run's folder, or a
        job's, or the whole ``.orchestrator``, away and put their own in its place (the outcome the worker then
        signs). Owned by neither this user nor root, its owner may ``chmod`` it back whatever its mode: refused.
        Writable by others (a release before 2026-12-07 made these 0777 under a umask of 000): made writable by its
        owner alone, said once as a warning; refused when this user cannot (``restrict`` leaves another's folder as
        it is). "Others" is the key files' rule (``key_paths``): a user private group counts as the owner. Root's,
        when this user is not root and may not write it (``written``: all but the project folder, in which a worker
        writes nothing): refused, naming root, the mode and the ``chown -R`` (until 2026-12-07, folders4, a plain
        "permission denied" at the first write); one it may write (a group of root's it is in, an ACL) is used. A folder
        not there yet is the worker's to make. ``StorageError`` (exit 10): a path of the store is not what it must
        be, as one the worker cannot write, fixed the same way, by the store's owner; not ``PATH_ESCAPE``, which
        is a link. Nothing else of the store is changed (``chmod -R go-w``: docs/runbook.md, section H)."""
        try:
            st = folder_status(folder, follow)
        except OSError as exc:
            raise path_error(exc) from None
        if st is None:
            return  # not there yet, a file or a link: ``make_folder``'s or ``check_folders``' error
        _refuse_another_owner(folder, st, TAKES_RUNS, f"check what it holds (verify), then, as root: chown "
                                                      f"{os.geteuid()} {folder}")
        if written and st.st_uid != os.geteuid() and not may_write(folder, st):  # root's, this user not root
            raise StorageError(f"{owned_by_root(folder, st)}, {ROOTS_STORE_FOLDER}: no job is run; check what it "
                               f"holds (verify), then, as root: chown -R {os.geteuid()} {folder}, or run the worker "
                               f"as root", path=folder)
        if not others_may_write(st):
            return
        now = _restricted(folder, ~STORE_WRITE_FOR_OTHERS & 0o7777, follow)
        if others_may_write(now):
            raise _mode_kept(folder, now, "written", TAKES_RUNS, "chmod go-w")
        log.warning("%s was writable by other users (mode %o): made writable by its owner alone", folder,
                    stat.S_IMODE(st.st_mode), extra={"path": folder})

    def sweep_probes(self) -> list[str]:
        """Remove the ``artifacts/.probe-<pid>-*`` folders of workers killed inside their ``probe`` (between its
        ``mkdir`` and ``rmdir``; until 2026-12-07 nothing removed them, one per crash). A probe lives a few
        microseconds, so one is a stray once ``STRAY_AGE`` old *and* its pid is not alive here, or is this very
        process, whose own probe ended before it could sweep (a worker restarted in a container often gets the pid
        its dead predecessor had): the store's rule for strays (``files.remove_strays``), which never takes a live
        worker's probe. Even so, a probe taken from under a process paused in it is no harm (``probe`` allows it
        gone). Only an empty folder is removed (``rmdir``): anything in it is not the probe's. Called by stale
        recovery's sweep of leftovers (``recovery.sweep_leftovers``); returns the names removed."""
        root = os.path.join(self.state_dir, ARTIFACTS_DIR)
        try:
            names = [n for n in os.listdir(root) if n.startswith(PROBE_PREFIX)]
        except OSError:
            return []
        removed = []
        for name in names:
            pid = named_pid(name[len(PROBE_PREFIX):].split("-", 1)[0])
            path = os.path.join(root, name)
            try:
                if (pid is None or time.time() - os.lstat(path).st_mtime < STRAY_AGE
                        or (pid != os.getpid() and pid_alive(pid))):
                    continue  # not a probe's name, recent, or its worker may be in it still
                os.rmdir(path)  # a symbolic link or a file: NotADirectoryError, left alone
            except OSError:
                continue
            removed.append(name)
        return removed

    def check_room(self) -> None:
        """``StorageError`` when the disk of ``runs/`` is full: less free (to users other than root, ``f_bavail``)
        than the ``SPARE_BYTES`` the store keeps for its own writes. Checked when the worker starts (``probe``) and
        before each claim (``Claimer``): a job claimed on a full disk could not start (handed back, the worker
        stopped), or was charged for a print its handler could not make (``HANDLER_ERROR``: whose write that was,
        the worker cannot tell), and its hand-back needed room too. A file system that tells no size (``f_blocks``
        0, some FUSE ones) is not asked; one ``statvfs`` (~2 us)."""
        runs = os.path.join(self.state_dir, RUNS_DIR)
        try:
            fs = os.statvfs(runs)
        except OSError:  # what is wrong with the folder is met where it is written
            return
        free = free_bytes(fs)
        if free is not None and free < SPARE_BYTES:
            raise StorageError(f"{runs}: the disk is full ({shown_bytes(free)} free, less than the "
                               f"{shown_bytes(SPARE_BYTES)} the store keeps for its own writes): no job is claimed "
                               "until space is freed", path=runs)

    def artifacts_dir(self, job_id: str, *, trusted: bool = False) -> Path:
        """``artifacts/<job_id>``, never outside the store. Resolving it (``safe_join``: two ``realpath``
        walks) cost ~0.2 ms per run, so it is resolved in full only when something is not as last
        checked: the ``artifacts`` folder must be the very folder (device, inode) that passed the full
        check; the job's folder must not be a symlink (or not exist yet). ``artifacts`` itself is never
        a symlink (``PathEscapeError``), wherever it leads: one planted while the worker runs is met here.
        ``trusted``: a folder this worker is about to use (run the job in it, walk what a dead run left in it), also
        refused when another user could change it (``_own_job_folder``), from the ``lstat`` read here."""
        if self._artifacts_root is None:  # the path only: what it leads to is checked below, every time
            self._artifacts_root = os.path.join(self.state_dir, ARTIFACTS_DIR)
        root = self._artifacts_root
        path = os.path.join(root, validate_id(job_id))  # an id is one plain name
        try:
            st: os.stat_result | None = os.lstat(root)
        except FileNotFoundError:
            return self._job_path(path)  # no folder yet: the handler makes real ones, inside the store
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise linked_folder_error(root)
        real_dir = st is not None and stat.S_ISDIR(st.st_mode)
        if real_dir and (st.st_dev, st.st_ino) == self._artifacts_root_id:  # type: ignore[union-attr]
            try:
                job_st: os.stat_result | None = os.lstat(path)
            except FileNotFoundError:
                return self._job_path(path)
            except OSError:
                job_st = None
            if job_st is not None and not stat.S_ISLNK(job_st.st_mode):
                if trusted:
                    _own_job_folder(path, job_st)
                return self._job_path(path)
        checked = safe_join(self.state_dir, ARTIFACTS_DIR, job_id)  # PathEscapeError if out
        if real_dir:
            self._artifacts_root_id = (st.st_dev, st.st_ino)  # type: ignore[union-attr]
        if trusted:  # the folder a link inside the store leads to (a run may make one: ``$ORCH_ARTIFACTS_DIR/..``)
            _own_job_folder(os.path.realpath(checked))
        return checked

    def _job_path(self, path: str) -> Path:
        """``Path(path)``, the last one made kept: a run asks ``artifacts_dir`` for its job's folder as it starts and
        again as it ends, and so does the job's next run (a ``Path`` made from a string costs ~21,000 instructions,
        callgrind). Only the name is kept, the same for the same path: what it leads to is checked at every call."""
        kept = self._job_folder
        if kept is None or str(kept) != path:
            kept = self._job_folder = Path(path)
        return kept

    @property
    def runs_root(self) -> Path:
        """``runs/``, checked once (it must not lead out of the store)."""
        if self._runs_root is None:
            self._runs_root = safe_join(self.state_dir, RUNS_DIR)
        return self._runs_root

    def run_dir(self, run_id: str) -> Path:
        """``runs/<run_id>``: a run id is this worker's own random name, so its folder is not resolved
        again on every run."""
        return self.runs_root / validate_id(run_id, "run id")

    def made_by_worker(self, path: "str | bytes | None") -> bool:
        """Whether ``path`` (an ``OSError``'s ``filename``) is one the worker makes and writes for itself: ``runs/``,
        anything in it, ``artifacts/`` or a job's folder in it. One it cannot write is the store's fault (a
        permission, a file in a folder's place, a full disk), never the job's; the files in a job's folder are."""
        if path is None:
            return False
        path = os.path.abspath(os.fsdecode(path))
        runs = os.path.join(self.state_dir, RUNS_DIR)
        artifacts = os.path.join(self.state_dir, ARTIFACTS_DIR)
        return (path == runs or path.startswith(runs + os.sep) or path == artifacts
                or os.path.dirname(path) == artifacts)

    def linked(self) -> bool:
        """Whether ``runs/`` or ``artifacts/`` became a symbolic link since this worker started (checked then)."""
        return any(os.path.islink(os.path.join(self.state_dir, name)) for name in WORKER_FOLDERS if name)


def _room_refused(folder: str) -> OSError | None:
    """Write the store's spare room (``SPARE_BYTES`` of zeros) into a file of the probe's ``folder`` that no name
    leads to (``_nameless_file``), then close it: the error of a disk that refuses it (``DISK_REFUSALS``: full, or
    over this user's quota, which ``statvfs`` does not show, so ``check_room`` cannot), else None. The kernel charges
    a write to the quota as it takes it, and the file is gone before anything is written out. Once per worker start
    (~0.2 ms on ext4; ``posix_fallocate`` took 1 to 3 ms there); before each claim, ``check_room``'s ``statvfs`` is
    all. A file system that compresses (zeros take no room there) is not told this way."""
    try:
        fd = _nameless_file(folder)
    except FileNotFoundError:  # another worker's sweep of runs/ took the probe's folder: not asked this time
        return None
    try:
        left = memoryview(bytes(SPARE_BYTES))
        while left:  # a write cut short by a disk nearly full: the next one says why
            written = os.write(fd, left)
            if not written:  # a file system that takes nothing and says nothing (a FUSE one): not asked
                break
            left = left[written:]
        faults.point("worker.probe.room_written")
    except OSError as exc:
        return exc if exc.errno in DISK_REFUSALS else None
    finally:
        os.close(fd)
    return None


def _nameless_file(folder: str) -> int:
    """A file open for writing in ``folder`` that no name leads to, so that it cannot outlive this process: a worker
    killed while it held the spare room left a named 1 MiB file, which only a started worker's sweep removes, and
    on a disk nearly full every worker after it refused to start. ``O_TMPFILE`` where the file system has it, else a
    file removed right after it is made (a kill in between leaves it empty)."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.open(folder, os.O_WRONLY | tmpfile | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        except OSError as exc:
            if exc.errno not in TMPFILE_UNSUPPORTED:
                raise
    path = os.path.join(folder, "room")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with contextlib.suppress(FileNotFoundError):  # taken with its folder by another worker's sweep
        os.unlink(path)
    return fd


def _own_job_folder(folder: str, st: os.stat_result | None = None) -> None:
    """Refuse to use a job's folder (``artifacts/<job_id>``, there already) when another user owns it, who may
    ``chmod`` it back whatever its mode and put files among the job's artifacts, or links its run would write
    through (made by another user's worker, or in an ``artifacts/`` others could write before 2026-12-07), or when
    root owns it and this user is not root, whatever its mode (``ROOTS_FOLDER``; until 2026-12-07, later still, one
    of 700 stopped the worker with a plain "permission denied" at the run's ``chdir``, one of 755 with the advice to
    ``chmod 700`` it as root, after which it was no more usable: now the error names root, the mode and the
    ``chown -R`` to run). Checked before each run
    (``WorkerFolders.artifacts_dir(trusted=True)``), whatever the handler (a Python handler makes its folder in its
    own process); before stale recovery walks it (its owner would choose what the dead run "left", and recovery
    renames files there; a copy of ``artifacts_from`` checks its sources by ``trusted_source``). A folder others may
    use that this user may change is made 0700 here (``_made_private``), and so is one missing its owner's own bits
    (a run's ``chmod 077``, ``0600`` or ``0400``: said as a warning), which no run could enter: a failed ``chdir``
    there is the store's fault (``made_by_worker``), and until 2026-12-07 every worker that claimed the job exited
    10. ``StorageError`` (exit 10): the store's fault, fixed by its owner, as ``runs/``. ``st``: the folder's
    ``lstat``, read already (else read here); a folder not there yet is the run's to make."""
    try:
        st = st if st is not None else folder_status(folder)
    except OSError:  # met where the run makes it
        return
    if st is None or not stat.S_ISDIR(st.st_mode):
        return  # missing, or a file or a link: the run's ``make_private_folder`` or ``artifacts_dir`` refuses it
    _refuse_another_owner(folder, st, TAKES_ARTIFACTS, f"check what it holds, then, as root: chown -R "
                                                       f"{os.geteuid()} {folder}")
    if st.st_uid != os.geteuid():  # root's, under a worker that is not root
        raise StorageError(f"{owned_by_root(folder, st)}: a worker that is not root {ROOTS_FOLDER}: no job is run in "
                           f"it; check what it holds, then, as root: chown -R {os.geteuid()} {folder}", path=folder)
    mode = stat.S_IMODE(st.st_mode)
    if mode == PRIVATE_FOLDER:
        return
    now = _made_private(folder)
    if stat.S_IMODE(now.st_mode) & ~PRIVATE_FOLDER:
        raise _mode_kept(folder, now, "used", TAKES_ARTIFACTS, "chmod 700")
    if mode & stat.S_IRWXU != stat.S_IRWXU and stat.S_IMODE(now.st_mode) == PRIVATE_FOLDER:
        log.warning("%s was not its owner's to use in full (mode %o, a run's chmod): made its owner's alone (700) "
                    "before its job runs", folder, mode, extra={"path": folder})


def trusted_source(folder: str) -> None:
    """Refuse to copy another job's folder (``artifacts/<job_id>``) for ``artifacts_from`` when another user could
    change it: the copy follows its links, so whoever may write it could have this user's own files (a key, a
    token) copied into the job's ``inputs/``, where its handler reads them and may publish them. Another user's:
    refused, whatever its mode. Else made owner-only (0700, as the worker makes a job's folder), so that no other
    user reaches what is below it either (a folder 0777 a run made there; what another user put there while it was
    open is refused entry by entry as the copy walks it: ``artifacts_source.planted``); said when others could write
    it, refused when they still may and this user cannot change it (one they may only read, root's under a worker
    that is not root, is copied as it is). ``StorageError`` (exit 10), the store's fault as the job's own folder is:
    the job is handed back. A folder its owner cannot even open (a run's ``chmod``) is the copy's to give its owner's
    bits back (``artifacts_source.open_entry``)."""
    try:
        st = folder_status(folder, follow=True)  # the folder the copy reads: a link there (inside the store) followed
    except OSError:  # met by the copy, which says whose it is
        return
    if st is None:
        return  # missing (``ARTIFACTS_FROM_MISSING``) or a file: the copy's to say
    _refuse_another_owner(folder, st, TAKES_SOURCE, f"check what it holds, then, as root: chown -R {os.geteuid()} "
                                                    f"{folder}", refused=NOT_COPIED)
    if not stat.S_IMODE(st.st_mode) & ~PRIVATE_FOLDER:
        return
    try:
        now = _restricted(folder, PRIVATE_FOLDER, follow=True)
    except StorageError:  # a folder that went, or cannot be read: the copy's to meet
        return
    if others_may_write(now):
        raise _mode_kept(folder, now, "written", TAKES_SOURCE, "chmod go-w", refused=NOT_COPIED)
    if others_may_write(st):
        log.warning("%s was writable by other users (mode %o): made its owner's alone before it was copied", folder,
                    stat.S_IMODE(st.st_mode), extra={"path": folder})


def _trust_folders_above(project: str) -> None:
    """Refuse a project folder below a folder another user owns or others may write, but for a sticky one owned by
    this user or root (``/tmp``), up to the home folder when it lies inside it: whoever may write one may rename the
    project folder, or a folder between, away and put a store of their own in its place, whose runs the worker would
    sign. The keys' rule and message (``key_paths.check_folders_above``: links on the way followed and checked too),
    as ``StorageError`` (exit 10), the store's path being what is wrong; a folder not there yet is passed."""
    try:
        check_folders_above(Path(project), "project folder")
    except SigningKeyError as exc:
        raise StorageError(exc.message, path=project) from None


def _refuse_another_owner(folder: str, st: os.stat_result, harm: str, fix: str,
                          refused: str = "no job is run in it") -> None:
    """``StorageError`` for a folder of the worker's owned by neither this user nor root: its owner may change it
    whatever its mode, and ``harm``; ``refused`` says what is not done, ``fix`` what to run."""
    if not user_or_root(st):
        raise StorageError(f"{owned_by_another(folder, st, harm)}: {refused}; {fix}", path=folder)


def owned_by_another(folder: str, st: os.stat_result, harm: str, uid: int | None = None) -> str:
    """Why a folder (of status ``st``) owned by neither this user (``uid``: that one) nor root is not trusted,
    whatever its mode."""
    return (f"{folder} is owned by uid {st.st_uid}, neither {named_user(os.geteuid() if uid is None else uid)} nor "
            f"root, who may change it whatever its mode and {harm}")


def owned_by_root(folder: str, st: os.stat_result, uid: int | None = None) -> str:
    """Whose a job's folder or store folder (of status ``st``) that root owns is, said to a worker run by another user
    (``uid``: that one), which may not run a job in it (``ROOTS_FOLDER``, ``ROOTS_STORE_FOLDER``)."""
    return (f"{folder} is owned by root (mode {stat.S_IMODE(st.st_mode):03o}), not by "
            f"{named_user(os.geteuid() if uid is None else uid)}")


def _restricted(folder: str, allowed: int, follow: bool = False) -> os.stat_result:
    """``folder`` after ``restrict`` took every bit not in ``allowed`` it could, read again: ``restrict`` leaves
    another's folder as it is."""
    try:
        restrict(folder, allowed, follow)
        return os.stat(folder) if follow else os.lstat(folder)
    except OSError as exc:
        raise path_error(exc) from None


def _made_private(folder: str) -> os.stat_result:
    """``folder`` made owner-only (0700, as the worker makes a job's folder: its owner's bits given back too), never
    through a link, then read again; one whose mode this user may not change is left as it is, for the caller to
    refuse. Even one its owner may not open: a run's ``chmod 077`` of its own folder stopped every
    worker that is not root (exit 10), one after another, until 2026-12-07 (``run_folder.set_folder_mode``)."""
    try:
        with contextlib.suppress(PermissionError):  # not ours
            set_folder_mode(folder, PRIVATE_FOLDER)
        return os.lstat(folder)
    except OSError as exc:
        raise path_error(exc) from None


def _mode_kept(folder: str, now: os.stat_result, how: str, harm: str, chmod: str,
               refused: str = "no job is run in it") -> StorageError:
    """The error for a folder of the worker's that others may still use (``how``: "written", "used") because this
    user could not change its mode: its owner must (``chmod``); ``refused`` says what is not done."""
    return StorageError(f"{written_by_others(folder, now, how, harm)}, and this user cannot change it: {refused}; as "
                        f"its owner (uid {now.st_uid}) run: {chmod} {folder}", path=folder)


def written_by_others(folder: str, st: os.stat_result, how: str, harm: str) -> str:
    """Why a folder (of status ``st``) that others than its owner may use (``how``: "written", "used") is not
    trusted."""
    return (f"{folder} may be {how} by others than its owner (mode {stat.S_IMODE(st.st_mode):o}), who could {harm}")
