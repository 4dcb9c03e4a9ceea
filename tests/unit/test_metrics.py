"""Metric definitions on projection rows, at an injected ``now``."""
from __future__ import annotations

from orchestrator.metrics import Thresholds, compute, prometheus
from orchestrator.projection import Row

NOW = 1_800_000_000.0


def row(state: str, *, submitted: float = NOW - 100, final: float | None = None, lease: float | None = None,
        ok: bool = True, resumes: tuple[int, int] = (0, 0)) -> Row:
    return Row(state=state, ok=ok, submitted_at=submitted, updated_at=submitted, final_at=final,
               lease_expires_at=lease, resumes_ok=resumes[0], resumes_failed=resumes[1], runs=[])


def test_stalled_counts_running_jobs_whose_lease_expired_before_now() -> None:
    rows = [row("running", lease=NOW - 1), row("running", lease=NOW + 60), row("queued"), row("running", lease=NOW - 30)]
    m = compute("p", rows, NOW, Thresholds())
    assert m.stalled_count == 2
    assert compute("p", rows, NOW, Thresholds(stall_grace=10)).stalled_count == 1
    assert [a["code"] for a in m.alerts] == ["STALLED_JOBS"] and m.alerts[0]["severity"] == "critical"


def test_resume_success_rate_is_over_resumes_with_an_outcome() -> None:
    m = compute("p", [row("succeeded", resumes=(3, 1)), row("waiting_human", resumes=(0, 1)), row("queued")], NOW,
                Thresholds(resume_min_samples=1))
    assert m.resume_success_rate == 0.6 and m.resumes_decided == 5
    assert [a["code"] for a in m.alerts] == ["RESUME_SUCCESS_LOW"]
    assert compute("p", [row("queued")], NOW, Thresholds()).resume_success_rate is None


def test_mean_converge_time_is_over_jobs_in_a_final_state() -> None:
    rows = [row("succeeded", submitted=NOW - 10, final=NOW - 4), row("cancelled", submitted=NOW - 10, final=NOW),
            row("running", lease=NOW + 5)]
    m = compute("p", rows, NOW, Thresholds())
    assert m.mean_converge_time == 8.0 and m.converged_jobs == 2
    assert [a["code"] for a in compute("p", rows, NOW, Thresholds(converge_max_seconds=5)).alerts] == ["CONVERGE_SLOW"]


def test_counts_list_every_state_and_integrity_errors_alert() -> None:
    m = compute("p", [row("queued"), row("queued", ok=False)], NOW, Thresholds())
    assert m.counts["queued"] == 2 and m.counts["failed"] == 0 and len(m.counts) == 7
    assert m.integrity_errors == 1 and m.alerts[0]["code"] == "INTEGRITY_ERRORS"


def test_thresholds_come_from_options_over_the_environment() -> None:
    env = {"ORCH_ALERT_STALLED_MAX": "4", "ORCH_ALERT_RESUME_SUCCESS_MIN": "0.5"}
    t = Thresholds.from_env(env, stalled_max=None, resume_success_min=0.9)
    assert t.stalled_max == 4 and t.resume_success_min == 0.9 and t.converge_max_seconds == 3600.0


def test_a_threshold_that_is_nan_negative_or_a_rate_above_one_is_a_config_error() -> None:
    """NaN compares false with everything: as a threshold it would silently never alert."""
    import pytest

    from orchestrator.errors import ConfigError

    for env in ({"ORCH_STALL_GRACE_SECONDS": "nan"}, {"ORCH_ALERT_CONVERGE_MAX_SECONDS": "NaN"},
                {"ORCH_ALERT_STALLED_MAX": "-1"}, {"ORCH_ALERT_RESUME_SUCCESS_MIN": "1.5"},
                {"ORCH_STALL_GRACE_SECONDS": "inf"}, {"ORCH_ALERT_CONVERGE_MAX_SECONDS": "1e12"},
                {"ORCH_ALERT_WAITING_HUMAN_MAX": "inf"}):  # the command line's bounds hold from Python too
        with pytest.raises(ConfigError, match=next(iter(env))):
            Thresholds.from_env(env)
    with pytest.raises(ConfigError, match="ORCH_ALERT_RESUME_SUCCESS_MIN"):
        Thresholds(resume_success_min=float("nan"))


