#!/usr/bin/env python3
"""Cost per event of the integrity machinery: sign, verify, and a durable append.

    python3 scripts/bench_event_costs.py [--events 2000] [--json]

Prints medians over several rounds (microseconds per event). The append figure includes
sealing (sign + hash), the flock, one write and one fdatasync, and the head record.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from orchestrator.entry import run_tool, tool_started  # noqa: E402

if __name__ == "__main__":
    tool_started()  # before the imports below: a stop in them is this run's (``entry``)
from bench.cli_args import positive_int  # noqa: E402
from orchestrator import Orchestrator  # noqa: E402
from orchestrator.history import verify_stream  # noqa: E402
from orchestrator.json_usage import ArgumentParser, print_result  # noqa: E402
from orchestrator.signing import Keyring, canonical  # noqa: E402


def per_event_us(fn, n: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(n)
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])  # a usage error with --json: as JSON on stdout
    ap.add_argument("--events", type=positive_int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    n = args.events
    ring = Keyring.generate()
    record = {"job_id": "J", "type": "job_succeeded", "ts": "2026-11-22T00:00:00.000000Z", "actor": "w",
              "data": {"summary": "ok", "output": {"x": list(range(10))}}, "seq": 1, "prev": "0" * 64, "v": 1}
    line = ring.seal(dict(record))
    parsed = json.loads(line)

    def sign(k: int) -> None:
        for _ in range(k):
            ring.seal(dict(record))

    def verify(k: int) -> None:
        for _ in range(k):
            ring.check(parsed)

    def canonical_only(k: int) -> None:
        for _ in range(k):
            canonical(record)

    with tempfile.TemporaryDirectory() as tmp:
        orch = Orchestrator(base_path=tmp, project_id="bench", keyring=ring)
        job_id = orch.submit("noop", {})
        state = {"view": orch.load(job_id)}

        def append(k: int) -> None:
            # cancel is the one transition that needs no run; alternate claim/timeout to stay valid
            for _ in range(k):
                v = state["view"]
                v = orch.append(v, job_id, [("job_claimed", {"worker_id": "w", "epoch": v.state.epoch + 1,
                                                             "attempt": v.state.attempt + 1,
                                                             "lease_expires_at": "2030-01-01T00:00:00Z"})])
                state["view"] = orch.append(v, job_id, [("job_timeout", {"error_code": "T", "timeout": 1,
                                                                        "retry_at": "2026-01-01T00:00:00Z"})])

        append_us = per_event_us(append, max(1, n // 20), rounds=3) / 2
        lines = orch.store.read(job_id)

        def verify_stream_k(k: int) -> None:
            verify_stream(job_id, lines[:k], ring)

        verify_chain_us = per_event_us(verify_stream_k, min(n, len(lines)), rounds=3)
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_implementation()} {platform.python_version()}",
        "sign_us": round(per_event_us(sign, n), 1),
        "verify_signature_us": round(per_event_us(verify, n), 1),
        "canonical_encode_us": round(per_event_us(canonical_only, n), 1),
        "verify_line_full_us": round(verify_chain_us, 1),
        "durable_append_us": round(append_us, 1),
        "line_bytes": len(line),
    }
    print_result(json.dumps(result) if args.json else "\n".join(f"{k:<22} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
