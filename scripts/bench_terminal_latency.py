#!/usr/bin/env python3
"""Runbook command `bench_terminal_latency`: the same as `orchestrator bench-terminal-latency` (see -h)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestrator.entry import run_script  # noqa: E402

run_script("bench-terminal-latency")
