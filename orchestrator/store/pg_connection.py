"""Connections to PostgreSQL: the URL an operator gives, its password kept out of every message, opening a
connection, and what a driver error means for the caller.

Apart from ``postgres.py`` (the store: its reads, aux records and locks) and ``pg_sessions.py`` (its pool of
connections, its calls) because a connection's settings are a concern of their own: what is a setting to fix
(``CONFIG_ERROR``) and what is a server out of reach (``STORAGE_ERROR``), and that no message shows the URL's password,
however malformed the URL is.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import weakref
from typing import Any
from urllib.parse import unquote

from orchestrator.descriptors import readable
from orchestrator.errors import (ConfigError, OrchestratorError, StatementCancelledError, StorageError,
                                 StorageUnavailableError, TransactionConflictError)
from orchestrator.secret_literals import MIN_SECRET_LENGTH
from orchestrator.security import REDACTED, sanitize_text
from orchestrator.store.pg_deadline import Deadline, outcome

SCHEMES = ("postgresql", "postgres")
# TCP keepalives, so a connection to a server that vanished (a network partition, a host powered
# off) fails within ~30 s instead of blocking a worker's heartbeat until the kernel gives up.
_KEEPALIVES = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
               "keepalives_count": "3", "tcp_user_timeout": "30000"}
# libpq's variables that hold a password or say where one, or the client's private key, is read (a service of
# pg_service.conf may hold a password too): without them in the URL, they are the store's credentials
# (``EventStore.credential_env``), which a worker keeps from its handlers. Host, port, user and database are
# no secret, and a handler may rely on them.
CREDENTIAL_ENV = frozenset({"PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSSLKEY"})
# What libpq (or psycopg, for a list of hosts) says of a setting's value it refuses as it connects, before it waits
# for any server: an enumerated value it does not know (``sslmode``, ``gssencmode``, ``channel_binding``,
# ``target_session_attrs``, ``ssl_min_protocol_version``, ...), a port or an integer that is not one, a ``hostaddr``
# that is not an address, lists of hosts and ports that do not match, an SSL version range or ``require_auth`` that
# contradicts itself, a keepalive value the kernel refuses as libpq hands it over (``keepalives_idle=-3``, which it
# passes as 0, or ``keepalives_count=200``: ``setsockopt(TCP_KEEPIDLE) failed: Invalid argument``, a strerror in
# English too). libpq says so only in its message's text (no SQLSTATE), in English unless the program set
# ``LC_MESSAGES`` (Python does not): a text not matched here stays ``StorageUnavailableError``, as any other failure.
_BAD_SETTING = re.compile(r'invalid "?\w+"? value: "|invalid port number: "|invalid integer value "[^"]*" for '
                          r'connection option "|could not parse network address "|could not match \d+ [\w ]+ to \d+ '
                          r'|invalid SSL protocol version range|weak sslmode "|require_auth method "'
                          r'|invalid when \w+ support is not compiled in'
                          r'|setsockopt\((?:TCP_KEEP\w+|TCP_USER_TIMEOUT)\) failed: Invalid argument')


# The integer settings libpq reads only once it has a TCP socket, that is after psycopg looked the host's name up
# (``_refused_setting``), as C's ``strtol`` reads them (blanks around, a sign, decimal digits) into an ``int``, and
# only when keepalives are on (``tcp_user_timeout`` too); each then goes to the kernel as ``setsockopt`` does it, a
# negative one as 0, under the option's name libpq's message gives (``TCP_KEEPALIVE`` for the idle time on macOS).
_C_INTEGER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*")
_TCP_SETTINGS = ("keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")
_IDLE_OPTION = "TCP_KEEPIDLE" if hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE"
_TCP_INTEGERS = {name: label for name, label in zip(_TCP_SETTINGS, (_IDLE_OPTION, "TCP_KEEPINTVL", "TCP_KEEPCNT",
                                                                     "TCP_USER_TIMEOUT")) if hasattr(socket, label)}
# Where the check of the settings points libpq instead of the hosts: a folder under a file, so the socket it tries
# there fails at once (ENOTDIR), without the network, once libpq has read every setting it reads before connecting.
_NO_SOCKET_HERE = "/dev/null"


def is_postgres_url(url: str | None) -> bool:
    """By the scheme alone: a URL whose rest is malformed (``postgres://u@[::1/db``, where ``urlsplit`` raises) is
    still one, and ``conninfo`` reports what libpq finds wrong with it (``CONFIG_ERROR``)."""
    return bool(url) and url.partition(":")[0].lower() in SCHEMES


def _passwords(url: str) -> tuple[list[str], list[str], list[str]]:
    """The password ``url`` gives, as written and percent-decoded, longest first: in its authority (from the first
    ``:`` after the user, to the first ``@`` and to the last: libpq stops at the first ``/``, so an unencoded ``/``,
    space or ``@`` in it is not a URL ``sanitize_text`` can recognise) and as a ``password=`` parameter. A password
    with a ``/`` in its authority comes in its two parts too, which libpq reads as the port and part of the database
    name (``orch:S3c/retPW@host``: port ``S3c``, which a message refusing that port would show).

    Second, the pieces of a password that libpq shows apart from it, removed only where no letter or digit touches
    it (``redacted``), so that a short one hides no part of a word (and one shorter than ``MIN_SECRET_LENGTH`` only
    where a value stands, as a short password: ``a`` of ``pw@a@db`` took every word "a" until the twenty-ninth session): with an unencoded ``@``
    (``orch:S3cr3t@2024xyz@db``) libpq takes the password to the first ``@`` and the rest as part of the host, and its
    message names the host (``failed to resolve host '2024xyz@db'``); with an unencoded ``&`` in a ``password=``
    parameter (``?password=Ab9&Zq7Leak``) what follows is a parameter with no ``=``, which its message names
    (``missing key/value separator "=" in URI query parameter: "Zq7Leak"``). Until 2026-12-07 both were shown.

    Third, a password shorter than ``MIN_SECRET_LENGTH``, removed only where a value stands (``_AS_A_VALUE``): such a
    password may be a word of the message (``at``, ``port``), whose gap spells it (``https://u:p@host`` lost every
    "p" of its message until 2026-12-07; ``connection to server [REDACTED] "127.0.0.1"`` until the twenty-ninth session)."""
    rest = url.partition("://")[2]
    userinfo = rest.partition("@")[0] if "@" in rest else ""
    found = [userinfo, rest.rpartition("@")[0]]
    found = [text.partition(":")[2] for text in found if ":" in text]
    found += [part for text in found if "/" in text for part in text.partition("/")[::2]]
    # the host libpq reads: from the first "@" to the first "/" or "?"; what it holds before its last "@" is password
    host = re.split(r"[/?]", rest.partition("@")[2], maxsplit=1)[0] if ":" in userinfo else ""
    pieces = [host.rpartition("@")[0]]
    values: list[list[str]] = []  # each password= parameter's value, with the parts with no "=" after it
    for part in rest.partition("?")[2].split("&"):
        key, eq, value = part.partition("=")
        if eq:
            values += [[value]] if key == "password" else [[]]
        elif values and values[-1]:
            values[-1].append(part)
    found += ["&".join(value) for value in values] + [value[0] for value in values if value]
    pieces += [part for value in values for part in value[1:]]
    whole = _forms(found)
    short = [password for password in whole if len(password) < MIN_SECRET_LENGTH]
    return [password for password in whole if password not in short], _forms(pieces), short


def _forms(texts: list[str]) -> list[str]:
    """Each of ``texts`` as written and percent-decoded, longest first (a longer one holds a shorter), none empty."""
    return sorted({p for text in texts for p in (text, unquote(text)) if p}, key=len, reverse=True)


# Where a short password stands as a value, not as a word of the message: in a URL's authority between the user's
# ``:`` and the ``@`` (``orch:at@db``), whole inside the quotes libpq puts around a value it names (``invalid integer
# value "at" for connection option "port"``), after a parameter's ``=`` where no letter or digit follows it
# (``?password=at``, ``port=at&``, ``port=at, or``).
_AS_A_VALUE = r"""(?<=:)(?:{0})(?=@)|(?<=")(?:{0})(?=")|(?<=')(?:{0})(?=')|(?<==)(?:{0})(?![0-9A-Za-z])"""
# A piece of a password where no letter or digit touches it; a short one (``a`` of ``pw@a@db``, which may be a word of
# the message) only where a value stands, or before the ``@`` of the host libpq names (``failed to resolve host
# 'a@db'``).
_ALONE = r"(?<![0-9A-Za-z])(?:{0})(?![0-9A-Za-z])"
_PIECE_AS_A_VALUE = _AS_A_VALUE + r"|(?<![0-9A-Za-z])(?:{0})(?=@)"


def redacted(text: str, url: str) -> str:
    """``text`` (a message that may hold ``url``, or what libpq made of it) with ``url``'s password removed, however
    malformed the URL is, and then through ``sanitize_text``."""
    passwords, pieces, short = _passwords(url)
    for password in passwords:
        text = text.replace(password, REDACTED)
    for password in short:
        text = re.sub(_AS_A_VALUE.format(re.escape(password)), REDACTED, text)
    for piece in pieces:  # where no letter or digit touches it: a word that holds it is no part of the password
        pattern = _PIECE_AS_A_VALUE if len(piece) < MIN_SECRET_LENGTH else _ALONE
        text = re.sub(pattern.format(re.escape(piece)), REDACTED, text)
    return sanitize_text(text)


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("the PostgreSQL backend needs psycopg 3: pip install 'jsonl-orchestrator[postgres]'") from None
    return psycopg


# What the server answers a statement it cancelled: query_canceled (a statement_timeout, or pg_cancel_backend) and
# lock_not_available (a lock_timeout, or NOWAIT, which this code never asks for)
CANCELLED_SQLSTATES = frozenset({"57014", "55P03"})
# What the server answers a transaction it rolled back for a conflict with another: deadlock_detected (a cycle of lock
# waits, one of whose sessions it rolls back) and serialization_failure (a REPEATABLE READ or SERIALIZABLE
# transaction that met a concurrent update, which the store's sessions do not run, ``connect``; a hot standby's
# recovery conflict). The whole transaction is gone, so making it again is safe.
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


def _storage_error(exc: Exception, conn: Any = None, write: bool = False) -> StorageError:
    """A driver error as the project's error: the message sanitized (a URL may hold a password).
    On a connection that broke, it is ``StorageUnavailableError``: it may pass, and for a ``write``
    a commit in flight may or may not have happened (a read only broke off). A statement the server cancelled
    (``CANCELLED_SQLSTATES``) is ``StatementCancelledError``, even on a connection closed since: it may pass too, and its
    transaction was rolled back whole
    (a caller whose call commits more than one transaction says what the ones before stand for: ``append_audited``), and
    so is a transaction it rolled back for a conflict (``CONFLICT_SQLSTATES``): ``TransactionConflictError``."""
    cancelled = _cancelled(exc) and not _connection_lost(exc)  # the server's own answer: rolled back, whatever
    # became of the connection after it (an audited append's clean-up closes one it cannot unlock)
    if not cancelled and ((conn is not None and (conn.broken or conn.closed)) or _connection_lost(exc)):
        return StorageUnavailableError(sanitize_text(f"the connection to PostgreSQL was lost: {exc}".strip())
                                       + f"; {outcome(write)}")
    if cancelled:
        why = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc).strip()
        return StatementCancelledError(sanitize_text(
            f"PostgreSQL cancelled the statement: {why} (a statement_timeout or lock_timeout of the server, the "
            "database, the role or the URL's options, or an administrator's pg_cancel_backend; it may pass)")
            + "; nothing was written")
    if _conflicted(exc):
        why = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc).strip()
        return TransactionConflictError(sanitize_text(
            f"PostgreSQL rolled the transaction back for a conflict with another session: {why} (a deadlock, or a "
            "serialization failure; it may pass)") + "; nothing was written")
    return StorageError(sanitize_text(f"PostgreSQL error: {exc}".strip()) + "; nothing was written")


def _cancelled(exc: Exception) -> bool:
    """A driver error that says the server cancelled the statement (``CANCELLED_SQLSTATES``), the connection live."""
    return isinstance(exc, _driver().Error) and getattr(exc, "sqlstate", None) in CANCELLED_SQLSTATES


def _conflicted(exc: Exception) -> bool:
    """A driver error that says the server rolled the transaction back for a conflict (``CONFLICT_SQLSTATES``)."""
    return isinstance(exc, _driver().Error) and getattr(exc, "sqlstate", None) in CONFLICT_SQLSTATES


def _connection_lost(exc: Exception) -> bool:
    """A driver error that says the connection, not the statement, failed, though psycopg may not have
    marked the connection broken yet: an ``OperationalError`` with no SQLSTATE (the socket: "server closed
    the connection", "cannot exit pipeline mode while busy"), or of class 08 (connection exception) or
    57P0x (the server shutting down or ending the session: ``pg_terminate_backend``, a restart)."""
    if not isinstance(exc, _driver().OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(("08", "57P0"))


def conninfo(url: str) -> dict[str, Any]:
    """The connection parameters of ``url`` (the URL's own settings win over ``_KEEPALIVES``). A URL libpq cannot
    parse (its syntax: ``postgres://u@[::1/db``, ``?foo=bar``, ``%zz``), a ``connect_timeout`` that is not a number,
    a NUL (libpq would cut the URL there) or text that is not Unicode is ``ConfigError``: a setting to fix, found
    before any connection is tried. A value libpq checks only when it connects (``sslmode=bogus``, a port out of
    range) is reported then, by ``connect``, as ``ConfigError`` too (``_BAD_SETTING``)."""
    psycopg = _driver()
    try:
        if "\0" in url:
            raise ValueError("it holds a NUL character")
        params = {**_KEEPALIVES, **psycopg.conninfo.conninfo_to_dict(url)}
        psycopg.conninfo.timeout_from_conninfo(params)  # the one value psycopg reads itself, before libpq
    except (psycopg.Error, ValueError) as exc:  # ValueError: a NUL, or surrogates (argv bytes that are not UTF-8)
        why = "it is not valid UTF-8" if isinstance(exc, UnicodeError) else exc
        shown = url.encode("utf-8", "backslashreplace").decode()
        raise ConfigError(redacted(f"not a valid PostgreSQL URL: {shown}: {why}".strip(), shown)
                          + "; fix --store / ORCH_STORE_URL") from None
    return params


_SESSION = ("SELECT set_config('synchronous_commit', 'on', false), "
            "set_config('default_transaction_isolation', 'read committed', false), "
            "current_setting('session_replication_role')")
# Connections whose session runs with ``session_replication_role = replica`` (``connect`` reads it in ``_SESSION``): no
# ordinary trigger fires in them, so the store asks whether the schema's do before it writes (``PgSessions._call``)
_REPLICA_SESSIONS: weakref.WeakSet[Any] = weakref.WeakSet()


def connect(url: str, *, autocommit: bool = False, deadline: Deadline | None = None) -> Any:
    """A psycopg connection with durable commits; a URL that cannot be parsed is ``ConfigError`` (``conninfo``), and
    so is a setting libpq refuses as it connects (``_BAD_SETTING``); other connection failures become
    ``StorageError``. Its first statements keep ``deadline`` (opening it is bounded by
    ``connect_timeout``, shortened to the time left inside ``Deadline.until``). One the server cancels (a role's
    ``statement_timeout``) is ``StatementCancelledError``, as any statement's: until 2026-12-07 it said "cannot
    connect", of a server that had just accepted the connection."""
    params = conninfo(url)
    psycopg = _driver()
    conn = None
    try:
        if deadline is not None:  # a caller waiting for a limited time (``Deadline.until``) waits no longer
            params["connect_timeout"] = deadline.connect_timeout(str(params.get("connect_timeout", "")))
        conn = psycopg.connect(autocommit=autocommit, **params)
        with deadline.bounded(conn) if deadline is not None else contextlib.nullcontext():
            # A server configured with synchronous_commit=off could lose acknowledged appends; one whose default
            # isolation is REPEATABLE READ or SERIALIZABLE (the database's, the role's) would fail an append that
            # waited for a row another one moved (``could not serialize access``) where the store's statements,
            # written for READ COMMITTED, check the head they expect under the row's lock and decide again. A session
            # run as a replica fires no ordinary trigger (the fence's): it is noted, for the writes to ask.
            if conn.execute(_SESSION).fetchone()[2] == "replica":
                _REPLICA_SESSIONS.add(conn)
            if not autocommit:
                conn.commit()
    except BaseException as exc:
        if conn is not None:  # opened, then its first statement failed: closed here, not by the garbage collector
            conn.close()
        if not isinstance(exc, psycopg.Error):
            raise
        if conn is not None and (_cancelled(exc) or _conflicted(exc)):  # its first statement, on a live connection
            raise _storage_error(exc) from None
        error = _connect_error(exc, url)
        # a connection that failed before it opened may have failed before libpq read every setting (a host name
        # psycopg found no address for: libpq was never called): one that is wrong is said first
        refused = _refused_setting(params) if conn is None and isinstance(error, StorageUnavailableError) else None
        raise (error if refused is None else _setting_error(refused, url)) from None
    return conn


def replica_session(conn: Any) -> bool:
    """Whether ``conn``'s session ran with ``session_replication_role = replica`` when ``connect`` opened it."""
    return conn in _REPLICA_SESSIONS


def forget_replica_session(conn: Any) -> None:
    """``conn``'s writes need not ask again: the schema's triggers fire in its session all the same."""
    _REPLICA_SESSIONS.discard(conn)


def _connect_error(exc: Exception, url: str) -> OrchestratorError:
    """``connect``'s driver error ``exc`` as the project's error, the URL's password removed: a setting libpq refused
    (``_BAD_SETTING``) is ``ConfigError``; a server refused, unreachable or restarting ``StorageUnavailableError``
    (it may pass); anything else ``StorageError``."""
    text = str(exc).strip()
    if not isinstance(exc, _driver().OperationalError):
        return StorageError(redacted(f"cannot connect to PostgreSQL at {url} ({text})", url))
    if _BAD_SETTING.search(text):
        return _setting_error(re.sub(r"^connection (is bad|failed): ", "", text), url)  # psycopg's words, not libpq's
    return StorageUnavailableError(redacted(f"cannot connect to PostgreSQL at {url} ({text})", url))


def _setting_error(why: str, url: str) -> ConfigError:
    return ConfigError(redacted(f"not a valid PostgreSQL connection setting: {why} (in {url}, or the PG* variable "
                                "or service file that sets it)", url) + "; fix --store / ORCH_STORE_URL")


def _refused_setting(params: dict[str, Any]) -> str | None:
    """What libpq would refuse in ``params`` (``_BAD_SETTING``) as it connects, found without the network, asked once
    a connection failed as a server out of reach would (``connect``): psycopg looks a host's name up before libpq reads
    a setting, so a name without an address (``no-such-host.invalid``) was ``StorageUnavailableError``, exit 10, and hid
    the wrong setting. libpq reads the settings it checks before connecting (an ``sslmode`` it does not know, a port out of
    range, hosts and ports that do not match, from the URL, a ``PG*`` variable or a service file) as it opens a
    connection to a socket that cannot be (``_NO_SOCKET_HERE``, one per host); the integers it reads only once it has a
    TCP socket (a host that is no socket folder) are read here as it reads them (``_C_INTEGER``, an ``int``), and
    handed to the kernel as it hands them over (``_kernel_refused``). None: nothing refused, or a ``hostaddr``, which
    psycopg does not look up (libpq read every setting itself, and would connect to it here)."""
    hostaddr = params["hostaddr"] if "hostaddr" in params else os.environ.get("PGHOSTADDR")
    if hostaddr:
        return None
    hosts = str(params["host"] if "host" in params else os.environ.get("PGHOST", "")).split(",")
    psycopg = _driver()
    check = {**params, "host": ",".join([_NO_SOCKET_HERE] * len(hosts))}
    try:
        conn = psycopg.pq.PGconn.connect_start(psycopg.conninfo.make_conninfo("", **check).encode())
    except (psycopg.Error, ValueError):  # not what this check is for: the connection says it
        return None
    try:
        if conn.status == psycopg.pq.ConnStatus.BAD:
            text = conn.get_error_message() if hasattr(conn, "get_error_message") else conn.error_message.decode(
                "utf-8", "replace")
            if _BAD_SETTING.search(text):
                return text.strip()
    finally:
        conn.finish()
    if all(not host or host.startswith(("/", "@")) for host in hosts):  # socket folders: libpq reads no TCP integer
        return None
    if _c_int(params.get("keepalives")) is None:
        return f'invalid integer value "{params["keepalives"]}" for connection option "keepalives"'
    if _c_int(params.get("keepalives")) == 0:  # libpq then reads none of the TCP integers
        return None
    given = {name: params[name] for name in _TCP_SETTINGS if params.get(name) is not None}
    for name, value in given.items():
        if _c_int(value) is None:
            return f'invalid integer value "{value}" for connection option "{name}"'
    return _kernel_refused({name: _c_int(value) for name, value in given.items()})


def _kernel_refused(values: dict[str, Any]) -> str | None:
    """What the kernel says of the TCP integers ``values`` (name -> int) as libpq hands them over (a negative one as 0),
    in libpq's words (``setsockopt(TCP_KEEPIDLE) failed: Invalid argument``), asked of a TCP socket of this process
    that connects nowhere; None when it takes them all (or has no such option, nor a socket to ask)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:  # no IPv4 here: libpq finds it on the connection's own socket
        return None
    with sock:
        for name, number in values.items():
            label = _TCP_INTEGERS.get(name)
            if label is None:
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, label), max(number, 0))
            except OSError as exc:
                return f"setsockopt({label}) failed: {os.strerror(exc.errno or 0)}"
    return None


def _c_int(value: Any) -> int | None:
    """``value`` read as libpq reads an integer setting (``strtol`` into an ``int``), or None when libpq refuses it;
    no value (None) counts as 1, keepalives' default."""
    if value is None:
        return 1
    text = str(value)
    if not _C_INTEGER.fullmatch(text):
        return None
    number = int(text.strip(" \t\n\v\f\r"))
    return number if -2**31 <= number < 2**31 else None


def _went_away(conn: Any) -> bool:
    """True if an idle connection has something to read: the server ended it (a restart, an
    administrator, a pooler), having sent its error before closing. One ``poll`` and no round
    trip, so a worker whose pooled connections were cut does not fail its next statement."""
    try:
        return bool(readable([conn.fileno()], 0))
    except (OSError, ValueError, _driver().Error):
        return True
