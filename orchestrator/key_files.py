"""Where signing keys come from: ``ORCH_SIGNING_KEY`` / ``ORCH_SIGNING_KEY_FILE``, the keyring folder
(``ORCH_KEYRING_DIR``, default ``~/.config/jsonl-orchestrator/keys``) and ``ORCH_TRUSTED_KEYS_DIR``; writing
key pairs (``keys rotate``) and revoking keys (``keys revoke``). ``orchestrator.signing`` signs and checks.

Key files are PEM (PKCS#8 and SubjectPublicKeyInfo), written by ``cryptography``; reading one takes the
fixed RFC 8410 encoding of an Ed25519 key apart directly (``_raw_from_pem``) and leaves anything else to
``cryptography``, which is imported only then: importing it costs 10-30 ms of a command's start, and loads
OpenSSL into every worker (~9 MB). A folder or file that decides which keys are trusted may be written by
its owner only, who must be this user or root, and so may every folder above it (``orchestrator.key_paths``).
"""
from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from nacl.signing import SigningKey

from orchestrator import faults
from orchestrator.errors import InvalidInputError, SigningKeyError
from orchestrator.key_paths import (MAKES_KEYS_TRUSTED, check_folders_above, forget_checked_folders, home_folder,
                                    owned_by_user, owner_writes)
from orchestrator.security import shown
from orchestrator.signing import Keyring, unb64, is_key_id, key_id, public_of, seed_of, validate_key_id
from orchestrator.store.files import NotRegularFileError, fsync_dir, open_regular, read_all
from orchestrator.store.locks import close_lock_descriptor, open_lock_descriptor

log = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
ACTIVE_FILE = "active"
REVOKED_FILE = "revoked"
LOCK_FILE = ".lock"  # held by whoever writes key files into the folder (``_keyring_locked``); never removed
# A key file being written (``_write_whole``): ``.<name>.<pid>-<16 hex>.tmp``, named by its process and a random
# token, never by its final name alone (``.<name>.tmp`` until 2026-12-06, also matched), so that two writers never
# rename one file. One found while holding the folder's lock is a killed writer's: removed.
_TEMPORARY = re.compile(r"\.(?:k-[0-9a-f]{16}\.(?:key|pub)|active|revoked)(?:\.[0-9]+-[0-9a-f]{16})?\.tmp")


