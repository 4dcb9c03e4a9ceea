"""An output file's writer killed mid-write leaves its hidden temporary file; the next write of the same target
removes it, never the temporary file of a writer still alive (docs/decisions.md, CLI)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO
from orchestrator.output_file import OutputFile
from orchestrator.store.files import STRAY_AGE

WRITER = """
import sys
from orchestrator.output_file import OutputFile
with OutputFile(sys.argv[1], "the output") as out:
    out.write(sys.argv[2].encode() * 1_000_000)
    out.flush()
    print("writing", flush=True)
    sys.stdin.read()  # mid-write until told to finish (or killed)
"""


def start_writer(target: Path, fill: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), fill], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    return proc


@pytest.mark.parametrize("name", ["out.bundle", "b" * 250], ids=["a short name", "a name of 250 bytes"])
def test_the_next_write_removes_a_killed_writers_temporary_file_and_keeps_a_live_ones(tmp_path: Path,
                                                                                    name: str) -> None:
    target = tmp_path / name
    killed, alive = start_writer(target, "k"), start_writer(target, "a")
    try:
        temps = sorted(tmp_path.iterdir())
        assert len(temps) == 2 and not target.exists()
        then = time.time() - STRAY_AGE - 60  # both untouched long enough: only the lock tells them apart
        for temp in temps:
            os.utime(temp, (then, then))
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=20) == -signal.SIGKILL
        killed_temp = next(t for t in temps if t.read_bytes()[:1] == b"k")
        with OutputFile(target, "the output") as out:
            out.write(b"mine\n")
        assert not killed_temp.exists() and sorted(tmp_path.iterdir()) == sorted({*temps, target} - {killed_temp})
        assert alive.communicate(input="", timeout=20) == ("", None) and alive.returncode == 0
        assert sorted(tmp_path.iterdir()) == [target] and target.read_bytes() == b"a" * 1_000_000  # the last rename
    finally:
        for proc in (killed, alive):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()


def test_a_long_names_leftover_is_never_removed_by_a_write_of_another_long_name_that_starts_the_same(
        tmp_path: Path) -> None:
    """Past 241 bytes, a temporary file carries the start of the name and a digest of all of it: still its own."""
    mine, other = tmp_path / ("a" * 250), tmp_path / ("a" * 249 + "b")
    killed = start_writer(other, "k")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=20) == -signal.SIGKILL
    for pipe in (killed.stdin, killed.stdout):
        pipe.close()
    [leftover] = tmp_path.iterdir()
    then = time.time() - STRAY_AGE - 60
    os.utime(leftover, (then, then))
    with OutputFile(mine, "the output") as out:
        out.write(b"mine\n")
    assert sorted(tmp_path.iterdir()) == sorted([leftover, mine])
    with OutputFile(other, "the output") as out:
        out.write(b"other\n")
    assert sorted(tmp_path.iterdir()) == sorted([mine, other])
