"""The PostgreSQL server's clock, read from this machine: on that backend every machine decides time by it.

Lease expiries, stale recovery, retry due times, the lease-stop margin and event time stamps are written
by one machine and compared by another; with each machine's own clock, two that differed by more than a
lease recovered live runs (or more than the stop margin: a run went on after another worker took its
job). So the default clock of an ``Orchestrator`` on PostgreSQL is the server's (``PostgresStore``'s
``shared_clock``): a *sample* pairs the server's ``clock_timestamp()`` with a reading of this machine's
monotonic clock at the midpoint of the round trip, and the time is the sample's plus the monotonic time
elapsed since. This machine's wall clock (``time.time``) plays no part, so a wrong one does not matter,
nor one that NTP steps between samples (a wall clock plus the offset would jump with it until the next
sample). The monotonic clock is ``CLOCK_BOOTTIME`` where there is one: it counts a suspend, which
``time.monotonic`` does not (a laptop that slept would be behind by its sleep until the next sample).

Samples are taken by the store on connections it has open anyway, never by a read of the clock (that
would put a round trip, and a wait for an unreachable server, into a heartbeat's stop decision): best of
``FIRST_SAMPLES`` on the first connection, then one on each new connection and on a call's connection at
most every ``REFRESH_SECONDS``. The sample kept is the one with the smaller error bound (half its round
trip plus ``DRIFT`` per second since it was taken), so a slow round trip does not replace a good sample,
and an old one is replaced by any of a sane round trip. Only a clock read before the store made any call
takes its first sample itself (a call: the store's deadline and errors apply).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

REFRESH_SECONDS = 60.0  # at most this long between two samples while the store is used
FIRST_SAMPLES = 3  # round trips of the first sample, the fastest kept
# How fast, at most, the monotonic clock is taken to drift from the server's (100 ppm, an undisciplined
# crystal's; NTP keeps it far closer): it ages a sample's error bound, to compare samples, nothing else.
DRIFT = 1e-4
_SERVER_NOW_US = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"

if hasattr(time, "CLOCK_BOOTTIME"):
    def ticks() -> float:
        """Seconds of a clock never stepped, counting a suspend (Linux)."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux
    ticks = time.monotonic


@dataclass(frozen=True)
class Sample:
    server: float  # the server's time (epoch seconds) at ``at``
    at: float  # ``ticks()`` at the round trip's midpoint
    round_trip: float
    wall: float  # this machine's ``time.time()`` at the midpoint: only for ``ServerClock.offset``

    def error(self, at: float) -> float:
        """A bound on how far this sample's time is off at ``at``: half its round trip, plus the drift since."""
        return self.round_trip / 2 + DRIFT * abs(at - self.at)


class ServerClock:
    """``clock()``: the server's time now, from the best sample (module docstring). ``first_call`` makes one
    call to the store, which samples; it is used only when the clock is read before any call was made.

    No lock: a sample is replaced as a whole, and two threads sampling at once can at worst keep the worse
    of two good samples until the next one."""

    def __init__(self, first_call: Callable[[], Any]) -> None:
        self._first_call = first_call
        self.sample: Sample | None = None
        self._tried_at = -REFRESH_SECONDS  # ``ticks()`` of the last sampling, kept or not

    def __call__(self) -> float:
        sample = self.sample
        if sample is None:
            self._first_call()
            sample = self.sample
            if sample is None:  # pragma: no cover - every first call samples or raises
                raise RuntimeError("the store made a call without sampling the server's clock")
        return sample.server + (ticks() - sample.at)

    @property
    def offset(self) -> float | None:
        """How far the server's clock was ahead of this machine's at the sample (None: none yet)."""
        return None if self.sample is None else self.sample.server - self.sample.wall

    def due(self) -> bool:
        """Whether a call should sample first: none yet, or the last sampling is ``REFRESH_SECONDS`` old."""
        return self.sample is None or ticks() - self._tried_at >= REFRESH_SECONDS

    def take(self, conn: Any) -> None:
        """Sample on ``conn`` (one round trip; ``FIRST_SAMPLES`` for the first); driver errors are the caller's."""
        self._tried_at = ticks()
        best: Sample | None = None
        for _ in range(FIRST_SAMPLES if self.sample is None else 1):
            before, wall_before = ticks(), time.time()
            (server_us,) = conn.execute(_SERVER_NOW_US).fetchone()
            after, wall_after = ticks(), time.time()
            if best is None or after - before < best.round_trip:
                best = Sample(server_us / 1e6, (before + after) / 2, after - before, (wall_before + wall_after) / 2)
        if best is not None:
            self.offer(best)

    def offer(self, new: Sample) -> bool:
        """Keep ``new`` unless the sample kept bounds the time better; True if it was kept."""
        old = self.sample
        if old is not None and old.error(new.at) < new.error(new.at):
            return False
        self.sample = new
        return True
