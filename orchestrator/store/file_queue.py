"""The file queue index: the ready and running indexes as empty files under ``<state_dir>/index``.

The interface and its rules (an entry is written before the event that makes a job runnable, removed
only after the event that ends it; an entry is a hint the claimer checks) are ``orchestrator.queue``'s;
this module is how a file store keeps them: one entry per ready job, named so that a sorted listing
is the claim order, and idle workers taking turns watching ``ready/`` (``orchestrator.wakeup``).
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Collection, Iterator

from orchestrator import faults
from orchestrator.errors import StorageError
from orchestrator.limits import keep_latest
from orchestrator.queue import (BUILT_MARKER, ENTRY_TEMPLATE, FOLDER_MARK, INDEX_DIR, INDEX_FOLDERS, QueueIndex,
                                ReadyEntry)
from orchestrator.state import QUEUED, RUNNING, JobState
from orchestrator.store.files import check_folders, link_name, make_folder, open_creating, path_error, remove_file
from orchestrator.wakeup import InotifyWatcher, TurnBell, Watcher, WatchTurn, make_watcher, wakeup_mode, watch_turn

LISTING_MAX_AGE = 0.05  # seconds a worker draining a backlog keeps walking one listing of ready/
FIRST_CLAIM_EPOCH = 1  # a submitted job's epoch is 0 and a claim takes the next: its first claim's running entry
PASSED_OVER_KEPT = 4096  # jobs a worker remembers passing over for a first claim in flight (``_claim_in_flight``)
# A worker waiting its turn while another holds it looks at ready/ itself this often, and wakes for a runnable entry
# found there at two looks in a row: a watcher would have claimed it by then, unless it is paused (SIGSTOP, a frozen VM)
# with the turn held.
UNWATCHED_LOOK_EVERY = 0.5
TAKEN_OVER_NAMES_CHECKED = 64  # more entries announced while a worker waited its turn: it walks, without a look at each


class FileQueueIndex(QueueIndex):
    """Empty files under ``<state_dir>/index``; listing ``ready/`` costs O(ready jobs), not O(all jobs).
    Its folders are checked when it is opened, as the store's are: never a symbolic link."""

    def __init__(self, root: Path, wakeup: str = "auto") -> None:
        self.root = Path(root)
        check_folders(self.root, INDEX_FOLDERS)
        self.ready_dir = self.root / "ready"
        self.running_dir = self.root / "running"
        self._wakeup = wakeup_mode(wakeup)
        self._waits = _ThreadWaits()  # each thread's own watch and turn
        self._listing: list[str] = []  # the ready/ listing claims walk (see ``candidates``)
        self._listed_at = float("-inf")
        self._next = 0
        self._passed_over: OrderedDict[str, None] = OrderedDict()  # see ``_claim_in_flight``
        self._cursor = threading.Lock()  # workers of one Orchestrator (threads) share the walk
        self.template = self.root / ENTRY_TEMPLATE
        # an entry's path is joined as a string: a ``pathlib`` join costs ~10 us, three per job
        self._ready_s, self._running_s = str(self.ready_dir), str(self.running_dir)
        self._built_s = str(self.root / BUILT_MARKER)
        self._folder_marks = (os.path.join(self._ready_s, FOLDER_MARK), os.path.join(self._running_s, FOLDER_MARK))
        self._bell = TurnBell(str(self.root))  # rung after each ready entry made: wakes a waiting worker if none watches

    def _touch(self, path: "Path | str") -> None:
        """Make the entry ``path`` exist: a hard link of the index's one empty file, not a file of its own
        (``files.link_name``: only an entry's name means anything); where links fail, the entry is created."""
        try:
            # a planted symlink is linked, not its target; both folders made with the template, as always
            if link_name(self.template, path, self.root, (self.ready_dir, self.running_dir)):
                return
        except FileExistsError:
            return
        try:
            fd = open_creating(path, self.root)
        except OSError as exc:  # a full disk (no inode left) is STORAGE_ERROR, not a traceback
            raise StorageError(f"could not write the index entry {path}: {exc.strerror}") from None
        os.close(fd)

    def put_ready(self, entry: ReadyEntry) -> None:
        self._touch(os.path.join(self._ready_s, entry.name))
        self._bell.ring_if_nobody_watches()
        faults.point("queue.after_put_ready")

    def drop_ready(self, entry: ReadyEntry) -> None:
        remove_file(os.path.join(self._ready_s, entry.name))

    def announce(self, entry: ReadyEntry) -> None:
        # IN_ATTRIB wakes watchers only now that the event is durable
        path = os.path.join(self._ready_s, entry.name)
        try:
            os.utime(path, follow_symlinks=False)  # a planted link: its own times
        except FileNotFoundError:
            # A fast worker claimed the job already (its running entry is there): nothing to do. Or a
            # claimer dropped the entry as stale, because it did not look newer than the job's last
            # event (the clock stepped back between that event and this one): put it back, or the job
            # would stay queued with no entry. (A claimer never drops an entry newer than the job's last
            # event while the entry is young, Claimer._try_claim: so no drop comes after this call.) If a
            # running entry left by a crash hides this case, stale recovery puts the entry back when
            # it meets that running entry (recovery.recover_expired).
            if not self.is_claimed(entry.job_id):
                self._touch(path)
                self._bell.ring_if_nobody_watches()
        except OSError as exc:
            raise path_error(exc, path) from None  # utime's error names no path

    def ready(self) -> list[ReadyEntry]:
        names = self._list(self.ready_dir)
        entries = [e for e in map(ReadyEntry.parse, names) if e is not None]
        entries.sort()
        return entries

    def candidates(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = (),
                   left_keys: Collection[str] = ()) -> Iterator[ReadyEntry]:
        """Claim order, from a sorted listing of ``ready/`` that successive claims share (nothing is reserved,
        so ``skip`` changes nothing; an entry's name holds no kind nor key, so ``kinds`` and ``left_keys`` do not
        either).

        Listing a backlog of thousands of entries costs ~0.3 ms, as much as the rest of a claim, so a
        worker draining a backlog walks one listing: each claim goes on where the last one stopped,
        and the folder is listed again once the walk reaches its end or the listing is older than
        ``LISTING_MAX_AGE`` (so a job of higher priority submitted meanwhile waits at most that long).
        The zero-padded names sort as their entries do: a string sort (C speed) gives the claim
        order, and only the entries a claim actually looks at are parsed. An entry gone since the listing is passed
        over, and one whose first claim another worker has in flight comes last (``_claim_in_flight``).
        """
        fresh = time.monotonic() - self._listed_at <= LISTING_MAX_AGE
        return self._walk(relist=not (fresh and self._next < len(self._listing)))

    def _walk(self, relist: bool) -> Iterator[ReadyEntry]:
        if relist:
            self._relist()
        later: dict[str, ReadyEntry] = {}  # passed over for a claim in flight: read if nothing else is claimed
        while True:
            while (name := self._take_next()) is not None:
                entry = ReadyEntry.parse(name)
                # gone since the listing: claimed by another worker (or dropped). Not read: with several workers on
                # one queue, reading and checking each job another had claimed cost as much as a claim of one's own
                if entry is None or not self._ready_there(name):
                    continue
                if self._claim_in_flight(entry.job_id):
                    later[name] = entry
                    continue
                yield entry
            if relist:
                break
            # an older listing ran out: list once more, so nothing added since (a retry) is missed
            relist = True
            self._relist()
        for name, entry in later.items():  # a pass that claims nothing has looked at every entry, as before
            if self._ready_there(name):
                yield entry

    def _claim_in_flight(self, job_id: str) -> bool:
        """Whether another worker is claiming this queued job for the first time: its running entry of that claim is
        there (made before the claim's event) while its ready entry still is (dropped after it). Reading and checking
        the job then finds it running, or claims it only to lose the append: with four workers on one queue, most
        jobs were read so by a worker that did not get them (``python -m bench.workers``). Said once a job
        (``_passed_over``): a crash between that running entry and the claim's event leaves the entry for good (stale
        recovery cannot tell it from a claim in flight), and such a job is read the next time it is met."""
        if job_id in self._passed_over or not self._first_claim_made(job_id):
            return False
        with self._cursor:  # workers of one Orchestrator (threads) share the memory, as the walk
            keep_latest(self._passed_over, job_id, None, PASSED_OVER_KEPT)
        return True

    def _ready_there(self, name: str) -> bool:
        return _entry_exists(os.path.join(self._ready_s, name))

    def _first_claim_made(self, job_id: str) -> bool:
        """Whether the running entry of the job's first claim is there (made before that claim's event)."""
        return _entry_exists(os.path.join(self._running_s, self._running_name(job_id, FIRST_CLAIM_EPOCH)))

    def upcoming(self) -> ReadyEntry | None:
        """The next entry of the listing claims walk (``candidates``): while a backlog is drained, the job the next
        claim takes (an older listing's next entry too: it is listed again). None if another worker has claimed it,
        or is claiming it for the first time: the claim will pass over it."""
        with self._cursor:
            names = self._listing[self._next:self._next + 1]
        entry = ReadyEntry.parse(names[0]) if names else None
        if entry is None or not self._ready_there(names[0]) or self._first_claim_made(entry.job_id):
            return None
        return entry

    def _take_next(self) -> str | None:
        with self._cursor:
            if self._next >= len(self._listing):
                return None
            self._next += 1
            return self._listing[self._next - 1]

    def _relist(self) -> None:
        listing = sorted(self._list(self.ready_dir))
        with self._cursor:
            self._listing, self._listed_at, self._next = listing, time.monotonic(), 0

    @staticmethod
    def _running_name(job_id: str, epoch: int | None) -> str:
        return job_id if epoch is None else f"{job_id}@{epoch}"  # "@" is never in an id

    def put_running(self, job_id: str, epoch: int | None = None) -> None:
        self._touch(os.path.join(self._running_s, self._running_name(job_id, epoch)))

    def drop_running(self, job_id: str, epoch: int | None = None) -> None:
        remove_file(os.path.join(self._running_s, self._running_name(job_id, epoch)))

    def running_entries(self) -> list[tuple[str, int | None]]:
        names = self._list(self.running_dir)
        out: list[tuple[str, int | None]] = []
        for name in names:
            job_id, at, epoch = name.partition("@")
            if name.startswith(".") or (at and not epoch.isdigit()):
                continue
            out.append((job_id, int(epoch) if at else None))
        return out

    def holds_entry(self, s: JobState) -> bool:
        if s.state == QUEUED:
            return any(map(self._ready_there, ReadyEntry.for_state(s).names))  # an older index's name too
        if s.state == RUNNING:
            return any(_entry_exists(os.path.join(self._running_s, self._running_name(s.job_id, epoch)))
                       for epoch in (s.epoch, None))
        return True

    def missing_entry_terms(self, s: JobState) -> tuple[str, str, str]:
        folder = "ready" if s.state == QUEUED else "running"
        return (f"no entry in {INDEX_DIR}/{folder}/", "the entry was deleted by hand (or not put back after an "
                "INDEX_NOT_UPDATED warning)", f"remove {self._built_s}")

    @staticmethod
    def _list(folder: Path) -> list[str]:
        """The names in ``folder``; none when it is missing, ``StorageError`` when it cannot be listed."""
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise path_error(exc) from None

    def is_built(self) -> bool:
        """``built`` is there, and so is each folder's mark: a folder deleted by hand (an entry put since, or a
        waiting worker, makes a new one, unmarked) is rebuilt, not taken as empty. Three ``faccessat`` at each claim,
        ~2.5-5.5 us where one ``stat`` took ~1-2.5 us (this busy 2-core machine; a claim takes ~1-4 ms)."""
        return _entry_exists(self._built_s) and all(map(_entry_exists, self._folder_marks))

    def start_building(self) -> None:
        """``built`` goes first (a crash during the scan leaves the index to rebuild), then each folder is marked
        before the scan puts an entry in it: one removed during the scan takes its mark with it."""
        remove_file(self._built_s)
        for mark in self._folder_marks:
            self._touch(mark)

    def mark_built(self) -> None:
        self._touch(self._built_s)

    def wait(self, timeout: float, take_turns: bool = True) -> bool:
        """Idle workers take turns watching ``ready/`` (``wakeup.WatchTurn``): one whose turn it is not waits for it,
        and when it comes looks at once if an entry announced meanwhile is still there (another worker's claim
        removed the rest). One that left a job for another worker (``take_turns`` False) gives its turn up and
        watches on its own: the turn goes on until a worker that runs the job has it, or every idle one watches.
        Where turns cannot be taken (polling), every idle worker watches."""
        end = time.monotonic() + timeout
        waits = self._waits
        waits.claimed = False
        # ready/ removed or moved away (the index is a cache: deletable at any time): the next entry goes into a new
        # folder, so that one is watched, and "look now" said, for an entry put there before the watch (the folder
        # made here has no mark: the look rebuilds the index, ``is_built``)
        lost = waits.watcher is not None and waits.watcher.lost
        if lost:
            self.close()
        watcher = waits.watcher
        if watcher is None:
            make_folder(self.ready_dir, self.root)
            watcher = waits.watcher = make_watcher(self.ready_dir, self._wakeup)
            waits.turn = watch_turn(self.root) if isinstance(watcher, InotifyWatcher) else None
        if lost:
            return True
        turn = waits.turn
        if turn is not None and not take_turns:
            turn.hand_over()
        elif turn is not None and not turn.mine:
            if not turn.take():
                turn.wait(timeout)
                if not turn.take():
                    return self._unclaimed_while_watched(waits)
            if watcher.wait(0):
                if self._still_ready(watcher.changed(TAKEN_OVER_NAMES_CHECKED)):
                    return True
                waits.claimed = True  # nothing to walk for, but those jobs may run now: ``claimed_while_waiting``
        return watcher.wait(max(0.0, end - time.monotonic()))

    def _unclaimed_while_watched(self, waits: "_ThreadWaits") -> bool:
        """Whether, although another worker holds the turn, a runnable entry was there at this worker's last look
        too, ``UNWATCHED_LOOK_EVERY`` or more ago (and was not told of before): its watcher would have claimed it,
        unless it is paused with the turn held, which left every idle worker deaf until ``IDLE_MAX_WAIT`` (30 s)
        before 2026-12-06. One listing per ``UNWATCHED_LOOK_EVERY`` (of an empty folder, mostly): no wake-up while
        the watcher is alive. By the names, not their times: an entry's time is its job's, not the listing's clock."""
        now = time.monotonic()
        if now < waits.look_at:
            return False
        waits.look_at = now + UNWATCHED_LOOK_EVERY
        due = time.time()
        ready = frozenset(name for name in self._list(self.ready_dir)
                          if (entry := ReadyEntry.parse(name)) is not None and entry.due(due))
        left, waits.seen = ready & waits.seen, ready
        unseen, waits.unclaimed = left - waits.unclaimed, left
        return bool(unseen)

    def claimed_while_waiting(self) -> bool:
        return self._waits.claimed

    def _still_ready(self, names: "set[str] | None") -> bool:
        """Whether one of the entries announced while this worker waited its turn is still there to claim (not
        known, or too many to look at each: a look is due)."""
        return names is None or any(self._ready_there(name) for name in names)

    def hand_over_watch(self) -> None:
        turn = self._waits.turn
        if turn is not None and turn.mine:
            turn.release()
            # other jobs ready (a backlog, a job of another kind): a waiter looks too (the folder's mark is no job)
            if any(not name.startswith(".") for name in self._list(self.ready_dir)):
                turn.ring()

    def close(self) -> None:
        waits = self._waits
        for part in (waits.turn, waits.watcher):  # the turn first: it hands over before the watch ends
            if part is not None:
                part.close()
        waits.turn = waits.watcher = None


class _ThreadWaits(threading.local):
    """A thread's watch of ``ready/`` and its turn to watch, each None until its first wait (``FileQueueIndex.wait``):
    workers of one Orchestrator (threads) share the index, and one that stops closes its own, never the one another
    is waiting on (a wait on a closed, or reused, descriptor)."""

    watcher: "Watcher | None" = None
    turn: "WatchTurn | None" = None
    claimed = False  # its last wait took the turn and found the entries announced before it gone
    look_at = 0.0  # ``time.monotonic()`` of its next look at ready/ while another worker holds the turn
    seen: "frozenset[str]" = frozenset()  # the runnable entries that look found (``_unclaimed_while_watched``)
    unclaimed: "frozenset[str]" = frozenset()  # those of them found at the look before too, told of


def _entry_exists(path: str) -> bool:
    """Whether an index entry is there (a link planted in its place counts, never followed): ``faccessat``, ~0.4 us,
    where ``os.path.lexists`` raises and catches an error for a missing entry (~1.1 us), one to three times a claim."""
    return os.access(path, os.F_OK, follow_symlinks=False)
