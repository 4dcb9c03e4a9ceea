"""Hostile ids, paths, JSON and payloads are refused with their code; secrets never reach the store or logs."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.reliability import badinput
from orchestrator.reliability.handlers import SECRET_OBJECTS, SECRET_TEXT, SECRETS


def test_every_hostile_input_is_refused_without_a_crash_and_harms_nothing(tmp_path: Path) -> None:
    result = badinput.campaign(tmp_path, line_samples=200)
    for part in ("cli", "payload", "lines", "symlink"):
        assert result[part]["failures"] == [], (part, result[part]["failures"])
    assert result["total"]["cases"] > 400
    assert (result["total"]["accepted"], result["total"]["crashed"], result["total"]["harmed"]) == (0, 0, 0)


def test_secrets_of_every_pattern_in_every_captured_channel_never_leak(tmp_path: Path) -> None:
    planted = SECRET_TEXT + json.dumps(SECRET_OBJECTS)
    assert badinput.leaked(planted) == set(SECRETS) | set(SECRET_OBJECTS)  # the scan itself finds every secret
    result = badinput.secrets(tmp_path)
    assert result["channels"] == 7
    assert result["leaked"] == 0, result["where"] or result["log_patterns"]
