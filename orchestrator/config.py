"""Settings in one object: option > environment (``.env`` included by the CLI) > default. An option given, even
empty, is the value (an empty one refused), never a reason to fall back on the next; so is a variable that says where
the data goes (``STORE_VARIABLES``) set empty, as ``export PROJECT_ID=$PROJ`` sets it with ``PROJ`` unset.

``BASE_PATH`` and ``PROJECT_ID`` keep the names of the runbook; every other setting is an
``ORCH_*`` variable. Paths are resolved here once, and the project folder is validated so
nothing escapes ``BASE_PATH/<PROJECT_ID>``.
"""
from __future__ import annotations

import getpass
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from orchestrator.errors import ConfigError, InvalidInputError
from orchestrator.limits import MAX_ACTOR_CHARS, MAX_DURATION_SECONDS, an_actor, is_number, is_unicode
from orchestrator.security import shown, validate_id

DEFAULT_BASE_PATH = "."
DEFAULT_PROJECT_ID = "default"
STATE_DIR = ".orchestrator"
# The variables that say where data goes, and what each means when unset: set empty, one is refused (``from_env``)
STORE_VARIABLES = {"BASE_PATH": "the current folder", "PROJECT_ID": f"the project {DEFAULT_PROJECT_ID}",
                   "ORCH_STORE_URL": "the file store"}
_STORE_VALUES = {"BASE_PATH": "a folder", "PROJECT_ID": "a project id",
                 "ORCH_STORE_URL": "'file' or a postgresql:// URL"}
# each of them ``load_dotenv_file`` last set: the value and where it was, "<file>, line N", for a message about it
_DOTENV_LINES: dict[str, tuple[str | None, str]] = {}

# Defaults that both an option (and its ``--help``) and the library use: named once, here, because
# the command modules must not import the modules that own them (``orchestrator.worker`` is slow to import).
DEFAULT_MAX_ATTEMPTS = 3  # submit --max-attempts; JobOptions
DEFAULT_PRIORITY = 0  # submit --priority; JobOptions
DEFAULT_LEASE_SECONDS = 30.0  # worker --lease-seconds / ORCH_LEASE_SECONDS; WorkerSettings
MIN_LEASE_SECONDS = 0.1
# the longest lease a worker takes: a lease record promising more is no heartbeat's (orchestrator/leases.py)
MAX_LEASE_SECONDS = 86400.0
DEFAULT_STOP_GRACE_SECONDS = 10.0  # ORCH_STOP_GRACE_SECONDS
DEFAULT_RETRY_BASE_SECONDS = 1.0  # ORCH_RETRY_BASE_SECONDS
DEFAULT_RETRY_MAX_SECONDS = 300.0  # ORCH_RETRY_MAX_SECONDS
HANDLER_PROCESS_MODES = ("reused", "per-run")  # ORCH_HANDLER_PROCESS
DEFAULT_HANDLER_PROCESS = "reused"
DEFAULT_HANDLER_MAX_RUNS = 1000  # ORCH_HANDLER_MAX_RUNS
# ORCH_PG_DEADLINE_SECONDS: a call to PostgreSQL that has not returned by then has its connection cut
# (a stalled server; docs/postgres.md): a third of the default lease, ~1000x an ordinary call. 0: none.
DEFAULT_PG_DEADLINE_SECONDS = 10.0
DEFAULT_LLM_TIMEOUT_SECONDS = 60.0  # ORCH_LLM_TIMEOUT: the llm handler's whole request, the reply read included
DEFAULT_STORE_WAIT_SECONDS = 30.0  # ORCH_STORE_WAIT_SECONDS: worker --once, a store lost in recovery or the claim
DEFAULT_OUTPUT_MAX_BYTES = 64 << 20  # ORCH_OUTPUT_MAX_BYTES: a run's output.log on disk (output_cap.py); 0: no bound
MIN_OUTPUT_MAX_BYTES = 1 << 20  # a smaller bound is refused: half of it is kept, far more than a failure's tail


