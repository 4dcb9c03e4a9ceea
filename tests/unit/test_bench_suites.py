"""The suites table of docs/performance.md and the README's performance ranges hold their runs' figures, and
``python -m bench.suites`` reads them.

Each full suite's JSON is in ``docs/release/``; the table ("Every full suite since") copies its figures by hand, a
row a session. These tests hold every row to its file, and the summary's counts to the files', so that a figure
copied wrong, or a count not brought up to date, fails here instead of being read as a result.
"""
from __future__ import annotations

import glob
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from bench import suites

REPO = Path(__file__).resolve().parents[2]
PERFORMANCE = REPO / "docs" / "performance.md"
ROW = re.compile(r"^\| (\d{4}-\d\d-\d\d \d\d:\d\d) \(")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def table_rows() -> list[list[str]]:
    """The suites table's rows, as lists of cells (the first starts with the suite's time)."""
    rows = [line for line in PERFORMANCE.read_text(encoding="utf-8").splitlines() if ROW.match(line)]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def numbers(cell: str) -> list[float]:
    return [float(n.replace(",", "")) for n in NUMBER.findall(cell.replace("**", ""))]


def figures(suite: suites.Suite) -> dict[str, list[float | None]]:
    """A suite's figures as the table rounds them."""
    def r2(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {"W1 ours vs best peer": [round(suite.w1), round(suite.best_peer_w1)],
            "W2 P99 (skeleton)": [r2(suite.w2_p99), r2(suite.w2_skeleton_p99)],
            "W3 P99 (skeleton), dup.": [r2(suite.w3_p99), r2(suite.w3_skeleton_p99), suite.duplicates],
            "terminal P99": [r2(suite.terminal_p99)],
            "claim, status 100k/1k": [r2(suite.claim_growth), r2(suite.status_growth)],
            "metrics warm": [r2(suite.metrics_warm_s)],
            "cold start": [round(suite.cold_start_ms)]}


def in_the_table(cells: list[str]) -> dict[str, list[float]]:
    return {"W1 ours vs best peer": numbers(cells[2])[:2], "W2 P99 (skeleton)": numbers(cells[3])[:2],
            "W3 P99 (skeleton), dup.": numbers(cells[4])[:3], "terminal P99": numbers(cells[5])[:1],
            "claim, status 100k/1k": numbers(cells[6])[:2], "metrics warm": numbers(cells[7])[:1],
            "cold start": numbers(cells[8])[:1]}


def suite_of(cells: list[str], found: list[suites.Suite]) -> suites.Suite:
    """The suite whose JSON started within three minutes before the row's time (rows give the first workload's)."""
    when = datetime.strptime(cells[0][:16], "%Y-%m-%d %H:%M")
    near = [s for s in found if 0 <= (when - datetime.strptime(s.started, "%Y-%m-%d %H:%M")).total_seconds() <= 180]
    assert len(near) == 1, f"row {cells[0][:16]}: {len(near)} suite JSON files in docs/release/ started then"
    return near[0]


@pytest.fixture(scope="module")
def released() -> list[suites.Suite]:
    return suites.read_suites(sorted(glob.glob(suites.DEFAULT_GLOB)))


def test_every_row_of_the_suites_table_has_the_figures_of_its_suites_json(released: list[suites.Suite]) -> None:
    rows = table_rows()
    assert len(rows) >= 31 and rows[0][0].startswith(suites.REFERENCE_SUITE)
    wrong = {}
    for cells in rows:
        suite = suite_of(cells, released)
        expected, shown = figures(suite), in_the_table(cells)
        wrong.update({f"{cells[0][:16]} {name}": (shown[name], want) for name, want in expected.items()
                      if shown[name] != want})
    assert wrong == {}, "cells that differ from their suite's JSON (shown, in the file)"


def test_the_summary_counts_what_the_suites_since_the_reference_met(released: list[suites.Suite]) -> None:
    """"What the N suites say" gives N and how many met W2 and W3: the counts ``bench.suites`` makes."""
    since = [s for s in released if s.started >= suites.REFERENCE_SUITE]
    met = suites.counts(since)
    text = PERFORMANCE.read_text(encoding="utf-8")
    assert f"**What the {len(since)} suites say**" in text and len(since) == len(table_rows())
    w2 = re.search(r"- \*\*W2\*\* P99 was under 3 ms in (\w+)", text)
    w3 = re.search(r"- \*\*W3\*\* P99 was under 5 ms in (\d+) \([^)]*\) and over it in (\d+)", text)
    assert w2 and w3
    spelled = {"none": 0, "one": 1, "two": 2, "three": 3}
    assert spelled.get(w2.group(1), w2.group(1)) == met["W2 P99 <= 3 ms"][0]
    assert (int(w3.group(1)), int(w3.group(1)) + int(w3.group(2))) == met["W3 P99 <= 5 ms, 0 duplicates"]


def _suite_json(started: str, *, w2_p99: float, scale_to: int = 100_000, with_peer: bool = True) -> dict:
    stats = {"p50": 1.0, "p95": 1.5}
    return {
        "started": started, "machine": {"cpu": "Intel(R) Xeon(R)"},
        "systems": {
            "ours": {"W1": {"jobs_per_s": 500.0}, "W2": {**stats, "p99": w2_p99},
                     "W3": {**stats, "p99": 4.0, "duplicates": 0}, "terminal": {**stats, "p99": 1.2},
                     "W4": {"rss_mb": 27.0, "with_handler_mb": 32.5}},
            **({"persist-queue": {"W1": {"jobs_per_s": 2000.0}, "durable": True},
                "huey-file": {"W1": {"jobs_per_s": 9000.0}, "durable": False}} if with_peer else {})},
        "skeleton": {"W2": {"p99": 2.0}, "W3": {"p99": 2.5}},
        "scale": {"growth": {"claim_p50": 1.04, "status_p50": 0.97, "from": 1000, "to": scale_to},
                  "metrics": {"jobs": scale_to, "warm_s": 0.4}, "coldstart": {"status_ms": 80.0}},
        "floor": {"fdatasync_append": {"p50_us": 110.0}, "sign": {"p50_us": 21.0}, "verify": {"p50_us": 44.0},
                  "python_work": {"p50_us": 40.0}, "python_work_after_idle": {"p50_us": 60.0}}}


def test_the_tool_prints_a_row_per_full_suite_and_counts_the_targets_each_met(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"a.json": {**_suite_json("2026-12-05T10:00:00Z", w2_p99=2.9), "code": "21d7e91+changes"},
             "b.json": _suite_json("2026-12-04T10:00:00Z", w2_p99=3.4),
             "smaller.json": _suite_json("2026-12-05T11:00:00Z", w2_p99=2.0, scale_to=10_000),
             "no-peer.json": _suite_json("2026-12-05T12:00:00Z", w2_p99=2.0, with_peer=False)}
    for name, results in files.items():
        (tmp_path / name).write_text(json.dumps(results), encoding="utf-8")
    assert suites.main([str(tmp_path / name) for name in files]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 2026")]
    assert rows == [  # oldest first; the not-durable peer is not the best one
        "| 2026-12-04 10:00 | Intel, 110 / 21 / 44 us; a wait 1.50x | 500 vs 2,000 (0.25x, persist-queue) | 3.40 (2.00) "
        "| 4.00 (2.50), 0 | 1.20 | 1.04x, 0.97x | 0.40 s | 80 ms | 32.5 MB |",
        "| 2026-12-05 10:00 (21d7e91+changes) | Intel, 110 / 21 / 44 us; a wait 1.50x | 500 vs 2,000 (0.25x, persist-queue) | 2.90 (2.00) "
        "| 4.00 (2.50), 0 | 1.20 | 1.04x, 0.97x | 0.40 s | 80 ms | 32.5 MB |"]
    assert "of 2 full suites (4 file(s) read)" in out
    assert "- W2 P99 <= 3 ms: 1 of 2" in out and "- W1 ahead of every durable peer: 0 of 2" in out
    assert suites.main(["--since", "2026-12-05 00:00", *(str(tmp_path / name) for name in files)]) == 0
    assert "- W2 P99 <= 3 ms: 1 of 1" in capsys.readouterr().out


def test_no_full_suite_is_exit_1_and_a_bad_since_a_usage_error(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(_suite_json("2026-12-05T10:00:00Z", w2_p99=2.9, scale_to=1000)), encoding="utf-8")
    assert suites._cpu({"arch": "aarch64"}) == "aarch64" and suites._cpu({"cpu": "AMD EPYC 7B13"}) == "AMD"
    assert suites.main([str(partial)]) == 1
    assert "no full suite among 1 file(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        suites.main(["--since", "yesterday", str(partial)])
    assert stopped.value.code == 2 and "is not a time written 'YYYY-MM-DD HH:MM'" in capsys.readouterr().err


def test_a_file_that_is_no_suites_json_is_a_usage_error_naming_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file, a folder or a file that is not JSON was a traceback (exit 1)."""
    (tmp_path / "notes.md").write_text("# not JSON\n", encoding="utf-8")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    for name, reason in (("missing.json", "No such file or directory"), (".", "Is a directory"),
                         ("notes.md", "Expecting value")):
        with pytest.raises(SystemExit) as stopped:
            suites.main([str(tmp_path / "list.json"), str(tmp_path / name)])
        assert stopped.value.code == 2
        assert f"cannot read {tmp_path / name} as a suite's JSON: {reason}" in capsys.readouterr().err
    assert suites.main([str(tmp_path / "list.json")]) == 1  # JSON, but no suite's: no full suite among them


def test_a_suite_records_the_commit_it_measured_and_whether_the_code_differed_from_it() -> None:
    from bench.common import code_revision

    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the suite records no commit (code_revision is None)")
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", code_revision() or "")


README = REPO / "README.md"


def _shown_range(low: str, high: str, values: list[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """A range as the README writes it, and the values' lowest and highest rounded as finely as it is written."""
    def rounded(text: str, value: float) -> float:
        decimals = len(text.partition(".")[2])
        return round(value, decimals)

    shown = (float(low.replace(",", "")), float(high.replace(",", "")))
    return shown, (rounded(low, min(values)), rounded(high, max(values)))


def test_the_readmes_performance_ranges_are_those_of_its_suites(released: list[suites.Suite]) -> None:
    """The README's performance paragraph gives each figure's range over the full suites since a day, on hosts of
    their usual speed (the terminal latency within its 2 ms target): every range is the files' lowest and highest,
    rounded as the README writes it, and the count of suites is theirs."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    head = re.search(r"in the (\d+) full suites since (\d{4}-\d\d-\d\d) on hosts of their usual speed", text)
    assert head, "the README's performance paragraph no longer says which suites its ranges cover"
    chosen = [s for s in released if s.started >= head.group(2) and s.terminal_p99 <= 2.0]
    assert int(head.group(1)) == len(chosen)
    ranges = {
        r"runs ([\d,]+)-([\d,]+) no-op jobs/s": [s.w1 for s in chosen],
        r"no-op jobs/s, ([\d.]+)-([\d.]+)x the fastest": [s.w1 / s.best_peer_w1 for s in chosen],
        r"([\d.]+)-([\d.]+) ms after it returns \(P50": [s.terminal_p50 for s in chosen],
        r"after it returns \(P50; P99 ([\d.]+)-([\d.]+) ms": [s.terminal_p99 for s in chosen],
        r"([\d.]+)-([\d.]+) ms after the submit started \(P50": [s.w2_p50 for s in chosen],
        r"after the submit started \(P50; P99 ([\d.]+)-([\d.]+) ms": [s.w2_p99 for s in chosen],
        r"([\d.]+)-([\d.]+) ms after the resume \(P50": [s.w3_p50 for s in chosen],
        r"after the resume \(P50; P99 ([\d.]+)-([\d.]+) ms": [s.w3_p99 for s in chosen],
        r"peak memory is (\d+) MB": [s.rss_mb for s in chosen],
        r"peak memory is \d+ MB \((\d+)-(\d+) MB with its handler process": [s.rss_with_handler_mb for s in chosen],
    }
    wrong = {}
    for pattern, values in ranges.items():
        found = re.search(pattern, text)
        assert found, f"not in the README: {pattern}"
        low, high = (found.group(1), found.group(2)) if found.re.groups == 2 else (found.group(1), found.group(1))
        shown, actual = _shown_range(low, high, values)
        if shown != actual:
            wrong[pattern] = (shown, actual)
    assert wrong == {}, "README ranges that differ from the suites' (shown, in the files)"
    assert "over our 3 ms target in all suites but one" in text
    assert sum(s.w2_p99 <= 3.0 for s in chosen) == 1
