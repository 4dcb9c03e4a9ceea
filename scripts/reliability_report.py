#!/usr/bin/env python3
"""Runs the reliability campaigns and prints the figure table of docs/guarantees.md (see -h)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestrator.entry import run_tool, tool_started  # noqa: E402

tool_started()  # before the campaigns' imports: a stop in them is this run's (``entry``)
from orchestrator.reliability.report import command_line  # noqa: E402

sys.exit(run_tool(command_line))
