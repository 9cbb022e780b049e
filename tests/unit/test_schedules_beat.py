"""`assay beat` evaluates schedules itself: its ticks never wait in the jobs' queue."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import main


def test_beat_ticks_schedules_in_its_own_thread_not_through_the_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events: list[Any] = []

    class App:
        conf = SimpleNamespace()

        def context(self) -> None:
            return None

        def start(self, argv: list[str]) -> None:
            events.append(("celery beat", dict(self.conf.beat_schedule)))

    app = App()
    monkeypatch.setenv("ASSAY_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(main, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(main, "build_celery", lambda settings: app)
    monkeypatch.setattr(main, "start_schedule_thread", lambda factory: events.append(factory))
    main.beat()
    assert events[0] == app.context  # the schedule thread starts first, on the beat's context
    (_, entries) = events[1]
    assert [entry["task"] for entry in entries.values()] == ["assay.reap"]
