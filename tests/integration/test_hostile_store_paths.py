"""Paths planted inside the store never lead a worker outside it, nor crash it."""
from __future__ import annotations

from pathlib import Path

from orchestrator import Orchestrator
from orchestrator.reliability import handlers  # noqa: F401 - registers rel.echo


def test_a_job_whose_artifact_folder_is_a_symlink_out_of_the_store_fails_with_path_escape(
        orch: Orchestrator, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    job = orch.submit("rel.echo", {"x": 1})
    (orch.settings.state_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    (orch.settings.state_dir / "artifacts" / job).symlink_to(outside)
    result = orch.worker(worker_id="w").run_once()  # before the fix: PathEscapeError escaped, the job stayed running
    assert result is not None and result.error_code == "PATH_ESCAPE"
    st = orch.status(job)
    assert st.state == "failed" and st.last_error["code"] == "PATH_ESCAPE"
    assert list(outside.iterdir()) == []


def test_an_artifacts_folder_swapped_for_a_symlink_after_a_run_is_caught_by_the_same_worker(
        orch: Orchestrator, tmp_path: Path) -> None:
    """A worker skips resolving the artifact folders when nothing changed since its last full check;
    the ``artifacts`` folder replaced by a symlink out of the store afterwards is such a change."""
    import shutil

    outside = tmp_path / "outside"
    outside.mkdir()
    worker = orch.worker(worker_id="w")
    first = orch.submit("rel.echo", {"x": 1})
    (orch.settings.state_dir / "artifacts" / first).mkdir(parents=True)  # the folder exists: checked in full once
    assert worker.run_once().state == "succeeded"
    shutil.rmtree(orch.settings.state_dir / "artifacts")
    (orch.settings.state_dir / "artifacts").symlink_to(outside)
    job = orch.submit("rel.echo", {"x": 2})
    result = worker.run_once()
    assert result is not None and result.job_id == job and result.error_code == "PATH_ESCAPE"
    assert list(outside.iterdir()) == []
