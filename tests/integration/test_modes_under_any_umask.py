"""What the product writes is never writable by other users, whatever the umask: a run's folder and the files in it
(its context, its terminal payload) are owner-only, and so is a job's artifact folder; the store's own folders and
files follow the umask for reading, never for writing; export bundles and anchors are owner-only. Until 2026-12-07,
under a umask of 000 (or 002 with a shared group) another user could write a run's ``terminal.json`` and the worker
signed the forged outcome."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import as_user, events, folder_of, make_worker, store_env_in
from orchestrator import Orchestrator, key_paths
from orchestrator.artifacts_source import Need, measure
from orchestrator.errors import StorageError
from orchestrator.handler_host import claim_host_folder
from orchestrator.integrity import export_anchor
from orchestrator.output_file import OutputFile
import orchestrator.reliability.handlers  # noqa: F401 - registers rel.echo
import worker_handlers  # noqa: F401 - registers t.artifact_by_key
from orchestrator.recovery import SWEEP_EVERY
from orchestrator.run_folder import write_bytes_atomic
from orchestrator.transfer import export_project
from orchestrator.worker_folders import WorkerFolders

OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
OTHERS_ANY = stat.S_IRWXG | stat.S_IRWXO

DONE = 'printf \'{"status":"done","summary":"ok"}\' > "$ORCH_TERMINAL_FILE"'  # a command's payload
# the command reports the modes of its run folder, its context file and its artifact folder, then its payload
REPORT_MODES = ('stat -c %a "$(dirname "$ORCH_CONTEXT_FILE")" "$ORCH_CONTEXT_FILE" "$ORCH_ARTIFACTS_DIR" > modes; '
                + DONE)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def loose(root: Path) -> list[str]:
    """Every folder or file below ``root`` (itself included) that group or others may write, with its mode. Not
    below an owner-only folder, which others cannot enter: what a run writes in its own folders is the run's."""
    found = []
    for folder, dirs, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & OTHERS_WRITE:
                found.append(f"{oct(stat.S_IMODE(mode))} {os.path.relpath(path, root)}")
        dirs[:] = [n for n in dirs if os.lstat(os.path.join(folder, n)).st_mode & OTHERS_ANY]
    return sorted(set(found))


@pytest.mark.parametrize("handler_process", ["reused", "per-run"])
def test_nothing_a_submit_a_worker_run_and_an_export_write_under_a_umask_of_000_is_writable_by_others(
        base: Path, tmp_path: Path, keyring, handler_process: str) -> None:
    with umask(0):
        orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
        command = orch.submit("command", {"argv": ["sh", "-c", REPORT_MODES]})
        python = orch.submit("t.artifact_by_key", {})  # its folder made by its handler (``JobContext``)
        worker = make_worker(orch, handler_process=handler_process, artifacts_import=True)
        worker.run_once()
        worker.run_once()
        copy = orch.submit("rel.echo", {"artifacts_from": [command]})  # its folder made by the copy
        worker.run_once()
        worker.close()
        bundle, anchor = tmp_path / "bundle.jsonl", tmp_path / "anchor.json"
        with OutputFile(bundle, "the bundle") as out:
            export_project(orch, out)
        export_anchor(orch, anchor)
    assert orch.status(command).state == "succeeded" and orch.status(python).state == "succeeded"
    run_dir, context, artifacts = (base / "proj/.orchestrator/artifacts" / command / "modes").read_text().split()
    assert (run_dir, context, artifacts) == ("700", "600", "700")
    folders = base / "proj/.orchestrator/artifacts"
    assert [stat.S_IMODE(os.stat(folders / job).st_mode) for job in (command, python, copy)] == [0o700] * 3
    assert (folders / copy / "inputs" / command / "modes").is_file()
    assert loose(base) == []
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600 and stat.S_IMODE(os.stat(anchor).st_mode) == 0o600


def test_a_file_written_whole_into_a_run_folder_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """The per-run Python child's payload, and a command's context, as ``write_bytes_atomic`` writes them."""
    with umask(0):
        write_bytes_atomic(tmp_path / "terminal.json", b"{}")
    assert stat.S_IMODE(os.stat(tmp_path / "terminal.json").st_mode) == 0o600


def test_a_handler_process_folder_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """``runs/host-*``: the reused handler process's output goes there, and its tail into a run's event."""
    with umask(0):
        fd = claim_host_folder(tmp_path / "runs" / "host-1-ab")
    os.close(fd)
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "runs", tmp_path / "runs" / "host-1-ab")] == [
        0o755, 0o700]


