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
``docs/decisions.md``). Key files (where keys are found, read, written, trusted and revoked) are ``orchestrator.key_files``.
Ed25519 signatures are deterministic, so both libraries produce the same bytes
(``tests/unit/test_signing.py`` checks it both ways).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from orchestrator.errors import InvalidIdError, SigningKeyError

FORMAT_VERSION = 1
UNKNOWN_KEY = "UNKNOWN_KEY"  # ``Keyring.check``: the record names a key this keyring does not hold
SIGNATURE_MISSING = "SIGNATURE_MISSING"  # ``Keyring.check``: no ``kid`` or ``sig`` text
KEY_REVOKED = "KEY_REVOKED"  # ``Keyring.check``: the key is in a ``revoked`` file
SIGNATURE_INVALID = "SIGNATURE_INVALID"  # ``Keyring.check``: the signature does not verify under the key it names
# signatures a keyring remembers as verified (``Keyring._verify``): a few jobs' lines and head records
VERIFIED_MEMO = 512
VERIFIED_MEMO_MAX_BYTES = 4096  # ... of up to this many signed bytes each (a job's input may be 1 MiB): 2 MiB at most


class Encoded:
    """A value with its canonical encoding, made by the caller (``data == canonical(value)``): ``canonical`` writes
    these bytes where the value sits instead of encoding it again. A submit encodes its input once, for its size,
    depth and digest, and a long one's line holds those very bytes (~17 ms an encoding of 900 KB of small objects;
    for a short one the splice costs more than encoding it again). Only a writer's own data holds one
    (``event_models.validate_with_models`` passes it on; the state the submit replays holds it as its input, and no view of it is
    returned): a read parses lines into plain values."""

    __slots__ = ("value", "data")

    def __init__(self, value: Any, data: bytes) -> None:
        self.value, self.data = value, data


class _HoldsEncoded(Exception):
    """``canonical``'s first pass met an ``Encoded``: the value is encoded again with them spliced in."""


def _not_json(obj: Any) -> Any:
    if type(obj) is Encoded:
        raise _HoldsEncoded
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _value_of(obj: Any) -> Any:
    """``json.dumps``'s ``default`` where the C encoder is missing: an ``Encoded`` is encoded again, as its value."""
    if type(obj) is Encoded:
        return obj.value
    return _not_json(obj)


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
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_value_of).encode()
    if isinstance(obj, str):
        return _encode_str(obj).encode()
    try:
        return _c_encoded(obj, _not_json)
    except _HoldsEncoded:
        return _spliced(obj)


def _c_encoded(obj: Any, default: Callable[[Any], Any]) -> bytes:
    """``obj`` in canonical form by the C encoder, ``default`` called on what JSON cannot hold."""
    return "".join(_make_encoder({}, default, _encode_str, None, ":", ",", True, False, False)(obj, 0)).encode()


def _spliced(obj: Any) -> bytes:
    """``canonical(obj)`` with each ``Encoded`` in it written as its bytes: encoded with a random text of 128 bits
    in its place (a string no value holds but by a chance of 2**-128; checked), then those texts replaced."""
    mark = os.urandom(16).hex()
    found: list[bytes] = []

    def place(value: Any) -> Any:
        if type(value) is Encoded:
            found.append(value.data)  # in the order the encoder writes them
            return mark
        return _not_json(value)

    pieces = _c_encoded(obj, place).split(b'"' + mark.encode() + b'"')
    if len(pieces) != len(found) + 1:
        raise AssertionError("a value holds the random text that marks an encoded value")
    out = [pieces[0]]
    for data, piece in zip(found, pieces[1:]):
        out += (data, piece)
    return b"".join(out)


_decode_json = json.JSONDecoder().decode


