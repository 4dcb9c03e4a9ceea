"""The PostgreSQL URL an operator gives (``--store`` / ``ORCH_STORE_URL``): a malformed one is an error with its code,
never a traceback. These need psycopg but no server: the URL fails before any connection is made."""
from __future__ import annotations

import json
import re
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("psycopg", reason="the PostgreSQL backend needs psycopg 3 (pip install -e '.[postgres]')")

from orchestrator.cli import cli  # noqa: E402

pytestmark = pytest.mark.postgres

MALFORMED = "postgres://orch:S3cretPW@[::1/jobs"  # an IPv6 host never closed: urlsplit raises ValueError
# URLs libpq's parser refuses (or psycopg, for connect_timeout), each with what the message names
UNPARSABLE = [(MALFORMED, "IPv6"), ("postgresql://orch:S3cretPW@db/jobs?foo=bar", 'invalid URI query parameter: "foo"'),
              ("postgresql://orch:S3cretPW@db/j%zz", "invalid percent-encoded token"),
              ("postgresql://orch:S3cretPW@db/jobs?connect_timeout=soon", "bad value for connect_timeout")]


@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["status", "--all"], ["verify"],
                                     ["worker", "--once"],
                                     ["submit", "--kind", "command", "--input", '{"argv": ["true"]}']])