def test_an_export_replacing_a_file_others_could_read_is_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "bundle.jsonl"
    target.write_bytes(b"old\n")
    os.chmod(target, 0o666)
    with OutputFile(target, "the bundle") as out:
        out.write(b"new\n")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_a_worker_takes_the_write_bits_of_others_off_the_folders_a_looser_umask_made_before(
        orch: Orchestrator) -> None:
    """A store made before 2026-12-07 under a umask of 000: the project folder, the worker's folders, and a job's
    artifact folder, lose
    what let another user rename a run folder away or put files into a job's; a run's folder is made owner-only."""
    job = orch.submit("command", {"argv": ["sh", "-c", REPORT_MODES]})
    state = orch.store.root
    job_folder = state / "artifacts" / job
    for folder in (state.parent, state, state / "runs", state / "artifacts", job_folder):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o777)
    make_worker(orch).run_once()
    assert orch.status(job).state == "succeeded"
    assert [stat.S_IMODE(os.stat(f).st_mode)
            for f in (state.parent, state, state / "runs", state / "artifacts")] == [0o755] * 4  # project: the fix
    assert (job_folder / "modes").read_text().split() == ["700", "600", "700"]


def test_the_store_follows_a_private_umask(base: Path, keyring) -> None:
    """Reading is the umask's to decide: under 077 nothing the store makes is readable by others."""
    with umask(0o077):
        orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
        orch.submit("rel.echo", {"a": 1})
        make_worker(orch).run_once()
    modes = {os.path.relpath(os.path.join(d, n), base): stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode)
             for d, dirs, files in os.walk(base) for n in dirs + files}
    assert modes and all(not mode & OTHERS_ANY for mode in modes.values()), json.dumps(
        {p: oct(m) for p, m in modes.items() if m & OTHERS_ANY})


OTHER_UID = 12345  # no user of the test machine: the tests run as root, who may chown to it
MADE_OWNER_ONLY = "made writable by its owner alone"


def worker_folders(orch: Orchestrator) -> dict[str, Path]:
    state = orch.store.root
    return {"project": state.parent, "state": state, "runs": state / "runs", "artifacts": state / "artifacts"}


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
@pytest.mark.parametrize("which", ["project", "state", "runs", "artifacts"])
def test_a_worker_refuses_a_store_folder_another_user_owns_whatever_its_mode(
        orch: Orchestrator, which: str, caplog: pytest.LogCaptureFixture) -> None:
    """Its owner may chmod it back and rename a run's folder (or .orchestrator) away: until the fix the worker said
    it had made it its owner's alone (it had not, or the owner could undo it) and ran its jobs in there."""
    job = orch.submit("command", {"argv": ["true"]})
    folders = worker_folders(orch)
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    os.chmod(folders[which], 0o777)
    os.chown(folders[which], OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=f"{folders[which]} is owned by uid {OTHER_UID}, neither this user .*"
                                           f"chown {os.geteuid()} {folders[which]}$"):
        make_worker(orch)
    assert orch.status(job).state == "queued"
    assert MADE_OWNER_ONLY not in caplog.text


@pytest.mark.parametrize("which", ["project", "state", "runs", "artifacts"])
def test_a_folder_others_may_write_whose_mode_this_user_cannot_change_is_refused_never_said_changed(
        orch: Orchestrator, which: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A folder root owns, mode 777, under a worker that is not root: ``fchmod`` is refused (as here, made so), and
    until the fix the worker said it was done and ran its jobs in a folder anyone could write."""
    job = orch.submit("command", {"argv": ["true"]})
    folders = worker_folders(orch)
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    os.chmod(folders[which], 0o777)

    def refused(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)
    with pytest.raises(StorageError, match=f"{folders[which]} may be written by others than its owner \\(mode 777\\)"
                                           f".*chmod go-w {folders[which]}$"):
        make_worker(orch)
    assert orch.status(job).state == "queued"
    assert MADE_OWNER_ONLY not in caplog.text


def test_a_folder_its_owners_private_group_may_write_is_left_as_it_is_and_nothing_is_said(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Debian's umask 002 and a user private group make the store's folders 0775: its one member is the owner (the
    key files' rule, ``key_paths.others_may_write``); until the fix the worker warned, and changed them, each start."""
    monkeypatch.setattr(key_paths, "_user_private_group", lambda gid, uid: True)
    folders = worker_folders(orch)
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o775)
    make_worker(orch)
    assert [stat.S_IMODE(os.stat(f).st_mode) for f in folders.values()] == [0o775] * 4
    assert MADE_OWNER_ONLY not in caplog.text
    assert orch.verify().warnings == []  # nor by verify