@dataclass(frozen=True)
class Settings:
    base_path: Path
    project_id: str
    store_url: str | None = None  # ORCH_STORE_URL / --store: a postgresql:// URL; unset = files
    strict_reads: bool = False  # ORCH_STRICT_READS: every read checks every signature (docs/format.md)
    pg_deadline_seconds: float = DEFAULT_PG_DEADLINE_SECONDS  # ORCH_PG_DEADLINE_SECONDS; 0: no deadline

    def __repr__(self) -> str:  # the store URL's password never shows (a log line, a traceback's locals)
        from orchestrator.store.pg_connection import redacted

        url = None if self.store_url is None else redacted(self.store_url, self.store_url)
        return (f"Settings(base_path={str(self.base_path)!r}, project_id={self.project_id!r}, store_url={url!r}, "
                f"strict_reads={self.strict_reads!r}, pg_deadline_seconds={self.pg_deadline_seconds!r})")

    @classmethod
    def load(cls, base_path: str | os.PathLike[str] | None = None, project_id: str | None = None,
             env: Mapping[str, str] | None = None, store_url: str | None = None) -> "Settings":
        env = os.environ if env is None else env
        if base_path is not None and not isinstance(base_path, (str, os.PathLike)):
            raise ConfigError(f"base_path must be a folder's path (str or os.PathLike), not {type(base_path).__name__}")
        if store_url is not None and not isinstance(store_url, str):
            raise ConfigError(f"store_url must be 'file' or a postgresql:// URL (str), not {type(store_url).__name__}")
        # A value given, even empty, is used: ``--project-id "$PROJ"`` with PROJ unset must not act on another
        # project; nor may ``PROJECT_ID=$PROJ`` (``from_env``). Click reads an empty variable as unset: so it is
        # checked here, for the commands and for Python alike.
        if base_path is not None and not os.fspath(base_path):
            raise ConfigError("base_path / --base-path must not be empty (leave it out for BASE_PATH or the default)")
        store = store_named(store_url, env)
        try:
            base = Path(base_path if base_path is not None else from_env(env, "BASE_PATH", DEFAULT_BASE_PATH))
        except TypeError:  # an os.PathLike whose path is bytes
            raise ConfigError("base_path must be a folder's path as text, not bytes") from None
        base = base.expanduser()
        project = project_id if project_id is not None else from_env(env, "PROJECT_ID", DEFAULT_PROJECT_ID)
        validate_id(project, "project id")
        resolved = usable_base(base)
        strict = env.get("ORCH_STRICT_READS", "").strip().lower()
        if strict not in ("", "0", "1", "false", "true", "no", "yes", "off", "on"):
            raise ConfigError(f"ORCH_STRICT_READS must be 1 or 0 (true/false, yes/no, on/off), not {strict!r}")
        deadline = pg_deadline_seconds(env)
        return cls(base_path=resolved, project_id=project, store_url=store,
                   strict_reads=strict in ("1", "true", "yes", "on"), pg_deadline_seconds=deadline)

    @property
    def project_dir(self) -> Path:
        return self.base_path / self.project_id

    @property
    def state_dir(self) -> Path:
        return self.project_dir / STATE_DIR


def from_env(env: Mapping[str, str], name: str, default: str) -> str:
    """The value of ``name``, one of ``STORE_VARIABLES``, or ``default`` when it is unset. Set empty, it is
    ``ConfigError`` naming it and where it was set: ``ORCH_STORE_URL=$PGURL`` with ``PGURL`` unset must not write
    to files, nor ``PROJECT_ID=$PROJ`` into project ``default`` (docs/decisions.md, 2026-12-07)."""
    value = env.get(name)
    if value is None:
        return default
    if value == "":
        loaded, line = _DOTENV_LINES.get(name, (None, ""))
        where = line if env is os.environ and loaded == value else None  # changed since the file set it: not its
        undo = "remove the line" if where else f"unset it (unset {name})"
        raise ConfigError(f"{name} is set but empty ({where or 'in the environment'}): an empty {name} never means "
                          f"{STORE_VARIABLES[name]}; set it to {_STORE_VALUES[name]}, or {undo} for that")
    return value


def store_named(store_url: str | None, env: Mapping[str, str]) -> str | None:
    """The store ``store_url`` (``--store``) names, else ``ORCH_STORE_URL`` (set empty: refused, ``from_env``): None
    for files, else a postgresql:// URL. ``store_url`` given empty, or a value that is neither, is ``ConfigError``
    naming the value (its password hidden)."""
    if store_url == "":
        raise ConfigError("--store / store_url must not be empty: 'file' or a postgresql:// URL "
                          "(leave it out for ORCH_STORE_URL or the file store)")
    store = store_url if store_url is not None else from_env(env, "ORCH_STORE_URL", "file")
    if store != "file" and not store.startswith(("postgresql://", "postgres://")):
        from orchestrator.store.pg_connection import redacted

        raise ConfigError(f"ORCH_STORE_URL / --store must be 'file' or a postgresql:// URL, not "
                          f"{redacted(shown(store), store)}")
    return None if store == "file" else store


