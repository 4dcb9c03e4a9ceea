"""The C library is loaded without running a program: ``find_library`` ran ``ldconfig`` through ``subprocess``,
whose pipe a fork by another thread could keep, ``Popen`` then waiting as long as that fork's child lived."""
from __future__ import annotations

import subprocess
import sys
import time

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C library is called on Linux only")
def test_a_thread_asking_while_another_loads_the_c_library_gets_it_not_false(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_libc`` put False in its cache before it loaded the library, so another thread asking meanwhile (two
    workers starting: an ``InotifyWatcher``, a handler fork) was told there was none: a watch polling, a handler process
    forked then with no ``PR_SET_PDEATHSIG`` (it kept the False, and never asked again)."""
    import ctypes
    import threading

    real_cdll, loading = ctypes.CDLL, threading.Event()

    def slow_cdll(*args: object, **kwargs: object) -> object:
        loading.set()
        time.sleep(0.3)  # widens the window another thread asks in
        return real_cdll(*args, **kwargs)

    monkeypatch.setattr(libc, "_libc", None)
    monkeypatch.setattr(libc.ctypes, "CDLL", slow_cdll)
    first: list[object] = []
    loader = threading.Thread(target=lambda: first.append(libc.load_libc()))
    loader.start()
    try:
        assert loading.wait(10)
        meanwhile = libc.load_libc()
    finally:
        loader.join(10)
    assert first and first[0]
    assert meanwhile, "told there was no C library while another thread loaded it"
