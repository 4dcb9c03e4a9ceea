"""``orchestrator keys``: the signing keys (``keys list``, ``keys rotate``, ``keys revoke``); they live outside the
store, so these commands work on no project."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import click

from orchestrator.cli import cli
from orchestrator.cli_common import CONTEXT, Output, echo, reported_errors


@cli.group(context_settings=CONTEXT)
def keys() -> None:
    """Signing keys: list, rotate, revoke (keys live outside the store).

    \b
    ORCH_KEYRING_DIR       the keyring folder: private keys (<kid>.key, owner-only), their
                           <kid>.pub, the 'active' key id and the 'revoked' list  [default:
                           $XDG_CONFIG_HOME/jsonl-orchestrator/keys, else ~/.config/...]
    ORCH_TRUSTED_KEYS_DIR  a folder of other machines' <kid>.pub (and a 'revoked' list) also
                           trusted; one that does not exist is an error (exit 8)
    ORCH_SIGNING_KEY       a private key (base64url Ed25519 seed) that signs instead of the
                           keyring folder's active key
    ORCH_SIGNING_KEY_FILE  the same as an owner-only PEM file (ORCH_SIGNING_KEY comes first)

    Every command reads these (from the environment or a .env file); a command on a project refuses
    a keyring folder, trusted-keys folder or key file inside that project's store (exit 3). Both
    folders, their .pub, 'revoked' and 'active' files, the folders above them (up to the home
    folder; sticky folders such as /tmp, yours or root's, excepted, but never as a keyring folder
    itself) and every symbolic link on the way must be owned by you or root and writable only by
    their owner (else exit 8: others could make a key of their own trusted; chmod go-w, chown).
    """


def keys_command(fn: Callable[..., None]) -> Callable[..., None]:
    """``--json`` and the error mapping of ``project_command`` for a ``keys`` command (no project)."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @functools.wraps(fn)
    def wrapper(as_json: bool, **kwargs: Any) -> None:
        out = Output(as_json)
        with reported_errors(out):
            fn(out, **kwargs)

    return wrapper


@keys.command("list", context_settings=CONTEXT)
@keys_command
def keys_list(out: Output) -> None:
    """Show where the signing key comes from (keyring: the keyring folder ORCH_KEYRING_DIR, or ORCH_SIGNING_KEY,
    or the ORCH_SIGNING_KEY_FILE path), the key that will sign (and whether it is revoked, or has no <kid>.pub to
    verify what it signs: writes are refused then), the folders read for trusted keys and revoked ids (the keyring
    folder, then ORCH_TRUSTED_KEYS_DIR; each with the variable naming it and whether it exists), and the trusted
    and revoked key ids."""
    from orchestrator.key_files import key_folders, load_keyring

    ring = load_keyring()
    signer = ring.signing_key_id()
    revoked = signer in ring.revoked
    # the folder's active key signs only when its .pub is there to verify what it signs (``_check_active_pair``)
    untrusted = signer is not None and signer not in ring.trusted
    folders = [{"path": str(folder), "from": variable, "exists": folder.is_dir()} for folder, variable in key_folders()]
    data = {"keyring": ring.source, "signing_key": signer, "signing_key_revoked": revoked,
            "signing_key_trusted": not untrusted, "folders": folders,
            "trusted": sorted(ring.trusted), "revoked": sorted(ring.revoked)}
    refused = ("REVOKED" if revoked else f"NOT TRUSTED: no {signer}.pub verifies it" if untrusted else None)
    shown = {"signing_key": (f"{signer} ({refused}: writes are refused until another key signs. "
                             f"{ring.how_to_replace()})" if refused else
                             signer or "none yet (the first write creates one in the keyring folder)"),
             "folders": "\n".join(f"{'' if i == 0 else ' ' * 13}{f['path']} ({f['from']}"
                                  + ("" if f["exists"] else ", not there yet: the first write creates it") + ")"
                                  for i, f in enumerate(folders)),
             "trusted": ", ".join(data["trusted"]) or "none", "revoked": ", ".join(data["revoked"]) or "none"}
    out.emit(data, "\n".join(f"{k:<12} {shown.get(k, v)}" for k, v in data.items()
                              if k not in ("signing_key_revoked", "signing_key_trusted")))


