"""Canonical encoding, Ed25519 signatures, the hash chain and the keyring.

A line on disk is the canonical JSON of a record (sorted keys, no spaces, UTF-8, no NaN)
whose ``sig`` is an Ed25519 signature over the canonical JSON of the same record without
``sig``. ``prev`` is the SHA-256 of the previous line's bytes; the first line's ``prev``
is bound to the stream (job id) so lines cannot be spliced between files.

Keys live outside the store: a private key signs, public keys of the keyring verify. A
verifier holding only public keys cannot forge. Key ids are derived from the public key,
so rotation adds a key and old events stay verifiable.

Keys are held as their raw 32 bytes (a private key as its seed). The signatures are made and
checked with libsodium (PyNaCl), about twice as fast as OpenSSL for a verification, which ``verify``
does for every line and a read for every line its job's head record does not vouch for (figures in
``docs/decisions.md``). Key files are PEM (PKCS#8 and
SubjectPublicKeyInfo), written by ``cryptography``; reading one takes the fixed RFC 8410 encoding of
an Ed25519 key apart directly (``_raw_from_pem``) and leaves anything else to ``cryptography``, which
is imported only then: importing it costs 10-30 ms of a command's start, and loads OpenSSL into
every worker (~9 MB).
Ed25519 signatures are deterministic, so both libraries produce the same bytes
(``tests/unit/test_signing.py`` checks it both ways).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from orchestrator.errors import InvalidIdError, InvalidInputError, SigningKeyError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
ACTIVE_FILE = "active"
REVOKED_FILE = "revoked"
UNKNOWN_KEY = "UNKNOWN_KEY"  # ``Keyring.check``: the record names a key this keyring does not hold
SIGNATURE_MISSING = "SIGNATURE_MISSING"  # ``Keyring.check``: no ``kid`` or ``sig`` text
KEY_REVOKED = "KEY_REVOKED"  # ``Keyring.check``: the key is in a ``revoked`` file
SIGNATURE_INVALID = "SIGNATURE_INVALID"  # ``Keyring.check``: the signature does not verify under the key it names
# signatures a keyring remembers as verified (``Keyring._verify``): a few jobs' lines and head records, ~0.3 MB at most
VERIFIED_MEMO = 512


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _c_encoder() -> tuple[Any, Any]:
    """json's C encoder and string encoder, if this interpreter has them with the arguments used here
    (a private API: checked once, else ``canonical`` falls back to ``json.dumps``)."""
    make, encode_str = getattr(json.encoder, "c_make_encoder", None), getattr(json.encoder, "c_encode_basestring", None)
    try:
        probe = {"b": [1, 2.5, None, True], "a": "\u00e9"}
        if make is not None and encode_str is not None and "".join(
                make({}, _not_json, encode_str, None, ":", ",", True, False, False)(probe, 0)) == json.dumps(
                probe, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False):
            return make, encode_str
    except Exception:  # noqa: BLE001 - another signature: use json.dumps
        pass
    return None, None


_make_encoder, _encode_str = _c_encoder()


def canonical(obj: Any) -> bytes:
    """The one byte encoding that is signed, hashed and written: ``json.dumps(obj, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False, allow_nan=False)``, UTF-8. Made by the C encoder
    ``json.dumps`` itself uses, built directly (a new one per call, so threads share nothing):
    ``dumps`` with options first builds a ``JSONEncoder``, which cost a third of the ~7 us of
    encoding an event (eight to twelve encodings per job). Same bytes, same errors (a test checks)."""
    if _make_encoder is None or _encode_str is None:  # an interpreter without the C accelerator
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if isinstance(obj, str):
        return _encode_str(obj).encode()
    return "".join(_make_encoder({}, _not_json, _encode_str, None, ":", ",", True, False, False)(obj, 0)).encode()


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def genesis(stream: str) -> str:
    """The ``prev`` of a stream's first line: binds line 1 to its stream."""
    return hashlib.sha256(b"jsonl-orchestrator/v1/genesis/" + stream.encode()).hexdigest()


