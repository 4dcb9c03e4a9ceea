"""One exception root; every expected error has a stable code and an exit code.

The CLI maps any ``OrchestratorError`` to ``{"error": code, "message": ...}`` and its
``exit_code``, without a traceback. Exit 1 is reserved for unexpected internal errors and
2 for usage errors (click's default; ``UsageError`` is their form with ``--json``), so every
other expected error starts at 3.
"""
from __future__ import annotations

import errno
import signal
from typing import Any

# The OSError numbers of a write the disk refused (full, over quota, failing, past the file size limit)
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def _plain(docstring: str) -> str:
    """A docstring as an error's message: one line, as an operator reads it (no line breaks, indentation or ``code``
    markup)."""
    return " ".join(docstring.replace("``", "").split())


class OrchestratorError(Exception):
    """An expected error that an operator can act on."""

    code: str = "ORCHESTRATOR_ERROR"
    exit_code: int = 1

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or _plain(self.__doc__ or self.code))
        self.details = details

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **({"details": self.details} if self.details else {})}


class UsageError(OrchestratorError):
    """The command line does not fit the command (an unknown option, a missing argument, a value out of range)."""

    code = "USAGE_ERROR"
    exit_code = 2


class ConfigError(OrchestratorError):
    """The configuration is invalid (options, environment or .env)."""

    code = "CONFIG_ERROR"
    exit_code = 3


class SchemaTooNewError(ConfigError):
    """The database's schema is newer than this release (a newer release migrated it): this one neither reads nor
    writes it; upgrade the orchestrator on this machine."""

    code = "SCHEMA_TOO_NEW"
    exit_code = 3


class InvalidIdError(OrchestratorError):
    """A job, project, run or key id is not a safe identifier."""

    code = "INVALID_ID"
    exit_code = 3


class PathEscapeError(OrchestratorError):
    """A path would escape the project folder or the job's artifact folder."""

    code = "PATH_ESCAPE"
    exit_code = 3


class InvalidInputError(OrchestratorError):
    """A command argument is well-formed for the shell but not valid for the orchestrator."""

    code = "INVALID_INPUT"
    exit_code = 3


class JobNotFoundError(OrchestratorError):
    """No job with this id exists in the project."""

    code = "JOB_NOT_FOUND"
    exit_code = 4


class InvalidTransitionError(OrchestratorError):
    """The action does not fit the job's current state; nothing was written."""

    code = "INVALID_TRANSITION"
    exit_code = 5


class ConcurrencyError(OrchestratorError):
    """Another writer appended to the job first; re-read and decide again."""

    code = "CONCURRENT_APPEND"
    exit_code = 6


class LockHeldError(ConcurrencyError):
    """A lock of the store stayed held by another process (paused, or writing slowly) past a worker's bounded wait
    (``locks.bounded_waits``), or a stop was asked meanwhile; nothing was written: pass over, try again later."""


class IntegrityError(OrchestratorError):
    """A history failed verification (bad signature, broken chain, corrupt line or rollback)."""

    code = "INTEGRITY_ERROR"
    exit_code = 7


class ContextSignatureInvalid(IntegrityError):
    """The job's signed context (input, options, answers, revisions) failed verification; it is never run."""

    code = "CONTEXT_SIGNATURE_INVALID"
    exit_code = 7


class SigningKeyError(OrchestratorError):
    """No usable signing key (missing, unreadable, or readable by others), or a keyring file that cannot be read."""

    code = "SIGNING_KEY_ERROR"
    exit_code = 8


class KeyNotTrustedError(OrchestratorError):
    """Queued jobs are signed by a key this keyring does not trust: left for a worker that trusts it (``worker
    --once``). A keyring to complete, so the exit code of the keyring's other errors."""

    code = "UNKNOWN_KEY"
    exit_code = 8


class MalformedPayloadError(OrchestratorError):
    """A handler's terminal payload is not valid JSON, misses fields or names an artifact outside its folder."""

    code = "MALFORMED_PAYLOAD"
    exit_code = 9


class StorageError(OrchestratorError):
    """The store could not durably write (disk full, I/O error) or a path of it is unusable; nothing was acknowledged."""

    code = "STORAGE_ERROR"
    exit_code = 10


NOTHING_WRITTEN = "nothing was written"  # how a refused write's message ends (``AuditEntryNotWrittenError`` cuts it)


class AuditEntryNotWrittenError(StorageError):
    """A job's events are durable, their audit entry is not (the audit log could not be written: a full disk, an I/O
    error). Raised, unlike a record after the lines (``AuxNotWrittenError``): the entry is history, not a cache. Its
    message says the events stand, never that nothing was written: an operator told so after an approve would
    decide again (``Orchestrator.append`` names the event; ``audit heal`` writes the entry later)."""


