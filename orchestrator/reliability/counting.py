"""``python -m orchestrator.reliability.counting FILE ARGS...``: ``python -m orchestrator ARGS...`` that writes the
name of each crash point it passes to FILE, one a line, as it passes it.

The one way the sweeps count passes: the command-line sweep (``crash_cli.py``) has each command it forks
(``command_forks.py``) call ``count_into``, the in-process sweeps (``crash.counted``) call it in their forked child;
both read the counts with ``counts_in``. Only the counting process's own passes count: a point passed in a process it
forked (a handler's) is not one it can be killed at.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator import faults


def count_into(path: str) -> None:
    """Make every crash point this process passes from now on append its name to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    real, me = faults.point, os.getpid()

    def counting(name: str, prepare: Any = None) -> None:
        if os.getpid() == me:
            os.write(fd, f"{name}\n".encode())
        real(name, prepare)

    faults.point = counting  # type: ignore[assignment]


def counts_in(path: Path) -> Counter[str]:
    """How often each crash point was passed, as ``count_into(path)`` wrote them."""
    return Counter(path.read_text().split())


def main() -> None:
    count_into(sys.argv[1])
    from orchestrator.entry import main as command  # the way ``python3 -m orchestrator`` starts: stop handling first

    command(sys.argv[2:], prog_name="python3 -m orchestrator")


if __name__ == "__main__":
    main()