def key_id(public: bytes) -> str:
    """The id of a public key (its raw 32 bytes): derived from the key, so it never names two keys."""
    return "k-" + hashlib.sha256(public).hexdigest()[:16]


_KEY_ID = re.compile(r"k-[0-9a-f]{16}")


def is_key_id(value: object) -> bool:
    """Whether ``value`` has the form ``key_id`` gives every key (so it may name a key some keyring holds)."""
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


def validate_key_id(value: str) -> str:
    """Return ``value`` if it has the form ``key_id`` gives every key, else raise ``InvalidIdError``."""
    if not is_key_id(value):
        from orchestrator.security import shown

        raise InvalidIdError(f"invalid key id {shown(value)}: a key id is 'k-' and 16 hex digits, "
                             "as `orchestrator keys list` shows")
    return value


def seed_of(private: Any) -> bytes:
    """A private key as its 32-byte seed: the seed itself, or a ``cryptography`` Ed25519 private key."""
    if isinstance(private, (bytes, bytearray)):
        if len(private) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return bytes(private)
    from cryptography.hazmat.primitives import serialization

    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


def public_of(seed: bytes) -> bytes:
    return bytes(SigningKey(seed).verify_key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sig_bytes(text: str) -> bytes:
    """The signature ``text`` encodes, only if it is the one text ``_b64`` makes of them, else ``ValueError``:
    the decoder also takes ``=`` padding, the standard alphabet and any spare bits of the last character, and a
    line whose signature text was so changed would still verify (only the line after it would notice)."""
    raw = _unb64(text)
    if _b64(raw) != text:
        raise ValueError("not the canonical base64url text of a signature")
    return raw


@dataclass
class Keyring:
    """Trusted public keys by id, the revoked ids, and (when this process signs) one private key."""

    trusted: dict[str, bytes] = field(default_factory=dict)  # key id -> raw public key
    revoked: frozenset[str] = frozenset()
    signer: bytes | None = field(default=None, repr=False)  # the signing key's seed: never in a repr (tracebacks, logs)
    signer_id: str | None = None
    source: str = "memory"
    # every folder and file keys are read from (keyring folder, trusted-keys folder, signing key file): none
    # may lie inside a store (``Orchestrator._check_keyring_outside_store``)
    paths: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()  # the folders whose ``*.pub`` are trusted and whose ``revoked`` ids are refused
    signer_folder: Path | None = None  # the keyring folder whose active key signs (no key set in the environment)
    _load_signer: Any = None  # deferred: called as ``_load_signer(ring, create)`` when something is first signed
    # libsodium's views of the keys above, made on first use (not part of the keyring's identity)
    _sodium_signer: tuple[bytes, SigningKey, bytes] | None = field(default=None, init=False, repr=False, compare=False)
    # by key id: an id is the hash of its public key, so one id never names two keys
    _sodium_keys: dict[str, VerifyKey] = field(default_factory=dict, init=False, repr=False, compare=False)
    # (public key, signature, signed bytes) that verified, or that this keyring signed: ``_verify``'s memo
    _verified: set[tuple[bytes, bytes, bytes]] = field(default_factory=set, init=False, repr=False, compare=False)

    @classmethod
    def generate(cls) -> "Keyring":
        """An in-memory keyring with a fresh key (tests, benchmarks)."""
        ring = cls()
        ring.add_signer(bytes(SigningKey.generate()))
        return ring

    def trust_state(self) -> tuple[frozenset[str], frozenset[str]]:
        """What a verification depends on (revoked and trusted key ids): a view verified under another
        state must be verified again (``Claimer._load_for_claim``)."""
        return self.revoked, frozenset(self.trusted)

    def add_signer(self, private: Any) -> str:
        """Sign with ``private`` (a 32-byte seed, or a ``cryptography`` Ed25519 private key) and trust it."""
        seed = seed_of(private)
        public = public_of(seed)
        kid = key_id(public)
        self.signer, self.signer_id = seed, kid
        self.trusted[kid] = public
        return kid

    def ensure_signer(self, *, create: bool = True) -> str:
        """Load the signing key now and return its id; ``SigningKeyError`` if nothing can sign.

        With the keyring folder as the source (no ``ORCH_SIGNING_KEY*``) and no key in it yet, the folder's
        first key is created, unless ``create`` is False: a read command (``audit-timeline``, ``metrics``,
        ``verify``, ...) signs only with a key the machine already has, and never creates one, so a machine
        set up to verify (only ``.pub`` files) writes nothing another machine cannot verify (docs/decisions.md,
        "Signing keys"). A loader that fails is kept, so a later call tries again (and names the same cause)."""
        if self.signer is None and self._load_signer is not None:
            self._load_signer(self, create)
            self._load_signer = None
        return self._require_signer()[0]

    def _require_signer(self) -> tuple[str, bytes]:
        if self.signer is None and self._load_signer is not None:
            self.ensure_signer()
        if self.signer is None or self.signer_id is None:
            raise SigningKeyError("no signing key is configured (set ORCH_SIGNING_KEY, ORCH_SIGNING_KEY_FILE or ORCH_KEYRING_DIR)")
        # every signature, not once at load: a set lookup (~50 ns beside ~20 us for the signature), and
        # ``reload`` may have revoked the key since. Whatever it signed would fail everywhere as KEY_REVOKED.
        if self.signer_id in self.revoked:
            raise SigningKeyError(f"the signing key {self.signer_id} is revoked: nothing is signed with it. "
                                  + self.how_to_replace())
        return self.signer_id, self.signer

    def how_to_replace(self) -> str:
        """What to do so that another key signs: where this keyring's signing key comes from decides it."""
        if self.signer_folder is not None:
            return "Make a new key active: orchestrator keys rotate"
        return (f"It comes from {self.source}: set that to a key that is not revoked, or unset it to sign with the "
                "keyring folder's active key (orchestrator keys rotate makes a new one)")

    def signing_key_id(self) -> str | None:
        """The id of the key that will sign, without loading a private key: the loaded one's, else the one the
        keyring folder's ``active`` file names; None when the folder has none yet (the first write creates one)."""
        if self.signer_id is not None or self.signer_folder is None:
            return self.signer_id
        return _active_id(self.signer_folder)

    def reload(self) -> bool:
        """Read the keyring folders again, so that a long-running process (a worker) trusts a key made since it
        started (``keys rotate`` elsewhere) and refuses one revoked since. Keys are only ever added to either set:
        a key removed from a folder stays as it was until the process restarts. True if anything changed."""
        before = self.trust_state()
        for folder in self.folders:
            _trust_folder(self, Path(folder))
        return self.trust_state() != before

    def _sign(self, seed: bytes, data: bytes) -> bytes:
        cached = self._sodium_signer
        if cached is None or cached[0] is not seed:
            signer = SigningKey(seed)
            cached = self._sodium_signer = (seed, signer, bytes(signer.verify_key))
        sig = cached[1].sign(data).signature
        self._remember(cached[2], sig, data)  # it verifies: a process reading back what it wrote need not check
        return sig

    def _verify(self, kid: str, public: bytes, sig: bytes, data: bytes) -> bool:
        """Whether ``sig`` is ``public``'s signature of ``data``. A pure function of the three (Ed25519
        verification is deterministic), so the triples that verified in this process are remembered
        (``VERIFIED_MEMO`` of them, in memory only) and not checked again: a reader polling one job, the
        audit log's head record checked before an action's event and again before its entry, a worker
        claiming a job it ran before. Any other bytes (an edited line) are checked in full; whether the key
        is trusted and not revoked is decided before (``check``), on every call."""
        if (public, sig, data) in self._verified:
            return True
        try:
            verifier = self._sodium_keys.get(kid)
            if verifier is None:
                verifier = self._sodium_keys[kid] = VerifyKey(public)
            verifier.verify(data, sig)
        except (CryptoError, ValueError, TypeError):  # BadSignatureError, or a signature of the wrong length
            return False
        self._remember(public, sig, data)
        return True

    def _remember(self, public: bytes, sig: bytes, data: bytes) -> None:
        memo = self._verified
        if len(memo) >= VERIFIED_MEMO:  # bounded: emptied, not evicted one by one (threads share it)
            memo.clear()
        memo.add((public, sig, data))

    def seal(self, record: dict[str, Any]) -> bytes:
        """Sign ``record`` (which must not hold ``kid``/``sig``) and return its line bytes."""
        kid, private = self._require_signer()
        record["kid"] = kid
        record["sig"] = _b64(self._sign(private, canonical(record)))
        return canonical(record)

    def check(self, record: dict[str, Any]) -> str | None:
        """Verify a parsed record's signature; return a problem code or None."""
        kid = record.get("kid")
        sig = record.get("sig")
        if not isinstance(kid, str) or not isinstance(sig, str):
            return SIGNATURE_MISSING
        if kid in self.revoked:
            return KEY_REVOKED
        public = self.trusted.get(kid)
        if public is None:
            return UNKNOWN_KEY
        try:
            raw_sig = _sig_bytes(sig)
        except ValueError:
            return SIGNATURE_INVALID
        try:
            body = canonical({k: v for k, v in record.items() if k != "sig"})
        except (ValueError, TypeError):  # NaN (json.loads accepts it) or another value no signed record holds
            return SIGNATURE_INVALID
        return None if self._verify(kid, public, raw_sig, body) else SIGNATURE_INVALID

    def sign_bytes(self, data: bytes) -> tuple[str, str]:
        kid, private = self._require_signer()
        return kid, _b64(self._sign(private, data))

    def verify_bytes(self, kid: str, sig: str, data: bytes) -> bool:
        public = self.trusted.get(kid)
        if public is None or kid in self.revoked:
            return False
        try:
            raw_sig = _sig_bytes(sig)
        except ValueError:
            return False
        return self._verify(kid, public, raw_sig, data)


# --- loading keys from the environment or the user's config folder ---------------------------


def default_keyring_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "jsonl-orchestrator" / "keys"


def keyring_dir(env: Mapping[str, str] | None = None) -> Path:
    """The keyring folder: ``ORCH_KEYRING_DIR``, else ``default_keyring_dir()``."""
    env = os.environ if env is None else env
    return Path(env.get("ORCH_KEYRING_DIR") or default_keyring_dir())


# The DER of an Ed25519 key in the two forms ``write_keypair`` writes (RFC 8410): a fixed prefix and the
# 32 raw bytes. Any other encoding of a key is read by ``cryptography``.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def _raw_from_pem(data: bytes, label: bytes, prefix: bytes) -> bytes | None:
    """The key's 32 raw bytes if ``data`` is exactly the PEM block ``label`` of ``prefix`` + 32 bytes."""
    lines = data.strip().split(b"\n")
    if len(lines) < 3 or lines[0].strip() != b"-----BEGIN " + label + b"-----" \
            or lines[-1].strip() != b"-----END " + label + b"-----":
        return None
    try:
        der = base64.b64decode(b"".join(ln.strip() for ln in lines[1:-1]), validate=True)
    except ValueError:
        return None
    if len(der) != len(prefix) + 32 or not der.startswith(prefix):
        return None
    return der[len(prefix):]


def _key_file_stat(path: Path, what: str) -> os.stat_result:
    """The status of a key file that must be a regular file: a folder or a FIFO named like a key would
    otherwise crash or block every command. Any problem is a ``SigningKeyError`` naming the file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SigningKeyError(f"{what} {path} is not a regular file; remove it or put the key file there")
    return st


def _owner_writes(path: Path, what: str, mode: int) -> None:
    """Refuse a folder or file that decides which keys are trusted (a keyring folder, a ``.pub``, ``revoked``) when
    others than its owner may write it: they could add a key of their own, or trust a revoked one again, and their
    events would verify (as ssh refuses an ``authorized_keys`` others may write)."""
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SigningKeyError(f"{what} {path} may be written by others than its owner, who could make keys of their "
                              f"own trusted; run: chmod go-w {path}")


def _read_key_file(path: Path, what: str, *, owner_only: bool = False, trusts: bool = False) -> bytes:
    """The bytes of a key file (``_key_file_stat``); with ``owner_only``, one that others may read is refused;
    with ``trusts`` (it decides which keys are trusted), one that others may write (``_owner_writes``)."""
    mode = _key_file_stat(path, what).st_mode
    if owner_only and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"{what} {path} is readable by others; run: chmod 600 {path}")
    if trusts:
        _owner_writes(path, what, mode)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _private_from_pem_file(path: Path) -> bytes:
    data = _read_key_file(path, "signing key file", owner_only=True)
    seed = _raw_from_pem(data, b"PRIVATE KEY", _PKCS8_PREFIX)
    if seed is not None:
        return seed
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not PEM, damaged, encrypted, or an unknown algorithm
        raise SigningKeyError(f"signing key file {path} is not an unencrypted PEM (PKCS#8) Ed25519 private key; "
                              "restore it from its backup") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    return seed_of(key)


def _public_from_pem(data: bytes, where: Path) -> bytes:
    raw = _raw_from_pem(data, b"PUBLIC KEY", _SPKI_PREFIX)
    if raw is not None:
        return raw
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError(f"public key file {where} is not a PEM (SubjectPublicKeyInfo) public key; every .pub "
                              "of a keyring folder is trusted, so remove the file or replace it with the key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where} is not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_keypair(directory: Path, private: Any = None, *, activate: bool = True) -> str:
    """Store a key pair owner-only (private 0600, folder 0700) and optionally make it the signer.
    ``private``: a seed or a ``cryptography`` Ed25519 private key; a new key when None."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = seed_of(private) if private is not None else bytes(SigningKey.generate())
    private = Ed25519PrivateKey.from_private_bytes(seed)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    kid = key_id(public_of(seed))
    priv_path = directory / f"{kid}{PRIVATE_SUFFIX}"
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_whole(directory / f"{kid}{PUBLIC_SUFFIX}", pub)  # whole: a running worker reads the folder again
    if activate:
        _write_whole(directory / ACTIVE_FILE, kid.encode() + b"\n")
    return kid


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``path`` whole and durably (a synced temporary file renamed over it, then the folder synced): the
    public key verifies every event its key signs, and a power cut must not leave it empty."""
    from orchestrator.store.files import fsync_dir

    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fchmod(fd, 0o644)  # only its owner writes it, whatever the umask (``_owner_writes``)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _active_id(directory: Path) -> str | None:
    """The key id the folder's ``active`` file names, or None when there is no such file."""
    active = directory / ACTIVE_FILE
    if not active.exists():
        return None
    try:
        kid = _read_key_file(active, "active key file").decode().strip()
    except UnicodeDecodeError:
        raise SigningKeyError(f"active key file {active} is not UTF-8 text; it should hold one key id") from None
    if kid in ("", ".", "..") or "/" in kid or os.sep in kid:
        raise SigningKeyError(f"active key file {active} does not name a key id ({kid[:40]!r}); "
                              f"it should hold the id of a {PRIVATE_SUFFIX} file of {directory}")
    return kid


def _load_dir_signer(directory: Path, announce: bool) -> Any:
    def load(ring: Keyring, create: bool) -> None:
        kid = _active_id(directory)
        if kid is None:
            if not create:
                raise SigningKeyError(f"the keyring folder {directory} holds no signing key, and this command never "
                                      "creates one: `orchestrator keys rotate` creates one there (or set "
                                      "ORCH_SIGNING_KEY or ORCH_SIGNING_KEY_FILE)")
            try:
                kid = write_keypair(directory)
            except OSError as exc:
                raise SigningKeyError(f"cannot create a signing key in {directory}: {exc.strerror or exc}") from None
            if announce:
                print(f"orchestrator: generated signing key {kid} in {directory} (owner-only); back it up, "
                      "and keep its .pub to verify old events", file=sys.stderr)
        ring.add_signer(_private_from_pem_file(directory / f"{kid}{PRIVATE_SUFFIX}"))
    return load


def _trust_folder(ring: Keyring, folder: Path, *, required_by: str | None = None) -> None:
    """Trust every ``*.pub`` of ``folder`` and add its ``revoked`` ids. A folder that does not exist holds no
    keys, unless the variable ``required_by`` names it: a folder set only to be read (``ORCH_TRUSTED_KEYS_DIR``)
    that is not there is a mistyped setting, a ``SigningKeyError``. Anything in it that cannot be read is one too,
    naming the file, never skipped: a key left out would make the events it signed fail as UNKNOWN_KEY, as if they
    had been forged."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        if required_by:
            raise SigningKeyError(f"{required_by} names {folder}, which does not exist: the keys it should hold would "
                                  "not be trusted, and the events they signed would fail verification as UNKNOWN_KEY. "
                                  f"Fix {required_by} (a typo?), or create the folder and copy the other machines' "
                                  ".pub files into it, or unset it") from None
        return
    except NotADirectoryError:
        raise SigningKeyError(f"keyring folder {folder} is not a folder") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read keyring folder {folder}: {exc.strerror or exc}") from None
    try:
        _owner_writes(folder, "keyring folder", folder.stat().st_mode)
    except OSError as exc:  # removed since it was listed
        raise SigningKeyError(f"cannot read keyring folder {folder}: {exc.strerror or exc}") from None
    for name in names:
        if name.endswith(PUBLIC_SUFFIX):
            pub = folder / name
            key = _public_from_pem(_read_key_file(pub, "public key file", trusts=True), pub)
            ring.trusted[key_id(key)] = key
    if REVOKED_FILE in names:
        revoked = folder / REVOKED_FILE
        try:
            text = _read_key_file(revoked, "revoked-keys file", trusts=True).decode()
        except UnicodeDecodeError:
            raise SigningKeyError(f"revoked-keys file {revoked} is not UTF-8 text; it should hold one key id "
                                  "a line") from None
        ring.revoked = ring.revoked | {ln.strip() for ln in text.splitlines() if ln.strip()}


SIGNING_KEY_VARIABLES = ("ORCH_SIGNING_KEY", "ORCH_SIGNING_KEY_FILE")  # in the order ``load_keyring`` takes them
KEYRING_VARIABLE = "ORCH_KEYRING_DIR"
TRUSTED_KEYS_VARIABLE = "ORCH_TRUSTED_KEYS_DIR"


def key_folders(env: Mapping[str, str] | None = None) -> list[tuple[Path, str]]:
    """The folders whose ``*.pub`` keys are trusted and whose ``revoked`` ids are refused, in the order they are
    read, each with the variable that names it: the keyring folder (``ORCH_KEYRING_DIR``, or ``"default"``), then
    ``ORCH_TRUSTED_KEYS_DIR`` when it is set."""
    env = os.environ if env is None else env
    folders = [(keyring_dir(env), KEYRING_VARIABLE if env.get(KEYRING_VARIABLE) else "default")]
    if env.get(TRUSTED_KEYS_VARIABLE):
        folders.append((Path(env[TRUSTED_KEYS_VARIABLE]), TRUSTED_KEYS_VARIABLE))
    return folders


def signing_variable(env: Mapping[str, str] | None = None) -> str | None:
    """The variable whose key signs (``load_keyring``), or None when the keyring folder's active key does."""
    env = os.environ if env is None else env
    return next((name for name in SIGNING_KEY_VARIABLES if env.get(name)), None)


def load_keyring(env: Mapping[str, str] | None = None, *, announce: bool = True) -> Keyring:
    """Build the keyring from ``ORCH_SIGNING_KEY`` / ``ORCH_SIGNING_KEY_FILE`` / ``ORCH_KEYRING_DIR``.

    Public keys of the keyring folder are always trusted; so are those of ``ORCH_TRUSTED_KEYS_DIR``
    (``key_folders``). The private key is loaded (or, in the keyring folder, created) only when something is
    signed, and created only by a command that writes (``Keyring.ensure_signer``): read commands
    never write a key. A key file, ``revoked`` file or folder that cannot be read is a
    ``SigningKeyError`` naming it; so is an ``ORCH_TRUSTED_KEYS_DIR`` that does not exist (a keyring folder
    that does not exist yet holds no key: the first write creates it).
    """
    env = os.environ if env is None else env
    directory = keyring_dir(env)
    named = key_folders(env)
    folders = [str(folder) for folder, _ in named]
    ring = Keyring(source=str(directory), paths=tuple(folders), folders=tuple(folders))
    for folder, variable in named:
        _trust_folder(ring, folder, required_by=variable if variable == TRUSTED_KEYS_VARIABLE else None)
    variable = signing_variable(env)
    if variable == "ORCH_SIGNING_KEY":
        try:
            ring.add_signer(_unb64(env["ORCH_SIGNING_KEY"].strip()))
        except ValueError:
            raise SigningKeyError("ORCH_SIGNING_KEY must be the base64url encoding of a 32-byte Ed25519 seed") from None
        ring.source = "ORCH_SIGNING_KEY"
    elif variable == "ORCH_SIGNING_KEY_FILE":
        ring.add_signer(_private_from_pem_file(Path(env["ORCH_SIGNING_KEY_FILE"])))
        ring.source = env["ORCH_SIGNING_KEY_FILE"]
        ring.paths += (ring.source,)
    else:
        ring._load_signer = _load_dir_signer(directory, announce)
        ring.signer_folder = directory
    return ring


def revoke(kid: str, env: Mapping[str, str] | None = None) -> Keyring:
    """Add ``kid`` to the keyring folder's ``revoked`` file, once, and return the keyring as it was before.

    The file is read line by line by every command, so only a well-formed id (``validate_key_id``) of a key
    the keyring trusts is written: a typo would revoke nothing, an id with a newline would revoke another key.
    A key the keyring does not hold is refused: the events it signed already fail verification (UNKNOWN_KEY).
    """
    validate_key_id(kid)
    ring = load_keyring(env, announce=False)
    if kid not in ring.trusted:
        raise InvalidInputError(f"{kid} names no key of the keyring ({', '.join(ring.folders)}); nothing was revoked "
                                "(orchestrator keys list shows the key ids)")
    if kid in ring.revoked:
        return ring
    folder = keyring_dir(env)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder / REVOKED_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)  # owner-written (umask)
        with os.fdopen(fd, "a+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":  # a last line without its newline (edited by hand) must not run into this one
                    fh.write(b"\n")
            fh.write(kid.encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise SigningKeyError(f"cannot add {kid} to {folder / REVOKED_FILE}: {exc.strerror or exc}") from None
    return ring


def new_seed() -> str:
    """A fresh private key as the base64url text ``ORCH_SIGNING_KEY`` expects."""
    return _b64(bytes(SigningKey.generate()))