RAN = {"command": {"argv": ["sh", "-c", "echo ran > ran; " + DONE]}, "rel.echo": {"a": 1}}


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
@pytest.mark.parametrize("kind", sorted(RAN))
def test_a_worker_refuses_to_run_a_job_whose_own_folder_another_user_owns_and_hands_the_job_back(
        orch: Orchestrator, kind: str) -> None:
    """A job's folder left by an older release (or another user's worker): its owner may ``chmod`` it back, and put
    files among the job's artifacts, or links its run would write through. Until the fix ``restrict`` left it as it
    was (a worker not root) or took its mode for its owner to put back (root), and the job ran in it."""
    job = orch.submit(kind, RAN[kind])
    worker = make_worker(orch)
    folder = orch.store.root / "artifacts" / job
    folder.mkdir(mode=0o700)
    os.chown(folder, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=f"{folder} is owned by uid {OTHER_UID}, neither this user .* no job is run "
                                           f"in it; .*as root: chown -R {os.geteuid()} {folder}$") as refused:
        worker.run_once()
    assert refused.value.exit_code == 10
    assert [e["type"] for e in events(orch, job)] == ["job_submitted", "job_claimed", "job_released"]  # handed back
    assert events(orch, job)[-1]["data"]["error_code"] == "STORAGE_ERROR" and orch.status(job).state == "queued"
    assert os.listdir(folder) == [] and stat.S_IMODE(os.stat(folder).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_a_jobs_folder_that_is_a_link_inside_the_store_is_checked_where_it_leads(orch: Orchestrator) -> None:
    """A run may make ``artifacts/<another job>`` (its ``$ORCH_ARTIFACTS_DIR/..``) a link to a folder inside the
    store: until the fix the link was looked at, not the folder, and the job ran in a folder another user owns."""
    job = orch.submit("command", RAN["command"])
    worker = make_worker(orch)
    folder = orch.store.root / "artifacts" / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, OTHER_UID, OTHER_UID)
    (orch.store.root / "artifacts" / job).symlink_to(folder)
    with pytest.raises(StorageError, match=f"{folder} is owned by uid {OTHER_UID}"):
        worker.run_once()
    assert orch.status(job).state == "queued" and os.listdir(folder) == []


