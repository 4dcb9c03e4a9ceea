"""The benchmark's physical floors must time the operation they name, not a shortcut of the code."""
from __future__ import annotations

from nacl.signing import VerifyKey

from bench.floor import verification_loop
from orchestrator.signing import Keyring

RECORD = {"job_id": "J", "type": "job_succeeded", "ts": "2026-11-22T00:00:00.000000Z", "actor": "w",
          "data": {"summary": "ok"}, "seq": 3, "prev": "0" * 64, "v": 1}


def test_the_verification_floor_runs_ed25519_once_per_sample(monkeypatch):
    """A keyring remembers what verified (and what it signed): a floor checking one line again and again measured
    the memo (7 us) instead of a verification (40-70 us) and lifted the W1 ceiling it feeds."""
    calls = []
    real = VerifyKey.verify
    monkeypatch.setattr(VerifyKey, "verify", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    verify = verification_loop(Keyring.generate(), RECORD, 20)
    for i in range(20):
        verify(i)
    assert len(calls) == 20
