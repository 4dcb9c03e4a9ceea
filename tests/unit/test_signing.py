"""Signatures, canonical form and the keyring: where keys come from and which are trusted."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from helpers import libsodium_checks, shared_with_a_group

from orchestrator.errors import ConfigError, SigningKeyError
from orchestrator.key_files import load_keyring, write_keypair
from orchestrator.signing import Keyring, canonical, new_seed


def test_canonical_encoding_is_sorted_compact_utf8_and_refuses_nan() -> None:
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


def test_a_sealed_record_verifies_and_any_change_breaks_it(keyring: Keyring) -> None:
    import json

    rec = json.loads(keyring.seal({"seq": 1, "data": {"x": 1}}))
    assert keyring.check(rec) is None
    assert keyring.check({**rec, "data": {"x": 2}}) == "SIGNATURE_INVALID"
    # change a middle character: the last one carries padding bits, so "AA" at the end could decode unchanged
    other = "A" if rec["sig"][10] != "A" else "B"
    assert keyring.check({**rec, "sig": rec["sig"][:10] + other + rec["sig"][11:]}) == "SIGNATURE_INVALID"
    assert keyring.check({k: v for k, v in rec.items() if k != "sig"}) == "SIGNATURE_MISSING"


def test_the_seq_a_line_says_is_found_from_its_end_whatever_its_data_holds(keyring: Keyring) -> None:
    """``line_seq`` (PostgreSQL's locked append compares it with the last row's number) reads no more than the end of
    a line: a ``seq`` key inside its data, or its text, is not the record's."""
    from orchestrator.signing import line_seq

    data = {"seq": 99, "list": [{"seq": 98}], "text": ',"seq":97,', "big": "x" * 100_000}
    line = keyring.seal({"job_id": "J", "type": "t", "ts": "2026", "data": data, "prev": "p", "seq": 7, "v": 1})
    assert line_seq(line) == 7
    assert line_seq(b"not json") is None and line_seq(b'{"kid":"k","seq":"7","v":1}') is None  # no number: None


def test_the_key_a_line_says_signed_it_is_found_from_its_end_whatever_its_data_holds(keyring: Keyring) -> None:
    """``line_key_id`` (the key a PostgreSQL ready row names, migration 0008) reads the end of a line only: a ``kid``
    inside its data, or its text, is not the record's; a line naming no key id of the right form names none."""
    from orchestrator.signing import line_key_id

    data = {"kid": "k-00000000000000a1", "text": ',"kid":"k-00000000000000b2",', "big": "x" * 100_000}
    line = keyring.seal({"job_id": "J", "type": "t", "ts": "2026", "data": data, "prev": "p", "seq": 1, "v": 1})
    assert line_key_id(line) == keyring.signer_id
    assert line_key_id(b"not json") is None and line_key_id(b'{"a":1,"kid":"k-1","seq":1}') is None


def test_a_signature_verifies_only_as_the_one_text_that_encodes_it(keyring: Keyring) -> None:
    """Another text of the same 64 bytes (the last character's spare bits, ``=`` padding, the standard alphabet)
    changed a line's bytes and its signature still verified: only the line after it, or the head record, noticed."""
    import json

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rec = next(r for r in (json.loads(keyring.seal({"seq": n})) for n in range(1000)) if set("-_") & set(r["sig"][:-1]))
    sig = rec["sig"]
    others = [sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1], sig + "==", sig.replace("-", "+").replace("_", "/")]
    body = json.dumps({k: v for k, v in rec.items() if k != "sig"}, sort_keys=True, separators=(",", ":")).encode()
    assert keyring.check(rec) is None and keyring.verify_bytes(rec["kid"], sig, body)
    for other in others:
        assert keyring.check({**rec, "sig": other}) == "SIGNATURE_INVALID", other
        assert not keyring.verify_bytes(rec["kid"], other, body)



