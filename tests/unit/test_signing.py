"""Signatures, canonical form and the keyring: where keys come from and which are trusted."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, SigningKeyError
from orchestrator.signing import Keyring, canonical, load_keyring, new_seed, write_keypair


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


def test_a_keyring_inside_the_store_is_never_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import Orchestrator

    monkeypatch.setenv("ORCH_KEYRING_DIR", str(tmp_path / "p" / ".orchestrator" / "keys"))
    with pytest.raises(ConfigError, match="inside the store"):
        Orchestrator(base_path=tmp_path, project_id="p")


def test_signatures_are_the_same_ed25519_bytes_as_openssl_makes_and_checks() -> None:
    """Signing runs on libsodium (speed); a line signed by either library verifies with the other."""
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from orchestrator.signing import Keyring, _b64, _unb64, canonical

    private = Ed25519PrivateKey.generate()
    ring = Keyring()
    ring.add_signer(private)
    record = {"job_id": "J", "seq": 1, "data": {"x": "é"}}
    line = json.loads(ring.seal(dict(record)))
    body = {k: v for k, v in line.items() if k != "sig"}
    private.public_key().verify(_unb64(line["sig"]), canonical(body))  # OpenSSL accepts libsodium's
    assert line["sig"] == _b64(private.sign(canonical(body)))  # deterministic: the very same bytes
    forged = dict(body, sig=_b64(private.sign(canonical(dict(body, seq=2)))))
    assert ring.check(forged) == "SIGNATURE_INVALID"
    assert ring.check(dict(body, sig=line["sig"][:-4])) == "SIGNATURE_INVALID"  # a short signature
    assert ring.check(dict(body, sig="%%%")) == "SIGNATURE_INVALID"


def test_canonical_gives_the_same_bytes_and_errors_as_json_dumps_with_its_options() -> None:
    """``canonical`` builds the C encoder ``json.dumps`` uses; it must be ``dumps`` byte for byte."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    def dumps(obj):  # noqa: ANN001, ANN202
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                          | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                      max_size=4), max_leaves=12)

    @settings(max_examples=300, deadline=None)
    @given(values)
    def same(value) -> None:  # noqa: ANN001
        assert canonical(value) == dumps(value)

    same()
    circular: list = []
    circular.append(circular)
    for bad, error in ((float("nan"), ValueError), ({"x": float("inf")}, ValueError), ({"x": object()}, TypeError),
                       ({1: "int key"}, None), (circular, ValueError), ({"s": {1, 2}}, TypeError)):
        if error is None:
            assert canonical(bad) == dumps(bad)
            continue
        with pytest.raises(error):
            canonical(bad)
