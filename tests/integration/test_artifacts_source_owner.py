"""Who owns what a copy of ``artifacts_from`` reads, and the owner's bits a run takes from its own folders.

The copy opens each entry of the source relative to its folder, never through a link (a link of this user's or
root's is followed part by part), and checks the owner of what it opened: what is copied is what was checked, even
when another user who still holds a folder below open puts a link there after the walk. A file another user owns is
never copied, whatever leads to it. A folder or file a run left without its owner's bits is given them back (the
copy's source, the run's own folder after it ends), never through a link, this user's own only."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import as_user, events, folder_of, in_a_child_as, make_worker, store_env_in
from orchestrator import Orchestrator, artifacts_import
from orchestrator.artifacts_import import CopyFailed, import_artifacts
from orchestrator.errors import StorageError
from orchestrator.run_folder import folders_given_back
from orchestrator.worker_folders import WorkerFolders

PLANTER_UID = 2001  # a real second user (``setpriv``), who plants a link from inside a folder it holds open
OTHER_UID = 12345  # an owner of files (``chown``): no user of the test machine
NOT_ROOT = 65534  # the worker's own user in a forked child (``in_a_child_as``): modes bind it, as root they do not
DONE = 'printf \'{"status":"done","summary":"ok"}\' > "$ORCH_TERMINAL_FILE"'

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second user: only root can be one here")


def _copy(state: Path) -> Path:
    """Copy job A's folder into job B's, as the worker does; B's copy of it (``inputs/A``)."""
    import_artifacts("B", ["A"], WorkerFolders(state), state / "artifacts" / "B", lambda: None)
    return state / "artifacts" / "B" / "inputs" / "A"


def _plant(folder: Path, *argv: str) -> None:
    """Run ``argv`` as ``PLANTER_UID`` from inside ``folder`` (its ``cwd``: a process of theirs that had it open since
    before the copy made the source 0700), with nothing of root's about it."""
    subprocess.run(["setpriv", f"--reuid={PLANTER_UID}", f"--regid={PLANTER_UID}", "--clear-groups", *argv],
                   cwd=folder, check=True)


def _copied_files(state: Path) -> dict[str, str]:
    inputs = state / "artifacts" / "B" / "inputs"
    return {str(p.relative_to(inputs)): p.read_text() for p in inputs.rglob("*") if p.is_file()}


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A file only this user may read: what a planted link would have copied where the job's handler reads it."""
    path = tmp_path / "private"
    path.write_text("this user's own")
    path.chmod(0o600)
    return path


@pytest.fixture
def walked_then_planted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, tuple[str, ...]]]:
    """What to plant (``_plant``) once the walk before the copy (``measure``) found nothing wrong, before the copy."""
    plants: list[tuple[Path, tuple[str, ...]]] = []
    real = artifacts_import.measure

    def measure_then_plant(*args: object) -> None:
        real(*args)
        for folder, argv in plants:
            _plant(folder, *argv)

    monkeypatch.setattr(artifacts_import, "measure", measure_then_plant)
    return plants


@as_root
def test_a_link_another_user_puts_in_a_source_after_the_walk_is_refused_by_the_copy_itself(
        tmp_path: Path, private: Path, walked_then_planted: list) -> None:
    """``sub`` is 0777 (an older release under umask 000); the source above it is made 0700 before the walk, but a
    process of uid 2001 that held ``sub`` open still writes there: its link, put there after the walk found nothing,
    was followed by the copy, which looked at names, not at what it opened (this user's own file copied)."""
    src = tmp_path / "artifacts" / "A"
    (src / "sub").mkdir(parents=True)
    (src / "sub").chmod(0o777)
    (src / "sub" / "f.txt").write_text("the run's")
    walked_then_planted.append((src / "sub", ("ln", "-s", str(private), "planted")))
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)
    assert failed.value.store and failed.value.refused is not None
    assert failed.value.refused.message.startswith(f"{src}/sub/planted is owned by uid {PLANTER_UID}, neither this "
                                                   f"user (uid 0) nor root, who may have put it there")
    assert "this user's own" not in _copied_files(tmp_path).values()  # before the fix: inputs/A/sub/planted