def test_a_signature_that_verified_is_not_checked_again_and_any_other_bytes_are(
        keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader polling a job, or an action checking the audit log's head record before its event and again
    before its entry, meets the same signed bytes again: their verification is remembered, in memory, for the
    exact bytes, signature and public key; anything else is checked by libsodium, as before."""
    import json

    other = Keyring(trusted=dict(keyring.trusted))  # another process: it did not sign the record
    calls = libsodium_checks(monkeypatch)
    rec = json.loads(keyring.seal({"seq": 1, "data": {"x": 1}}))
    assert other.check(rec) is None and calls[0] == 1
    assert other.check(dict(rec)) is None and calls[0] == 1  # the same bytes again: remembered
    assert other.check({**rec, "data": {"x": 2}}) == "SIGNATURE_INVALID" and calls[0] == 2
    assert other.check({**rec, "data": {"x": 2}}) == "SIGNATURE_INVALID" and calls[0] == 3  # failures: never remembered
    flipped = "A" if rec["sig"][10] != "A" else "B"
    assert other.check({**rec, "sig": rec["sig"][:10] + flipped + rec["sig"][11:]}) == "SIGNATURE_INVALID"
    assert keyring.check(rec) is None and calls[0] == 4  # what a keyring signed itself verifies without a check


def test_a_remembered_signature_of_a_key_revoked_or_no_longer_held_is_refused(
        keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the key is trusted and not revoked is decided on every check, before the memory is consulted."""
    import json

    rec = json.loads(keyring.seal({"seq": 1}))
    assert keyring.check(rec) is None
    keyring.revoked = frozenset({rec["kid"]})
    assert keyring.check(rec) == "KEY_REVOKED"
    keyring.revoked = frozenset()
    public = keyring.trusted.pop(rec["kid"])
    assert keyring.check(rec) == "UNKNOWN_KEY"
    keyring.trusted[rec["kid"]] = public
    assert keyring.check(rec) is None


def test_a_keyring_remembers_a_bounded_number_of_signatures(keyring: Keyring) -> None:
    from orchestrator.signing import VERIFIED_MEMO

    for n in range(VERIFIED_MEMO * 2 + 1):
        keyring.seal({"seq": n})
    assert 0 < len(keyring._verified) <= VERIFIED_MEMO


def test_a_keyring_remembers_no_large_line_so_its_memory_stays_small(keyring: Keyring) -> None:
    """512 lines of a job's 1 MiB input each would hold 512 MiB: only short signed bytes are remembered."""
    from orchestrator.signing import VERIFIED_MEMO_MAX_BYTES

    line = keyring.seal({"seq": 1, "data": {"input": "x" * (1 << 20)}})
    assert keyring._verified == set()
    assert keyring.check(json.loads(line)) is None  # still checked, every time
    keyring.seal({"seq": 2, "data": {"input": "x" * (VERIFIED_MEMO_MAX_BYTES // 2)}})
    assert len(keyring._verified) == 1


def test_a_keyring_never_shows_its_private_key(keyring: Keyring) -> None:
    """A keyring's repr lands in tracebacks with locals, assertion messages and debug logs."""
    from orchestrator.signing import _b64

    shown = repr(keyring) + str(keyring)
    assert keyring.signer_id in shown
    assert all(form not in shown for form in (repr(keyring.signer), keyring.signer.hex(), _b64(keyring.signer)))


def test_a_verifier_with_only_the_public_key_verifies_but_cannot_sign(keyring: Keyring) -> None:
    import json

    rec = json.loads(keyring.seal({"seq": 1}))
    verifier = Keyring(trusted=dict(keyring.trusted))
    assert verifier.check(rec) is None
    with pytest.raises(SigningKeyError):
        verifier.seal({"seq": 2})


def test_first_use_generates_an_owner_only_key_and_says_so_once(isolated_env: Path, capsys) -> None:
    ring = load_keyring()
    assert not isolated_env.exists(), "a read-only use must not create a key"
    ring.seal({"seq": 1})
    assert "generated signing key" in capsys.readouterr().err
    key_files = list(isolated_env.glob("*.key"))
    assert len(key_files) == 1
    assert stat.S_IMODE(key_files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(isolated_env.stat().st_mode) == 0o700
    again = load_keyring()
    again.seal({"seq": 1})
    assert "generated" not in capsys.readouterr().err
    assert again.signer_id == ring.signer_id


def test_a_private_key_readable_by_others_is_refused(isolated_env: Path) -> None:
    load_keyring().seal({"seq": 1})
    key = next(isolated_env.glob("*.key"))
    os.chmod(key, 0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_keyring().seal({"seq": 1})


def test_signing_key_from_the_environment_needs_no_files(tmp_path: Path) -> None:
    ring = load_keyring({"ORCH_SIGNING_KEY": new_seed(), "ORCH_KEYRING_DIR": str(tmp_path / "none")})
    ring.seal({"seq": 1})
    assert ring.signer_id in ring.trusted and not (tmp_path / "none").exists()


def test_a_malformed_environment_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="base64url"):
        load_keyring({"ORCH_SIGNING_KEY": "not-a-key", "ORCH_KEYRING_DIR": str(tmp_path)})


def test_rotation_keeps_old_public_keys_trusted(isolated_env: Path) -> None:
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    first = load_keyring()
    old = json.loads(first.seal({"seq": 1}))
    new_kid = write_keypair(isolated_env, Ed25519PrivateKey.generate())
    rotated = load_keyring()
    new = json.loads(rotated.seal({"seq": 2}))
    assert new["kid"] == new_kid != old["kid"]
    assert rotated.check(old) is None and rotated.check(new) is None


def test_revoked_key_ids_fail_verification(isolated_env: Path) -> None:
    import json

    ring = load_keyring()
    rec = json.loads(ring.seal({"seq": 1}))
    (isolated_env / "revoked").write_text(rec["kid"] + "\n")
    assert load_keyring().check(rec) == "KEY_REVOKED"


def test_a_revoked_signing_key_signs_nothing_and_the_error_says_to_rotate(isolated_env: Path) -> None:
    """Whatever it signed would fail as KEY_REVOKED everywhere: a job broken from birth."""
    kid = write_keypair(isolated_env)
    (isolated_env / "revoked").write_text(kid + "\n")
    ring = load_keyring()
    with pytest.raises(SigningKeyError, match=f"signing key {kid} is revoked.*keys rotate"):
        ring.seal({"seq": 1})
    with pytest.raises(SigningKeyError, match="revoked"):
        ring.sign_bytes(b"anchor")
    write_keypair(isolated_env)  # keys rotate: a new active key
    assert load_keyring().seal({"seq": 1})


def test_a_revoked_environment_key_is_refused_naming_the_variable(isolated_env: Path) -> None:
    seed = new_seed()
    kid = load_keyring({"ORCH_SIGNING_KEY": seed, "ORCH_KEYRING_DIR": str(isolated_env)}).signer_id
    isolated_env.mkdir()
    (isolated_env / "revoked").write_text(f"{kid}\n")
    with pytest.raises(SigningKeyError, match=f"{kid} is revoked.*ORCH_SIGNING_KEY"):
        load_keyring({"ORCH_SIGNING_KEY": seed, "ORCH_KEYRING_DIR": str(isolated_env)}).seal({"seq": 1})


def test_a_keyring_reloaded_by_a_long_running_process_knows_the_keys_made_and_revoked_since_it_started(
        isolated_env: Path) -> None:
    ring = load_keyring()
    ring.seal({"seq": 1})
    newer = write_keypair(isolated_env)  # keys rotate, elsewhere
    (isolated_env / "revoked").write_text(f"{ring.signer_id}\n")  # keys revoke, elsewhere
    ring.seal({"seq": 2})  # what it loaded at start
    assert ring.reload() and not ring.reload()  # changed, then nothing more
    assert newer in ring.trusted
    with pytest.raises(SigningKeyError, match="revoked"):
        ring.seal({"seq": 3})


def test_a_process_still_signing_with_a_key_revoked_after_a_rotation_is_told_to_restart_not_to_rotate(
        isolated_env: Path) -> None:
    """A worker started before `keys rotate` signs with the old key; revoked, it stops: a new key is active already,
    and what makes it sign is a restart (it was told to run `keys rotate`, which made yet another key)."""
    ring = load_keyring()
    ring.seal({"seq": 1})
    old = ring.signer_id
    newer = write_keypair(isolated_env)  # keys rotate
    (isolated_env / "revoked").write_text(f"{old}\n")  # keys revoke OLD
    assert ring.reload()
    with pytest.raises(SigningKeyError, match=f"signing key {old} is revoked.*Restart this process.*still signs with "
                                              f"the revoked key {old}.*active key is now {newer}") as raised:
        ring.seal({"seq": 2})
    assert "keys rotate" not in str(raised.value)
    assert load_keyring().seal({"seq": 3})  # a process started now signs with the new key
    (isolated_env / "revoked").write_text(f"{old}\n{newer}\n")  # the new key revoked too: rotate
    assert ring.reload()
    with pytest.raises(SigningKeyError, match=f"signing key {old} is revoked.*keys rotate"):
        ring.seal({"seq": 4})


def test_the_signing_key_id_is_known_without_reading_the_private_key(isolated_env: Path) -> None:
    assert load_keyring().signing_key_id() is None and not isolated_env.exists()  # none yet: nothing created
    kid = write_keypair(isolated_env)
    ring = load_keyring()
    assert ring.signing_key_id() == kid and ring.signer is None
    assert load_keyring({"ORCH_SIGNING_KEY": new_seed(), "ORCH_KEYRING_DIR": str(isolated_env)}).signing_key_id() != kid


@pytest.mark.parametrize("break_it, refusal", [
    ("remove the .pub", "has no public key file .*UNKNOWN_KEY.*openssl pkey"),
    ("another .pub", "does not hold the public key of"),
    ("the key under another name", "holds the key {kid}, not 'k-1111111111111111'.*write {kid} into"),
    ("two lines", "does not name a key id .*'k-1111111111111111\\\\nk-2222222222222222'")])
def test_the_active_key_signs_nothing_that_no_reader_here_would_trust(isolated_env: Path, break_it: str,
                                                                      refusal: str) -> None:
    """A process trusts the key it signs with: without the check, a write succeeds and every other command
    refuses what it wrote as UNKNOWN_KEY (a job no worker ever runs)."""
    kid = write_keypair(isolated_env)
    if break_it == "remove the .pub":
        (isolated_env / f"{kid}.pub").unlink()
    elif break_it == "another .pub":
        other = write_keypair(isolated_env / "other")
        (isolated_env / f"{kid}.pub").write_bytes((isolated_env / "other" / f"{other}.pub").read_bytes())
    elif break_it == "the key under another name":
        shutil.copy(isolated_env / f"{kid}.key", isolated_env / "k-1111111111111111.key")
        (isolated_env / "active").write_text("k-1111111111111111\n")
    else:
        (isolated_env / "active").write_text("k-1111111111111111\nk-2222222222222222\n")
    ring = load_keyring()
    with pytest.raises(SigningKeyError, match=refusal.format(kid=kid)):
        ring.seal({"seq": 1})
    assert ring.signer is None


def test_revoke_writes_a_key_another_folder_lists_as_revoked_into_the_keyring_folder(
        isolated_env: Path, tmp_path: Path) -> None:
    """The trusted-keys folder may be another machine's, copied here: this machine's own list must hold the id."""
    from orchestrator.key_files import revoke

    write_keypair(isolated_env)
    other = write_keypair(tmp_path / "trusted", activate=False)
    (tmp_path / "trusted" / "revoked").write_text(f"{other}\n")
    env = {"ORCH_KEYRING_DIR": str(isolated_env), "ORCH_TRUSTED_KEYS_DIR": str(tmp_path / "trusted")}
    assert revoke(other, env)[1] is True and revoke(other, env)[1] is False
    (tmp_path / "trusted" / "revoked").unlink()
    assert other in load_keyring(env).revoked


@pytest.mark.parametrize("kid", ["", "k-nothex", "K-0123456789ABCDEF", "k-0123456789abcdef\n", "../k-0123456789abcdef",
                                 "evil\n{active}", "{active}\nevil", "{active}\u2028"])
def test_revoke_refuses_an_id_that_is_not_a_key_id_and_writes_nothing(isolated_env: Path, kid: str) -> None:
    """The revoked file is one id a line: an id holding a line break would revoke another key."""
    from orchestrator.errors import InvalidIdError
    from orchestrator.key_files import revoke

    active = write_keypair(isolated_env)
    with pytest.raises(InvalidIdError, match="key id"):
        revoke(kid.format(active=active))
    assert not (isolated_env / "revoked").exists() and not load_keyring().revoked


def test_revoke_refuses_an_id_that_names_no_key_of_the_keyring(isolated_env: Path) -> None:
    from orchestrator.errors import InvalidInputError
    from orchestrator.key_files import revoke

    write_keypair(isolated_env)
    with pytest.raises(InvalidInputError, match="k-0123456789abcdef names no key"):
        revoke("k-0123456789abcdef")
    assert not (isolated_env / "revoked").exists()


def test_revoke_writes_a_key_once_on_a_line_of_its_own(isolated_env: Path, tmp_path: Path) -> None:
    from orchestrator.key_files import revoke

    old, trusted_elsewhere = write_keypair(isolated_env), write_keypair(tmp_path / "trusted", activate=False)
    (isolated_env / "revoked").write_text("k-feedfeedfeedfeed")  # edited by hand: no newline at the end
    ring, written = revoke(old)
    assert old not in ring.revoked and written
    ring, written = revoke(old)  # again: already revoked, nothing written
    assert old in ring.revoked and not written
    revoke(trusted_elsewhere, {"ORCH_KEYRING_DIR": str(isolated_env), "ORCH_TRUSTED_KEYS_DIR": str(tmp_path / "trusted")})
    assert (isolated_env / "revoked").read_text().splitlines() == ["k-feedfeedfeedfeed", old, trusted_elsewhere]


def _break_keyring(folder: Path, what: str) -> Path:
    """Spoil one file of a keyring folder that holds an active key; return the file named in the error."""
    active = folder / (folder / "active").read_text().strip()
    bad = {"junk .pub": folder / "stray.pub", "folder named .pub": folder / "old.pub",
           "junk private key": active.with_suffix(".key"), "non-UTF-8 revoked": folder / "revoked",
           "folder named revoked": folder / "revoked", "folder named active": folder / "active",
           "active naming a path": folder / "active", "FIFO named .pub": folder / "stray.pub",
           "FIFO as the private key": active.with_suffix(".key")}[what]
    if what.startswith("folder named"):
        if bad.exists():
            bad.unlink()
        bad.mkdir()
    elif what.startswith("FIFO"):  # read without blocking: nobody writes it
        if bad.exists():
            bad.unlink()
        os.mkfifo(bad, 0o600)
    elif what == "non-UTF-8 revoked":
        bad.write_bytes(b"\xff\xfe k-1\n")
    elif what == "active naming a path":
        bad.write_text("../../etc/passwd\n")
    else:
        bad.write_bytes(b"junk\n")
    return bad


@pytest.mark.parametrize("what", ["junk .pub", "folder named .pub", "non-UTF-8 revoked", "folder named revoked",
                                  "FIFO named .pub"])
def test_an_unreadable_public_key_or_revoked_file_stops_every_keyring_load_naming_the_file(
        isolated_env: Path, what: str) -> None:
    """Never skipped: a trusted key left out would make the events it signed fail as UNKNOWN_KEY, like forgeries."""
    write_keypair(isolated_env)
    bad = _break_keyring(isolated_env, what)
    with pytest.raises(SigningKeyError, match=str(bad)):
        load_keyring()


@pytest.mark.parametrize("line", ["{kid} # compromised", "{kid} compromised 2026-12-01", "{KID}", "K-{hex}",
                                  "k-{short}", "revoke {kid}", "{kid},", "\"{kid}\""])
def test_a_revoked_line_that_is_not_a_key_id_stops_every_keyring_load_naming_the_file_and_line(
        isolated_env: Path, line: str) -> None:
    """A line of ``revoked`` edited by hand (a note after the id, the id in capitals) revoked nothing, and ``keys list``
    showed it as revoked: the key stayed trusted. Every line is a key id, a comment line or blank, else nothing is
    read: a revocation that may not hold must not look as if it did."""
    kid = write_keypair(isolated_env)
    text = line.format(kid=kid, KID=kid.upper(), hex=kid[2:], short=kid[:-1])
    (isolated_env / "revoked").write_text(f"# revoked by hand\n{text}\n")
    with pytest.raises(SigningKeyError, match=f"revoked-keys file {isolated_env / 'revoked'}, line 2,"
                                              ".* not a key id.*one key id a line"):
        load_keyring()


def test_the_revoked_file_may_hold_comment_lines_blank_lines_and_line_ends_of_either_kind(isolated_env: Path) -> None:
    kid, other, kept = write_keypair(isolated_env), write_keypair(isolated_env), write_keypair(isolated_env)
    (isolated_env / "revoked").write_bytes(f"# the laptop stolen on 2026-12-01\r\n  {kid}  \r\n\n\t# {kept}\n"
                                           f"{other}".encode())
    assert load_keyring().revoked == {kid, other}


@pytest.mark.parametrize("what", ["junk private key", "folder named active", "active naming a path",
                                  "FIFO as the private key"])
def test_an_unreadable_signing_key_is_a_signing_key_error_when_signing_and_reads_still_work(
        isolated_env: Path, what: str) -> None:
    write_keypair(isolated_env)
    bad = _break_keyring(isolated_env, what)
    ring = load_keyring()  # reading needs only the public keys
    with pytest.raises(SigningKeyError, match=str(bad)):
        ring.seal({"seq": 1})


@pytest.mark.parametrize("what", [".pub", "revoked", "active", ".key"])
def test_a_file_of_the_keyring_folder_that_is_a_link_is_refused_naming_it_never_followed(
        isolated_env: Path, tmp_path: Path, what: str) -> None:
    """The keyring folder's files were read through a link: its mode and the folder's were checked, but the file the
    link leads to sits in a folder nobody checked (one others may write, who could then add a key of their own).
    The orchestrator never makes a link there; one found there is refused, never followed."""
    kid = write_keypair(isolated_env)
    elsewhere = tmp_path / "elsewhere"
    other = write_keypair(elsewhere, activate=False)
    name = {".pub": f"{other}.pub", "revoked": "revoked", "active": "active", ".key": f"{kid}.key"}[what]
    if what == "revoked":
        (elsewhere / name).write_text(f"{other}\n")
    elif what != ".pub":
        (isolated_env / name).rename(elsewhere / name)
    (isolated_env / name).symlink_to(elsewhere / name)
    with pytest.raises(SigningKeyError, match=f"{isolated_env / name} is a symbolic link"):
        load_keyring().ensure_signer()


@pytest.mark.parametrize("what", [".pub", "revoked", "active", ".key"])
def test_a_file_of_the_keyring_folder_that_is_a_link_to_nothing_is_refused_naming_it_never_replaced(
        isolated_env: Path, tmp_path: Path, what: str) -> None:
    """An ``active`` that was a link leading nowhere was read as no ``active`` at all: `keys list` said "none yet" and
    the next write made a new key active in its place. A link is refused wherever it leads."""
    kid = write_keypair(isolated_env)
    name = {".pub": "k-0123456789abcdef.pub", "revoked": "revoked", "active": "active", ".key": f"{kid}.key"}[what]
    if what in ("active", ".key"):
        (isolated_env / name).unlink()
    (isolated_env / name).symlink_to(tmp_path / "nowhere")
    with pytest.raises(SigningKeyError, match=f"{isolated_env / name} is a symbolic link.*leads nowhere: remove it"):
        load_keyring().ensure_signer()
    if what == "active":
        with pytest.raises(SigningKeyError, match=f"{isolated_env / name} is a symbolic link"):
            load_keyring().signing_key_id()  # what `keys list` shows as the key that will sign
    assert (isolated_env / name).is_symlink() and sorted(isolated_env.glob("*.key")) in (
        [isolated_env / f"{kid}.key"], [])  # no key made


def test_a_key_file_swapped_right_after_it_is_first_looked_at_is_never_read_in_place_of_the_one_checked(
        isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file's mode was checked by its path and the file then read again by its path: a file renamed over it in
    between (another key, one others may read) was read as if it had passed the check. It is opened once now, and
    checked and read through that one descriptor: whatever comes to the path after the first look is not read."""
    kid = write_keypair(isolated_env)
    swapped = tmp_path / "other" / f"{write_keypair(tmp_path / 'other', activate=False)}.key"
    swapped.chmod(0o644)  # readable by others: never to be read as a signing key
    key = str(isolated_env / f"{kid}.key")
    calls = {name: getattr(os, name) for name in ("stat", "lstat", "open")}

    def swapping(name: str):
        def call(path, *args, **kwargs):
            result = calls[name](path, *args, **kwargs)
            if os.fspath(path) == key and os.path.lexists(swapped):
                os.replace(swapped, key)  # right after the first look at the path, whichever it is
            return result
        return call

    for name in calls:
        monkeypatch.setattr(os, name, swapping(name))
    assert load_keyring().ensure_signer() == kid
    assert not swapped.exists(), "the file was swapped"


def test_a_signing_key_file_the_operator_names_through_a_link_is_read(isolated_env: Path, tmp_path: Path) -> None:
    """``ORCH_SIGNING_KEY_FILE`` is the operator's path, as ``BASE_PATH`` is: a link there (a mounted secret) is
    their choice and is followed, and what it leads to is checked as the file read (owner-only)."""
    kid = write_keypair(tmp_path / "secrets", activate=False)
    link = tmp_path / "signing.key"
    link.symlink_to(tmp_path / "secrets" / f"{kid}.key")
    env = {"ORCH_KEYRING_DIR": str(isolated_env), "ORCH_SIGNING_KEY_FILE": str(link)}
    assert load_keyring(env).ensure_signer() == kid
    (tmp_path / "secrets" / f"{kid}.key").chmod(0o640)
    with pytest.raises(SigningKeyError, match="readable by others"):
        load_keyring(env)


@pytest.mark.parametrize("what", ["keyring folder", "trusted keys folder", "public key", "revoked file", "active file"])
@pytest.mark.parametrize("mode", [0o020, 0o002], ids=["group", "others"])
def test_a_folder_or_file_that_decides_which_keys_are_trusted_or_which_signs_may_be_written_only_by_its_owner(
        isolated_env: Path, tmp_path: Path, what: str, mode: int) -> None:
    """Another user who may add a .pub (or rewrite one, or the revoked file) would make their forgeries verify; one
    who may rewrite ``active`` would pick the key that signs, say one revoked on the machines that verify, so that
    every event written from then on fails there (``active`` was checked for its owner only until 2026-12-03)."""
    from orchestrator.key_files import revoke

    trusted = tmp_path / "trusted"
    kid = write_keypair(isolated_env)
    revoke(write_keypair(trusted, activate=False), {"ORCH_KEYRING_DIR": str(trusted)})
    env = {"ORCH_KEYRING_DIR": str(isolated_env), "ORCH_TRUSTED_KEYS_DIR": str(trusted)}
    assert kid in load_keyring(env).trusted and load_keyring(env).ensure_signer() == kid
    path = {"keyring folder": isolated_env, "trusted keys folder": trusted, "public key": isolated_env / f"{kid}.pub",
            "revoked file": trusted / "revoked", "active file": isolated_env / "active"}[what]
    path.chmod(stat.S_IMODE(path.stat().st_mode) | mode)
    shared_with_a_group(path)
    harm = "pick which key signs" if what == "active file" else "make keys of their own trusted"
    with pytest.raises(SigningKeyError, match=f"{path} may be written by others.*{harm}.*chmod go-w {path}"):
        load_keyring(env).ensure_signer()
    if what == "active file":
        with pytest.raises(SigningKeyError, match=f"{path} may be written by others"):
            load_keyring(env).signing_key_id()  # what `keys list` shows as the key that will sign


def _keyring_with_every_key_file(isolated_env: Path, tmp_path: Path) -> tuple[str, dict[str, str], dict[str, Path]]:
    """A keyring folder with an active key, a trusted-keys folder with a revoked key; the key id, the environment
    that reads both, and each folder or file that decides which keys are trusted or which signs."""
    from orchestrator.key_files import revoke

    trusted = tmp_path / "trusted"
    kid = write_keypair(isolated_env)
    revoke(write_keypair(trusted, activate=False), {"ORCH_KEYRING_DIR": str(trusted)})
    env = {"ORCH_KEYRING_DIR": str(isolated_env), "ORCH_TRUSTED_KEYS_DIR": str(trusted)}
    paths = {"keyring folder": isolated_env, "trusted keys folder": trusted, "public key": isolated_env / f"{kid}.pub",
             "revoked file": trusted / "revoked", "active file": isolated_env / "active",
             "private key": isolated_env / f"{kid}.key"}
    return kid, env, paths


OTHER_UID = 12345  # no user of the test machine: the tests run as root, who may chown to it


@pytest.mark.parametrize("what", ["keyring folder", "trusted keys folder", "public key", "revoked file", "active file",
                                  "private key"])
def test_a_folder_or_file_of_the_keyring_owned_by_another_user_is_refused_naming_its_owner(
        isolated_env: Path, tmp_path: Path, what: str) -> None:
    """Its owner may rewrite it whatever its mode: add a key of their own, revoke one, or pick the key that signs (as
    ssh refuses key files and folders owned by neither the user nor root)."""
    kid, env, paths = _keyring_with_every_key_file(isolated_env, tmp_path)
    assert load_keyring(env).ensure_signer() == kid
    path = paths[what]
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(SigningKeyError, match=f"{path} is owned by uid {OTHER_UID}.*chown {os.geteuid()} {path}"):
        load_keyring(env).ensure_signer()


@pytest.mark.parametrize("euid", [OTHER_UID, 1000], ids=["owned by the user", "owned by root"])
def test_a_keyring_owned_by_the_user_or_by_root_is_read(
        isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int) -> None:
    kid, env, paths = _keyring_with_every_key_file(isolated_env, tmp_path)
    if euid == OTHER_UID:
        for path in paths.values():
            os.chown(path, OTHER_UID, -1)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert load_keyring(env).ensure_signer() == kid


@pytest.fixture
def fresh_folder_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders above a keyring are looked at once a process: a test that changes one after a load looks again
    (``look_again``)."""
    monkeypatch.setattr("orchestrator.key_paths._SAFE_PATHS", set())
    monkeypatch.setattr("orchestrator.key_paths._SAFE_FOLDERS", set())


def look_again() -> None:
    from orchestrator.key_paths import forget_checked_folders

    forget_checked_folders()


def _keyring_below(tmp_path: Path, above: Path, where: str) -> tuple[dict[str, str], Path]:
    """A keyring whose ``where`` (the keyring folder, the trusted-keys folder, the signing key file) lies in
    ``above``, the rest in the test's own folder; the environment and the path inside ``above``."""
    from orchestrator.key_files import revoke

    above.mkdir(parents=True, exist_ok=True)
    own = tmp_path / "own-keys"
    kid = write_keypair(own)
    env = {"ORCH_KEYRING_DIR": str(own)}
    if where == "keyring folder":
        write_keypair(above / "keys")
        env["ORCH_KEYRING_DIR"] = str(above / "keys")
        return env, above / "keys"
    if where == "trusted keys folder":
        revoke(write_keypair(above / "trusted", activate=False), {"ORCH_KEYRING_DIR": str(above / "trusted")})
        env["ORCH_TRUSTED_KEYS_DIR"] = str(above / "trusted")
        return env, above / "trusted"
    os.replace(own / f"{kid}.key", above / "signing.key")
    env["ORCH_SIGNING_KEY_FILE"] = str(above / "signing.key")
    return env, above / "signing.key"


WHERE = ["keyring folder", "trusted keys folder", "signing key file"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("mode", [0o775, 0o757], ids=["group", "others"])
def test_a_folder_above_the_keyring_that_others_may_write_is_refused_naming_it(
        tmp_path: Path, fresh_folder_checks: None, where: str, mode: int) -> None:
    """Whoever may write a folder above the keyring may rename the keyring folder (or key file) away and put one of
    their own in its place, whose keys are then trusted (as ssh checks every folder above ``authorized_keys``).
    The folders themselves were checked, never those above them, until 2026-12-03."""
    env, path = _keyring_below(tmp_path, tmp_path / "shared" / "deeper", where)
    shared = tmp_path / "shared"
    shared.chmod(mode)
    shared_with_a_group(shared)
    look_again()
    what = "trusted-keys folder" if where == "trusted keys folder" else where
    with pytest.raises(SigningKeyError, match=f"the folder {shared} above the {what} {path} may be written by "
                                              f"others.*chmod go-w {shared}"):
        load_keyring(env).ensure_signer(create=False)
    shared.chmod(0o755)
    look_again()
    assert load_keyring(env).ensure_signer(create=False)


@pytest.mark.parametrize("where", WHERE)
def test_a_folder_above_the_keyring_owned_by_another_user_is_refused_naming_its_owner(
        tmp_path: Path, fresh_folder_checks: None, where: str) -> None:
    """Its owner may rename what it holds whatever its mode (the tests run as root, who may give it away)."""
    env, path = _keyring_below(tmp_path, tmp_path / "theirs" / "deeper", where)
    os.chown(tmp_path / "theirs", OTHER_UID, -1)
    look_again()
    theirs = tmp_path / "theirs"
    with pytest.raises(SigningKeyError, match=f"the folder {theirs} above the .* {path} is owned by uid {OTHER_UID}.*"
                                              f"chown {os.geteuid()} {theirs}"):
        load_keyring(env).ensure_signer(create=False)


@pytest.mark.parametrize("where", WHERE)
def test_a_sticky_folder_above_the_keyring_owned_by_root_like_tmp_or_by_the_user_is_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_folder_checks: None, where: str) -> None:
    """Others may not rename or remove there what they do not own: /tmp itself (the test suite's keyrings lie
    below it), any root-owned folder with the sticky bit, and one the user owns (refused until 2026-12-03, though as
    safe for the user's own files); the same folder without it, or owned by another user (who may rename anything
    in it), is refused."""
    import tempfile

    in_tmp = Path(tempfile.mkdtemp(dir="/tmp"))  # its parent is /tmp itself, mode 1777, root's
    try:
        assert stat.S_IMODE(os.stat("/tmp").st_mode) & 0o1777 == 0o1777 and os.stat("/tmp").st_uid == 0
        env, _ = _keyring_below(tmp_path, in_tmp, where)
        assert load_keyring(env).ensure_signer(create=False)
    finally:
        shutil.rmtree(in_tmp)
    env, path = _keyring_below(tmp_path, tmp_path / "sticky" / "deeper", where)
    (tmp_path / "sticky").chmod(0o1777)
    look_again()
    assert load_keyring(env).ensure_signer(create=False)
    (tmp_path / "sticky").chmod(0o777)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'sticky'} above .* may be written by others"):
        load_keyring(env)
    (tmp_path / "sticky").chmod(0o1777)
    os.chown(tmp_path / "sticky", OTHER_UID, -1)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'sticky'} above .* is owned by uid {OTHER_UID}"):
        load_keyring(env)
    for path in [tmp_path / "own-keys", *(tmp_path / "own-keys").iterdir(), *(tmp_path / "sticky").rglob("*")]:
        os.chown(path, OTHER_UID, -1, follow_symlinks=False)
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)  # the user owns the sticky folder and everything below
    look_again()
    assert load_keyring(env).ensure_signer(create=False)


@pytest.mark.parametrize("owner", ["root", "the user"])
@pytest.mark.parametrize("variable", ["ORCH_KEYRING_DIR", "ORCH_TRUSTED_KEYS_DIR"])
def test_a_sticky_folder_is_never_a_keyring_folder_itself_and_is_left_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_folder_checks: None, owner: str, variable: str) -> None:
    """Above a keyring a sticky folder is safe; as the keyring folder itself it is not: others may add files to it
    (a ``.pub`` of their own, an ``active`` when there is none). Every command refused it already, but with `chmod go-w`
    (of /tmp, say) as the fix, and writing a key there made it owner-only (``chmod 700``, /tmp too); it is refused
    now, said to be shared, and left as it is, with no key written in it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = {"ORCH_KEYRING_DIR": str(tmp_path / "keys"), variable: str(shared)}
    if owner == "the user":
        os.chown(shared, OTHER_UID, -1)
        monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    what = "trusted-keys folder" if variable == "ORCH_TRUSTED_KEYS_DIR" else "keyring folder"  # the message names it
    shared_folder = f"{what} {shared} is a shared folder \\(sticky, as /tmp\\) others may add files to.*a folder of their own"
    with pytest.raises(SigningKeyError, match=shared_folder):
        load_keyring(env)
    if variable == "ORCH_KEYRING_DIR":
        with pytest.raises(SigningKeyError, match=shared_folder):
            write_keypair(shared)  # as `keys rotate` and the first write do
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and not list(shared.iterdir())


def test_writing_a_key_into_a_keyring_folder_that_was_there_leaves_its_mode(tmp_path: Path) -> None:
    """A folder made for a keyring is made owner-only whatever the umask; one that was there (a shared one the
    checks accept, or one of the system's named by mistake, run as root) is not ``chmod``-ed."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    keys.chmod(0o755)
    write_keypair(keys)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o755
    old = os.umask(0o077 | 0o200)  # not even its owner could write a folder made with it
    try:
        write_keypair(tmp_path / "new" / "keys")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "new", tmp_path / "new" / "keys")} == {0o700}


def test_folders_above_the_keyring_are_checked_up_to_the_home_folder_when_it_lies_inside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_folder_checks: None) -> None:
    """The home folder is the user's: what lies above it is the system's (a shared ``/home`` of another layout)
    and is not the keyring's concern; the home folder itself is checked, as ssh does."""
    home = tmp_path / "shared" / "home"
    env, _ = _keyring_below(tmp_path, home / ".config" / "jsonl-orchestrator", "keyring folder")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "shared").chmod(0o777)
    assert load_keyring(env).ensure_signer(create=False)
    home.chmod(0o775)
    shared_with_a_group(home)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {home} above .* may be written by others"):
        load_keyring(env)


