"""In-memory store: the reference behaviour of the contract, for tests and embedding."""
from __future__ import annotations

import threading
from typing import Iterator

from orchestrator.errors import ConcurrencyError
from orchestrator.store.base import (AUDIT_STREAM, AuxWrites, Builder, EventStore, Head, InTransaction, StoredLine,
                                     check_aux_name)


class MemoryStore(EventStore):
    def __init__(self) -> None:
        self._streams: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._aux: dict[tuple[str, str], bytes] = {}

    def append(self, stream: str, build: Builder, expected_seq: int | None = None,
               fence: int | None = None, aux: AuxWrites | None = None,
               in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
        self._no_transaction(in_transaction)
        with self._lock:
            lines = self._streams.get(stream, [])
            head = Head(len(lines), lines[-1] if lines else b"")
            if expected_seq is not None and expected_seq != head.seq:
                raise ConcurrencyError(f"{stream}: expected {expected_seq} lines, found {head.seq}")
            new = list(build(head))
            for line in new:
                if b"\n" in line:
                    raise ValueError("a line must not contain a newline")
            self._streams[stream] = lines + new
            new_head = Head(head.seq + len(new), new[-1] if new else head.last_line)
        if new and aux is not None:
            self._write_aux(aux(new_head))
        return new_head

    def read(self, stream: str, from_seq: int = 1) -> list[StoredLine]:
        with self._lock:
            lines = list(self._streams.get(stream, ()))
        return [StoredLine(i, raw) for i, raw in enumerate(lines, 1) if i >= from_seq]

    def first_line(self, stream: str) -> bytes | None:
        with self._lock:
            lines = self._streams.get(stream)
            return lines[0] if lines else None

    def job_ids(self) -> Iterator[str]:
        with self._lock:
            names = [s for s, lines in self._streams.items() if lines and s != AUDIT_STREAM]
        return iter(names)

    def put_aux(self, area: str, key: str, data: bytes) -> None:
        check_aux_name(area, key)  # as the other stores: a name each can hold
        self._aux[(area, key)] = bytes(data)

    def aux_keys(self, area: str) -> list[str]:
        return sorted(key for a, key in list(self._aux) if a == area)

    def delete_aux(self, area: str, key: str) -> None:
        check_aux_name(area, key)
        self._aux.pop((area, key), None)

    def get_aux(self, area: str, key: str) -> bytes | None:
        check_aux_name(area, key)
        return self._aux.get((area, key))
