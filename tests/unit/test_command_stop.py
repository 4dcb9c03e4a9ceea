"""The stop rule of a command line process (``command_stop.CommandStop``), its handler called as the signal would call
it: in the main thread, where Python runs signal handlers."""
from __future__ import annotations

import signal
import threading

import pytest

from helpers import WAIT
from orchestrator.command_stop import CommandStop
from orchestrator.errors import Interrupted


def test_a_stop_during_a_deferred_step_of_the_main_thread_is_raised_as_the_step_ends() -> None:
    stop = CommandStop()
    with pytest.raises(Interrupted) as raised:
        with stop.deferred():
            stop._on_signal(signal.SIGTERM, None)  # noqa: SLF001 - the signal arriving during the step
            stepped_on = True  # not cut: the step goes on to its end
    assert stepped_on and raised.value.signum == signal.SIGTERM


def test_a_deferred_step_of_another_thread_neither_holds_back_the_main_threads_stop_nor_raises_it() -> None:
    """Until 2026-12-07 the steps were counted for the whole process: a step of another thread held the stop back
    (the main thread went on with its command), and raised it in that thread as it ended."""
    stop = CommandStop()
    inside, leave = threading.Event(), threading.Event()
    raised_there: list[BaseException] = []

    def step() -> None:
        try:
            with stop.deferred():
                inside.set()
                leave.wait(WAIT)
        except BaseException as exc:  # noqa: BLE001 - what the thread would have raised, looked at below
            raised_there.append(exc)

    other = threading.Thread(target=step)
    other.start()
    try:
        assert inside.wait(WAIT)
        with pytest.raises(Interrupted):
            stop._on_signal(signal.SIGTERM, None)  # noqa: SLF001
    finally:
        leave.set()
        other.join(WAIT)
    assert raised_there == []