def default_keyring_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/jsonl-orchestrator/keys``, else ``~/.config/jsonl-orchestrator/keys``. A relative
    ``XDG_CONFIG_HOME`` is ignored (the XDG specification's rule); with no home folder either (``home_folder``) there
    is no default, a ``SigningKeyError``: any guess would be another keyring than the one the user's other commands
    read."""
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or ""
    if not os.path.isabs(config):
        home = home_folder(env)
        if home is None:
            why = (f"HOME is {shown(env['HOME'])}, not an absolute path" if "HOME" in env else
                   f"HOME is not set, and the user database knows no uid {os.geteuid()}")
            raise SigningKeyError(f"no home folder to find the keyring folder in: {why}; set HOME to your home folder, "
                                  "or ORCH_KEYRING_DIR to the keyring folder")
        config = os.path.join(home, ".config")
    return Path(config) / "jsonl-orchestrator" / "keys"


def keyring_dir(env: Mapping[str, str] | None = None) -> Path:
    """The keyring folder: ``ORCH_KEYRING_DIR``, else ``default_keyring_dir()``."""
    env = os.environ if env is None else env
    return Path(env.get("ORCH_KEYRING_DIR") or default_keyring_dir(env))


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


def _check_keyring_folder(folder: Path, st: os.stat_result, what: str = "keyring folder") -> None:
    """Refuse a keyring or trusted-keys folder (of status ``st``) another user owns or others may write."""
    owned_by_user(folder, what, st)
    owner_writes(folder, what, st)


def _read_key_file(path: Path, what: str, *, owner_only: bool = False, others_could: str | None = None,
                   follow: bool = False) -> bytes:
    """The bytes of a key file, opened once and checked and read through that descriptor (``open_regular``): until
    2026-12-03 its path was checked, then read again, and a file renamed over it in between was read unchecked.
    It must be a regular file: a folder or a FIFO named like a key would otherwise crash or block every command.
    Never read through a symbolic link unless ``follow`` (``ORCH_SIGNING_KEY_FILE``, the operator's own path): the
    orchestrator makes none in a keyring folder, and the file one leads to lies in a folder nobody checked. With
    ``owner_only``, one that others may read is refused; with ``others_could`` (it decides which keys are trusted
    or which signs: what others who write it could do, for the message), one that others may write (``owner_writes``);
    always, one another user owns (``owned_by_user``). Any problem is a ``SigningKeyError`` naming the file."""
    try:
        fd, st = open_regular(path, follow=follow)
    except NotRegularFileError:
        raise SigningKeyError(f"{what} {path} is not a regular file; remove it or put the key file there") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            fix = "move that file into its place" if os.path.exists(path) else "it leads nowhere: remove it"
            raise SigningKeyError(f"{what} {path} is a symbolic link, never followed in a keyring folder (whoever may "
                                  "write the folder of the file it leads to could put a key of their own there); "
                                  f"{fix}") from None
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        owned_by_user(path, what, st)
        if owner_only and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(f"{what} {path} is readable by others; run: chmod 600 {path}")
        if others_could:
            owner_writes(path, what, st, others_could)
        return read_all(fd)
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _private_from_pem_file(path: Path, *, follow: bool = False) -> bytes:
    data = _read_key_file(path, "signing key file", owner_only=True, follow=follow)
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
    """Store a key pair owner-only (private 0600, folder 0700) and optionally make it the signer (``keys rotate``).
    ``private``: a seed or a ``cryptography`` Ed25519 private key; a new key when None. Written while holding the
    folder's lock (``_keyring_locked``): rotations at once each write a whole pair, one after the other, and the
    last one written is active."""
    seed = seed_of(private) if private is not None else bytes(SigningKey.generate())
    _prepare_folder(directory)
    with _keyring_locked(directory):
        return _write_pair(directory, seed, activate)


def first_keypair(directory: Path) -> tuple[str, bool]:
    """The id of the folder's active key, and whether this call made it: a new key pair, made active, when the
    folder has none. Looked for again while holding the folder's lock, so however many processes and threads find
    no key at once, one makes it and every other one then finds it (until 2026-12-06 each made its own, and those
    whose temporary file another had renamed failed with SIGNING_KEY_ERROR)."""
    _prepare_folder(directory)
    with _keyring_locked(directory):
        kid = active_key_id(directory)
        if kid is not None:
            return kid, False
        return _write_pair(directory, bytes(SigningKey.generate()), True), True


def _prepare_folder(directory: Path) -> None:
    _make_owner_only_folder(directory)
    # a folder that was there keeps its mode, and is refused if others may add keys to it (it was ``chmod 700``-ed,
    # /tmp too when run as root)
    _check_keyring_folder(directory, os.stat(directory))


@contextlib.contextmanager
def _keyring_locked(directory: Path) -> Iterator[None]:
    """Hold the keyring folder's lock (an ``flock`` of its ``.lock``, made owner-only, never through a symbolic
    link, and kept: removing a lock file lets two holders lock two files) while key files are written there, and
    remove what a writer killed mid-way left (its temporary files, ``_TEMPORARY``). Every writer of the folder's
    key files takes it (``write_keypair``, ``first_keypair``, ``revoke``); a reader needs none, since each file is
    replaced whole. ``flock`` excludes this process's other threads too: each opens the file anew."""
    path = directory / LOCK_FILE
    try:
        fd = open_lock_descriptor(lambda: os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                                                   | os.O_NOCTTY | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SigningKeyError(f"the keyring lock file {path} is a symbolic link, never followed in a keyring "
                                  "folder; remove it (the next command that writes a key makes the file)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"the keyring lock file {path} is not a regular file; remove it (the next command "
                                  "that writes a key makes the file)")
        owned_by_user(path, "keyring lock file", st)
        fcntl.flock(fd, fcntl.LOCK_EX)
        for name in os.listdir(directory):
            if _TEMPORARY.fullmatch(name):
                with contextlib.suppress(OSError):  # one left is only clutter, never read
                    os.unlink(directory / name)
        yield
    finally:
        close_lock_descriptor(fd)


def _write_pair(directory: Path, seed: bytes, activate: bool) -> str:
    """Write the pair of ``seed`` (the folder's lock held), each file whole (``_write_whole``), private key, then
    public key, then ``active``: a writer killed at any point leaves the folder's active key as it was, or the new
    one whole (a pair written but not made active is a key that never signed, trusted like any other)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(seed)
    kid = key_id(public_of(seed))
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_whole(directory / f"{kid}{PRIVATE_SUFFIX}", pem, 0o600)
    pub = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_whole(directory / f"{kid}{PUBLIC_SUFFIX}", pub)  # whole: a running worker reads the folder again
    if activate:
        _write_whole(directory / ACTIVE_FILE, kid.encode() + b"\n")
    return kid


def _make_owner_only_folder(directory: Path) -> None:
    """Create ``directory`` and each missing folder above it owner-only (0700, whatever the umask): ``mkdir -p``
    makes those above with the umask's mode alone, group-writable under a umask of 002, and every command would then
    refuse the keyring below them (``check_folders_above``)."""
    missing = []
    while not directory.is_dir() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile, by another command
            if not folder.is_dir():
                raise
        else:
            os.chmod(folder, 0o700)  # a umask that takes its owner's bits (0277, say) would leave it unwritable


def _write_whole(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` whole and durably (a synced temporary file renamed over it, then the folder synced): the
    public key verifies every event its key signs, and a power cut must not leave it empty. The temporary file is
    this writer's own (``_TEMPORARY``: a name no other writer uses, made new, never through a link), so a
    rename never moves another writer's file, nor a half-written one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(8).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # only its owner writes it (and reads a private key), whatever the umask (``owner_writes``)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            # killed in the middle of the write: part of the bytes in the temporary file, never at ``path``
            faults.point("key_file.mid_write", lambda: os.write(fh.fileno(), data[: max(1, len(data) // 2)]))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("key_file.before_rename")
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    faults.point("key_file.after_rename")
    fsync_dir(path.parent)


def active_key_id(directory: Path) -> str | None:
    """The key id the folder's ``active`` file names, or None when there is no such file. A link there is such a file,
    even one leading nowhere (``lexists``), and is refused when read: until 2026-12-06 a link to nothing was taken
    for no ``active`` at all, and the next write made a new key active in its place."""
    active = directory / ACTIVE_FILE
    if not os.path.lexists(active):
        return None
    try:
        # checked as the files that decide trust (since 2026-12-03): a key revoked on the machines that verify,
        # made active, makes every event written from then on fail there
        kid = _read_key_file(active, "active key file", others_could="pick which key signs (one revoked on the "
                                                                     "machines that verify, say)").decode().strip()
    except UnicodeDecodeError:
        raise SigningKeyError(f"active key file {active} is not UTF-8 text; it should hold one key id") from None
    if kid in ("", ".", "..") or "/" in kid or os.sep in kid or not kid.isprintable():
        raise SigningKeyError(f"active key file {active} does not name a key id ({shown(kid)}); "
                              f"it should hold the id of a {PRIVATE_SUFFIX} file of {directory}, one line")
    return kid


def _check_active_pair(directory: Path, kid: str, public: bytes) -> None:
    """Refuse to sign with the active key unless every other command here will trust what it signs: its file holds
    the key its name says (a key's id is derived from it), and its ``.pub`` lies beside it. A process trusts the key
    it signs with (``Keyring.add_signer``), so without this check a write succeeds and every later read refuses it as
    UNKNOWN_KEY, as if it were forged: no worker would ever run a job it submitted."""
    actual = key_id(public)
    private = directory / f"{kid}{PRIVATE_SUFFIX}"
    if actual != kid:
        raise SigningKeyError(f"the active key file {private} holds the key {actual}, not {shown(kid)}: events it "
                              "signs would name a key no reader finds (UNKNOWN_KEY). Name its files by its id "
                              f"({actual}{PRIVATE_SUFFIX}, {actual}{PUBLIC_SUFFIX}) and write {actual} into "
                              f"{directory / ACTIVE_FILE}, or make a new key active: orchestrator keys rotate; "
                              "nothing was written")
    pub = directory / f"{kid}{PUBLIC_SUFFIX}"
    fix = (f"every other command would refuse the events it signs as UNKNOWN_KEY. Write it from the private key "
           f"(openssl pkey -in {private} -pubout -out {pub}), or make a new key active: orchestrator keys rotate; "
           "nothing was written")
    if not os.path.lexists(pub):
        raise SigningKeyError(f"the active key {kid} has no public key file {pub} (removed?): {fix}")
    if _public_from_pem(_read_key_file(pub, "public key file", others_could=MAKES_KEYS_TRUSTED), pub) != public:
        raise SigningKeyError(f"the public key file {pub} does not hold the public key of {private}: {fix}")


def _load_dir_signer(directory: Path, announce: bool) -> Any:
    def load(ring: Keyring, create: bool) -> None:
        # when something is first signed, maybe hours after the folders were checked (a worker idle since its start)
        forget_checked_folders()
        check_folders_above(directory, "keyring folder")
        kid = active_key_id(directory)
        if kid is None:
            if not create:
                raise SigningKeyError(f"the keyring folder {directory} holds no signing key, and this command never "
                                      "creates one: `orchestrator keys rotate` creates one there (or set "
                                      "ORCH_SIGNING_KEY or ORCH_SIGNING_KEY_FILE)")
            try:
                kid, made = first_keypair(directory)  # or the one another process or thread made meanwhile
            except OSError as exc:
                raise SigningKeyError(f"cannot create a signing key in {directory}: {exc.strerror or exc}") from None
            if made and announce:
                print(f"orchestrator: generated signing key {kid} in {directory} (owner-only); back it up, "
                      "and keep its .pub to verify old events", file=sys.stderr)
        seed = _private_from_pem_file(directory / f"{kid}{PRIVATE_SUFFIX}")
        _check_active_pair(directory, kid, public_of(seed))
        ring.add_signer(seed)
    return load


def trust_folder(ring: Keyring, folder: Path, *, required_by: str | None = None, what: str = "keyring folder") -> None:
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
        raise SigningKeyError(f"{what} {folder} is not a folder") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {folder}: {exc.strerror or exc}") from None
    try:
        st = folder.stat()
    except OSError as exc:  # removed since it was listed
        raise SigningKeyError(f"cannot read {what} {folder}: {exc.strerror or exc}") from None
    _check_keyring_folder(folder, st, what)
    for name in names:
        if name.endswith(PUBLIC_SUFFIX):
            pub = folder / name
            key = _public_from_pem(_read_key_file(pub, "public key file", others_could=MAKES_KEYS_TRUSTED), pub)
            ring.trusted[key_id(key)] = key
    if REVOKED_FILE in names:
        ring.revoked = ring.revoked | _revoked_ids(folder)


def _revoked_ids(folder: Path) -> frozenset[str]:
    """The ids ``folder``'s ``revoked`` file lists (none when it has none): one key id a line, spaces around it and
    line ends of either kind (``\\r\\n``) aside; a line that is blank or whose first character is ``#`` (a comment)
    names none. Any other line is a ``SigningKeyError`` naming the file and the line (``_revoked_line``)."""
    return _listed_ids(folder / REVOKED_FILE, _revoked_bytes(folder))


def _revoked_bytes(folder: Path) -> bytes:
    """The bytes of ``folder``'s ``revoked`` file, checked as a file that decides trust; none when there is none."""
    revoked = folder / REVOKED_FILE
    if not os.path.lexists(revoked):
        return b""
    return _read_key_file(revoked, "revoked-keys file", others_could=MAKES_KEYS_TRUSTED)


def _listed_ids(revoked: Path, data: bytes) -> frozenset[str]:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise SigningKeyError(f"revoked-keys file {revoked} is not UTF-8 text; it should hold one key id "
                              "a line") from None
    ids = (_revoked_line(revoked, number, line.strip()) for number, line in enumerate(text.split("\n"), 1))
    return frozenset(kid for kid in ids if kid)


def _revoked_line(revoked: Path, number: int, line: str) -> str | None:
    """The key id ``line`` (stripped) of the revoked-keys file names, None for a blank or comment line. Anything else
    stops the reading (until 2026-12-06 every line was taken as it was): an id with a note after it (``k-... #
    stolen``) or in capitals named no key, revoked nothing, and ``keys list`` showed it as revoked."""
    if is_key_id(line):
        return line
    if not line or line.startswith("#"):
        return None
    hint = (f"key ids are in lower case: {line.lower()}" if is_key_id(line.lower()) else
            "a note goes on a line of its own, starting with #" if is_key_id(line.split()[0]) else
            "a key id is 'k-' and 16 hex digits, as `orchestrator keys list` shows")
    raise SigningKeyError(f"revoked-keys file {revoked}, line {number}, {shown(line)} is not a key id ({hint}): "
                          "the file holds one key id a line, or a comment line starting with #; every command stops "
                          "until that line is fixed, since the key it means to revoke would stay trusted")


def read_folders_again(ring: Keyring) -> None:
    """Read ``ring``'s folders again (``Keyring.reload``, a long-running worker's once a minute), each after checking
    it and the folders above it again: one made writable by others since the process started would let them put a
    folder of their own in its place, whose keys would then be trusted. A ``SigningKeyError`` stops the reading
    there; the keys read before stay (``recovery.reload_keys`` says so)."""
    forget_checked_folders()
    for i, folder in enumerate(ring.folders):  # the keyring folder first (``key_folders``)
        what = "keyring folder" if i == 0 else "trusted-keys folder"
        check_folders_above(Path(folder), what)
        trust_folder(ring, Path(folder), what=what)


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
        trusted_only = variable == TRUSTED_KEYS_VARIABLE
        what = "trusted-keys folder" if trusted_only else "keyring folder"
        check_folders_above(folder, what)
        trust_folder(ring, folder, required_by=variable if trusted_only else None, what=what)
    variable = signing_variable(env)
    if variable == "ORCH_SIGNING_KEY":
        try:
            ring.add_signer(unb64(env["ORCH_SIGNING_KEY"].strip()))
        except ValueError:
            raise SigningKeyError("ORCH_SIGNING_KEY must be the base64url encoding of a 32-byte Ed25519 seed") from None
        ring.source = "ORCH_SIGNING_KEY"
    elif variable == "ORCH_SIGNING_KEY_FILE":
        check_folders_above(Path(env["ORCH_SIGNING_KEY_FILE"]), "signing key file")
        ring.add_signer(_private_from_pem_file(Path(env["ORCH_SIGNING_KEY_FILE"]), follow=True))
        ring.source = env["ORCH_SIGNING_KEY_FILE"]
        ring.paths += (ring.source,)
    else:
        ring._load_signer = _load_dir_signer(directory, announce)
        ring.signer_folder = directory
    return ring


def revoke(kid: str, env: Mapping[str, str] | None = None) -> tuple[Keyring, bool]:
    """Add ``kid`` to the keyring folder's ``revoked`` file, once; return the keyring as it was before, and whether
    the id was written (not when that file lists it already: a trusted-keys folder's listing it is not enough, since
    that folder may be another machine's, copied here, and change without this machine's say).

    The file is read line by line by every command, so only a well-formed id (``validate_key_id``) of a key
    the keyring trusts is written: a typo would revoke nothing, an id with a newline would revoke another key.
    A key the keyring does not hold is refused: the events it signed already fail verification (UNKNOWN_KEY).
    The file is read again and written whole (``_write_whole``, its mode kept) while holding the folder's lock, as
    key pairs are: until 2026-12-07 it was appended to unlocked, so revokes of one key at once each wrote it and
    said so, and a new file was never synced into its folder (a power cut could take a reported revocation away).
    """
    validate_key_id(kid)
    ring = load_keyring(env, announce=False)
    if kid not in ring.trusted:
        raise InvalidInputError(f"{kid} names no key of the keyring ({', '.join(ring.folders)}); nothing was revoked "
                                "(orchestrator keys list shows the key ids)")
    folder, path = keyring_dir(env), keyring_dir(env) / REVOKED_FILE
    try:
        _prepare_folder(folder)
        with _keyring_locked(folder):  # two revokes, or a rotation, at once: one after the other
            data = _revoked_bytes(folder)  # read again under the lock: another revoke may have written it meanwhile
            if kid in _listed_ids(path, data):
                return ring, False
            mode = stat.S_IMODE(os.lstat(path).st_mode) if os.path.lexists(path) else 0o644
            ending = b"\n" if data and not data.endswith(b"\n") else b""  # a last line edited by hand, no newline
            _write_whole(path, data + ending + kid.encode() + b"\n", mode)
    except OSError as exc:
        raise SigningKeyError(f"cannot add {kid} to {path}: {exc.strerror or exc}") from None
    return ring, True