@as_root
def test_a_link_of_this_users_is_followed_part_by_part_so_another_users_link_on_its_way_is_refused(
        tmp_path: Path, private: Path, walked_then_planted: list) -> None:
    """This user's link ``A/report.txt`` leads to ``shared/report.txt``, outside the source, in a folder others may
    write: uid 2001 puts a link to this user's own file in the report's place after the walk. Followed by the kernel
    in one go, what the copy opened was this user's own file, whose owner passes any check: each part is opened
    never through a link, and the link met on the way is another user's."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "report.txt").write_text("the report")
    src = tmp_path / "artifacts" / "A"
    src.mkdir(parents=True)
    (src / "report.txt").symlink_to("../../shared/report.txt")
    walked_then_planted.append((shared, ("sh", "-c", f"rm report.txt && ln -s {private} report.txt")))
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)
    assert failed.value.store and failed.value.refused is not None
    assert failed.value.refused.message.startswith(f"{shared}/report.txt, reached through the symbolic link "
                                                   f"{src}/report.txt, is owned by uid {PLANTER_UID}, neither")
    assert "this user's own" not in _copied_files(tmp_path).values()  # before the fix: inputs/A/report.txt


def test_links_of_this_users_are_followed_as_before(tmp_path: Path) -> None:
    """Relative, absolute, through a link to a folder, ending in ``/``, up and down again: each copied as a file or
    a folder, never as a link."""
    src = tmp_path / "artifacts" / "A"
    (src / "run-2" / "logs").mkdir(parents=True)
    (src / "run-2" / "logs" / "out.txt").write_text("out")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.csv").write_text("1,2")
    (src / "latest").symlink_to("run-2/")
    (src / "out").symlink_to("latest/logs/../logs/./out.txt")
    (src / "data").symlink_to(outside / "data.csv")
    (src / "far").symlink_to(outside)
    copy = _copy(tmp_path)
    assert {str(p.relative_to(copy)): p.read_text() for p in copy.rglob("*") if p.is_file()} == {
        "run-2/logs/out.txt": "out", "latest/logs/out.txt": "out", "out": "out", "data": "1,2",
        "far/data.csv": "1,2"}
    assert not any(p.is_symlink() for p in copy.rglob("*"))


def _source_with_a_link_to_their_file(orch: Orchestrator) -> tuple[str, Path]:
    """A finished job's folder holding ``theirs``, a link of this user's to a file uid 12345 owns, beside the store."""
    source = "earlier-job"
    folder = orch.store.root / "artifacts" / source
    folder.mkdir(parents=True)
    theirs = orch.store.root.parent / "theirs.txt"
    theirs.write_text("another user's")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    (folder / "theirs").symlink_to(theirs)
    return source, folder


@as_root
def test_a_file_another_user_owns_reached_through_a_link_of_this_users_is_never_copied_and_hands_the_job_back(
        orch: Orchestrator) -> None:
    """Its owner may change it whenever they like, and the job would read it as the other job's output: refused as
    any entry another user owns (until the fix it was copied: only folders a link led to were checked)."""
    source, folder = _source_with_a_link_to_their_file(orch)
    job = orch.submit("command", {"argv": ["sh", "-c", DONE], "artifacts_from": [source]})
    with pytest.raises(StorageError, match=f"^{orch.store.root.parent}/theirs.txt, reached through the symbolic link "
                                           f"{folder}/theirs, is owned by uid {OTHER_UID}, neither this user .* nor "
                                           f"root, .*: nothing of {source} is copied; .*chown -hR 0 "
                                           f"{orch.store.root.parent}/theirs.txt$") as refused:
        make_worker(orch, artifacts_import=True).run_once()
    assert refused.value.exit_code == 10
    assert [e["type"] for e in events(orch, job)][-1] == "job_released" and orch.status(job).state == "queued"
    assert not (orch.store.root / "artifacts" / job / "inputs").exists()


@as_root
def test_a_file_another_user_owns_reached_through_a_link_is_refused_by_the_copy_too(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link made after the walk (the other job still writing its folder): the copy refuses it as the walk does."""
    source, folder = _source_with_a_link_to_their_file(orch)
    monkeypatch.setattr(artifacts_import, "measure", lambda *args: None)  # the walk saw nothing
    with pytest.raises(CopyFailed) as failed:
        import_artifacts("B", [source], WorkerFolders(orch.store.root), orch.store.root / "artifacts" / "B",
                         lambda: None)
    assert failed.value.store and failed.value.refused is not None
    assert failed.value.refused.message.startswith(f"{orch.store.root.parent}/theirs.txt, reached through the "
                                                   f"symbolic link {folder}/theirs, is owned by uid {OTHER_UID}")


