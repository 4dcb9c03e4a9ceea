"""Who may change the keys: a keyring folder or key file, and every folder above one, must be owned by this user or
root and written by its owner only (its user private group counting as the owner), as ssh's StrictModes asks of
``authorized_keys`` and the folders above it; symbolic links on the way are followed one at a time and checked too.
``orchestrator.key_files`` reads and writes the keys, after these checks.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping

from orchestrator.errors import SigningKeyError


def home_folder(env: Mapping[str, str] | None = None) -> str | None:
    """The user's home folder: ``HOME`` when it is an absolute path; when it is not set, the user database's (as
    Python's ``expanduser`` and ssh take it). An empty or relative ``HOME`` is no home (None): ``expanduser`` would
    make it ``/`` or a folder of the current one, a keyring that changes with the folder a command runs in."""
    env = os.environ if env is None else env
    home = env.get("HOME")
    if home is None:
        import pwd

        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:  # a uid the database does not know (a container's)
            return None
    return home if os.path.isabs(home) else None


CHANGES_KEYS = "change which keys are trusted or which key signs"


def owned_by_user(path: Path, what: str, st: os.stat_result, harm: str = CHANGES_KEYS) -> None:
    """Refuse a keyring folder or key file owned by neither this user (effective uid) nor root: its owner may rewrite
    it whatever its mode, to add a key of their own, revoke or trust one again, or pick the key that signs (as ssh
    refuses key files and folders owned by others). ``harm`` says what its owner could do, in the message (a
    ``.env``'s: ``config.load_dotenv_file``). Checked on the status already taken, never a second ``stat``."""
    euid = os.geteuid()
    if not user_or_root(st):
        raise SigningKeyError(f"{what} {path} is owned by uid {st.st_uid}, neither this user (uid {euid}) nor root, "
                              f"who could {harm}; check what it holds, then run: chown {euid} {path}")


def user_or_root(st: os.stat_result, uid: int | None = None) -> bool:
    """Whether a file or folder of this status is owned by this user (effective uid; ``uid``: that user) or root: any
    other owner may change it whatever its mode (``chmod`` it back), so no mode makes it safe (``owned_by_user``; the
    worker's store folders, ``worker_folders.WorkerFolders._trust``)."""
    return st.st_uid in (os.geteuid() if uid is None else uid, 0)


def named_user(uid: int) -> str:
    """``uid`` as messages name the user judged for: "this user (uid N)" when it is the effective uid."""
    return f"this user (uid {uid})" if uid == os.geteuid() else f"uid {uid}"


def _home_of(uid: int) -> str | None:
    """The home folder of the user ``uid`` (the user database's), when it is not this user: its files' rule stops
    there, as for this user's own ``home_folder``."""
    import pwd

    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None
    return home if os.path.isabs(home) else None


MAKES_KEYS_TRUSTED = "make keys of their own trusted"


KEYS_OF_THEIR_OWN = "keep the keys in a folder of their own (mkdir -m 700 {path}/keys, say)"


def owner_writes(path: Path, what: str, st: os.stat_result, harm: str = MAKES_KEYS_TRUSTED,
                 shared_fix: str = KEYS_OF_THEIR_OWN) -> None:
    """Refuse a folder or file that decides which keys are trusted (a keyring folder, a ``.pub``, ``revoked``) or
    which key signs (``active``) when others than its owner may write it: they could add a key of their own, trust
    a revoked one again, or make a key revoked elsewhere sign (as ssh refuses an ``authorized_keys`` others may
    write). ``harm`` says what they could do, in the message. A user private group counts as the owner
    (``others_may_write``). A sticky folder (/tmp) is no exception, unlike one above a keyring folder: others may
    not replace what is in it, but may add to it (a ``.pub``, an ``active`` when there is none); made so to be
    shared, it is not to be ``chmod``-ed: ``shared_fix`` says what to do instead (``{path}`` the folder's)."""
    if not others_may_write(st):
        return
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        raise SigningKeyError(f"{what} {path} is a shared folder (sticky, as /tmp) others may add files to, who could "
                              f"{harm}; {shared_fix.format(path=path)}")
    raise SigningKeyError(f"{what} {path} may be written by others than its owner, who could {harm}; "
                          f"run: chmod go-w {path}")


def only_its_owner_changes(path: Path, what: str, st: os.stat_result, harm: str,
                           shared_fix: str = KEYS_OF_THEIR_OWN) -> None:
    """``owned_by_user`` and ``owner_writes`` with one ``harm``: the keys' rule for another file or folder that decides
    what every command does (a ``.env``, the folder a worker imports handler modules from)."""
    owned_by_user(path, what, st, harm)
    owner_writes(path, what, st, harm, shared_fix)



def others_may_write(st: os.stat_result) -> bool:
    """Whether others than the owner may write a file or folder of this status. Group-writable is not, when its group
    is the owner's user private group (its one member is the owner: Debian and Ubuntu give each user one, and a
    umask of 002 then makes every new folder, ``~/.config`` say, group-writable), as Debian's OpenSSH accepts."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _user_private_group(st.st_gid, st.st_uid)


def _user_private_group(gid: int, uid: int) -> bool:
    """Whether the group ``gid`` has exactly one member, the user ``uid``: named in the group's entry, or holding it
    as primary group, and nobody else either way (Debian's ``secure_permissions``). Read from the user and group
    databases only for a group-writable file or folder (``pwd.getpwall`` reads every user), once a process."""
    key = (gid, uid)
    if key not in _PRIVATE_GROUPS:
        _PRIVATE_GROUPS[key] = _only_member(gid, uid)
    return _PRIVATE_GROUPS[key]


_PRIVATE_GROUPS: dict[tuple[int, int], bool] = {}


def may_write(folder: str, st: os.stat_result, uid: int | None = None) -> bool:
    """Whether the user ``uid`` (this one when None) may make and remove entries in the folder ``folder`` (of status
    ``st``): write and search it. This user's asked of the kernel (``os.access``, effective ids: its groups, an ACL,
    a capability); another's read from the mode, its owner and the groups the user database gives ``uid`` (``verify``
    judging for the store's user: an ACL is not seen, and a user the database does not know has no group)."""
    if uid is None or uid == os.geteuid():
        return os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    if uid == 0:
        return True
    if uid == st.st_uid:
        bits = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid in _groups_of(uid):
        bits = stat.S_IWGRP | stat.S_IXGRP
    else:
        bits = stat.S_IWOTH | stat.S_IXOTH
    return st.st_mode & bits == bits


def _groups_of(uid: int) -> set[int]:
    import pwd

    try:
        user = pwd.getpwuid(uid)
    except KeyError:  # a user the database does not know
        return set()
    return set(os.getgrouplist(user.pw_name, user.pw_gid))


def _only_member(gid: int, uid: int) -> bool:
    import grp
    import pwd

    try:
        group, owner = grp.getgrgid(gid), pwd.getpwuid(uid)
    except KeyError:  # a group or user the databases do not know: nobody can say who is in it
        return False
    if any(name != owner.pw_name for name in group.gr_mem):
        return False
    members = set(group.gr_mem)
    for user in pwd.getpwall():
        if user.pw_gid == gid:
            if user.pw_uid != uid:
                return False
            members.add(user.pw_name)
    return bool(members)


MAX_LINKS = 40  # symbolic links followed resolving one path, as Linux's path lookup (ELOOP past it)

# found safe by ``check_folders_above``: the paths whose way was walked, and the folders on those ways; each is looked
# at once a process, until ``forget_checked_folders``
_SAFE_PATHS: set[str] = set()
_SAFE_FOLDERS: set[str] = set()


def forget_checked_folders() -> None:
    """Look at every folder again at the next ``check_folders_above``: a long-running process, before it reads keys
    again (``key_files.read_folders_again``, a signing key loaded when first used), sees a folder made unsafe since
    it started."""
    _SAFE_PATHS.clear()
    _SAFE_FOLDERS.clear()


def check_folders_above(path: Path, what: str, uid: int | None = None) -> None:
    """Refuse ``path`` (a keyring folder, trusted-keys folder or signing key file) when a folder above it, up to the
    user's home folder when it lies inside it, else up to ``/``, is owned by neither this user nor root, or may be
    written by others than its owner: whoever may write a folder may rename what it holds away and put a folder
    or key of their own in its place (as ssh's StrictModes checks every folder above ``authorized_keys``). A
    folder with the sticky bit owned by this user or root (``/tmp``) is safe: others may not rename or remove there
    the entries they do not own (the next one on the way is checked to be this user's or root's); the keyring folder
    itself is not (``owner_writes``: others could add keys to it). A folder not there yet is passed (the first
    write creates it, owner-only). Symbolic links on the way, ``path`` itself included, are followed one at a time
    as the kernel follows them (``_folders_looked_in``), so the folder of each link is checked, and its owner. One
    ``lstat`` of each, once a process (``_SAFE_PATHS``, ``_SAFE_FOLDERS``): every command's start runs this. ``uid``:
    judged for that user instead (``verify`` of a store another user runs), up to that user's home folder, nothing
    remembered."""
    judged = os.geteuid() if uid is None else uid
    own = judged == os.geteuid()
    safe = _SAFE_FOLDERS if own else set()
    text = os.fspath(path)
    try:
        where = text if os.path.isabs(text) else os.path.join(os.getcwd(), text)  # as the kernel: never normalized
    except OSError as exc:  # the current folder was removed
        raise SigningKeyError(f"cannot check the folders above the {what} {path}: {exc.strerror or exc}") from None
    if own and where in _SAFE_PATHS:
        return
    home = home_folder() if own else _home_of(judged)
    home = os.path.realpath(home) if home else None  # compared with paths that hold no link
    seen: dict[str, os.stat_result] = {}
    for folder in _folders_looked_in(where, path, what, seen, judged, safe):
        _check_folder_and_above(folder, home, path, what, seen, judged, safe)
    if own:
        _SAFE_PATHS.add(where)


def _folders_looked_in(where: str, path: Path, what: str, seen: dict[str, os.stat_result], uid: int,
                       safe: set[str]) -> list[str]:
    """The folders in which resolving ``where`` (absolute) looks a name up, each as a path with no link in it: the
    folder of each symbolic link met, and the one the path ends in (the last one there, when the rest is not there
    yet). Links are followed one at a time, as the kernel does (``..`` after a link is the parent of where it leads):
    whoever may write the folder of any link on the way, not only of the first or the last, may point it elsewhere
    and pick the keys. Refuses a link owned by neither this user nor root, and a way through more than
    ``MAX_LINKS`` links (a loop). ``seen`` gets the status of each folder looked at; ``uid``: the user judged for,
    ``safe``: the folders found safe for that user before."""
    resolved, todo, links, looked_in = os.sep, where.split(os.sep)[::-1], 0, []
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)  # ``resolved`` holds no link: its parent is the one the kernel takes
            continue
        entry = os.path.join(resolved, name)
        if entry in safe:  # a folder, looked at before
            resolved = entry
            continue
        st = _lstat(entry, path, what)
        if st is None:  # not there yet, nor anything below it
            return looked_in + [resolved]
        if not stat.S_ISLNK(st.st_mode):
            seen[entry] = st
            resolved = entry
            continue
        looked_in.append(resolved)
        _link_owned_by_user(entry, st, path, what, uid, is_path=not todo and not links)
        links += 1
        if links > MAX_LINKS:
            raise SigningKeyError(f"the {what} {path} leads through more than {MAX_LINKS} symbolic links (a loop?); "
                                  "point it at the folder or file itself")
        try:
            target = os.readlink(entry)
        except OSError as exc:  # replaced since it was looked at
            raise SigningKeyError(f"cannot follow the link {entry} on the way to the {what} {path}: "
                                  f"{exc.strerror or exc}") from None
        if os.path.isabs(target):
            resolved = os.sep
        todo.extend(target.split(os.sep)[::-1])
    return looked_in + [os.path.dirname(resolved)]


def _lstat(entry: str, path: Path, what: str) -> os.stat_result | None:
    """The status of ``entry`` (not followed), None when it is not there (what reads ``path`` says so)."""
    try:
        return os.lstat(entry)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise SigningKeyError(f"cannot check {entry} on the way to the {what} {path}: {exc.strerror or exc}") from None


def _link_owned_by_user(link: str, st: os.stat_result, path: Path, what: str, uid: int, *, is_path: bool) -> None:
    """Refuse a symbolic link on the way to ``path`` (``is_path``: ``path`` itself) owned by neither the user
    ``uid`` nor root: in a sticky folder (/tmp) its owner may replace it, pointing it elsewhere."""
    if user_or_root(st, uid):
        return
    link_is = f"the {what} {path} is a symbolic link" if is_path else \
        f"the symbolic link {link} on the way to the {what} {path} is"
    raise SigningKeyError(f"{link_is} owned by uid {st.st_uid}, neither {named_user(uid)} nor root, who could "
                          f"point it elsewhere; check where it leads, then run: chown -h {uid} {link}")


def _check_folder_and_above(folder: str, home: str | None, path: Path, what: str,
                            seen: dict[str, os.stat_result], uid: int, safe: set[str]) -> None:
    """Check ``folder`` (a path with no link in it) and each folder above it, up to ``home`` when it lies inside it,
    else up to ``/`` (``check_folders_above``), with the status in ``seen`` when there is one, for the user
    ``uid``; each found safe is added to ``safe``."""
    inside_home = home is not None and os.path.commonpath([folder, home]) == home
    while True:
        if folder not in safe:
            st = seen.get(folder) or _lstat(folder, path, what)
            if st is not None:
                _check_folder_above(folder, st, path, what, uid)
                safe.add(folder)
        parent = os.path.dirname(folder)
        if parent == folder or (inside_home and folder == home):
            return
        folder = parent


def _check_folder_above(folder: str, st: os.stat_result, path: Path, what: str, uid: int) -> None:
    if not user_or_root(st, uid):
        raise SigningKeyError(f"the folder {folder} above the {what} {path} is owned by uid {st.st_uid}, neither "
                              f"{named_user(uid)} nor root, who could put a {what} of their own in its place; check "
                              f"what it holds, then run: chown {uid} {folder} (or keep the {what} elsewhere)")
    if stat.S_ISLNK(st.st_mode):  # it held none when its way was walked a moment ago
        raise SigningKeyError(f"the folder {folder} above the {what} {path} was replaced by a symbolic link while it "
                              "was checked; check what it leads to, then run the command again")
    if others_may_write(st) and not st.st_mode & stat.S_ISVTX:
        raise SigningKeyError(f"the folder {folder} above the {what} {path} may be written by others than its owner, "
                              f"who could put a {what} of their own in its place; run: chmod go-w {folder} (or keep "
                              f"the {what} elsewhere)")