# The warning of an event acknowledged although a record written after it was not (``AuxNotWrittenError.warning``)
HEAD_RECORD_NOT_WRITTEN = "HEAD_RECORD_NOT_WRITTEN"
# The warning of a ``status`` shown without a job's head or lease record, whose lock a paused process holds on
# (``held_records.read_around_a_held_record``)
RECORD_LOCK_HELD = "RECORD_LOCK_HELD"
# The warning of ``verify`` or a control action waiting for a lock of the store a process holds past the bounded wait
# (``held_records.waiting_said``): it goes on waiting
LOCK_HELD = "LOCK_HELD"


class AuxNotWrittenError(StorageError):
    """The appended lines are durable, but the records written after them (a head record, a lease) are not: the
    file store writes them once the lines are synced, and cannot take the lines back then."""

    def warning(self, job_id: str, seq: int, event_type: str, audited: bool = False) -> dict[str, str]:
        """The ``{code, message}`` of a job's append acknowledged all the same (``Orchestrator.append``): its event
        ``seq`` (and its audit entry, when ``audited``) is durable. The records are derived: the job's next event
        writes its head record anew, and a head record behind its events is what a crash between the two leaves,
        which every read accepts. Raising would say that nothing was written, and the caller would do it again."""
        written = (f"event {seq} ({event_type}) of job {job_id} and its audit entry are durable, but a record "
                   "written after them" if audited else
                   f"event {seq} ({event_type}) of job {job_id} is durable, but a record written after it")
        remedy = (f"{LINK_REMEDY}; the record is then written anew by the next append" if self.details.get("linked")
                  else "such records are derived, and written anew by what comes next (a head record by the next "
                  "append; until then it is behind the lines, as after a crash, which verify accepts)")
        return {"code": HEAD_RECORD_NOT_WRITTEN,
                "message": f"{written} was not: {self.message}. Nothing is to be done again: {remedy}"}

    def healed_warning(self, job_id: str, event_seq: int, event_type: str) -> dict[str, str]:
        """The ``{code, message}`` of an audit entry healed (written for an event a crash left without one,
        ``audit.heal``) whose records after it failed: the entry is durable, its marker (or the log's head record)
        not; the next heal finds the entry in the log and writes only the marker."""
        then = "the next heal (a command on the job, `audit heal`) finds the entry and writes only its marker"
        remedy = f"{LINK_REMEDY}; {then}" if self.details.get("linked") else then
        return {"code": HEAD_RECORD_NOT_WRITTEN,
                "message": f"the healed audit entry of event {event_seq} ({event_type}) of job {job_id} is durable, "
                           f"but a record written after it was not: {self.message}. Nothing is to be done again: "
                           f"{remedy}"}


# What to do when a symbolic link in a record's place is why it was not written (``AuxNotWrittenError``, ``linked``)
LINK_REMEDY = ("remove the symbolic link it names: until then every read meets it (PATH_ESCAPE, which verify lists) "
               "and the next action is refused")


# The warning of an event acknowledged although the queue index could not be brought up to date after it
# (``orchestrator.queue.index_warning``): the index is a cache of the events, the event stands
INDEX_NOT_UPDATED = "INDEX_NOT_UPDATED"


def write_error(exc: OSError) -> type[OrchestratorError]:
    """The error of a file the operator named (an output file, an anchor) that could not be written: the disk's
    (``DISK_ERRORS``: full, over quota, failing) is ``StorageError`` (exit 10: free space, then again), any other
    the path's (no permission, a read-only file system, a missing folder) ``InvalidInputError`` (exit 3: another
    path)."""
    return StorageError if exc.errno in DISK_ERRORS else InvalidInputError


class UnusableFileError(StorageError):
    """What is in the place of a file of the store is something the store never makes there: a FIFO, a socket, a
    device, a directory holding files (``EventStore.refuse_unusable``). Nothing is written to it, nor removed: an
    operator moves it away. ``verify`` lists it as a problem of the stream instead (exit 7)."""


class StoreClosedError(StorageError):
    """This Orchestrator (or store) was closed (``close()``, or the end of its ``with`` block): nothing was read or
    written; make a new one to go on."""

    code = "STORE_CLOSED"


class StorageUnavailableError(StorageError):
    """The store could not be reached (a connection lost or refused: a server restarting, a network
    failure), or did not complete a statement for now (``StatementCancelledError``). It may pass: a worker waits and
    tries again once it has reached the store."""


class StatementCancelledError(StorageUnavailableError):
    """PostgreSQL cancelled a statement on a live connection: a ``statement_timeout`` or ``lock_timeout`` (of the
    server, the database, the role or the URL's ``options``), or an administrator's ``pg_cancel_backend``. What the
    statement's transaction would have written was rolled back whole; it may pass (a lock released, a load gone), so a
    worker waits and tries again, as for a lost connection."""


