"""Storage backends behind one small interface (``EventStore``)."""
from __future__ import annotations

from orchestrator.store.base import AUDIT_STREAM, EventStore, Head, StoredLine

__all__ = ["AUDIT_STREAM", "EventStore", "Head", "StoredLine"]