# -- owner's bits a run took ------------------------------------------------------------------------------------------
@pytest.fixture
def state_of_a_user() -> Iterator[Path]:
    """A state folder ``NOT_ROOT`` owns, outside pytest's root-only ``tmp_path``."""
    with folder_of(None, "copy-owner-") as state:
        yield state


def _owned_by(state: Path, uid: int) -> None:
    for folder, subfolders, files in os.walk(state):
        for name in [folder, *(os.path.join(folder, n) for n in subfolders + files)]:
            os.lchown(name, uid, uid)


@as_root
@pytest.mark.parametrize("taken", ["A", "A/sub", "A/sub/f.txt"])
def test_a_source_a_run_left_without_its_owners_bits_is_given_them_back_and_copied(
        state_of_a_user: Path, taken: str) -> None:
    """A run's ``chmod 000`` of its own folder, a folder in it or a file: the worker (not root) could not open it,
    and the copy failed as the copying job's (``Permission denied``, retried until its attempts were used up). The
    folder is the worker's user's own: given the owner's bits it needs (``u+rwx`` a folder, ``u+r`` a file), never
    through a link, then copied."""
    src = state_of_a_user / "artifacts" / "A"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("f")
    (src / "g.txt").write_text("g")
    _owned_by(state_of_a_user, NOT_ROOT)
    (state_of_a_user / "artifacts" / taken).chmod(0o000)
    error = in_a_child_as(NOT_ROOT, lambda: _copy(state_of_a_user))
    assert error == ""  # before the fix: CopyFailed: [Errno 13] Permission denied
    assert _copied_files(state_of_a_user) == {"A/sub/f.txt": "f", "A/g.txt": "g"}
    given_back = 0o400 if taken.endswith(".txt") else 0o700
    assert stat.S_IMODE((state_of_a_user / "artifacts" / taken).stat().st_mode) == given_back


@as_root
def test_a_source_folder_without_its_owners_bits_that_is_not_this_users_fails_naming_the_job_and_the_chmod(
        state_of_a_user: Path) -> None:
    """Root's folder, 000, inside the job's folder of a worker that is not root: its bits cannot be given back. The
    copying job fails (retried: its owner may fix it meanwhile), the message naming the job whose run left it so,
    the folder, and what to run."""
    src = state_of_a_user / "artifacts" / "A"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("f")
    _owned_by(state_of_a_user, NOT_ROOT)
    os.lchown(src / "sub", 0, 0)
    (src / "sub").chmod(0o000)
    error = in_a_child_as(NOT_ROOT, lambda: _copy(state_of_a_user))
    assert error.startswith("CopyFailed: [Errno 13] Permission denied, and this user cannot give it its owner's "
                            "bits back (another user's; without /proc, one in a folder others may write): a run of job "
                            f"A may have left it so; as its owner, run: chmod -R u+rwX {src}/sub: '{src}/sub'"), error
    assert stat.S_IMODE((src / "sub").stat().st_mode) == 0o000


@as_root
def test_bits_are_never_given_back_through_a_link_nor_to_another_users_entry(state_of_a_user: Path) -> None:
    """A link of the source to a 000 folder of this user's elsewhere (a run's: it leads out of the other job's
    folder, which is all the copy may change): the copy fails on it, the folder keeps its mode."""
    src = state_of_a_user / "artifacts" / "A"
    src.mkdir(parents=True)
    elsewhere = state_of_a_user / "elsewhere"
    elsewhere.mkdir()
    (src / "away").symlink_to(elsewhere)
    _owned_by(state_of_a_user, NOT_ROOT)
    elsewhere.chmod(0o000)
    error = in_a_child_as(NOT_ROOT, lambda: _copy(state_of_a_user))
    assert error == f"CopyFailed: [Errno 13] Permission denied: '{src}/away'", error
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o000


