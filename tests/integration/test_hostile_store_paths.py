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
