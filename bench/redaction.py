"""What the redaction costs on texts that hold no secret, the common case: one code's figures, as JSON on stdout.

    python bench/redaction.py --code /path/to/checkout     # that checkout's orchestrator, not the installed one
    for i in $(seq 11); do for c in old new; do python bench/redaction.py --code $c >> $c.jsonl; done; done

``sanitize_text`` runs on every job's output tail and on every string a job or an operator hands in, so its cost on
text without secrets is what every job pays; the ``llm`` handler's ``Secrets.drop`` runs on each string of a reply.
Each figure is the best of ``--repeat`` ``timeit`` rounds, in seconds a call. Compare two codes by alternated runs,
each a process of its own (one code, then the other, ...), and take the medians over the runs: a shared host's load
drifts more between minutes than between two runs side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path
from typing import Callable

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run as a script: ``bench`` importable, last on the path

from bench.cli_args import positive_int  # noqa: E402

SUMMARY = "summary for the board: 12 pages, 3 charts"
LOG_LINES = (  # what a job's output tail holds: a worker's claim, test results, a traceback's lines, progress
    "2026-12-07T10:02:11.482Z worker w-3 claimed job 01JEX4Q9 run r-7 (attempt 2 of 3)\n",
    "tests/unit/test_state.py::test_resume_twice_with_same_answer_writes_one_event PASSED [ 42%]\n",
    "========================= 118 passed, 2 skipped in 3.21s =========================\n",
    '  File "/srv/app/jobs/report.py", line 88, in render\n    raise ValueError(f"no rows for {day}")\n',
    "step 14/40: wrote out/chart-14.png (38,112 bytes) in 0.42 s\n",
)
ZEN = ("Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. Complex is "
       "better than complicated. Flat is better than nested. Sparse is better than dense. Readability counts. Special "
       "cases aren't special enough to break the rules. Although practicality beats purity. Errors should never pass "
       "silently. Unless explicitly silenced. In the face of ambiguity, refuse the temptation to guess.\n")
LLM_KEY = "sk-test-0123456789abcdefghijklmnopqrstuv"


def repeated(text: str, size: int) -> str:
    return (text * (size // len(text) + 1))[:size]


def texts() -> dict[str, str]:
    log = "".join(LOG_LINES)
    return {"summary": SUMMARY, "tail_4k": repeated(log, 4096), "prose_1m": repeated(ZEN, 1 << 20),
            "log_1m": repeated(log, 1 << 20)}


def best(call: Callable[[], object], repeat: int) -> float:
    """The best of ``repeat`` rounds of as many calls as take about 0.2 s (``timeit``'s ``autorange``), a call."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", help="a checkout whose orchestrator package is timed (default: the installed one)")
    parser.add_argument("--repeat", type=positive_int, default=5, help="timeit rounds, the best kept (default 5)")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    import orchestrator
    from orchestrator.handlers.llm_secrets import Secrets
    from orchestrator.security import sanitize_text

    secrets = Secrets(LLM_KEY)
    figures: dict[str, object] = {"code": orchestrator.__file__}
    timed = texts()
    for name, text in timed.items():
        figures[f"sanitize_text.{name}"] = best(lambda: sanitize_text(text), args.repeat)
    for name in ("prose_1m", "log_1m"):  # the log's pytest lines hold a "%" each
        figures[f"llm_drop.{name}"] = best(lambda: secrets.drop(timed[name]), args.repeat)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