class AuditEntryUnavailableError(AuditEntryNotWrittenError, StorageUnavailableError):
    """A job's events are durable, their audit entry is not, for a reason that may pass: the connection was lost or
    cut before the entry was sent, a statement was cancelled or rolled back for a conflict. A worker waits it out as
    for a lost connection (its outcome read back first: the events are found); ``audit heal`` writes the entry."""


def without_nothing_written(message: str) -> str:
    """``message`` without its closing "nothing was written" (``NOTHING_WRITTEN``): a store's refusal told as part of
    a larger write, some of which stands."""
    return message.removesuffix("; " + NOTHING_WRITTEN)


def entry_not_written(exc: OrchestratorError, message: str | None = None) -> AuditEntryNotWrittenError:
    """``exc``, met once a job's events were durable and before their audit entry was, as the entry's error: the
    events stand, so never "nothing was written" (the suffix is cut); one that may pass stays one
    (``AuditEntryUnavailableError``), so a worker waits for the store instead of stopping."""
    text = without_nothing_written(message or exc.message)
    kind = AuditEntryUnavailableError if isinstance(exc, StorageUnavailableError) else AuditEntryNotWrittenError
    return kind(text, **exc.details)


class TransactionConflictError(StorageUnavailableError):
    """PostgreSQL rolled a transaction back for a conflict with another, on a live connection: a deadlock (40P01; the
    other session held a row this one waited for, and waited for one this one held) or a serialization failure
    (40001: a REPEATABLE READ or SERIALIZABLE transaction, a hot standby's recovery). Nothing of it stays, so the store
    makes such a call again at once (``PostgresStore.conflict_tries``); one that keeps conflicting may still pass, so
    a worker waits and tries again, as for a lost connection."""


class HandlerNotFoundError(OrchestratorError):
    """No handler is registered for the job's kind."""

    code = "HANDLER_NOT_FOUND"
    exit_code = 11


class LeaseLostError(ConcurrencyError):
    """This worker's claim was taken over (stale recovery, cancel); its late result is refused."""

    code = "LEASE_LOST"
    exit_code = 6


# -- control plane --------------------------------------------------------------------------------
class ActionConflictError(InvalidTransitionError):
    """The job already took a different decision of this kind (another answer or notes); nothing was written."""

    code = "ACTION_CONFLICT"
    exit_code = 5


class ChatMessageError(InvalidInputError):
    """A chat message is not of the form ``job_id: <job_id>; <answer>``."""

    code = "CHAT_MESSAGE_INVALID"
    exit_code = 3


class JobIdMismatchError(InvalidInputError):
    """A chat message names a different job than the one given on the command line."""

    code = "JOB_ID_MISMATCH"
    exit_code = 3


class RunNotFoundError(JobNotFoundError):
    """No job in the project has a run with this id."""

    code = "RUN_NOT_FOUND"
    exit_code = 4


class AlertsFiringError(OrchestratorError):
    """``metrics --fail-on`` found alerts at or above the given severity."""

    code = "ALERTS_FIRING"
    exit_code = 12


class CommandInterrupted(OrchestratorError):
    """The command was stopped by a signal (Ctrl-C: SIGINT) before it finished; exit 128 + the signal's number,
    as a shell reports a process the signal ended (130 for SIGINT)."""

    code = "INTERRUPTED"
    exit_code = 130

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "signal": signal.Signals(self.signum).name}


class Interrupted(BaseException):
    """A stop signal (SIGTERM or SIGINT: ``command_stop``), raised where the command is, so every
    ``finally`` and ``with`` on the way out runs: an output file's temporary copy is removed, forked readers are
    ended, a benchmark's worker process is stopped. A ``BaseException``, as ``KeyboardInterrupt`` and the worker's
    ``WorkerStop``, so no ``except Exception`` on the way takes it for a failure of its own. The command line
    reports it as ``CommandInterrupted``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.message = f"interrupted by {signal.Signals(signum).name}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a process the signal ended: 130 (SIGINT), 143 (SIGTERM)


class OutputClosed(Exception):
    """Stdout's reader went away (``| head`` read what it wanted): the command ends quietly with
    ``EXIT_OUTPUT_CLOSED``, as a process a closed pipe ends (SIGPIPE). Not an ``OrchestratorError``: nothing
    went wrong that the operator should read about, and there is nowhere left to print it."""


EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE  # 141, what a shell reports for a process that SIGPIPE ended


class ImportConflictError(OrchestratorError):
    """An imported stream already holds a different history in the destination; nothing was overwritten."""

    code = "IMPORT_CONFLICT"
    exit_code = 3
