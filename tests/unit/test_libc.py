"""The C library is loaded without running a program: ``find_library`` ran ``ldconfig`` through ``subprocess``,
whose pipe a fork by another thread could keep, ``Popen`` then waiting as long as that fork's child lived."""
from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator import libc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C library is called on Linux only")
def test_the_c_library_is_loaded_without_running_a_program_and_has_the_calls_the_worker_makes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_program(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a program was run to load the C library: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_program)
    monkeypatch.setattr(libc, "_libc", None)
    loaded = libc.load_libc()
    assert loaded and all(hasattr(loaded, name) for name in ("prctl", "setenv", "inotify_init1", "inotify_add_watch"))
    assert libc.load_libc() is loaded  # once a process