def parse_line(raw: bytes) -> Any:
    """A line or record this product wrote (canonical JSON: UTF-8), parsed: strict UTF-8, then json's decoder.
    ``json.loads`` of bytes first guesses their encoding (UTF-16 and -32 too, a BOM) and lets encoded surrogates
    through, none of which a canonical line holds, and took twice as long (5.5 against 2.7 us for an event, which
    a read parses three to five of). Raises what ``json.loads`` raises (``ValueError``: ``UnicodeDecodeError``,
    ``json.JSONDecodeError``; ``RecursionError``). A line that ``json.loads`` took and that is not UTF-8 was refused
    by the canonical check after the parse (``CORRUPT_LINE``); it is refused by the parse now (``CORRUPT_LINE``)."""
    return _decode_json(raw.decode())


_SEQ_KEY = b',"seq":'
_SEQ_VALUE = re.compile(rb"(\d+)[,}]")


def line_seq(line: bytes) -> int | None:
    """The ``seq`` a line says it is, found from its end, not parsed (a line may be a MiB: ~4 ms to parse). In the
    canonical form a string's ``"`` is escaped, so ``,"seq":`` is a key, and keys are sorted, so none after a record's
    own ``seq`` (``sig``, ``ts``, ``type``, ``v``) holds an object that could hold another. None when there is no such
    number: not a line this product wrote (``verify`` says what is wrong with it)."""
    at = line.rfind(_SEQ_KEY)
    found = _SEQ_VALUE.match(line, at + len(_SEQ_KEY)) if at >= 0 else None
    return int(found.group(1)) if found else None


_KEY_ID = re.compile(r"k-[0-9a-f]{16}")  # a key id's form (``key_id``)
_KID_VALUE = re.compile(rb',"kid":"(' + _KEY_ID.pattern.encode() + rb')"[,}]')


def line_key_id(line: bytes) -> str | None:
    """The id of the key a line says signed it, found from its end as ``line_seq`` finds its ``seq`` (no key after a
    record's own ``kid``: ``prev``, ``run_id``, ``seq``, ``sig``, ``ts``, ``type``, ``v``, holds an object), not
    parsed, not verified. None when it names none of a key id's form."""
    at = line.rfind(b',"kid":"')
    found = _KID_VALUE.match(line, at) if at >= 0 else None
    return found.group(1).decode() if found else None