@as_root
def test_a_runs_folders_are_given_their_owners_bits_back_never_through_a_link_nor_another_users(
        state_of_a_user: Path) -> None:
    """``folders_given_back`` after a run, as a worker that is not root: ``out`` (000) and ``out/logs`` (500) get
    ``u+rwx``; a link to a 000 folder elsewhere, root's folder, and the copy of another job's folder
    (``inputs/A``, its next copy's to mend) keep their modes."""
    job = state_of_a_user / "job"
    for sub in ("out/logs", "theirs", "inputs/A/sub"):
        (job / sub).mkdir(parents=True)
    elsewhere = state_of_a_user / "elsewhere"
    elsewhere.mkdir()
    (job / "away").symlink_to(elsewhere)
    _owned_by(state_of_a_user, NOT_ROOT)
    os.lchown(job / "theirs", 0, 0)
    for path, mode in ((job / "out" / "logs", 0o500), (job / "out", 0o000), (elsewhere, 0o000),
                       (job / "theirs", 0o000), (job / "inputs" / "A" / "sub", 0o000)):
        path.chmod(mode)

    def given_back() -> None:
        given = folders_given_back(job, {"inputs/A"})
        assert sorted(given) == ["out", "out/logs"], given

    error = in_a_child_as(NOT_ROOT, given_back)
    assert error == ""  # before the fix: no such function; the folders kept 000 and 500
    modes = {p: stat.S_IMODE(os.lstat(job / p).st_mode) for p in ("out", "out/logs", "theirs", "inputs/A/sub")}
    assert modes == {"out": 0o700, "out/logs": 0o700, "theirs": 0o000, "inputs/A/sub": 0o000}
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o000


