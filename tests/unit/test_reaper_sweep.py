"""The scratch sweep removes DuckDB spill folders of worker processes that are gone."""

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