def line_and_body(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """``canonical(record)`` and ``canonical`` of ``record`` without ``sig`` (the bytes its signature covers), with
    each value encoded once: keys are sorted, so both are the keys before ``"sig"`` and those after it, with or
    without the ``sig`` pair between them. A read checks a line against the first and its signature against the
    second; encoding the record twice cost a second pass over its data (a job's input may be 1 MiB). ``record``'s
    keys are strings (a parsed or a sealed record); same bytes and errors as ``canonical`` (a test checks)."""
    head, tail = _halves(record)
    body = _joined(head, tail)
    if "sig" not in record:
        return body, body
    return _with_sig(head, record["sig"], tail), body


def _halves(record: dict[str, Any]) -> tuple[memoryview, memoryview]:
    """The canonical encodings of ``record``'s keys that sort before ``"sig"`` and of those after it, braces cut
    (views: a line is copied once, when joined)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key, value in record.items():
        if key < "sig":
            before[key] = value
        elif key > "sig":
            after[key] = value
    return memoryview(canonical(before))[1:-1], memoryview(canonical(after))[1:-1]


def _with_sig(head: memoryview, sig: Any, tail: memoryview) -> bytes:
    """The canonical line of a record whose other keys are ``head`` and ``tail`` (``_halves``) and whose ``sig`` is
    ``sig``: what ``Keyring.seal`` writes and what a read compares a line with (``line_and_body``)."""
    return _joined(head, b'"sig":' + canonical(sig), tail)


def _joined(*members: bytes | memoryview) -> bytes:
    """``members`` (each a canonical ``"key":value`` list, or nothing) as one canonical object."""
    parts: list[bytes | memoryview] = [b"{"]
    for member in members:
        if member:
            if len(parts) > 1:
                parts.append(b",")
            parts.append(member)
    parts.append(b"}")
    return b"".join(parts)


SUBMITTED_CONTEXT_MIN_BYTES = 4096  # a shorter line's context is encoded again: ~4 us, where finding it takes ~9


def submitted_context(line: bytes, record: dict[str, Any]) -> tuple[int, int] | None:
    """Where a long ``job_submitted`` line holds its context: ``(start, end)``, ``line[start:end]`` being
    ``"input":...,"kind":...,"options":...``, the end of its ``data`` (whose keys sort ``context_digest`` first),
    found between the bytes the record's other keys make before and after it and hashing, in braces, to the
    ``context_digest`` the record holds. Those bytes are then what the submit hashed, the context's canonical encoding,
    and need not be encoded again (~15 ms for a 1 MiB input). None for a line under ``SUBMITTED_CONTEXT_MIN_BYTES``,
    another record, or a line that does not hold it so (another key before ``data``, a NaN, an edit)."""
    data = record.get("data")
    digest = data.get("context_digest") if isinstance(data, dict) else None
    if len(line) < SUBMITTED_CONTEXT_MIN_BYTES or record.get("type") != "job_submitted" or not isinstance(digest, str):
        return None
    try:
        prefix = b"".join((b'{"actor":', canonical(record.get("actor")), b',"data":{"context_digest":',
                           canonical(digest), b","))
        suffix = _after_data(record)
    except ValueError:  # a line vouched for is not checked for canonical form: it may hold a NaN
        return None
    start, end = len(prefix), len(line) - len(suffix)
    if end <= start or not line.startswith(prefix) or not line.endswith(suffix):
        return None
    hashed = hashlib.sha256(b"{")
    hashed.update(memoryview(line)[start:end])
    hashed.update(b"}")
    return (start, end) if hashed.hexdigest() == digest else None


def submitted_line_body(line: bytes, record: dict[str, Any]) -> bytes | None:
    """The signed bytes of a long ``job_submitted`` line (``line_and_body``'s second), made from the line itself
    where it holds its context as ``submitted_context`` finds it: the line up to the end of that context, then the
    record's keys after ``data`` but ``sig``. Those bytes are the canonical encoding of the record without ``sig`` if
    the line is canonical; a reader takes them only with a signature that verifies over them, and checks a line any
    other way in full (``history._check_line``). None where ``submitted_context`` finds nothing."""
    found = submitted_context(line, record)
    if found is None:
        return None
    return b"".join((memoryview(line)[:found[1]], _after_data(record, without="sig")))


def _after_data(record: dict[str, Any], without: str = "") -> bytes:
    """The bytes a canonical line of ``record`` ends with after its ``data``'s members: the object's brace, then the
    record's keys that sort after ``"data"`` (but ``without``)."""
    after = {key: value for key, value in record.items() if key > "data" and key != without}
    return b"}," + canonical(after)[1:] if after else b"}}"


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def genesis(stream: str) -> str:
    """The ``prev`` of a stream's first line: binds line 1 to its stream."""
    return hashlib.sha256(b"jsonl-orchestrator/v1/genesis/" + stream.encode()).hexdigest()


def key_id(public: bytes) -> str:
    """The id of a public key (its raw 32 bytes): derived from the key, so it never names two keys."""
    return "k-" + hashlib.sha256(public).hexdigest()[:16]



def is_key_id(value: object) -> bool:
    """Whether ``value`` has the form ``key_id`` gives every key (so it may name a key some keyring holds)."""
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


def validate_key_id(value: str) -> str:
    """Return ``value`` if it has the form ``key_id`` gives every key, else raise ``InvalidIdError``."""
    if not is_key_id(value):
        from orchestrator.security import shown

        raise InvalidIdError(f"invalid key id {shown(value)} (a key id is 'k-' and 16 hex digits, "
                             "as `orchestrator keys list` shows)")  # in brackets: ``security.shown``
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


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sig_bytes(text: str) -> bytes:
    """The signature ``text`` encodes, only if it is the one text ``_b64`` makes of them, else ``ValueError``:
    the decoder also takes ``=`` padding, the standard alphabet and any spare bits of the last character, and a
    line whose signature text was so changed would still verify (only the line after it would notice)."""
    raw = unb64(text)
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
    # held while ``_load_signer`` runs: threads that first sign at once load (or make) the key once
    _loading: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
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
        "Signing keys"). A loader that fails is kept, so a later call tries again (and names the same cause).
        Threads that call it at once wait for the first one's loading (``_loading``): until 2026-12-06 each ran the
        loader, and each made a key of its own."""
        if self._load_signer is not None:
            with self._loading:
                if self.signer_id is None and self._load_signer is not None:
                    self._load_signer(self, create)
                    self._load_signer = None
        return self._require_signer()[0]

    def _require_signer(self) -> tuple[str, bytes]:
        # ``signer_id``, set after ``signer`` (``add_signer``): another thread's loading may have set only ``signer``
        if self.signer_id is None and self._load_signer is not None:
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
        """What to do so that another key signs: where this keyring's signing key comes from decides it. A process
        that loaded the folder's active key before another was made active (a worker started before `keys rotate`)
        needs only a restart, to read the new one: until 2026-12-06 it was told to rotate, which made yet another."""
        if self.signer_folder is not None:
            active = self._active_elsewhere()
            if active is not None:
                return (f"Restart this process: it still signs with the revoked key {self.signer_id}, which it read "
                        f"when it started; the keyring folder's active key is now {active}")
            return "Make a new key active: orchestrator keys rotate"
        return (f"It comes from {self.source}: set that to a key that is not revoked, or unset it to sign with the "
                "keyring folder's active key (orchestrator keys rotate makes a new one)")

    def _active_elsewhere(self) -> str | None:
        """The key the keyring folder's ``active`` file names when this process signs with another one it loaded
        before, and that key is not revoked; None otherwise, or when the file cannot be read now."""
        if self.signer_id is None or self.signer_folder is None:
            return None
        from orchestrator.key_files import active_key_id

        try:
            active = active_key_id(self.signer_folder)
        except SigningKeyError:
            return None
        return active if active not in (None, self.signer_id) and active not in self.revoked else None

    def signing_key_id(self) -> str | None:
        """The id of the key that will sign, without loading a private key: the loaded one's, else the one the
        keyring folder's ``active`` file names; None when the folder has none yet (the first write creates one)."""
        if self.signer_id is not None or self.signer_folder is None:
            return self.signer_id
        from orchestrator.key_files import active_key_id

        return active_key_id(self.signer_folder)

    def reload(self) -> bool:
        """Read the keyring folders again, so that a long-running process (a worker) trusts a key made since it
        started (``keys rotate`` elsewhere) and refuses one revoked since. Keys are only ever added to either set:
        a key removed from a folder stays as it was until the process restarts. Each folder, and those above it, is
        checked again before it is read (``key_files.read_folders_again``). True if anything changed."""
        from orchestrator.key_files import read_folders_again

        before = self.trust_state()
        read_folders_again(self)
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
        if len(data) > VERIFIED_MEMO_MAX_BYTES:  # checked again each time, as before the memo, not held
            return
        memo = self._verified
        if len(memo) >= VERIFIED_MEMO:  # bounded: emptied, not evicted one by one (threads share it)
            memo.clear()
        memo.add((public, sig, data))

    def seal(self, record: dict[str, Any]) -> bytes:
        """Sign ``record`` (which must not hold ``kid``/``sig``) and return its line bytes."""
        kid, private = self._require_signer()
        record["kid"] = kid
        head, tail = _halves(record)  # encoded once: the signed body, then the line with its signature between
        record["sig"] = sig = _b64(self._sign(private, _joined(head, tail)))
        return _with_sig(head, sig, tail)

    def check(self, record: dict[str, Any], body: bytes | None = None) -> str | None:
        """Verify a parsed record's signature; return a problem code or None. ``body``: the record's signed bytes,
        ``line_and_body(record)[1]``, where the caller made them already."""
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
        if body is None:
            try:
                body = _joined(*_halves(record))
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


def new_seed() -> str:
    """A fresh private key as the base64url text ``ORCH_SIGNING_KEY`` expects."""
    return _b64(bytes(SigningKey.generate()))
