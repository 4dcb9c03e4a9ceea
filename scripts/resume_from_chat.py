#!/usr/bin/env python3
"""Runbook command `resume_from_chat`: the same as `orchestrator resume-from-chat` (see -h)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestrator.entry import run_script  # noqa: E402

run_script("resume-from-chat")