def test_a_link_above_the_keyring_is_checked_where_it_leads(tmp_path: Path, fresh_folder_checks: None) -> None:
    """A link's own mode means nothing; what lies where it leads, and above that, is what the keyring is read
    from. The link's owner is checked (in a sticky folder its owner may replace it)."""
    env, path = _keyring_below(tmp_path, tmp_path / "shared" / "real", "keyring folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "link").symlink_to(tmp_path / "shared" / "real")
    env["ORCH_KEYRING_DIR"] = str(tmp_path / "mine" / "link" / "keys")
    assert load_keyring(env).ensure_signer(create=False)
    (tmp_path / "shared").chmod(0o777)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'shared'} above the keyring folder "
                                              f"{tmp_path / 'mine' / 'link' / 'keys'} may be written by others"):
        load_keyring(env)
    env["ORCH_KEYRING_DIR"] = str(tmp_path / "mine" / "keys")  # the keyring folder itself a link
    (tmp_path / "mine" / "keys").symlink_to(path)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'shared'} above the keyring folder "
                                              f"{tmp_path / 'mine' / 'keys'} may be written by others"):
        load_keyring(env)
    (tmp_path / "shared").chmod(0o755)
    os.chown(tmp_path / "mine" / "keys", OTHER_UID, -1, follow_symlinks=False)
    look_again()
    with pytest.raises(SigningKeyError, match=f"{tmp_path / 'mine' / 'keys'} is a symbolic link owned by uid "
                                              f"{OTHER_UID}.*chown -h {os.geteuid()} {tmp_path / 'mine' / 'keys'}"):
        load_keyring(env)


