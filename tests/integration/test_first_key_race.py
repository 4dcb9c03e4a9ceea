"""The keyring folder's first key, made by whichever of many processes or threads signs first: exactly one key is
made, every one of them signs with it, and the notice is printed once (README, "Signing keys"); two ``keys rotate``
at once each make a whole key, and the later one is active; a generator killed anywhere leaves no key or a whole one;
revocations at once (of one key or of many, beside rotations) are all kept, each id once, and a revoke killed
anywhere leaves the `revoked` file as it was or with the id."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.errors import SigningKeyError
from orchestrator.key_files import ACTIVE_FILE, LOCK_FILE, REVOKED_FILE, active_key_id, load_keyring, write_keypair

REPO = Path(__file__).resolve().parents[2]
NOTICE = "generated signing key"
ROUNDS = 3
AT_ONCE = 8

# A command that imports everything first, says so, then waits on its stdin: the test starts the command's work in
# every process at once by closing their stdins, after each one said it was ready.
AT_THE_SIGNAL = """
import sys
from orchestrator.cli import main
print("ready", flush=True)
sys.stdin.read()
main(sys.argv[1:])
"""


def _all_at_once(argvs: list[list[str]], env: dict[str, str]) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen([sys.executable, "-c", AT_THE_SIGNAL, *argv], env=env, cwd=str(REPO), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for argv in argvs]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        for proc in procs:
            proc.stdin.close()
        results = []
        for proc in procs:  # each writes a few lines at most: reading one pipe, then the other, never blocks
            with proc.stdout, proc.stderr:
                out, err = proc.stdout.read(), proc.stderr.read()
            results.append((proc.wait(timeout=60), out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _env(keys: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_KEYRING_DIR=str(keys), PYTHONPATH=str(REPO))
    return env


def _kids_of_lines(base: Path) -> set[str]:
    return {json.loads(line)["kid"] for path in base.rglob("*.events.jsonl")
            for line in path.read_bytes().splitlines() if line.strip()}


def _key_ids(keys: Path, suffix: str) -> set[str]:
    return {p.name[:-len(suffix)] for p in keys.iterdir() if p.name.endswith(suffix)}


def _no_temporary_files(keys: Path) -> list[str]:
    return [p.name for p in keys.iterdir() if p.name.endswith(".tmp")]


def test_commands_that_first_sign_at_once_make_one_key_all_sign_with_and_one_of_them_says_so(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        keys, base = tmp_path / f"round{round_}" / "config" / "keys", tmp_path / f"base{round_}"
        results = _all_at_once([["submit", "--base-path", str(base), "--project-id", "p", "--kind", "x",
                                 "--input", json.dumps({"n": n}), "--json"] for n in range(AT_ONCE)], _env(keys))
        assert [code for code, _, _ in results] == [0] * AT_ONCE, results
        assert _key_ids(keys, ".key") == _key_ids(keys, ".pub") == {active_key_id(keys)}
        assert _kids_of_lines(base) == {active_key_id(keys)}
        assert sum(err.count(NOTICE) for _, _, err in results) == 1, [err for _, _, err in results]
        assert _no_temporary_files(keys) == []


@pytest.mark.parametrize("shared", [True, False], ids=["one_orchestrator", "one_orchestrator_each"])
def test_threads_that_first_sign_at_once_make_one_key_all_sign_with_and_one_of_them_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shared: bool) -> None:
    for round_ in range(ROUNDS):
        keys, base = tmp_path / f"round{round_}" / "keys", tmp_path / f"base{round_}"
        monkeypatch.setenv("ORCH_KEYRING_DIR", str(keys))
        one = Orchestrator(base_path=base, project_id="p")
        orchs = [one if shared else Orchestrator(base_path=base, project_id="p") for _ in range(AT_ONCE)]
        start = threading.Barrier(AT_ONCE)
        failures: list[BaseException] = []

        def submit(n: int) -> None:
            start.wait()
            try:
                orchs[n].submit("x", {"n": n})
            except BaseException as exc:  # noqa: BLE001 - every failure is the test's to report
                failures.append(exc)

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(AT_ONCE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert _key_ids(keys, ".key") == _key_ids(keys, ".pub") == {active_key_id(keys)}
        assert _kids_of_lines(base) == {active_key_id(keys)}
        assert capsys.readouterr().err.count(NOTICE) == 1


def test_rotations_at_once_each_make_a_whole_key_and_one_of_them_is_active(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        keys = tmp_path / f"round{round_}" / "keys"
        results = _all_at_once([["keys", "rotate", "--json"]] * 4, _env(keys))
        assert [code for code, _, _ in results] == [0] * 4, results
        made = {json.loads(out)["signing_key"] for _, out, _ in results}
        assert len(made) == 4
        assert _key_ids(keys, ".key") == _key_ids(keys, ".pub") == made  # no key lost
        assert active_key_id(keys) in made
        ring = load_keyring({"ORCH_KEYRING_DIR": str(keys)})
        ring.seal({"seq": 1})  # the active pair is whole: it signs, and what it signs is trusted
        assert ring.signer_id == active_key_id(keys) and made <= set(ring.trusted)
        assert _no_temporary_files(keys) == []


# Kill the process (``os._exit``: no ``finally`` runs, as with SIGKILL) at its STEP-th file operation.
DYING_AT = """
import os, sys
step = int(sys.argv[1])
count = 0
def dying(real):
    def call(*args, **kwargs):
        global count
        count += 1
        if count == step:
            os._exit(9)
        return real(*args, **kwargs)
    return call