def test_a_threshold_variable_that_is_no_number_is_a_config_error_saying_what_it_accepts() -> None:
    """As the ``metrics`` command says it (``cli_values.setting_error``); it was "ORCH_ALERT_STALLED_MAX='x' is not a
    int"."""
    import pytest

    from orchestrator.errors import ConfigError

    for var, accepts in (("ORCH_ALERT_STALLED_MAX", "a whole number of 0 or more"),
                         ("ORCH_ALERT_RESUME_SUCCESS_MIN", "a number from 0 to 1"),
                         ("ORCH_STALL_GRACE_SECONDS", "a number of seconds from 0 to 31622400")):
        with pytest.raises(ConfigError) as refused:
            Thresholds.from_env({var: "x"})
        assert refused.value.message == f"{var} must be {accepts}, not 'x'"


def test_prometheus_text_exposition() -> None:
    text = prometheus(compute("p\"x", [row("running", lease=NOW - 1)], NOW, Thresholds()))
    assert 'orchestrator_jobs{project="p\\"x",state="running"} 1' in text
    assert 'orchestrator_resume_success_ratio{project="p\\"x"} NaN' in text
    assert 'orchestrator_alert{project="p\\"x",code="STALLED_JOBS",severity="critical"} 1' in text
    assert text.endswith("\n") and all(ln.startswith("#") or " " in ln for ln in text.splitlines())


def test_a_job_whose_history_failed_verification_is_an_integrity_error_not_a_stalled_job() -> None:
    """No worker recovers a damaged job, and "running" is only where its valid prefix stops: STALLED_JOBS would
    send the operator to run a worker, for ever."""
    m = compute("p", [row("running", lease=NOW - 60, ok=False), row("running", lease=NOW - 60)], NOW, Thresholds())
    assert (m.stalled_count, m.integrity_errors, m.counts["running"]) == (1, 1, 2)
    m = compute("p", [row("running", lease=NOW - 60, ok=False)], NOW, Thresholds())
    assert m.stalled_count == 0 and [a["code"] for a in m.alerts] == ["INTEGRITY_ERRORS"]


def test_a_final_event_stamped_before_its_submit_converged_in_no_time_never_a_negative_one() -> None:
    """A clock stepped back between the submit and the final event: the job still ended after it was submitted."""
    rows = [row("succeeded", submitted=NOW - 10, final=NOW - 1000), row("failed", submitted=NOW - 10, final=NOW)]
    m = compute("p", rows, NOW, Thresholds(converge_max_seconds=4))
    assert (m.mean_converge_time, m.converged_jobs) == (5.0, 2)
    assert [a["code"] for a in m.alerts] == ["CONVERGE_SLOW"]


def test_an_alert_never_reads_as_if_the_figure_equalled_its_threshold() -> None:
    """79.6% rounded to "80%" read "80% ... is below 80%"; a threshold of 0.5 s read "exceeds 0s"."""
    m = compute("p", [row("succeeded", resumes=(796, 204), submitted=NOW - 3600.04, final=NOW)], NOW,
                Thresholds(converge_max_seconds=3600))
    assert [a["message"] for a in m.alerts] == [
        "resume success rate 79.6% over 1000 resume(s) is below 80%",
        "mean time to a final state 3600.04s exceeds 3600s"]
    m = compute("p", [row("failed", resumes=(1, 2), submitted=NOW - 0.75, final=NOW)], NOW,
                Thresholds(converge_max_seconds=0.5, resume_min_samples=3, resume_success_min=0.5))
    assert [a["message"] for a in m.alerts] == [
        "resume success rate 33.3% over 3 resume(s) is below 50%", "mean time to a final state 0.8s exceeds 0.5s"]


def test_a_row_whose_times_no_event_can_have_never_makes_a_figure_that_is_not_json() -> None:
    """A cache edited by hand or a flipped bit can hold an infinity or a huge time: the mean was Infinity (not
    JSON) or fsum overflowed (a traceback). Such a row is no convergence; the figures stay finite."""
    import json

    rows = [row("succeeded", submitted=NOW - 10, final=float("inf")), row("failed", submitted=-1e308, final=1e308),
            row("failed", submitted=-1e308, final=1e308), row("cancelled", submitted=NOW - 10, final=NOW - 4)]
    m = compute("p", rows, NOW, Thresholds())
    assert (m.mean_converge_time, m.converged_jobs) == (6.0, 1)
    json.loads(json.dumps(m.to_dict(), allow_nan=False))
