"""The scratch sweep removes DuckDB spill folders and job scratch of processes that are gone."""

import os
import subprocess
import sys
from pathlib import Path

from workers.reaper import sweep_scratch


def test_spill_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead, alive = tmp_path / f"duckdb-{finished.stdout.strip()}", tmp_path / f"duckdb-{os.getpid()}"
    for folder in (dead, alive):
        (folder / "spill.tmp").parent.mkdir()
        (folder / "spill.tmp").write_bytes(b"x")
    assert sweep_scratch(tmp_path, older_than_s=3600) == 1
    assert not dead.exists() and alive.exists()


def test_scratch_of_job_attempts_whose_process_died_is_removed(tmp_path: Path) -> None:
    from use_cases.scratch import owner, owner_suffix, this_host

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = finished.stdout.strip()
    ours = tmp_path / f"job-1234-abcd{owner_suffix()}"  # this process: alive
    dead = tmp_path / f"job-1234-efgh@{dead_pid}@{this_host()}"
    elsewhere = tmp_path / f"job-1234-ijkl@{dead_pid}@another-host"  # its pid is not ours
    for folder in (ours, dead, elsewhere):
        (folder / "data.parquet").parent.mkdir()
        (folder / "data.parquet").write_bytes(b"x")
    assert owner(dead.name) == (int(dead_pid), this_host())
    assert owner("job-1234-plain") is None
    assert sweep_scratch(tmp_path, older_than_s=3600) == 1
    assert ours.exists() and not dead.exists() and elsewhere.exists()
    assert sweep_scratch(tmp_path, older_than_s=-1) == 2  # past any task's time limit: all