VARIABLE = {"keyring folder": "ORCH_KEYRING_DIR", "trusted keys folder": "ORCH_TRUSTED_KEYS_DIR",
            "signing key file": "ORCH_SIGNING_KEY_FILE"}


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("link", ["the path itself", "a folder on its way"])
def test_each_link_of_a_chain_of_links_to_the_keyring_has_its_folder_and_owner_checked(
        tmp_path: Path, fresh_folder_checks: None, where: str, link: str) -> None:
    """A path that leads through a link to a link: only the first link's folders and the last one's target's were
    checked (``realpath`` jumped to the end), never the folder of a link in between, whose writers may point it at
    another keyring or key (one of this user's, revoked elsewhere, say); nor that link's owner. Links are followed
    one at a time now, as the kernel follows them (the second link here leads on by a relative path, ``..``)."""
    env, path = _keyring_below(tmp_path, tmp_path / "real", where)
    (tmp_path / "mine").mkdir()
    (tmp_path / "shared").mkdir()
    middle = tmp_path / "shared" / "middle"
    if link == "the path itself":  # mine/first -> shared/middle -> ../real/<path>
        first = given = tmp_path / "mine" / "first"
        middle.symlink_to(os.path.join("..", "real", path.name))
    else:  # mine/first/<name>, mine/first -> shared/middle -> ../real
        first, given = tmp_path / "mine" / "first", tmp_path / "mine" / "first" / path.name
        middle.symlink_to(os.path.join("..", "real"))
    first.symlink_to(middle)
    env[VARIABLE[where]] = str(given)
    what = "trusted-keys folder" if where == "trusted keys folder" else where
    assert load_keyring(env).ensure_signer(create=False)
    (tmp_path / "shared").chmod(0o757)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'shared'} above the {what} {given} may be "
                                              "written by others"):
        load_keyring(env).ensure_signer(create=False)
    (tmp_path / "shared").chmod(0o1777)  # sticky: others may not replace the link, unless they own it
    look_again()
    assert load_keyring(env).ensure_signer(create=False)
    os.chown(middle, OTHER_UID, -1, follow_symlinks=False)
    look_again()
    with pytest.raises(SigningKeyError, match=f"the symbolic link {middle} on the way to the {what} {given} is owned "
                                              f"by uid {OTHER_UID}.*chown -h {os.geteuid()} {middle}"):
        load_keyring(env).ensure_signer(create=False)


