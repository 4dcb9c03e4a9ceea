"""The C library, for the few calls Python does not make itself (``prctl``, ``setenv``, ``inotify``): loaded once a
process, by ``dlopen(NULL)`` (``ctypes.CDLL(None)``), whose symbols are the running program's and those of the
libraries loaded with it, the C library among them (glibc and musl alike). Until 2026-12-07 it was looked up by
``ctypes.util.find_library("c")``, which runs ``ldconfig -p`` through ``subprocess`` (~2 ms at a worker's first
handler fork and at each ``InotifyWatcher``), a child whose pipe a fork by another thread could keep open, so that
``Popen`` waited as long as that fork's child lived (docs/decisions.md, fix-pipes)."""
from __future__ import annotations

import ctypes
import sys
from typing import Any

_libc: Any = None


def load_libc() -> Any:
    """The C library on Linux (loaded once), else False: where there is none to call, a caller does without."""
    global _libc
    if _libc is None:  # set once, whole: a thread asking while another loads it loads it too (the same library)
        loaded: Any = False
        if sys.platform.startswith("linux"):
            try:
                loaded = ctypes.CDLL(None, use_errno=True)
            except OSError:
                pass
        _libc = loaded  # until fix-reva False was put here first: a thread asking meanwhile was told there was none
    return _libc