def test_a_malformed_store_url_is_a_config_error_with_its_exit_code_not_a_traceback(
        command: list[str], tmp_path) -> None:
    """A URL that cannot be parsed is a setting to fix (exit 3), never a server out of reach (exit 10)."""
    result = CliRunner().invoke(cli, [*command, "--store", MALFORMED, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 3, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "CONFIG_ERROR" and "IPv6" in error["message"] and "ORCH_STORE_URL" in error["message"]
    assert "S3cretPW" not in result.output


@pytest.mark.parametrize("url, why", UNPARSABLE)
def test_every_url_libpq_cannot_parse_is_refused_when_the_store_is_made_before_any_connection(
        url: str, why: str) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.store.postgres import PostgresStore

    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as refused:
        PostgresStore(url, "p")
    assert why in refused.value.message and "S3cretPW" not in refused.value.message


@pytest.mark.parametrize("url", ["postgresql://orch:S3cretPW@db/jo\0bs", "postgresql://orch:S3cretPW@db/jo\udce9bs"])
def test_a_url_with_a_nul_or_bytes_that_are_not_utf8_is_a_config_error(url: str) -> None:
    """libpq would cut the URL at a NUL (another database); ``--store`` bytes that are not UTF-8 come as surrogates."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.postgres import connect

    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as refused:
        connect(url)
    assert "S3cretPW" not in refused.value.message


# Passwords as operators write them in URLs; libpq takes the last four as they are (it parses the authority up to
# the first ``@`` or ``/``), and ``sanitize_text``'s URL pattern stops at ``/``, ``#``, ``?`` and spaces.
PASSWORDS = ["S3c%2FretPW", "S3c#retPW", "S3c?retPW", "S3c/retPW", "S3c retPW"]
PARSED = [p for p in PASSWORDS if " " not in p]  # libpq refuses a space in a URL: a malformed URL, exit 3
# libpq reads an unencoded "/" as the authority's end: "orch:S3c" is a host and a port that is no number, exit 3 (since
# 2026-12-06; before, psycopg's lookup of the host "orch" failed first, exit 10)
REACHED = [p for p in PARSED if "/" not in p]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["status", "--all"], ["worker", "--once"]])
def test_the_password_of_a_store_url_never_reaches_the_output_whatever_characters_it_holds(
        password: str, command: list[str], tmp_path) -> None:
    url = f"postgresql://orch:{password}@127.0.0.1:1/jobs"  # port 1: refused, no server needed
    result = CliRunner().invoke(cli, [*command, "--store", url, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    error = json.loads(result.stdout)
    expected = (10, "STORAGE_ERROR") if password in REACHED else (3, "CONFIG_ERROR")
    assert (result.exit_code, error["error"]) == expected, result.output
    assert "[REDACTED]" in error["message"]
    for secret in {password, "S3c", "retPW"}:
        assert secret not in result.output


@pytest.mark.parametrize("password", PARSED)
def test_a_stores_repr_shows_no_password(password: str) -> None:
    from orchestrator.store.postgres import PostgresStore

    store = PostgresStore(f"postgresql://orch:{password}@127.0.0.1:1/jobs", "p")
    try:
        assert "retPW" not in repr(store) and "[REDACTED]" in repr(store)
    finally:
        store.close()


# Settings libpq reads only as it connects, each with what its message names: a setting to fix, like a URL that
# cannot be parsed, never a server out of reach. Port 1: nothing listens there, and nothing is tried.
BAD_SETTINGS = [("sslmode=bogus", 'invalid sslmode value: "bogus"'), ("gssencmode=maybe", "gssencmode"),
                ("channel_binding=maybe", "channel_binding"), ("target_session_attrs=any-old", "target_session_attrs"),
                ("keepalives_idle=1.5", "keepalives_idle"), ("hostaddr=bogus", 'could not parse network address'),
                ("ssl_min_protocol_version=TLSv1.3&ssl_max_protocol_version=TLSv1.2", "SSL protocol version range")]


@pytest.mark.parametrize("setting, why", BAD_SETTINGS)
def test_a_connection_setting_libpq_refuses_is_a_config_error_naming_it_without_the_password(
        setting: str, why: str) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.store.postgres import PostgresStore

    store = PostgresStore(f"postgresql://orch:S3cretPW@127.0.0.1:1/jobs?{setting}", "p")
    try:
        with pytest.raises(ConfigError) as refused:
            store.has_jobs()
    finally:
        store.close()
    assert refused.value.code == "CONFIG_ERROR" and why in refused.value.message
    assert "ORCH_STORE_URL" in refused.value.message and "S3cretPW" not in refused.value.message


NO_SUCH_HOST = "no-such-host.invalid"  # a name no resolver knows (RFC 2606): psycopg looks it up before libpq runs


@pytest.mark.parametrize("setting, why", BAD_SETTINGS + [("keepalives=x", 'for connection option "keepalives"'),
                                                       ("tcp_user_timeout=1e3", "tcp_user_timeout"),
                                                       ("port=99999", "invalid port number")])
def test_a_bad_setting_is_a_config_error_even_when_the_host_cannot_be_resolved(setting: str, why: str) -> None:
    """The URL is wrong in itself: that is said first (exit 3), not that its host has no address (exit 10), which
    psycopg's own lookup of the name found before libpq ever read the setting."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(ConfigError) as refused:
        connect(f"postgresql://orch:S3cretPW@{NO_SUCH_HOST}/jobs?{setting}")
    assert why in refused.value.message and "ORCH_STORE_URL" in refused.value.message
    assert "S3cretPW" not in refused.value.message


def test_a_bad_setting_from_a_pg_variable_is_a_config_error_when_the_host_cannot_be_resolved_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.store.pg_connection import connect

    monkeypatch.setenv("PGSSLMODE", "bogus")
    with pytest.raises(ConfigError, match='invalid sslmode value: "bogus"'):
        connect(f"postgresql://orch@{NO_SUCH_HOST}/jobs")


@pytest.mark.parametrize("command", [["db", "status"], ["status", "--all"], ["worker", "--once"]])
def test_a_store_url_whose_host_cannot_be_resolved_and_whose_setting_is_bad_exits_3(command: list[str],
                                                                                   tmp_path) -> None:
    url = f"postgresql://orch:S3cretPW@{NO_SUCH_HOST}/jobs?keepalives_idle=1.5"
    result = CliRunner().invoke(cli, [*command, "--json"], env={
        "BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys"), "ORCH_STORE_URL": url})
    assert result.exit_code == 3, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "CONFIG_ERROR" and "keepalives_idle" in error["message"], error
    assert "S3cretPW" not in result.output


def test_a_host_that_cannot_be_resolved_with_good_settings_stays_a_storage_error() -> None:
    """A name that has no address now may have one later (a DNS outage, a typo in a host name is found the same way):
    exit 10, as a server out of reach, when nothing else is wrong."""
    from orchestrator.errors import ConfigError, StorageUnavailableError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(StorageUnavailableError) as refused:
        connect(f"postgresql://orch@{NO_SUCH_HOST}/jobs?sslmode=disable&keepalives_idle=7&application_name=x")
    assert not isinstance(refused.value, ConfigError) and NO_SUCH_HOST in refused.value.message


# Integers as an operator may write them; libpq (strtol, an int, surrounding blanks) refuses some
INTEGERS = ["7", " 12 ", "+5", "-3", "\t7\n", "1.5", "0x10", "", "1e3", "- 3", "3 4", "2147483648", "99999999999",
            "\u0661\u0662"]


@pytest.mark.parametrize("value", INTEGERS)
@pytest.mark.parametrize("option", ["keepalives_idle", "tcp_user_timeout"])
def test_an_integer_setting_is_refused_before_any_lookup_exactly_when_libpq_refuses_it(option: str, value: str) -> None:
    """The check made before psycopg's lookup of the host agrees with libpq's own, made as it connects to an address
    (port 1 of this machine, where nothing listens: refused, or the setting first), and so does what the kernel says
    of a value libpq hands it (``-3`` as 0: no idle time, a ``tcp_user_timeout`` of the kernel's default)."""
    from psycopg import conninfo

    from orchestrator.errors import ConfigError
    from orchestrator.store.pg_connection import connect

    def refused(host: str) -> str | None:
        try:
            connect(conninfo.make_conninfo("", host=host, port="1", dbname="x", user="x", **{option: value}))
        except ConfigError as exc:
            why = re.search(rf'invalid integer value "{re.escape(value)}" for connection option "{option}"'
                            r"|setsockopt\(\w+\) failed: Invalid argument", exc.message)
            assert why, exc.message
            return why.group()
        except Exception:  # noqa: BLE001 - refused, out of reach: not this check's
            return None
        raise AssertionError("connected to port 1")

    assert refused(NO_SUCH_HOST) == refused("127.0.0.1")


# Keepalive values libpq reads as integers and hands the kernel (a negative one as 0), which Linux refuses
# (``setsockopt failed: Invalid argument``): idle and interval from 1 to 32767 s, count from 1 to 127
KERNEL_REFUSES = [("keepalives_idle=-3", "TCP_KEEPIDLE"), ("keepalives_idle=0", "TCP_KEEPIDLE"),
                  ("keepalives_interval=40000", "TCP_KEEPINTVL"), ("keepalives_count=200", "TCP_KEEPCNT"),
                  ("keepalives=-1&keepalives_count=0", "TCP_KEEPCNT")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's ranges of these values are Linux's")
@pytest.mark.parametrize("host", ["127.0.0.1", NO_SUCH_HOST])
@pytest.mark.parametrize("setting, option", KERNEL_REFUSES)
def test_a_keepalive_value_the_kernel_refuses_is_a_config_error_whatever_the_host(
        setting: str, option: str, host: str) -> None:
    """Until 2026-12-07 exit 10 (``setsockopt(TCP_KEEPIDLE) failed``, as if the server were out of reach; for a host
    name without an address, ``failed to resolve host``): a value no connection can use is a setting to fix."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(ConfigError) as refused:
        connect(f"postgresql://orch:S3cretPW@{host}:1/jobs?{setting}")
    assert f"setsockopt({option}) failed" in refused.value.message, refused.value.message
    assert "ORCH_STORE_URL" in refused.value.message and "S3cretPW" not in refused.value.message


@pytest.mark.parametrize("setting", ["keepalives=0&keepalives_idle=-3", "keepalives=0&tcp_user_timeout=x",
                                     "keepalives=0&keepalives_count=x", "tcp_user_timeout=-4"])
def test_a_setting_libpq_does_not_use_is_not_refused_for_a_host_name_either(setting: str) -> None:
    """With keepalives off libpq reads none of the TCP integers (``tcp_user_timeout`` included), and it hands a negative
    ``tcp_user_timeout`` to the kernel as 0, which Linux takes: the host name's lookup is what fails, as it would with
    an address (until 2026-12-07 ``keepalives=0&tcp_user_timeout=x`` was exit 3 for a name, a connection for an
    address)."""
    from orchestrator.errors import ConfigError, StorageUnavailableError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(StorageUnavailableError) as refused:
        connect(f"postgresql://orch@{NO_SUCH_HOST}/jobs?{setting}")
    assert not isinstance(refused.value, ConfigError) and "failed to resolve host" in refused.value.message


@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["status", "--all"], ["worker", "--once"]])
def test_a_bad_sslmode_exits_3_with_config_error_not_10(command: list[str], tmp_path) -> None:
    url = "postgresql://orch:S3cretPW@127.0.0.1:1/jobs?sslmode=bogus"
    result = CliRunner().invoke(cli, [*command, "--store", url, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    assert result.exit_code == 3, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "CONFIG_ERROR" and "sslmode" in error["message"], error
    assert "S3cretPW" not in result.output


def test_a_bad_setting_from_a_pg_variable_is_a_config_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq takes a setting the URL does not give from its ``PG*`` variables: the same mistake, the same error."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.pg_connection import connect

    monkeypatch.setenv("PGSSLMODE", "bogus")
    with pytest.raises(ConfigError, match="sslmode") as refused:
        connect("postgresql://orch:S3cretPW@127.0.0.1:1/jobs")
    assert "PG" in refused.value.message and "S3cretPW" not in refused.value.message


def test_a_server_out_of_reach_stays_a_storage_error() -> None:
    """What may pass (nothing listens on the port yet) is not a setting: exit 10, as before."""
    from orchestrator.errors import ConfigError, StorageUnavailableError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(StorageUnavailableError) as refused:
        connect("postgresql://orch:S3cretPW@127.0.0.1:1/jobs?sslmode=disable")
    assert not isinstance(refused.value, ConfigError)


def test_a_password_given_as_a_query_parameter_is_redacted_and_the_reason_after_the_url_kept() -> None:
    """``?password=x: reason`` read as one value to redact took the colon with it: the URL and libpq's reason ran
    together. The reason now follows in brackets (``security.shown``'s rule for a message naming a value)."""
    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(StorageUnavailableError) as refused:
        connect("postgresql://orch@127.0.0.1:1/jobs?password=S3cretPW")
    assert "S3cretPW" not in refused.value.message
    assert re.search(r"at postgresql://orch@127\.0\.0\.1:1/jobs\?password=\[REDACTED\] \(connection (is bad|failed)",
                     refused.value.message), refused.value.message


def test_a_connection_that_opens_pays_for_no_check_of_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq read every setting of a connection that opened: the check made for a host name psycopg could not look up
    (``_refused_setting``, ~0.14-0.3 ms) runs only once connecting failed (until 2026-12-07 before every connection to
    a host name)."""
    from backends import PG_URL, require_pg
    from orchestrator.store import pg_connection

    require_pg()

    def not_here(params: object) -> None:
        raise AssertionError("the settings were checked for a connection that opened")

    monkeypatch.setattr(pg_connection, "_refused_setting", not_here)
    named = re.sub(r"@127\.0\.0\.1([:/])", r"@localhost\1", PG_URL)
    pg_connection.connect(named).close()


def test_a_tcp_integer_libpq_does_not_read_for_a_socket_folder_is_not_refused_when_no_server_is_there() -> None:
    """libpq reads the keepalives only on a TCP socket: a socket folder with no server is out of reach (exit 10), as
    the same URL with a server there connects."""
    from orchestrator.errors import ConfigError, StorageUnavailableError
    from orchestrator.store.pg_connection import connect

    with pytest.raises(StorageUnavailableError) as refused:
        connect("postgresql://orch@/jobs?host=/nonexistent-socket-folder&keepalives_idle=x")
    assert not isinstance(refused.value, ConfigError), refused.value.message


# A password with an unencoded "@" or "&": libpq takes what follows as part of the host, or as a parameter with no
# "=", and names it in its message (the security hunt's two URLs; both leaked the part after the "@" or "&")
SPLIT_PASSWORDS = [("postgresql://postgres:S3cr3t@2024xyz@127.0.0.1:5432/db", "2024xyz", "STORAGE_ERROR",
                    "failed to resolve host '[REDACTED]@127.0.0.1'"),
                   ("postgresql://postgres@127.0.0.1:5432/db?password=Ab9&Zq7Leak", "Zq7Leak", "CONFIG_ERROR",
                    'missing key/value separator "=" in URI query parameter: "[REDACTED]"')]


@pytest.mark.parametrize("url, leaked, code, shown", SPLIT_PASSWORDS, ids=["at", "ampersand"])
def test_no_part_of_a_password_libpq_splits_off_reaches_the_output(url: str, leaked: str, code: str, shown: str,
                                                                    tmp_path) -> None:
    result = CliRunner().invoke(cli, ["status", "--all", "--store", url, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    error = json.loads(result.stdout)
    assert error["error"] == code and shown in error["message"], error
    for secret in (leaked, "S3cr3t", "Ab9"):
        assert secret not in result.output


def test_a_short_split_off_piece_of_a_password_is_removed_only_where_a_value_stands() -> None:
    """A piece may be short enough to be in ordinary words (``a`` of ``pw@a@db``): a word that holds it keeps it
    (``cannot``, ``okay``), and so does the word itself (``a host``, ``ok.``: until the twenty-ninth session each "a" of the message
    went); the piece goes where libpq names it: before the host's ``@``, in quotes."""
    from orchestrator.store.pg_connection import redacted

    url = "postgresql://orch:pw@a@db/jobs?password=x&ok&sslmode=bogus"
    text = "a host 'a@db' cannot be reached; a parameter \"ok\" is bad, as okay says; ok. sslmode=bogus"
    assert redacted(text, url) == ("a host '[REDACTED]@db' cannot be reached; a parameter \"[REDACTED]\" is bad, "
                                   "as okay says; ok. sslmode=bogus")


def test_a_long_split_off_piece_of_a_password_is_removed_wherever_it_stands_alone() -> None:
    from orchestrator.store.pg_connection import redacted

    url = "postgresql://orch:pw@2024xyzab@db/jobs"
    assert redacted("host 2024xyzab, or 2024xyzabc", url) == "host [REDACTED], or 2024xyzabc"


@pytest.mark.parametrize("password", ["p", "st", "ost"])
def test_a_short_password_is_removed_where_it_stands_not_from_every_word(password: str) -> None:
    """A one-letter password (``https://u:p@host``) was replaced everywhere in the message: every "p" of
    "postgresql" became ``[REDACTED]``. One shorter than 8 characters is removed only where no letter or digit
    touches it, as a split-off piece is: in its place in the URL, not inside "host" or "must"."""
    from orchestrator.errors import ConfigError, StorageUnavailableError
    from orchestrator.config import store_named
    from orchestrator.store.pg_connection import connect

    url = f"https://u:{password}@host"
    with pytest.raises(ConfigError) as refused:
        store_named(url, {})
    assert refused.value.message == ("ORCH_STORE_URL / --store must be 'file' or a postgresql:// URL, not "
                                     "'https://u:[REDACTED]@host'")
    with pytest.raises(StorageUnavailableError) as failed:
        connect(f"postgresql://orch:{password}@127.0.0.1:1/jobs")
    assert failed.value.message.startswith(
        "cannot connect to PostgreSQL at postgresql://orch:[REDACTED]@127.0.0.1:1/jobs (")
    assert "port 1 failed" in failed.value.message


@pytest.mark.parametrize("password", ["at", "port", "failed", "server", "1"])
def test_a_short_password_that_is_a_word_of_the_message_is_removed_only_where_a_value_stands(password: str) -> None:
    """A password shorter than 8 characters was removed wherever it stood alone: ``cannot connect to PostgreSQL
    [REDACTED] postgresql://...``, ``connection to server [REDACTED] "127.0.0.1"``, ``127.0.0.[REDACTED]``; a gap that
    spells it to a reader who knows libpq's wording. Now only where a value stands: in the URL, in libpq's quotes."""
    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store.pg_connection import connect

    for url, shown in ((f"postgresql://orch:{password}@127.0.0.1:1/jobs",
                        "postgresql://orch:[REDACTED]@127.0.0.1:1/jobs"),
                       (f"postgresql://orch@127.0.0.1:1/jobs?password={password}",
                        "postgresql://orch@127.0.0.1:1/jobs?password=[REDACTED]")):
        with pytest.raises(StorageUnavailableError) as failed:
            connect(url)
        assert failed.value.message.startswith(f"cannot connect to PostgreSQL at {shown} (connection failed: "
                                               'connection to server at "127.0.0.1", port 1 failed: '), \
            failed.value.message


def test_a_short_password_is_removed_where_libpq_names_it_as_a_value() -> None:
    """Inside the quotes libpq puts around a value it names, and after a parameter's ``=``: the same text as the
    password, given to another setting, shows it."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.pg_connection import connect, redacted

    with pytest.raises(ConfigError) as refused:
        connect("postgresql://orch:at@127.0.0.1:1/jobs?port=at")
    assert refused.value.message == (
        'not a valid PostgreSQL connection setting: invalid integer value "[REDACTED]" for connection option "port" '
        "(in postgresql://orch:[REDACTED]@127.0.0.1:1/jobs?port=[REDACTED], or the PG* variable or service file "
        "that sets it); fix --store / ORCH_STORE_URL")
    assert redacted("value 'at' at x=at&y=at) as at@ or :at", "postgresql://orch:at@db/jobs") == (
        "value '[REDACTED]' at x=[REDACTED]&y=[REDACTED]) as at@ or :at")