@pytest.mark.parametrize("where", WHERE)
def test_a_way_through_more_symbolic_links_than_the_kernel_follows_is_refused(
        tmp_path: Path, fresh_folder_checks: None, where: str) -> None:
    """Links are followed one at a time: a loop, or a chain longer than the kernel's 40, ends in a clear refusal
    naming the path, not in endless work nor in a read the kernel would refuse (ELOOP)."""
    from orchestrator.key_paths import MAX_LINKS

    env, path = _keyring_below(tmp_path, tmp_path / "real", where)
    (tmp_path / "links").mkdir()
    links = [tmp_path / "links" / str(i) for i in range(MAX_LINKS + 1)]
    for here, there in zip(links, [*links[1:], path]):
        here.symlink_to(there)
    env[VARIABLE[where]] = str(links[1])  # as many as the kernel follows
    assert load_keyring(env).ensure_signer(create=False)
    env[VARIABLE[where]] = str(links[0])
    with pytest.raises(SigningKeyError, match=f"{links[0]} leads through more than {MAX_LINKS} symbolic links"):
        load_keyring(env)
    (tmp_path / "links" / "loop").symlink_to(tmp_path / "links" / "loop")
    env[VARIABLE[where]] = str(tmp_path / "links" / "loop")
    with pytest.raises(SigningKeyError, match="more than 40 symbolic links"):
        load_keyring(env)