@pytest.fixture
def reachable_by_not_root() -> Iterator[Path]:
    """A folder under ``/tmp`` that ``NOT_ROOT`` owns (pytest's ``tmp_path`` is root's alone)."""
    with folder_of(NOT_ROOT, "orch-not-root-") as top:
        yield top


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="a worker that is not root: only root can start one here (setpriv)")
def test_a_worker_that_is_not_root_gives_back_the_owners_bits_a_run_took_from_folders_it_made_so_a_copy_reads_them(
        reachable_by_not_root: Path) -> None:
    """A command makes ``out/logs`` and runs ``chmod 000`` on both: until the fix they stayed so after the run, and
    its owner's ``rm -r``, ``cp -r`` and a later job's copy of the folder could not read them. Now the worker gives
    them back their owner's bits when the run ends, said in a warning; the job that copies the folder succeeds."""
    top = reachable_by_not_root
    env = store_env_in(top, ORCH_RETRY_BASE_SECONDS="0.01", ORCH_ARTIFACTS_IMPORT="1")
    chmods = f'mkdir -p out/logs && echo log > out/logs/run.log && chmod 000 out/logs out && {DONE}'
    submitted = as_user(NOT_ROOT, "submit", "--kind", "command", "--input", json.dumps({"argv": ["sh", "-c", chmods]}),
                        env=env)
    assert submitted.returncode == 0, submitted.stderr
    first = submitted.stdout.strip()
    folder = top / "proj" / ".orchestrator" / "artifacts" / first
    ran = as_user(NOT_ROOT, "worker", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    assert {p: stat.S_IMODE((folder / p).stat().st_mode) for p in ("out", "out/logs")} == {
        "out": 0o700, "out/logs": 0o700}  # before the fix: 0 and 0
    assert f"job {first}: its run left 2 folder(s) in its folder that its owner could not use in full" in ran.stderr
    copying = as_user(NOT_ROOT, "submit", "--kind", "command", "--input", json.dumps(
        {"argv": ["sh", "-c", f"cat inputs/{first}/out/logs/run.log > got && {DONE}"], "artifacts_from": [first]}),
        env=env)
    assert copying.returncode == 0, copying.stderr
    time.sleep(0.05)
    second = as_user(NOT_ROOT, "worker", "--once", "--json", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout.splitlines()[-1])["state"] == "succeeded"
    assert (top / "proj" / ".orchestrator" / "artifacts" / copying.stdout.strip() / "got").read_text() == "log\n"


@as_root
def test_a_runs_folders_nested_past_pythons_recursion_limit_end_the_walk_never_the_worker(
        state_of_a_user: Path) -> None:
    """1,500 folders, one in another: walked by recursion, the walk after the run raised ``RecursionError`` out of
    the worker's loop; with a stack of descriptors it stops where none is left, what it reached given back."""
    job = state_of_a_user / "job"
    job.mkdir()
    _owned_by(state_of_a_user, NOT_ROOT)

    def nested_then_given_back() -> None:
        fd = os.open(job, os.O_RDONLY)
        for _ in range(1500):
            os.mkdir("a", dir_fd=fd)
            below = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(fd)
        (job / "a").chmod(0o500)
        assert folders_given_back(job, set())[:1] == ["a"]

    try:
        assert in_a_child_as(NOT_ROOT, nested_then_given_back) == ""
    finally:
        subprocess.run(["rm", "-rf", str(job)], check=True)


@as_root
@pytest.mark.parametrize("counted", [True, False], ids=["link-count-read", "listed-in-full"])
def test_a_folder_deep_below_whose_bits_a_run_took_is_given_them_back_among_many_files_and_folders(
        state_of_a_user: Path, counted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders that hold none are not opened, and a folder is listed only until its link count's folders are found
    (ext4, tmpfs: ``subfolders_counted``; else listed in full): still every folder a run took bits from is found, five
    levels down among files and folders of their owner's that hold none (its bits all there), beside root's."""
    import orchestrator.run_folder as run_folder

    monkeypatch.setattr(run_folder, "_SUBFOLDERS_COUNTED", {})
    if not counted:  # as on btrfs, whose folders' link count is 1
        monkeypatch.setattr(run_folder, "_mount_type", lambda dev: "btrfs")
    elif not run_folder.subfolders_counted(os.stat(state_of_a_user).st_dev):  # a CI container's overlayfs /tmp
        pytest.skip(f"{state_of_a_user} is on a file system whose link counts are not read (subfolders_counted)")
    job = state_of_a_user / "job"
    deep = job / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    for level in (*deep.parents[:5], deep):
        for n in range(20):
            (level / f"file{n}").write_text("x")
            if level in (job, deep):  # a, b, c and d: only the way down (and leaf3, theirs)
                (level / f"leaf{n}").mkdir()
    (job / "a" / "b" / "theirs").mkdir()
    (job / "a" / "b" / "c" / "leaf3").mkdir()
    _owned_by(state_of_a_user, NOT_ROOT)
    os.lchown(job / "a" / "b" / "theirs", 0, 0)
    for path, mode in ((deep / "leaf7", 0o000), (deep, 0o500), (job / "a" / "b" / "c" / "leaf3", 0o300),
                       (job / "a" / "b" / "theirs", 0o000)):
        path.chmod(mode)

    def given_back() -> None:
        assert run_folder.subfolders_counted(os.stat(job).st_dev) is counted
        given = folders_given_back(job, set())
        assert sorted(given) == ["a/b/c/d/e", "a/b/c/d/e/leaf7", "a/b/c/leaf3"], given

    assert in_a_child_as(NOT_ROOT, given_back) == ""
    modes = {p: stat.S_IMODE(os.lstat(job / p).st_mode) for p in ("a/b/c/d/e", "a/b/c/d/e/leaf7", "a/b/c/leaf3",
                                                                    "a/b/theirs")}
    assert modes == {"a/b/c/d/e": 0o700, "a/b/c/d/e/leaf7": 0o700, "a/b/c/leaf3": 0o700, "a/b/theirs": 0o000}
