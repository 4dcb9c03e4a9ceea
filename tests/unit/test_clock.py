"""Times read from text: a time without a zone is UTC, as every time written and shown is, whatever ``TZ`` says."""
from __future__ import annotations

import time

import pytest

from orchestrator.clock import from_iso, to_iso


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch):
    def set_zone(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("tz", ["EST+5", "JST-9", "UTC0"])  # New York in winter, Tokyo, UTC (POSIX forms)
def test_a_time_without_a_zone_is_utc_whatever_the_machines_zone(zone, tz: str) -> None:
    zone(tz)
    assert from_iso("2026-12-01T16:00:00") == from_iso("2026-12-01T16:00:00Z") == 1_796_140_800.0
    assert from_iso("2026-12-01T17:00:00+01:00") == 1_796_140_800.0
    assert from_iso(to_iso(1_796_141_640.25)) == 1_796_141_640.25


@pytest.mark.parametrize("tz", ["EST+5", "JST-9"])
def test_the_first_and_last_years_read_in_any_zone(zone, tz: str) -> None:
    zone(tz)
    assert from_iso("0001-01-01T00:00:00") == -62_135_596_800.0
    assert from_iso("0001-01-01T00:00:00+09:00") == -62_135_596_800.0 - 9 * 3600
    assert from_iso("9999-12-31T23:59:59-14:00") == 253_402_300_799.0 + 14 * 3600


@pytest.mark.parametrize("epoch", [-62_135_596_800.0, -39_103_262_759.479721, -30_610_224_000.5, 0.0, 1_796_141_640.25,
                                   253_402_300_799.5])
def test_every_time_written_reads_back_the_same_from_the_first_year_to_the_last(epoch: float) -> None:
    """Years 1 to 9999 (``from_iso``'s range): a year before 1000 was written with fewer than four digits, which
    ``from_iso`` refused; the text also sorts as the times do."""
    text = to_iso(epoch)
    assert from_iso(text) == pytest.approx(epoch, abs=1e-6)
    assert len(text) == len("2026-12-01T16:00:00.000000Z") and text.endswith("Z")
    earlier, later = to_iso(max(epoch - 0.5, -62_135_596_800.0)), to_iso(min(epoch + 0.25, 253_402_300_799.75))
    assert sorted([later, text, earlier]) == [earlier, text, later]


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "10000-01-01T00:00:00", ""])
def test_text_that_is_no_time_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        from_iso(text)


def test_the_file_and_memory_backends_keep_this_machines_clock(orch) -> None:
    """Only a store whose machines compare each other's times (PostgreSQL) brings a clock of its own."""
    from orchestrator import Orchestrator, clock
    from orchestrator.store.memory import MemoryStore

    assert orch.store.shared_clock is None and orch.clock is clock.now
    assert Orchestrator(base_path=orch.settings.base_path, store=MemoryStore()).clock is clock.now