def _file_above(path: Path) -> Path | None:
    """The nearest thing above ``path`` (which is not there) that exists, when it is not a folder: no folder can be
    made at ``path``. None when it is a folder."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _seconds(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    """A duration variable: 0 (more than 0 if ``positive``) up to a year (``limits.MAX_DURATION_SECONDS``), or its
    default when unset; else ``ConfigError`` naming it, as for every ``ORCH_*`` number (``cli_values``)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not is_number(value, 0.0, MAX_DURATION_SECONDS) or (positive and value == 0):
        least = "more than 0, up to" if positive else "from 0 to"
        raise ConfigError(f"{name} must be a number of seconds {least} {MAX_DURATION_SECONDS:.0f}, not {text!r}")
    return value


def pg_deadline_seconds(env: Mapping[str, str]) -> float:
    """``ORCH_PG_DEADLINE_SECONDS``: the seconds a call to PostgreSQL may take before its connection is cut (0: no
    bound). ``Settings.load`` reads it for every command, and ``db status``, which needs no other setting, here."""
    return _seconds(env, "ORCH_PG_DEADLINE_SECONDS", DEFAULT_PG_DEADLINE_SECONDS)


def llm_timeout(env: Mapping[str, str]) -> float:
    """``ORCH_LLM_TIMEOUT``: the seconds the ``llm`` handler's whole request may take. Checked when a worker starts
    (``Worker``), so a bad value stops it there (exit 3), not each ``llm`` job it would run."""
    return _seconds(env, "ORCH_LLM_TIMEOUT", DEFAULT_LLM_TIMEOUT_SECONDS, positive=True)


def default_actor() -> str:
    """``user@host`` of the operator running a command, for the audit trail, by the rule ``Orchestrator(actor=...)``
    follows (``limits.an_actor``: 1 to 200 characters of valid Unicode, stored sanitized): until 2026-12-07 it was
    stored as the environment gave it, so ``LOGNAME=password=...`` put a secret in every event and audit entry, a
    ``LOGNAME`` that is not UTF-8 crashed the signing of the first line (exit 1, a traceback), and one of 120 KB was
    signed into each. A name that breaks the rule is replaced, with a warning logged (never its value, which may be
    anything), by the user database's name of this uid, else ``uid N``: the actor only says who acted, and a broken
    variable must not stop a ``control cancel`` (refusing it would, for every command that writes)."""
    host = os.uname().nodename  # ``socket.gethostname()``, without importing ``socket`` (~2 ms)
    try:
        user = getpass.getuser()  # LOGNAME, USER, LNAME or USERNAME, else the user database's
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    try:
        if user.strip():  # "   @host" would pass as "@host"
            return an_actor(f"{user}@{host}")
    except InvalidInputError:
        pass
    fallback = _database_actor(host)
    why = ("is empty" if not user.strip() else "is not valid UTF-8" if not is_unicode(user) else
           f"makes an actor longer than {MAX_ACTOR_CHARS} characters")
    logging.getLogger(__name__).warning(
        "the user name the environment gives (LOGNAME or USER) %s, so the audit trail records this user as %s "
        "(the user database's name of this uid); set LOGNAME to your user name", why, fallback)
    return fallback


def _database_actor(host: str) -> str:
    """``user@host`` with the user database's name of this uid (``uid N`` when it knows none), for ``default_actor``."""
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    for actor in (f"{name}@{host}", name, f"uid {os.getuid()}"):  # a host name that breaks the rule itself
        try:
            return an_actor(actor)
        except InvalidInputError:
            continue
    return f"uid {os.getuid()}"


def usable_base(base: Path, name: str = "BASE_PATH") -> Path:
    """``base`` resolved, if a folder can be there (one, or none yet with no file above it), else ``ConfigError``
    calling it ``name`` (the demo's own: ``the demo's FOLDER``)."""
    try:
        if base.exists():
            if not base.is_dir():
                raise ConfigError(f"{name} {base} is not a folder")
        elif (blocker := _file_above(base)) is not None:  # a typo, not a store to repair (as STORAGE_ERROR said)
            raise ConfigError(f"{name} {base} cannot be a folder ({blocker} is a file)")
        return base.resolve()
    except ValueError:  # a NUL character: no path of the system can hold one
        raise ConfigError(f"{name} {shown(str(base))} cannot be used (it holds a NUL character)") from None
    except (OSError, RuntimeError) as exc:  # a name too long, a loop of links (RuntimeError from resolve)
        reason = getattr(exc, "strerror", None) or "a loop of symbolic links"
        raise ConfigError(f"{name} {base} cannot be used: {reason}") from None