def test_a_job_folder_others_may_use_whose_mode_this_user_cannot_change_is_refused(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root's job folder (0755, made by an older release) under a worker that is not root: changing its mode is
    refused (as here, made so: ``fchmod``, and ``chmod`` by a handle, ``set_folder_mode``) and until the fix the run
    went on in a folder others could read, or write when it was 0777."""
    job = orch.submit("command", RAN["command"])
    worker = make_worker(orch)
    folder = orch.store.root / "artifacts" / job
    folder.mkdir()
    os.chmod(folder, 0o777)

    def refused(folder_or_fd: "int | str", mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)
    monkeypatch.setattr("orchestrator.worker_folders.set_folder_mode", refused)
    with pytest.raises(StorageError, match=f"{folder} may be used by others than its owner \\(mode 777\\).*"
                                           f"chmod 700 {folder}$"):
        worker.run_once()
    assert orch.status(job).state == "queued" and os.listdir(folder) == []


def test_a_job_folder_missing_its_owners_bits_whose_mode_this_user_cannot_change_is_never_said_made_700(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Root's job folder left 0600 under a worker that is not root (made so, as above): the worker cannot give it
    its owner's bits, so it does not say it did; the run meets the folder as it is."""
    job = orch.submit("command", RAN["command"])
    worker = make_worker(orch)
    folder = orch.store.root / "artifacts" / job
    folder.mkdir()
    os.chmod(folder, 0o600)

    def refused(folder_or_fd: "int | str", mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("orchestrator.worker_folders.set_folder_mode", refused)
    caplog.set_level(logging.WARNING)
    worker.run_once()
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o600
    assert "was not its owner's to use in full" not in caplog.text


def folder_of_a_finished_job(orch: Orchestrator, mode: int, owner: int | None = None) -> tuple[str, Path]:
    """A finished job's folder (``artifacts/<job_id>``, ``mode``, ``owner``) as an older release or another user's
    worker left it, holding a symbolic link ``key`` to a file only this user may read (``private``, beside the
    store). The job itself is not in the store: it ran elsewhere, its folder copied here (the README's way)."""
    job = "earlier-job"
    folder = orch.store.root / "artifacts" / job
    folder.mkdir(parents=True)
    private = orch.store.root.parent / "private"
    private.write_text("this user's own")
    private.chmod(0o600)
    (folder / "key").symlink_to(private)
    os.chmod(folder, mode)
    if owner is not None:
        os.lchown(folder / "key", owner, owner)
        os.chown(folder, owner, owner)
    return job, folder


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_a_copy_of_artifacts_from_never_reads_a_folder_another_user_owns_and_hands_the_job_back(
        orch: Orchestrator) -> None:
    """The copy follows a source's links: until the fix, a link another user put in a job folder of theirs had this
    user's own file copied into the job's ``inputs/``, where its handler reads it (and may publish it)."""
    source, folder = folder_of_a_finished_job(orch, 0o755, owner=OTHER_UID)
    job = orch.submit("command", {"argv": ["sh", "-c", DONE], "artifacts_from": [source]})
    worker = make_worker(orch, artifacts_import=True)
    with pytest.raises(StorageError, match=f"{folder} is owned by uid {OTHER_UID}, neither this user .*, who may "
                                           f"change it whatever its mode and put links there that a copy of "
                                           f"artifacts_from follows, to this user's own files: nothing of it is "
                                           f"copied; .*as root: chown -R {os.geteuid()} {folder}$") as refused:
        worker.run_once()
    assert refused.value.exit_code == 10
    assert [e["type"] for e in events(orch, job)][-1] == "job_released" and orch.status(job).state == "queued"
    assert not (orch.store.root / "artifacts" / job / "inputs").exists()  # before the fix: inputs/<source>/key copied


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_a_copy_of_artifacts_from_checks_the_folder_a_link_in_artifacts_leads_to(orch: Orchestrator) -> None:
    """A run may make ``artifacts/<name>`` (its ``$ORCH_ARTIFACTS_DIR/..``) a link to another job's folder: the copy
    follows it inside the store, so the folder it leads to is the one checked, not the link."""
    source, folder = folder_of_a_finished_job(orch, 0o755, owner=OTHER_UID)
    (orch.store.root / "artifacts" / "by-link").symlink_to(folder)
    job = orch.submit("command", {"argv": ["sh", "-c", DONE], "artifacts_from": ["by-link"]})
    with pytest.raises(StorageError, match=f"by-link is owned by uid {OTHER_UID}"):
        make_worker(orch, artifacts_import=True).run_once()
    assert not (orch.store.root / "artifacts" / job / "inputs").exists()


def test_a_copy_of_artifacts_from_takes_the_write_bits_of_others_off_a_source_before_it_reads_it(
        orch: Orchestrator, caplog: pytest.LogCaptureFixture) -> None:
    """A source folder of this user's that others may write (0777, an older release under umask 000) is made its
    owner's alone (0700, as the worker makes one) before it is read, said once; until the fix it stayed 0777."""
    source, folder = folder_of_a_finished_job(orch, 0o777)
    job = orch.submit("command", {"argv": ["sh", "-c", DONE], "artifacts_from": [source]})
    assert make_worker(orch, artifacts_import=True).run_once().job_id == job
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and orch.status(job).state == "succeeded"
    assert f"{folder} was writable by other users (mode 777)" in caplog.text


PLANTER_UID = 2001  # a real second user (``setpriv``), who plants a link where others may write


@pytest.mark.skipif(os.geteuid() != 0, reason="a second user: only root can be one here (setpriv)")
@pytest.mark.parametrize("where", ["", "sub/"])
def test_a_link_another_user_planted_in_a_source_others_could_write_is_never_copied_and_hands_the_job_back(
        orch: Orchestrator, where: str) -> None:
    """A source folder of this user's, 0777 (an older release under umask 000), is made 0700 before it is copied, but
    a link another user planted while it was open stays in it: until the fix it was followed, and this user's own
    file, which no other user may read, copied into the job's ``inputs/``. The link is made by uid 2001 itself,
    from inside the folder (``cwd``, as a process of theirs that had it open), with nothing of root's about it."""
    source, folder = folder_of_a_finished_job(orch, 0o777)
    (folder / "sub").mkdir()
    os.chmod(folder / "sub", 0o777)
    private = orch.store.root.parent / "private"
    subprocess.run(["setpriv", f"--reuid={PLANTER_UID}", f"--regid={PLANTER_UID}", "--clear-groups", "ln", "-s",
                    str(private), "planted"], cwd=folder / where, check=True)
    link = f"{folder}/{where}planted"
    assert os.lstat(link).st_uid == PLANTER_UID
    job = orch.submit("command", {"argv": ["sh", "-c", DONE], "artifacts_from": [source]})
    with pytest.raises(StorageError, match=f"^{link} is owned by uid {PLANTER_UID}, neither this user .* nor root, "
                                           f"who may have put it there .*: nothing of {source} is copied; check what "
                                           f"it is .*, as root: chown -hR {os.geteuid()} {link}$") as refused:
        make_worker(orch, artifacts_import=True).run_once()
    assert refused.value.exit_code == 10
    assert [e["type"] for e in events(orch, job)][-1] == "job_released" and orch.status(job).state == "queued"
    assert not (orch.store.root / "artifacts" / job / "inputs").exists()  # before the fix: inputs/<source>/planted


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_a_folder_another_user_owns_reached_through_a_link_of_this_users_is_never_walked(tmp_path: Path) -> None:
    """The link is this user's, the folder it leads to another user's, who may put links of their own in it."""
    theirs, source = tmp_path / "theirs", tmp_path / "source"
    theirs.mkdir()
    (theirs / "f.txt").write_text("theirs")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    source.mkdir()
    (source / "shared").symlink_to(theirs)
    with pytest.raises(StorageError, match=f"^{theirs}, reached through the symbolic link {source}/shared, is owned by "
                                           f"uid {OTHER_UID}, neither this user"):
        measure(source, None, "earlier-job", lambda: None, Need())


def test_a_source_others_may_write_whose_mode_this_user_cannot_change_is_never_copied(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root's source folder, 0777, under a worker that is not root (``fchmod`` refused, as here, made so)."""
    source, folder = folder_of_a_finished_job(orch, 0o777)
    job = orch.submit("command", {"argv": ["sh", "-c", DONE], "artifacts_from": [source]})

    def refused(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)
    with pytest.raises(StorageError, match=f"{folder} may be written by others than its owner \\(mode 777\\).*: "
                                           f"nothing of it is copied; .* chmod go-w {folder}$"):
        make_worker(orch, artifacts_import=True).run_once()
    assert orch.status(job).state == "queued" and not (orch.store.root / "artifacts" / job / "inputs").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_stale_recovery_never_walks_a_jobs_folder_another_user_owns(orch: Orchestrator) -> None:
    """Recovery lists what a dead run left as the artifacts a human is asked to check, and renames those whose names
    hold a secret: until the fix it took the files another user put in a folder of theirs as the run's (the job sent
    to ``waiting_human`` for them) and renamed there. Now the folder is not looked at, said in a warning; the job's
    next run hands it back and stops the worker, naming the ``chown``, as for any run in such a folder."""
    job = orch.submit("rel.echo", {"a": 1})
    t = orch.clock()
    assert make_worker(orch, worker_id="dead", lease_seconds=5).claim(now=t).job_id == job  # ... and its worker dies
    folder = orch.store.root / "artifacts" / job
    folder.mkdir(parents=True)
    (folder / "token=planted.txt").write_text("another user's")
    os.chown(folder / "token=planted.txt", OTHER_UID, OTHER_UID)
    os.chown(folder, OTHER_UID, OTHER_UID)
    assert make_worker(orch).recover_stale(now=t + 60) == [job]
    last = events(orch, job)[-1]
    assert last["type"] == "stale_recovered" and last["data"]["artifacts"] == [] and last["data"]["to"] == "queued"
    assert os.listdir(folder) == ["token=planted.txt"]  # never renamed
    with pytest.raises(StorageError, match=f"{folder} is owned by uid {OTHER_UID}"):
        make_worker(orch).run_once(now=t + 120)
    assert orch.status(job).state == "queued"


def project_below(tmp_path: Path, keyring, mode: int) -> tuple[Orchestrator, Path]:
    """A project whose base path is a folder of ``mode`` (its own parent: ``tmp_path``)."""
    above = tmp_path / "above"
    above.mkdir()
    os.chmod(above, mode)
    return Orchestrator(base_path=above / "base", project_id="proj", keyring=keyring), above


def test_a_worker_refuses_a_project_folder_below_a_folder_others_may_write(tmp_path: Path, keyring) -> None:
    """Whoever may write a folder above the project folder may rename the project (or a folder between) away and put
    a store of their own in its place, as the keys' rule says of a keyring's folders. Until the fix the worker
    checked the project folder and below only, and ran its jobs there."""
    orch, above = project_below(tmp_path, keyring, 0o777)
    job = orch.submit("command", RAN["command"])
    project = above / "base" / "proj"
    with pytest.raises(StorageError, match=f"the folder {above} above the project folder {project} may be written by "
                                           f"others than its owner, who could put a project folder of their own in its "
                                           f"place; run: chmod go-w {above}"):
        make_worker(orch)
    assert orch.status(job).state == "queued"


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_a_worker_refuses_a_project_folder_below_a_folder_another_user_owns(tmp_path: Path, keyring) -> None:
    orch, above = project_below(tmp_path, keyring, 0o755)
    os.chown(above, OTHER_UID, OTHER_UID)
    with pytest.raises(StorageError, match=f"the folder {above} above the project folder .* is owned by uid "
                                           f"{OTHER_UID}, .*chown {os.geteuid()} {above}"):
        make_worker(orch)


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
@pytest.mark.parametrize("loosened", ["above", "project", "artifacts"])
def test_a_worker_stops_at_its_next_sweep_once_a_folder_it_trusted_is_loosened(
        tmp_path: Path, keyring, loosened: str) -> None:
    """A folder above the project folder, or one of the store's, made writable by others (or another user's) while a
    worker runs: until the fix it was looked at when the worker started only, and the worker ran jobs there until
    it was restarted. Now it is looked at again with the keyring, at each sweep (``SWEEP_EVERY``), and the worker
    stops (``StorageError``, exit 10) before its next claim."""
    orch, above = project_below(tmp_path, keyring, 0o755)
    worker = make_worker(orch)
    first = orch.submit("command", RAN["command"])
    assert worker.run_once().job_id == first
    folder = {"above": above, "project": above / "base" / "proj",
              "artifacts": orch.store.root / "artifacts"}[loosened]
    os.chmod(folder, 0o777)
    os.chown(folder, OTHER_UID, OTHER_UID)  # another user's, who may chmod it back whatever the worker does
    job = orch.submit("command", RAN["command"])
    a_minute_later(worker)
    with pytest.raises(StorageError, match=f"{folder}.* owned by uid {OTHER_UID}") as refused:
        worker.run_once()
    assert refused.value.exit_code == 10 and orch.status(job).state == "queued"


def a_minute_later(worker) -> None:
    """The worker's next sweep due, and its folders' look again (a minute after it started)."""
    worker._next_sweep = 0.0
    worker._probed_at -= SWEEP_EVERY


def test_a_worker_looks_at_its_folders_as_it_starts_and_again_a_minute_later_not_at_its_first_sweep(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first sweep comes with the first recovery, right after ``probe`` looked at the same four folders: until
    the fix it looked at them again (``trust_again``). Its other work is still done (here a killed worker's run
    folder removed)."""
    looked: list[str] = []
    trust = WorkerFolders._trust

    def counted(folder: str, follow: bool = False, written: bool = True) -> None:
        looked.append(folder)
        trust(folder, follow, written)

    monkeypatch.setattr(WorkerFolders, "_trust", staticmethod(counted))
    left = orch.store.root / "runs" / "run-0123456789abcdef"  # a run a killed worker left
    left.mkdir(parents=True)
    worker = make_worker(orch)
    assert len(looked) == 4  # probe: the project folder, .orchestrator, runs/, artifacts/
    worker.run_once()  # its first sweep
    assert len(looked) == 4 and not left.exists()
    worker._next_sweep = 0.0  # a sweep before the minute is out (a test's, or a clock's)
    worker.run_once()
    assert len(looked) == 4
    a_minute_later(worker)
    worker.run_once()
    assert looked[4:] == looked[:4]


def test_a_project_below_a_sticky_folder_like_tmp_or_inside_the_home_folder_is_run(
        tmp_path: Path, keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """/tmp: others may not rename what they do not own there. Folders above the home folder are the system's: the
    check stops at home, as for a keyring (here a home folder below one others may write)."""
    orch, _ = project_below(tmp_path, keyring, 0o1777)
    job = orch.submit("command", RAN["command"])
    make_worker(orch).run_once()
    assert orch.status(job).state == "succeeded"
    home = tmp_path / "open" / "home"
    home.mkdir(parents=True)
    os.chmod(home.parent, 0o777)
    monkeypatch.setenv("HOME", str(home))
    orch = Orchestrator(base_path=home / "work", project_id="proj", keyring=keyring)
    job = orch.submit("command", RAN["command"])
    make_worker(orch).run_once()
    assert orch.status(job).state == "succeeded"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_command_runs_with_its_workers_umask_its_folders_keeping_its_files_from_others(
        orch: Orchestrator, mask: int) -> None:
    """Decided 2026-12-07: a command gets the umask its worker was started with, as a program started by hand does
    (a ``cwd`` of its own, say a shared build folder, keeps the modes its users expect), not 077: what it writes in
    its run folder and its job's folder is out of others' reach whatever its mode, since those are 0700."""
    job = orch.submit("command", {"argv": ["sh", "-c", 'umask > umask; echo x > file; '
                                           'stat -c %a file "$ORCH_ARTIFACTS_DIR" > modes; ' + DONE]})
    with umask(mask):
        make_worker(orch).run_once()
    folder = orch.store.root / "artifacts" / job
    assert orch.status(job).state == "succeeded"
    assert (folder / "umask").read_text().strip() == f"{mask:04o}"
    assert (folder / "modes").read_text().split() == [f"{0o666 & ~mask:o}", "700"]


def loose_warnings(orch: Orchestrator) -> list[tuple[str, int, str]]:
    return [(w.stream, w.line, w.code) for w in orch.verify().warnings]


@pytest.mark.parametrize("which", ["project", "state", "runs", "artifacts"])
def test_verify_warns_of_a_store_folder_others_may_write_and_changes_nothing(orch: Orchestrator, which: str) -> None:
    """What a worker refuses when it cannot take the write bits of others off (or takes them off, saying so): verify
    names the folder, with the fix, and passes (the histories verify); until 2026-12-07 it said nothing."""
    job = orch.submit("command", {"argv": ["true"]})
    folders = worker_folders(orch)
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    os.chmod(folders[which], 0o777)
    report = orch.verify()
    assert report.ok and loose_warnings(orch) == [(str(folders[which]), 0, "STORE_FOLDER_LOOSE")]
    (warning,) = report.warnings
    assert "may be written by others than its owner (mode 777)" in warning.message
    assert warning.message.endswith(f"chmod go-w {folders[which]}")
    assert stat.S_IMODE(os.stat(folders[which]).st_mode) == 0o777 and orch.status(job).state == "queued"


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
@pytest.mark.parametrize("which", ["project", "state", "runs", "artifacts"])
def test_verify_warns_of_a_store_folder_another_user_owns(orch: Orchestrator, which: str) -> None:
    orch.submit("command", {"argv": ["true"]})
    folders = worker_folders(orch)
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    os.chown(folders[which], OTHER_UID, OTHER_UID)
    (warning,) = orch.verify().warnings
    assert (warning.stream, warning.code) == (str(folders[which]), "STORE_FOLDER_LOOSE")
    assert f"is owned by uid {OTHER_UID}, neither this user" in warning.message
    assert warning.message.endswith(f"chown {os.geteuid()} {folders[which]}")
    assert os.stat(folders[which]).st_uid == OTHER_UID


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: only root can make one here")
def test_verify_warns_of_a_jobs_folder_another_user_owns_which_a_worker_would_refuse(orch: Orchestrator) -> None:
    """A worker refuses to run the job, or copy its folder for ``artifacts_from``; until the fix ``verify`` looked at
    the store's own four folders only and said nothing."""
    job = orch.submit("command", RAN["command"])
    folder = orch.store.root / "artifacts" / job
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder, OTHER_UID, OTHER_UID)
    (warning,) = orch.verify().warnings
    assert (warning.stream, warning.code) == (str(folder), "STORE_FOLDER_LOOSE")
    assert f"is owned by uid {OTHER_UID}, neither this user" in warning.message
    assert "refuses to run the job, or to copy its folder for artifacts_from" in warning.message
    assert warning.message.endswith(f"chown -R {os.geteuid()} {folder}") and os.stat(folder).st_uid == OTHER_UID


def test_verify_warns_of_job_folders_others_may_write_naming_ten_and_counting_the_rest(orch: Orchestrator) -> None:
    """Others could change what a human checks, or what later jobs copy; a store made under a umask of 000 has one
    such folder a job: ten are named, the rest counted in one line. A folder others may only read is not warned of.
    Until the fix ``verify`` said nothing of any."""
    artifacts = orch.store.root / "artifacts"
    artifacts.mkdir(parents=True)
    for i in range(13):
        (artifacts / f"job-{i:02d}").mkdir()
        os.chmod(artifacts / f"job-{i:02d}", 0o777)
    (artifacts / "read-only-to-others").mkdir(mode=0o755)
    warnings = orch.verify().warnings
    assert [w.stream for w in warnings] == [str(artifacts / f"job-{i:02d}") for i in range(10)] + [str(artifacts)]
    assert {w.code for w in warnings} == {"STORE_FOLDER_LOOSE"}
    assert warnings[0].message.endswith(f"chmod 700 {artifacts / 'job-00'}")
    assert warnings[-1].message.startswith(f"3 more job folder(s) in {artifacts} another user owns or others may write")
    assert stat.S_IMODE(os.stat(artifacts / "job-00").st_mode) == 0o777  # nothing changed


def chown_all(top: Path, uid: int) -> None:
    for folder, subfolders, files in os.walk(top):
        for name in [folder, *(os.path.join(folder, n) for n in subfolders + files)]:
            os.lchown(name, uid, uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's store: only root can make one here")
def test_verify_by_another_user_judges_the_folders_for_the_stores_owner(tmp_path: Path, keyring) -> None:
    """An auditor (here root) verifying a store another user owns and runs: until the fix every folder was judged
    for the auditor, a warning for each ("owned by uid N, neither this user nor root": six here, the folders above
    included). Now for the owner of ``.orchestrator``, whose workers run there."""
    orch, above = project_below(tmp_path, keyring, 0o755)
    job = orch.submit("command", RAN["command"])
    make_worker(orch).run_once()
    chown_all(above / "base", OTHER_UID)
    assert orch.verify().warnings == []  # before the fix: one a folder
    runs, artifacts = orch.store.root / "runs", orch.store.root / "artifacts"
    os.chown(runs, OTHER_UID + 1, OTHER_UID + 1)
    os.chown(artifacts / job, OTHER_UID + 1, OTHER_UID + 1)
    os.chown(above, OTHER_UID + 1, OTHER_UID + 1)
    warnings = orch.verify().warnings
    assert [w.stream for w in warnings] == [str(above / "base" / "proj"), str(runs), str(artifacts / job)]
    assert all(f"owned by uid {OTHER_UID + 1}, neither uid {OTHER_UID} nor root" in w.message for w in warnings)
    assert f"a worker run by uid {OTHER_UID} refuses to run jobs" in warnings[1].message
    assert warnings[1].message.endswith(f"chown {OTHER_UID} {runs}")


def test_verify_of_a_store_with_a_folder_others_may_write_exits_0_naming_the_folder(base: Path, cli_env) -> None:
    from helpers import run_script

    run_script("submit", "--kind", "command", "--input", '{"argv": ["true"]}', env=cli_env, check=True)
    runs = base / "proj" / ".orchestrator" / "runs"
    runs.mkdir(exist_ok=True)
    os.chmod(runs, 0o777)
    shown = run_script("verify", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert f"warning: {runs}:0: STORE_FOLDER_LOOSE: {runs} may be written by others" in shown.stdout
    as_json = json.loads(run_script("verify", "--json", env=cli_env).stdout)
    assert as_json["ok"] and [(w["stream"], w["code"]) for w in as_json["warnings"]] == [
        (str(runs), "STORE_FOLDER_LOOSE")]


def test_a_second_verify_in_one_process_sees_a_folder_above_made_loose_since_the_first(tmp_path: Path, keyring) -> None:
    """A process remembers the folders above it found safe (the keys' checks, once a process): ``verify`` looks again."""
    orch, above = project_below(tmp_path, keyring, 0o755)
    orch.submit("command", RAN["command"])
    assert orch.verify().warnings == []
    os.chmod(above, 0o777)
    assert [w.code for w in orch.verify().warnings] == ["STORE_FOLDER_LOOSE"]


def test_verify_warns_of_a_project_folder_below_a_folder_others_may_write(tmp_path: Path, keyring) -> None:
    """The worker refuses it (``test_a_worker_refuses_a_project_folder_below_a_folder_others_may_write``)."""
    orch, above = project_below(tmp_path, keyring, 0o777)
    orch.submit("command", RAN["command"])
    project = above / "base" / "proj"
    (warning,) = orch.verify().warnings
    assert (warning.stream, warning.code) == (str(project), "STORE_FOLDER_LOOSE")
    assert warning.message.startswith(f"the folder {above} above the project folder {project} may be written by")
    assert f"run: chmod go-w {above}" in warning.message and stat.S_IMODE(os.stat(above).st_mode) == 0o777


def chmod_then_done(mode: str) -> str:
    """A run that takes its own folder's bits from its owner: the first run leaves it ``mode`` and fails, the retry
    finds "ran"."""
    return f'if [ -e ran ]; then {DONE}; else touch ran; chmod {mode} "$ORCH_ARTIFACTS_DIR"; exit 3; fi'


@pytest.fixture
def reachable_by_another_user() -> Iterator[Path]:
    """A folder that ``OTHER_UID`` owns, under ``/tmp`` (pytest's ``tmp_path`` is root's alone)."""
    with folder_of(OTHER_UID, "orch-other-user-") as top:
        yield top


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="a worker that is not root: only root can start one here (setpriv)")
@pytest.mark.parametrize("mode", ["077", "0600", "0400"])
def test_a_worker_that_is_not_root_gives_a_job_back_the_folder_its_run_took_its_owners_bits_from_and_runs_it(
        reachable_by_another_user: Path, mode: str) -> None:
    """A run's ``chmod`` of its own folder that leaves its owner without all of its bits: 077 (its owner nothing,
    others everything), 0600 or 0400 (nobody may enter it). The worker, not root, could not open a 077 folder to take
    the others' bits (``restrict`` opens it to ``fchmod`` it), and left a 0600 or 0400 one as it was (no bits for
    others), so its run could not enter it: either way it handed the job back and exited 10, and so did every worker
    that claimed it, until the fixes (077 first, then 0600). Now the folder is 0700 again, said once as a warning,
    and the retry runs."""
    top = reachable_by_another_user
    env = store_env_in(top, ORCH_RETRY_BASE_SECONDS="0.01")
    submitted = as_user(OTHER_UID, "submit", "--kind", "command", "--input",
                        json.dumps({"argv": ["sh", "-c", chmod_then_done(mode)]}), env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    folder = top / "proj" / ".orchestrator" / "artifacts" / job
    first = as_user(OTHER_UID, "worker", "--once", env=env)
    assert first.returncode == 0 and stat.S_IMODE(os.lstat(folder).st_mode) == int(mode, 8), first.stderr
    time.sleep(0.1)  # the retry's backoff
    second = as_user(OTHER_UID, "worker", "--once", "--json", env=env)
    assert second.returncode == 0, second.stdout + second.stderr  # before the fix: 10, STORAGE_ERROR, handed back
    assert json.loads(second.stdout.splitlines()[-1])["state"] == "succeeded"
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700 and (folder / "ran").is_file()
    assert (f"{folder} was not its owner's to use in full (mode {int(mode, 8):o}, a run's chmod)"
            in second.stderr)
