"""``import_record.stopped`` says stopped only the record its own process put, reading and writing it under the
records' lock: what another import of the same bundle (the same key) puts or removes meanwhile is never overwritten.
Until 2026-12-07 (import3) nothing was held between the read and the write: a record another import put there was
overwritten with this one's, stopped (its live import judged abandoned: exit 7), and one a completed import removed
came back. The other import runs in a thread here, as another process would (the lock is exclusive between both)."""
from __future__ import annotations

import io
import json
import subprocess
import threading
from pathlib import Path
from typing import Callable

import pytest

from backends import BACKENDS, orchestrator_on
from orchestrator import Orchestrator, import_record
from orchestrator.import_record import IMPORTS_AREA, RUNNING, held_record, import_records
from orchestrator.leftovers import start_time
from orchestrator.signing import Keyring

# How long this import, between its read and its write, lets the other one try: it puts or removes in a moment when
# nothing holds it back (without the lock), and waits for the lock however long this is (with it)
OTHER_TRIES_SECONDS = 1.0


@pytest.fixture(params=BACKENDS)
def dest(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base / "dst", keyring) as orch:
        yield orch


def stopped_while(dest: Orchestrator, key: str, other: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> None:
    """``stopped`` of ``key`` by this process, ``other`` (another import's write) run just after its read."""
    real_get = dest.store.get_aux
    beside = threading.Thread(target=other)

    def get_then_the_other_writes(area: str, k: str) -> bytes | None:
        raw = real_get(area, k)
        if area == IMPORTS_AREA:
            monkeypatch.setattr(dest.store, "get_aux", real_get)
            beside.start()
            beside.join(OTHER_TRIES_SECONDS)
        return raw

    monkeypatch.setattr(dest.store, "get_aux", get_then_the_other_writes)
    import_record.stopped(dest, key)
    monkeypatch.setattr(dest.store, "get_aux", real_get)
    beside.join(60)
    assert not beside.is_alive()


def test_a_record_another_import_puts_while_this_one_says_its_own_stopped_is_left_as_it_is(
        dest: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "0" * 32
    import_record.hold(dest, key, held_record(dest, {"created_at": "x"}, io.BytesIO()))
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            theirs = json.loads(held_record(dest, {"created_at": "x"}, io.BytesIO()))
            theirs.update(pid=other.pid, started=(start_time(other.pid) or b"").decode())
            stopped_while(dest, key, lambda: import_record.hold(dest, key, json.dumps(theirs).encode()), monkeypatch)
            record = json.loads(dest.store.get_aux(IMPORTS_AREA, key) or b"{}")
            verdicts = [r.verdict for r in import_records(dest)]
        finally:
            other.kill()
    assert record["pid"] == other.pid and "stopped_at" not in record, record
    assert verdicts == [RUNNING]


def test_a_record_another_import_removes_as_it_completes_does_not_come_back_stopped(
        dest: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "0" * 32
    import_record.hold(dest, key, held_record(dest, {"created_at": "x"}, io.BytesIO()))
    stopped_while(dest, key, lambda: import_record.release(dest, key), monkeypatch)
    assert dest.store.get_aux(IMPORTS_AREA, key) is None
    assert import_records(dest) == []