for name in ("open", "write", "fsync", "replace", "rename", "link", "mkdir", "unlink", "fchmod", "chmod", "close"):
    setattr(os, name, dying(getattr(os, name)))
"""
KILLED_AT = DYING_AT + "from orchestrator.key_files import load_keyring\nload_keyring().ensure_signer()\n"
REVOKE_KILLED_AT = DYING_AT + "from orchestrator.key_files import revoke\nrevoke(sys.argv[2])\n"


def _generate(env: dict[str, str], killed_at: int) -> int:
    return subprocess.run([sys.executable, "-c", KILLED_AT, str(killed_at)], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=60).returncode


def test_a_first_key_generator_killed_anywhere_leaves_no_key_or_a_whole_one_and_the_next_cleans_up(
        tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    env = _env(keys)
    for step in range(1, 200):
        code = _generate(env, step)
        assert code in (0, 9)
        if (keys / ACTIVE_FILE).exists():  # a whole key: it signs, and its .pub is beside it
            assert load_keyring({"ORCH_KEYRING_DIR": str(keys)}).ensure_signer(create=False) == active_key_id(keys)
        else:
            with pytest.raises(SigningKeyError, match="holds no signing key"):
                load_keyring({"ORCH_KEYRING_DIR": str(keys)}).ensure_signer(create=False)
        if code == 0:
            break
        assert _generate(env, 0) == 0  # the next command signs, and leaves nothing of the killed one half-made
        assert load_keyring({"ORCH_KEYRING_DIR": str(keys)}).ensure_signer(create=False) == active_key_id(keys)
        assert _no_temporary_files(keys) == []
        for leftover in keys.iterdir():  # the next step starts again from nothing
            leftover.unlink()
    else:
        raise AssertionError("the generator never finished")
    assert step > 5, "the generator was not killed at any of its steps"


@pytest.mark.parametrize("what", ["link", "fifo"])
def test_a_keyring_lock_file_that_is_a_link_or_no_regular_file_is_refused_and_no_key_is_written(
        tmp_path: Path, what: str) -> None:
    keys, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    keys.mkdir(mode=0o700)
    if what == "link":
        (keys / LOCK_FILE).symlink_to(elsewhere)
    else:
        os.mkfifo(keys / LOCK_FILE, 0o600)
    for write in (lambda: write_keypair(keys), lambda: load_keyring({"ORCH_KEYRING_DIR": str(keys)}).ensure_signer()):
        with pytest.raises(SigningKeyError, match="symbolic link, never followed" if what == "link"
                           else "is not a regular file"):
            write()
    assert sorted(p.name for p in keys.iterdir()) == [LOCK_FILE] and not elsewhere.exists()


def _keyring_of(keys: Path, count: int) -> tuple[str, list[str]]:
    """A keyring folder of ``count`` keys besides its active one: (the active key, the others)."""
    others = [write_keypair(keys, activate=False) for _ in range(count)]
    return write_keypair(keys), others


def _revoked_lines(keys: Path) -> list[str]:
    return (keys / REVOKED_FILE).read_text().splitlines()


def test_revocations_of_different_keys_at_once_are_all_kept(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        keys = tmp_path / f"round{round_}" / "keys"
        _, kids = _keyring_of(keys, AT_ONCE)
        results = _all_at_once([["keys", "revoke", kid, "--json"] for kid in kids], _env(keys))
        assert [code for code, _, _ in results] == [0] * AT_ONCE, results
        assert sorted(_revoked_lines(keys)) == sorted(kids)
        assert load_keyring({"ORCH_KEYRING_DIR": str(keys)}).revoked == set(kids)
        assert _no_temporary_files(keys) == []


def test_revocations_of_one_key_at_once_write_it_once_and_one_of_them_says_it_revoked_it(tmp_path: Path) -> None:
    """Each looked for the id, then added it: all of them found it missing, so the file listed it up to 8 times and
    every one said "revoked"."""
    for round_ in range(ROUNDS):
        keys = tmp_path / f"round{round_}" / "keys"
        _, (kid,) = _keyring_of(keys, 1)
        results = _all_at_once([["keys", "revoke", kid, "--json"]] * AT_ONCE, _env(keys))
        assert [code for code, _, _ in results] == [0] * AT_ONCE, results
        assert _revoked_lines(keys) == [kid]
        assert sorted(json.loads(out)["already_revoked"] for _, out, _ in results) == [False] + [True] * (AT_ONCE - 1)


def test_rotations_and_revocations_at_once_keep_every_key_made_and_every_id_revoked(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        keys = tmp_path / f"round{round_}" / "keys"
        before, kids = _keyring_of(keys, AT_ONCE // 2)
        results = _all_at_once([["keys", "revoke", kid, "--json"] for kid in kids]
                               + [["keys", "rotate", "--json"]] * (AT_ONCE // 2), _env(keys))
        assert [code for code, _, _ in results] == [0] * AT_ONCE, results
        made = {json.loads(out)["signing_key"] for _, out, _ in results[AT_ONCE // 2:]}
        assert len(made) == AT_ONCE // 2 and active_key_id(keys) in made
        assert _key_ids(keys, ".key") == _key_ids(keys, ".pub") == made | set(kids) | {before}
        assert sorted(_revoked_lines(keys)) == sorted(kids)
        assert _no_temporary_files(keys) == []


def test_a_revoke_killed_anywhere_leaves_the_revoked_file_as_it_was_or_with_the_id_and_the_next_cleans_up(
        tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _, (kid,) = _keyring_of(keys, 1)
    env = _env(keys)
    by_hand = b"# revoked by hand\nk-feedfeedfeedfeed"  # no newline at its end
    for step in range(1, 200):
        (keys / REVOKED_FILE).write_bytes(by_hand)
        code = subprocess.run([sys.executable, "-c", REVOKE_KILLED_AT, str(step), kid], env=env, cwd=str(REPO),
                              capture_output=True, text=True, timeout=60).returncode
        assert code in (0, 9)
        assert (keys / REVOKED_FILE).read_bytes() in (by_hand, by_hand + b"\n" + kid.encode() + b"\n")
        assert kid in load_keyring({"ORCH_KEYRING_DIR": str(keys)}).revoked or code == 9  # every command still reads
        if code == 0:
            break
        results = _all_at_once([["keys", "revoke", kid, "--json"]], env)  # the next one finishes, and cleans up
        assert results[0][0] == 0, results
        assert _revoked_lines(keys) == ["# revoked by hand", "k-feedfeedfeedfeed", kid]
        assert _no_temporary_files(keys) == []
    else:
        raise AssertionError("the revoke never finished")
    assert step > 5, "the revoke was not killed at any of its steps"
