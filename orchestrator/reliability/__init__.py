"""Reliability harness: the crash, torn-tail, tamper, concurrency, disk and bad-input campaigns.

Each campaign is a function returning figures (``dict``) so that the test suite runs a short
version and ``scripts/reliability_report.py`` runs the long one with the same code: a figure in
``docs/guarantees.md`` is never measured by a different program than the one CI runs.
Nothing in ``orchestrator`` imports this package; it only uses the public API, the store and
the named crash points of ``orchestrator.faults``.
"""
from __future__ import annotations