@pytest.mark.parametrize("home", ["", "relative/dir"], ids=["empty", "relative"])
def test_an_empty_or_relative_home_is_no_home_the_checks_go_up_to_root_and_there_is_no_default_keyring(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_folder_checks: None, home: str) -> None:
    """``expanduser`` makes an empty HOME ``/`` and keeps a relative one relative: the default keyring folder was
    ``/.config/...``, or a folder of whichever folder a command ran in (another keyring in each). Such a HOME is
    no home now: the default is refused, naming HOME and ``ORCH_KEYRING_DIR``, and the checks of the folders above a
    keyring go up to ``/``, never stopping at a folder named after the current one."""
    from orchestrator.key_files import keyring_dir

    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("ORCH_KEYRING_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SigningKeyError, match=f"no home folder .*HOME is {home!r}, not an absolute path.*"
                                              "ORCH_KEYRING_DIR"):
        keyring_dir()
    with pytest.raises(SigningKeyError, match="no home folder"):
        load_keyring({"HOME": home})
    assert not list(tmp_path.iterdir())  # nothing made in the current folder
    env, _ = _keyring_below(tmp_path, tmp_path / "shared" / "relative" / "dir" / "keys", "keyring folder")
    monkeypatch.chdir(tmp_path / "shared")
    assert load_keyring(env).ensure_signer(create=False)
    (tmp_path / "shared").chmod(0o777)  # above "relative/dir" of the current folder: checked all the same
    look_again()
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'shared'} above .* may be written by others"):
        load_keyring(env)


def test_the_default_keyring_folder_never_lies_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG specification says; with HOME unset the user database
    gives the home folder (as ``expanduser``), and a uid it does not know (a container's) has none."""
    import pwd

    from orchestrator.key_files import default_keyring_dir

    keys = Path("jsonl-orchestrator", "keys")
    assert default_keyring_dir({"HOME": "/home/me", "XDG_CONFIG_HOME": "cfg"}) == Path("/home/me/.config") / keys
    assert default_keyring_dir({"HOME": "/home/me", "XDG_CONFIG_HOME": "/etc/xdg"}) == Path("/etc/xdg") / keys
    assert default_keyring_dir({}) == Path(pwd.getpwuid(os.geteuid()).pw_dir, ".config") / keys

    def unknown(uid: int):  # noqa: ANN202
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    with pytest.raises(SigningKeyError, match=f"HOME is not set, and the user database knows no uid {os.geteuid()}"):
        default_keyring_dir({})


@pytest.mark.parametrize("where", ["keyring folder", "trusted keys folder"])
def test_a_long_running_process_checks_the_folders_above_again_before_it_reads_the_keyring_again(
        tmp_path: Path, fresh_folder_checks: None, where: str) -> None:
    """A worker reads the keyring folders again once a minute (``Keyring.reload``). A folder above made writable by
    others since it started was seen only at its restart: whoever could write it could put a folder of their own
    in the keyring's place, whose keys the next reload trusted. It is checked again before each reload now (a few
    ``lstat`` a minute); the reload stops there, and the keys read before stay (``recovery.reload_keys`` logs it)."""
    env, path = _keyring_below(tmp_path, tmp_path / "shared" / "deeper", where)
    ring = load_keyring(env)
    assert ring.reload() is False
    theirs = write_keypair(tmp_path / "theirs", activate=False)
    os.replace(tmp_path / "theirs" / f"{theirs}.pub", path / f"{theirs}.pub")  # as if the folder were swapped
    (tmp_path / "shared").chmod(0o757)
    what = "trusted-keys folder" if where == "trusted keys folder" else where
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'shared'} above the {what} {path} may be "
                                              "written by others"):
        ring.reload()
    assert theirs not in ring.trusted


def test_a_signing_key_loaded_when_first_used_has_the_folders_above_its_keyring_checked_again(
        tmp_path: Path, fresh_folder_checks: None) -> None:
    """The keyring folder's active key is read when something is first signed, maybe hours after a worker started
    and checked the folders: they are checked again then."""
    env, _ = _keyring_below(tmp_path, tmp_path / "shared" / "deeper", "keyring folder")
    ring = load_keyring(env)
    (tmp_path / "shared").chmod(0o757)
    with pytest.raises(SigningKeyError, match=f"the folder {tmp_path / 'shared'} above the keyring folder"):
        ring.ensure_signer(create=False)


def test_each_folder_above_the_keyring_is_looked_at_once_a_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_folder_checks: None) -> None:
    """Every command's start reads the keyring (``status`` has a 150 ms target): one ``lstat`` of each folder above
    it, and none the next time."""
    env, path = _keyring_below(tmp_path, tmp_path / "a" / "b", "trusted keys folder")
    seen: list[str] = []
    real = os.lstat

    def counting(p, *args, **kwargs):
        seen.append(os.fspath(p))
        return real(p, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", counting)
    look_again()  # those its setting up looked at
    load_keyring(env)
    above = [str(f) for f in path.parents]
    assert all(seen.count(f) == 1 for f in above), seen
    seen.clear()
    load_keyring(env)
    assert not set(seen) & set(above)


@pytest.fixture
def user_databases(monkeypatch: pytest.MonkeyPatch):
    """Stand-ins for the group and user databases: ``groups`` gid -> member names, ``users`` (name, uid, primary
    gid). Whether a group is a user's private one is remembered once a process: forgotten for each test."""
    import grp
    import pwd
    from types import SimpleNamespace

    from orchestrator import key_paths

    data = SimpleNamespace(groups={}, users=[("root", 0, 0)])
    monkeypatch.setattr(key_paths, "_PRIVATE_GROUPS", {})

    def getgrgid(gid: int):  # noqa: ANN202
        if gid not in data.groups:
            raise KeyError(gid)
        return SimpleNamespace(gr_gid=gid, gr_mem=list(data.groups[gid]))

    def user(name: str, uid: int, gid: int):  # noqa: ANN202
        return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid)

    def getpwuid(uid: int):  # noqa: ANN202
        for name, u, gid in data.users:
            if u == uid:
                return user(name, u, gid)
        raise KeyError(uid)

    monkeypatch.setattr(grp, "getgrgid", getgrgid)
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(pwd, "getpwall", lambda: [user(*entry) for entry in data.users])
    return data


@pytest.mark.parametrize("members, users, private", [
    ([], [("me", 1000, 777)], True),  # the user's primary group, nobody else in it (a user private group)
    (["me"], [("me", 1000, 1000)], True),  # named as its one member
    (["me", "them"], [("me", 1000, 777)], False),  # another member named
    ([], [("me", 1000, 777), ("them", 1001, 777)], False),  # another user's primary group too
    ([], [("me", 1000, 1000)], False),  # nobody in it: a group of setgid programs, say
], ids=["primary", "named", "another-named", "another-primary", "empty"])
def test_a_group_counts_as_the_owner_only_when_its_one_member_is_the_user(
        user_databases, members: list[str], users: list[tuple[str, int, int]], private: bool) -> None:
    """Debian and Ubuntu give each user a group of their own, and a umask of 002 there makes new folders (``~/.config``
    say) group-writable: refusing those would refuse a plain user's keyring. Debian's OpenSSH accepts such a group
    when its only member is the owner, and so do the keyring's checks; any other group-writable folder is refused."""
    from orchestrator.key_paths import others_may_write

    user_databases.groups[777] = members
    user_databases.users = users
    status = os.stat_result((stat.S_IFDIR | 0o775, 0, 0, 1, 1000, 777, 0, 0, 0, 0))
    assert others_may_write(status) is not private
    assert others_may_write(os.stat_result((stat.S_IFDIR | 0o757, 0, 0, 1, 1000, 777, 0, 0, 0, 0)))  # others: always
    assert not others_may_write(os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 1, 1000, 777, 0, 0, 0, 0)))
    assert others_may_write(os.stat_result((stat.S_IFDIR | 0o775, 0, 0, 1, 1000, 4242, 0, 0, 0, 0)))  # unknown gid


