#!/usr/bin/env python3
"""Runs the reliability campaigns and prints the figure table of docs/guarantees.md (see -h)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestrator.reliability.report import command_line  # noqa: E402

sys.exit(command_line())
