"""Named crash points, armed by tests so a real process dies exactly there.

``point(name)`` costs one dict lookup when nothing is armed. A test arms a point either
in-process (``arm``) or for a subprocess through ``ORCH_CRASH_AT=name[:n]``: the process
kills itself with SIGKILL the n-th time (default 1st) it passes the point, like a power cut
as seen by the process (no cleanup, no flush, no ``finally``).
"""
from __future__ import annotations

import os
import signal
from typing import Callable

_armed: dict[str, list] = {}


def arm_from_env() -> None:
    """Arm the point ``ORCH_CRASH_AT`` names (at import; a process forked before its environment was set, again)."""
    spec = os.environ.get("ORCH_CRASH_AT")
    if spec:
        name, _, nth = spec.partition(":")
        _armed[name] = [int(nth or 1), None]


def arm(name: str, action: Callable[[], None] | None = None, nth: int = 1) -> None:
    """Arm ``name``: on its n-th pass run ``action`` (default: SIGKILL this process)."""
    _armed[name] = [nth, action]


def disarm_all() -> None:
    _armed.clear()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str, prepare: Callable[[], None] | None = None) -> None:
    """Pass the crash point ``name``; when it fires, ``prepare`` runs first (e.g. a half write)."""
    entry = _armed.get(name)
    if entry is None:
        return
    entry[0] -= 1
    if entry[0] <= 0:
        del _armed[name]
        if prepare is not None:
            prepare()
        (entry[1] or kill_self)()


arm_from_env()
