"""The PostgreSQL URL an operator gives (``--store`` / ``ORCH_STORE_URL``): a malformed one is an error with its code,
never a traceback. These need psycopg but no server: the URL fails before any connection is made."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("psycopg", reason="the PostgreSQL backend needs psycopg 3 (pip install -e '.[postgres]')")

from orchestrator.cli import cli  # noqa: E402

pytestmark = pytest.mark.postgres

MALFORMED = "postgres://orch:S3cretPW@[::1/jobs"  # an IPv6 host never closed: urlsplit raises ValueError


@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["status", "--all"], ["verify"],
                                     ["submit", "--kind", "command", "--input", '{"argv": ["true"]}']])
def test_a_malformed_store_url_is_a_storage_error_with_its_exit_code_not_a_traceback(
        command: list[str], tmp_path) -> None:
    result = CliRunner().invoke(cli, [*command, "--store", MALFORMED, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR" and "IPv6" in error["message"]
    assert "S3cretPW" not in result.output


# Passwords as operators write them in URLs; libpq takes the last four as they are (it parses the authority up to
# the first ``@`` or ``/``), and ``sanitize_text``'s URL pattern stops at ``/``, ``#``, ``?`` and spaces.
PASSWORDS = ["S3c%2FretPW", "S3c#retPW", "S3c?retPW", "S3c/retPW", "S3c retPW"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["status", "--all"], ["worker", "--once"]])
def test_the_password_of_a_store_url_never_reaches_the_output_whatever_characters_it_holds(
        password: str, command: list[str], tmp_path) -> None:
    url = f"postgresql://orch:{password}@127.0.0.1:1/jobs"  # port 1: refused, no server needed
    result = CliRunner().invoke(cli, [*command, "--store", url, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR" and "[REDACTED]" in error["message"]
    for secret in {password, "S3c", "retPW"}:
        assert secret not in result.output


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_stores_repr_shows_no_password(password: str) -> None:
    from orchestrator.store.postgres import PostgresStore

    store = PostgresStore(f"postgresql://orch:{password}@127.0.0.1:1/jobs", "p")
    try:
        assert "retPW" not in repr(store) and "[REDACTED]" in repr(store)
    finally:
        store.close()