def test_a_keyring_below_a_folder_writable_by_the_users_private_group_is_read(
        tmp_path: Path, fresh_folder_checks: None, user_databases) -> None:
    """The folder above (``~/.config`` made under a umask of 002), the keyring folder and its key files may be
    group-writable when the group is the user's own; another group's write bit is refused, as before."""
    user_databases.groups[4242] = []
    user_databases.users = [("root", 0, 0), ("me", os.geteuid(), 4242)] if os.geteuid() else [("root", 0, 4242)]
    env, path = _keyring_below(tmp_path, tmp_path / "config" / "deeper", "keyring folder")
    for folder in (tmp_path / "config", path):
        os.chown(folder, -1, 4242)
        folder.chmod(0o775)
    (path / "active").chmod(0o664)
    os.chown(path / "active", -1, 4242)
    look_again()
    assert load_keyring(env).ensure_signer(create=False)
    user_databases.users.append(("them", OTHER_UID, 4242))
    from orchestrator import key_paths

    key_paths._PRIVATE_GROUPS.clear()
    look_again()
    with pytest.raises(SigningKeyError, match="may be written by others"):
        load_keyring(env).ensure_signer(create=False)


def test_a_keyring_folder_made_under_a_umask_of_002_is_accepted(tmp_path: Path, fresh_folder_checks: None) -> None:
    """``mkdir -p`` made the folders above a new keyring folder group-writable under such a umask (a user's private
    group): the next command refused the keyring it had just made. They are made owner-only."""
    from orchestrator.key_files import revoke

    keys = tmp_path / "config" / "jsonl-orchestrator" / "keys"
    old = os.umask(0o002)
    try:
        kid = write_keypair(keys)
        elsewhere = {"ORCH_KEYRING_DIR": str(tmp_path / "elsewhere" / "keys"), "ORCH_TRUSTED_KEYS_DIR": str(keys)}
        revoke(kid, elsewhere)  # `keys revoke` makes the keyring folder, when it is not there yet
    finally:
        os.umask(old)
    assert load_keyring({"ORCH_KEYRING_DIR": str(keys)}).ensure_signer(create=False) == kid
    assert load_keyring(elsewhere).revoked == {kid}
    for folder in (tmp_path / "config", keys.parent, tmp_path / "elsewhere"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_key_files_are_written_owner_writable_whatever_the_umask(isolated_env: Path) -> None:
    from orchestrator.key_files import revoke

    old = os.umask(0o002)  # a user's private group: new files are group-writable
    try:
        kid = write_keypair(isolated_env)
        write_keypair(isolated_env)
        revoke(kid)
    finally:
        os.umask(old)
    assert kid in load_keyring().revoked
    assert {f.name: stat.S_IMODE(f.stat().st_mode) & 0o022 for f in isolated_env.iterdir()} == {
        f.name: 0 for f in isolated_env.iterdir()}


def test_a_trusted_keys_folder_that_is_a_file_is_a_signing_key_error(tmp_path: Path) -> None:
    (tmp_path / "trusted").write_text("not a folder")
    with pytest.raises(SigningKeyError, match="not a folder"):
        load_keyring({"ORCH_KEYRING_DIR": str(tmp_path / "keys"), "ORCH_TRUSTED_KEYS_DIR": str(tmp_path / "trusted")})


def test_a_trusted_keys_folder_that_does_not_exist_is_a_signing_key_error_naming_the_variable(tmp_path: Path) -> None:
    """A mistyped folder read as an empty one made every event of the machines it names UNKNOWN_KEY; the keyring
    folder itself may be missing (the first write creates it), and a running worker's reload still tolerates it."""
    env = {"ORCH_KEYRING_DIR": str(tmp_path / "keys"), "ORCH_TRUSTED_KEYS_DIR": str(tmp_path / "trusted")}
    with pytest.raises(SigningKeyError, match=f"ORCH_TRUSTED_KEYS_DIR names {tmp_path / 'trusted'}, which does not"):
        load_keyring(env)
    other = write_keypair(tmp_path / "trusted", activate=False)
    ring = load_keyring(env)  # the keyring folder is not there yet: no key, no error
    assert set(ring.trusted) == {other}
    shutil.rmtree(tmp_path / "trusted")
    assert ring.reload() is False  # gone since: the keys already read stay, as for a key removed


def test_a_keyring_inside_the_store_is_never_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import Orchestrator

    monkeypatch.setenv("ORCH_KEYRING_DIR", str(tmp_path / "p" / ".orchestrator" / "keys"))
    with pytest.raises(ConfigError, match="inside the store"):
        Orchestrator(base_path=tmp_path, project_id="p")


@pytest.mark.parametrize("where", ["trusted-keys folder", "trusted-keys folder, relative", "keyring folder beside an "
                                   "environment key", "keyring folder, relative from inside the store",
                                   "signing key file"])
def test_no_folder_or_file_the_keyring_reads_keys_from_may_lie_inside_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Each one's keys are trusted, so an attacker who rewrites the events could re-sign them with a key put there."""
    from orchestrator import Orchestrator

    store = tmp_path / "p" / ".orchestrator"
    (store / "keys").mkdir(parents=True)
    attacker = store / "keys" / f"{write_keypair(store / 'keys')}.key"
    monkeypatch.setenv("ORCH_KEYRING_DIR", str(tmp_path / "outside"))
    if where == "trusted-keys folder":
        monkeypatch.setenv("ORCH_TRUSTED_KEYS_DIR", str(store / "keys"))
    elif where == "trusted-keys folder, relative":
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("ORCH_TRUSTED_KEYS_DIR", os.path.join("p", ".orchestrator", "keys"))
    elif where.startswith("keyring folder beside"):
        monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())  # the folder's .pub files are trusted all the same
        monkeypatch.setenv("ORCH_KEYRING_DIR", str(store / "keys"))
    elif where.startswith("keyring folder, relative"):
        monkeypatch.chdir(store)
        monkeypatch.setenv("ORCH_KEYRING_DIR", "keys")
    else:
        monkeypatch.setenv("ORCH_SIGNING_KEY_FILE", str(attacker))
    with pytest.raises(ConfigError, match="inside the store"):
        Orchestrator(base_path=tmp_path, project_id="p")
    monkeypatch.delenv("ORCH_TRUSTED_KEYS_DIR", raising=False)
    (tmp_path / "trusted").mkdir()  # a folder that does not exist is a SigningKeyError of its own
    monkeypatch.setenv("ORCH_TRUSTED_KEYS_DIR", str(tmp_path / "trusted"))  # outside: accepted
    monkeypatch.delenv("ORCH_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("ORCH_KEYRING_DIR", str(tmp_path / "outside"))
    Orchestrator(base_path=tmp_path, project_id="p")


def test_signatures_are_the_same_ed25519_bytes_as_openssl_makes_and_checks() -> None:
    """Signing runs on libsodium (speed); a line signed by either library verifies with the other."""
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from orchestrator.signing import Keyring, _b64, unb64, canonical

    private = Ed25519PrivateKey.generate()
    ring = Keyring()
    ring.add_signer(private)
    record = {"job_id": "J", "seq": 1, "data": {"x": "é"}}
    line = json.loads(ring.seal(dict(record)))
    body = {k: v for k, v in line.items() if k != "sig"}
    private.public_key().verify(unb64(line["sig"]), canonical(body))  # OpenSSL accepts libsodium's
    assert line["sig"] == _b64(private.sign(canonical(body)))  # deterministic: the very same bytes
    forged = dict(body, sig=_b64(private.sign(canonical(dict(body, seq=2)))))
    assert ring.check(forged) == "SIGNATURE_INVALID"
    assert ring.check(dict(body, sig=line["sig"][:-4])) == "SIGNATURE_INVALID"  # a short signature
    assert ring.check(dict(body, sig="%%%")) == "SIGNATURE_INVALID"


def _json_values():  # noqa: ANN202 - a hypothesis strategy
    """Any JSON value: scalars (no NaN), and lists and objects of them, nested."""
    from hypothesis import strategies as st

    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                        | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=4), max_leaves=12)


def test_canonical_gives_the_same_bytes_and_errors_as_json_dumps_with_its_options() -> None:
    """``canonical`` builds the C encoder ``json.dumps`` uses; it must be ``dumps`` byte for byte."""
    import json

    from hypothesis import given, settings

    def dumps(obj):  # noqa: ANN001, ANN202
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    @settings(max_examples=300, deadline=None)
    @given(_json_values())
    def same(value) -> None:  # noqa: ANN001
        assert canonical(value) == dumps(value)

    same()
    circular: list = []
    circular.append(circular)
    for bad, error in ((float("nan"), ValueError), ({"x": float("inf")}, ValueError), ({"x": object()}, TypeError),
                       ({1: "int key"}, None), (circular, ValueError), ({"s": {1, 2}}, TypeError),
                       ({(1, 2): "tuple key"}, TypeError)):
        if error is None:
            assert canonical(bad) == dumps(bad)
            continue
        with pytest.raises(error):
            canonical(bad)


