#!/usr/bin/env python3
"""Runbook command `submit`: the same as `orchestrator submit` (see -h)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestrator.entry import run_script  # noqa: E402

run_script("submit")