# what whoever may write a ``.env`` could do, in the messages that refuse one (``_dotenv_bytes``)
DOTENV_HARM = ("set what every command run here does: BASE_PATH (the store), ORCH_SIGNING_KEY (the key that signs, "
               "then trusted), ORCH_HANDLERS (code a worker imports and runs)")


def load_dotenv_file(path: str | os.PathLike[str] = ".env") -> None:
    """Read ``.env`` into the environment without overriding variables already set. A file that cannot be
    read (not UTF-8, a NUL in a value, no permission) or has a line python-dotenv cannot parse is a
    ``ConfigError`` naming it: python-dotenv only logs and skips such a line, and a skipped ``BASE_PATH`` would
    send every command to another store. So is one another user could have written (``_dotenv_bytes``).
    ``PYTHON_DOTENV_DISABLED`` set to a true value (python-dotenv's own switch) skips the file altogether, checks
    included, whatever the installed python-dotenv knows of it."""
    _DOTENV_LINES.clear()
    if os.environ.get("PYTHON_DOTENV_DISABLED", "").casefold() in {"1", "true", "t", "yes", "y"}:
        return
    if os.path.isfile(path):
        import io

        from dotenv import load_dotenv
        from dotenv.parser import parse_stream

        where = os.path.abspath(path)
        try:
            text = _dotenv_bytes(where).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                              f"{exc.start}); save it as UTF-8") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # as open()'s universal newlines read it
        # parse_stream is what load_dotenv parses with; its bindings flag a statement it could not parse
        bindings = list(parse_stream(io.StringIO(text)))
        bad = next((b for b in bindings if b.error), None)
        if bad is not None:  # the line is not quoted back: it may hold a secret
            raise ConfigError(f"{where}, line {_line(bad)}: cannot be parsed (an unterminated quote? "
                              "write NAME=value, NAME=\"value\" or NAME='value'); nothing was loaded from it")
        lines = {b.key: f"{where}, line {_line(b)}" for b in bindings
                 if b.key in STORE_VARIABLES and b.value is not None and b.key not in os.environ}
        try:
            load_dotenv(stream=io.StringIO(text), override=False)
        except ValueError as exc:  # os.environ refuses a NUL character in a name or value
            raise ConfigError(f"{where} cannot be loaded into the environment: {exc}") from None
        _DOTENV_LINES.update({name: (os.environ.get(name), line) for name, line in lines.items()})


def _line(binding: Any) -> int:
    """The line of a ``.env`` statement: python-dotenv's starts with the blank lines before it."""
    text = binding.original.string
    return binding.original.line + text[:len(text) - len(text.lstrip())].count("\n")


def _dotenv_bytes(where: str) -> bytes:
    """The bytes of the ``.env`` at ``where`` (absolute), refused (``ConfigError``, nothing loaded) when someone other
    than this user or root could have written them, by the signing keys' rule (``orchestrator.key_paths``): a file
    another user owns, or that others than its owner may write, or in a folder, or below one, that another user
    owns or others may write (but for a sticky one such as /tmp, where no one renames what is not theirs). A
    ``.env`` may set ``ORCH_SIGNING_KEY`` and ``ORCH_HANDLERS``: until 2026-12-07 root, running a command in a
    shared folder, signed with a key another user wrote there and its worker imported their module. Opened once,
    checked and read through that descriptor (``open_regular``); a symbolic link is followed, its owner and the
    folders on its way checked (``check_folders_above``)."""
    from orchestrator.errors import SigningKeyError
    from orchestrator.key_paths import check_folders_above, only_its_owner_changes
    from orchestrator.store.files import NotRegularFileError, open_regular, read_all

    what = ".env file"
    try:
        check_folders_above(Path(where), what)
        fd, st = open_regular(where, follow=True)
        try:
            only_its_owner_changes(Path(where), what, st, DOTENV_HARM)
            return read_all(fd)
        finally:
            os.close(fd)
    except SigningKeyError as exc:  # the keys' rule, and words, for another kind of file: a setting to fix, exit 3
        raise ConfigError(f"{exc.message}; nothing was loaded from it (PYTHON_DOTENV_DISABLED=1 skips it)") from None
    except NotRegularFileError:
        raise ConfigError(f"{where} is not a regular file; nothing was loaded from it") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