def test_a_line_and_its_signed_body_are_canonical_with_and_without_sig_from_one_encoding(keyring: Keyring) -> None:
    """``line_and_body`` encodes the keys on either side of ``"sig"`` once and joins them with and without the
    ``sig`` pair: it must give ``canonical`` of the record and of the record without ``sig``, byte for byte, for
    records with keys on one side, on both, on neither, and with or without a ``sig`` of any value; ``seal``
    signs the second and writes the first."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from orchestrator.signing import line_and_body

    values = st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.lists(st.integers(), max_size=2)
    keys = st.sampled_from(["", "a", "data", "kid", "prev", "seq", "si", "sif", "sig", "sig\x00", "sigg", "sih",
                            "ts", "type", "v", "\u00e9", "Z"]) | st.text(max_size=4)

    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(keys, values, max_size=8))
    def same(record) -> None:  # noqa: ANN001
        line, body = line_and_body(record)
        assert line == canonical(record)
        assert body == canonical({k: v for k, v in record.items() if k != "sig"})

    same()
    with pytest.raises(ValueError):
        line_and_body({"data": float("nan"), "sig": "x"})
    with pytest.raises(ValueError):
        line_and_body({"ts": float("inf")})
    sealed = keyring.seal({"seq": 1, "data": {"x": "\u00e9"}, "v": 1, "ts": "t"})
    rec = json.loads(sealed)
    assert sealed == canonical(rec) and keyring.check(rec) is None
    assert keyring.check(rec, line_and_body(rec)[1]) is None
    assert keyring.check(rec, line_and_body({**rec, "seq": 2})[1]) == "SIGNATURE_INVALID"


def test_a_line_is_parsed_as_json_loads_parses_its_utf8_and_bytes_of_another_encoding_are_refused() -> None:
    """``parse_line`` is ``json.loads`` for the UTF-8 this product writes; what ``json.loads`` of bytes would also
    take (UTF-16, a BOM, an encoded surrogate), no canonical line holds: refused with a ``ValueError``."""
    import json

    from hypothesis import given, settings

    from orchestrator.signing import parse_line

    @settings(max_examples=300, deadline=None)
    @given(_json_values())
    def same(value) -> None:  # noqa: ANN001
        line = canonical(value)
        assert parse_line(line) == json.loads(line)

    same()
    line = canonical({"a": "\u00e9", "n": [1, 2.5]})
    for other in (line.decode().encode("utf-16"), b"\xef\xbb\xbf" + line, b'{"a":"\xed\xa0\x80"}'):
        json.loads(other)  # taken by json.loads
        with pytest.raises(ValueError):
            parse_line(other)
    for bad, error in ((b"{", ValueError), (b"[" * 100_000 + b"]" * 100_000, RecursionError), (b"\xff", ValueError)):
        with pytest.raises(error):
            parse_line(bad)


def test_key_files_read_without_cryptography_give_the_keys_cryptography_reads(tmp_path: Path) -> None:
    """Key files are read by taking the fixed RFC 8410 encoding apart (``cryptography`` costs 10-30 ms to
    import); for every key ``write_keypair`` writes, the raw bytes are the ones ``cryptography`` reads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from orchestrator.key_files import (_PKCS8_PREFIX, _SPKI_PREFIX, _private_from_pem_file, _public_from_pem,
                                        _raw_from_pem)
    from orchestrator.signing import key_id

    for i in range(20):
        folder = tmp_path / f"k{i}"
        kid = write_keypair(folder)
        private_pem, public_pem = (folder / f"{kid}.key").read_bytes(), (folder / f"{kid}.pub").read_bytes()
        assert _raw_from_pem(private_pem, b"PRIVATE KEY", _PKCS8_PREFIX) is not None  # the fast path is taken
        assert _raw_from_pem(public_pem, b"PUBLIC KEY", _SPKI_PREFIX) is not None
        theirs = serialization.load_pem_private_key(private_pem, password=None)
        assert _private_from_pem_file(folder / f"{kid}.key") == theirs.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        raw_public = theirs.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert _public_from_pem(public_pem, folder) == raw_public and key_id(raw_public) == kid
    # a key file the fixed form does not match (text before the block, as `openssl pkcs12` writes) is read by
    # cryptography; a file neither can read is refused as a signing-key error, never misread
    other = Ed25519PrivateKey.generate()
    seed = other.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    for name, data in (("annotated.key", b"Bag Attributes\n  friendlyName: ops\n" + pem),
                       ("openssh.key", other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))):
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        if name == "annotated.key":
            assert _raw_from_pem(data, b"PRIVATE KEY", _PKCS8_PREFIX) is None and _private_from_pem_file(path) == seed
        else:
            with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
                _private_from_pem_file(path)
    # an X25519 key has the same length and layout but another algorithm: never read as an Ed25519 seed
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    x25519 = X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption())
    path = tmp_path / "x25519.key"
    path.write_bytes(x25519)
    path.chmod(0o600)
    assert _raw_from_pem(x25519, b"PRIVATE KEY", _PKCS8_PREFIX) is None
    with pytest.raises(SigningKeyError, match="not an Ed25519 private key"):
        _private_from_pem_file(path)
    # a truncated, an extended or a foreign block is not taken apart by hand
    good = (tmp_path / "k0").glob("*.pub").__next__().read_bytes()
    lines = good.strip().split(b"\n")
    assert _raw_from_pem(good.replace(b"PUBLIC KEY", b"PRIVATE KEY"), b"PRIVATE KEY", _PKCS8_PREFIX) is None
    assert _raw_from_pem(b"\n".join([lines[0], lines[1][:-4], lines[-1]]), b"PUBLIC KEY", _SPKI_PREFIX) is None


def test_a_status_reader_never_imports_cryptography(tmp_path: Path) -> None:
    """Reading and verifying a job, as ``status`` does, takes no ``cryptography`` import (10-30 ms)."""
    import subprocess
    import sys

    folder = tmp_path / "keys"
    write_keypair(folder)
    code = ("import sys; from orchestrator.key_files import load_keyring; ring = load_keyring(); "
            "line = ring.seal({'seq': 1}); import json; assert ring.check(json.loads(line)) is None; "
            "print(sorted(m for m in sys.modules if m.startswith('cryptography')))")
    env = {**os.environ, "ORCH_KEYRING_DIR": str(folder)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_read_signs_only_with_a_key_it_has_and_a_later_write_still_creates_the_first_key(
        isolated_env: Path, capsys) -> None:
    ring = load_keyring()
    with pytest.raises(SigningKeyError, match="never creates one.*keys rotate"):
        ring.ensure_signer(create=False)
    assert not isolated_env.exists(), "a read created a key (or its folder)"
    ring.seal({"seq": 1})  # a write: the folder's first key
    assert "generated signing key" in capsys.readouterr().err
    assert ring.ensure_signer(create=False) == ring.signer_id
    assert load_keyring().ensure_signer(create=False) == ring.signer_id  # another process finds it


def test_an_encoded_value_is_written_as_its_bytes_wherever_it_sits_as_it_would_be_encoded() -> None:
    """``Encoded(value, canonical(value))`` anywhere in a structure (several, nested, at its top, with or without the
    C encoder): ``canonical`` gives the bytes of the structure holding the values themselves."""
    from unittest import mock

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from orchestrator import signing
    from orchestrator.signing import Encoded

    def wrapped(value):  # noqa: ANN001, ANN202
        return Encoded(value, canonical(value))

    @settings(max_examples=300, deadline=None)
    @given(_json_values(), _json_values(), st.text(max_size=4))
    def same(value, other, key) -> None:  # noqa: ANN001
        plain = {"data": {"input": value, key: [other, value]}, "z": other}
        spliced = {"data": {"input": wrapped(value), key: [wrapped(other), value]}, "z": wrapped(other)}
        assert canonical(spliced) == canonical(plain)
        assert canonical(wrapped(value)) == canonical(value)
        with mock.patch.object(signing, "_make_encoder", None):  # json.dumps: each encoded again, as its value
            assert canonical(spliced) == canonical(plain)

    same()


def test_a_value_holding_the_random_text_that_marks_an_encoded_value_is_refused_not_written_wrong(monkeypatch) -> None:
    from orchestrator import signing
    from orchestrator.signing import Encoded

    monkeypatch.setattr(signing.os, "urandom", lambda n: b"\x01" * n)  # the text a value could only hold by chance
    mark = (b"\x01" * 16).hex()
    with pytest.raises(AssertionError):
        canonical({"a": Encoded([1], b"[1]"), "b": mark})
    assert canonical({"a": Encoded([1], b"[1]"), "b": mark + "x"}) == canonical({"a": [1], "b": mark + "x"})
