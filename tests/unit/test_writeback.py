"""Write-back of files as they are written: every STEP_BYTES, contiguous ranges, no waiting."""

import os
from pathlib import Path

import pytest

from services import writeback
from services.writeback import Writeback, start_writeback


def test_write_back_starts_every_step_over_contiguous_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(writeback, "STEP_BYTES", 1000)
    monkeypatch.setattr(
        writeback, "start_writeback", lambda fd, offset, length: started.append((offset, length))
    )
    tracker = Writeback(fd=3)
    for size in [400, 400, 400, 1500, 10]:
        tracker.wrote(size)
    assert started == [(0, 1200), (1200, 1500)]  # the last 10 bytes are left to the fsync


def test_starting_write_back_of_a_real_file_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    payload = os.urandom(3 * 1024 * 1024)
    with open(path, "wb", buffering=0) as out:
        out.write(payload)
        start_writeback(out.fileno(), 0, len(payload))  # a no-op where unsupported
        os.fsync(out.fileno())
    assert path.read_bytes() == payload