@keys.command("rotate", context_settings=CONTEXT)
@keys_command
def keys_rotate(out: Output) -> None:
    """Create a new signing key in the keyring folder (ORCH_KEYRING_DIR) and make it active; old public keys keep
    verifying old events.

    A process reads the active key once, when it first signs: restart running workers to sign with the new key.
    Rotations run at once (on one machine) each make a whole key, one after the other: the last one made is active,
    the others' stay trusted (keys list shows which is active).
    With ORCH_SIGNING_KEY or ORCH_SIGNING_KEY_FILE set, that key still signs (a warning says so). Copy the new
    <kid>.pub into the ORCH_TRUSTED_KEYS_DIR of every other machine that verifies or runs these jobs.
    """
    from orchestrator.errors import SigningKeyError
    from orchestrator.key_files import keyring_dir, signing_variable, write_keypair
    from orchestrator.key_paths import check_folders_above

    folder = keyring_dir()
    check_folders_above(folder, "keyring folder")  # a new private key goes nowhere another user could swap
    try:
        kid = write_keypair(folder)
    except OSError as exc:
        raise SigningKeyError(f"cannot write a new key in the keyring folder {folder}: {exc.strerror or exc}") from None
    variable = signing_variable()  # a key set in the environment signs whatever the folder's active key is
    warning = None
    if variable:
        warning = (f"{variable} is set, so its key still signs, not {kid}: unset it to sign with the keyring "
                   "folder's active key")
        echo(f"warning: {warning}", err=True)
    out.emit({"signing_key": kid, "keyring": str(folder), "warning": warning}, f"new signing key {kid} in {folder}")


@keys.command("revoke", context_settings=CONTEXT)
@click.argument("kid")
@keys_command
def keys_revoke(out: Output, kid: str) -> None:
    """Stop trusting KID (an id `keys list` shows): events it signed fail verification with KEY_REVOKED.

    KID must be a key of the keyring (of ORCH_KEYRING_DIR or ORCH_TRUSTED_KEYS_DIR, or the key ORCH_SIGNING_KEY
    or ORCH_SIGNING_KEY_FILE holds; INVALID_ID for a malformed id, INVALID_INPUT for an unknown one); its id is
    added to the 'revoked' file of the keyring folder (ORCH_KEYRING_DIR) of this machine only: revoke it on
    every other machine too. Revoking it again changes nothing. Revokes at once (and rotations) take turns on the
    folder's .lock: each id is kept, and the file is replaced whole. Revoking the key that signs stops every
    write (SIGNING_KEY_ERROR, exit 8) until `keys rotate` makes a new key active: rotate and restart the workers first. A running worker reads the
    keyring folders again once a minute, and stops writing with a key revoked since; until then it signs with
    the key it started with, and what it signs fails verification: revoking a key of this keyring folder that
    is no longer the active one warns so (restart the workers started before the rotation).
    """
    from orchestrator.key_files import PRIVATE_SUFFIX, revoke

    ring, written = revoke(kid)
    already = not written
    warning = None
    active = ring.signing_key_id()
    if kid == active:
        warning = (f"{kid} is the active signing key: writes are refused (exit 8) until another key signs. "
                   + ring.how_to_replace())
    elif ring.signer_folder is not None and os.path.lexists(ring.signer_folder / f"{kid}{PRIVATE_SUFFIX}"):
        # a key this machine signed with: a worker started before `keys rotate` may still hold it
        warning = (f"{kid} is a key of this keyring folder: a worker started while it was the active key (before "
                   f"{active} was) still signs with it until it reads the keyring folders again (within a minute), "
                   "then stops (exit 8) at its next write; what it signs meanwhile fails verification (KEY_REVOKED). "
                   "Restart such workers, to sign with the active key")
    if warning:
        echo(f"warning: {warning}", err=True)
    out.emit({"revoked": kid, "already_revoked": already, "warning": warning},
             f"{kid} was already revoked; nothing changed" if already else f"revoked {kid}")
