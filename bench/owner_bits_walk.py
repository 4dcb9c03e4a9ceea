"""What the walk after each run of a worker that is not root costs (``run_folder.folders_given_back``) when the run
took no owner's bits: job folders of several shapes, owned by a user that is not root (``--uid``, 65534), walked in
a child run as that user, median of ``--rounds`` walks after one to warm the caches. Run as root (it makes the
folders and becomes the user), from the tree whose code is measured: ``python -m bench.owner_bits_walk``. Prints one
line per shape: entries, folders, median and minimum in ms."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from orchestrator.run_folder import folders_given_back

SHAPES = {  # name: (folders in the job's folder, files in each of them, files in the job's folder itself)
    "10 folders x 100 files": ((10,), 100, 0),
    "100 folders x 9 files": ((100,), 9, 0),
    "1,000 files, no folder": ((), 0, 1000),
    "100 folders x 100 files": ((100,), 100, 0),
    "1,000 folders x 9 files": ((1000,), 9, 0),
    "10 x 10 x 10 folders x 9 files": ((10, 10, 10), 9, 0),
    "200 folders one in another": ((1,) * 200, 0, 0),  # the worst case for the link count: no folder is a leaf
}


def made(top: Path, levels: tuple[int, ...], files: int, loose: int, uid: int) -> int:
    """The job's folder ``top`` of that shape, ``uid``'s; the number of entries below it."""
    folders = [top]
    for count in levels:
        folders = [parent / f"d{i}" for parent in folders for i in range(count)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(files):
            (folder / f"f{n}").write_bytes(b"x")
    for n in range(loose):
        (top / f"f{n}").write_bytes(b"x")
    entries = 0
    for folder, subfolders, names in os.walk(top):
        for name in [folder, *(os.path.join(folder, n) for n in subfolders + names)]:
            os.lchown(name, uid, uid)
        entries += len(subfolders) + len(names)
    return entries


def timed(top: Path, uid: int, rounds: int) -> list[float]:
    """``rounds`` walks of ``top`` in a child run as ``uid`` (seconds each), after one not counted."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        folders_given_back(top, set())
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            assert folders_given_back(top, set()) == []
            times.append(time.perf_counter() - start)
        os.write(write, " ".join(map(repr, times)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as reader:
        out = reader.read()
    os.waitpid(pid, 0)
    return [float(t) for t in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uid", type=int, default=65534)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--dir", default=None, help="where to make the folders (default: the system's temp folder)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="owner-bits-walk-", dir=args.dir))
    try:
        os.chmod(base, 0o755)
        for name, (levels, files, loose) in SHAPES.items():
            top = base / name.replace(" ", "_").replace(",", "")
            entries = made(top, levels, files, loose, args.uid)
            times = timed(top, args.uid, args.rounds)
            print(f"{name:32} {entries:6} entries  median {statistics.median(times) * 1e3:7.3f} ms  "
                  f"min {min(times) * 1e3:7.3f} ms")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
