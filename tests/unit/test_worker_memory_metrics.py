"""A worker's memory figures against psutil's view of the same processes."""

import multiprocessing
import os
import sys

import psutil
import pytest

from workers.metrics import WorkerMemoryCollector

MIB = 1024**2


def _hold(size: int, ready: "multiprocessing.synchronize.Event") -> None:
    block = bytearray(os.urandom(1)) * size  # resident: every page written
    ready.set()
    multiprocessing.Event().wait(30)
    del block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_memory_adds_up_the_pool_and_names_the_largest_process():
    context = multiprocessing.get_context("fork")
    events = [context.Event(), context.Event()]
    children = [
        context.Process(target=_hold, args=(size, event), daemon=True)
        for size, event in zip((40 * MIB, 80 * MIB), events, strict=True)
    ]
    for child in children:
        child.start()
    try:
        assert all(event.wait(20) for event in events)
        samples = {
            (family.name, tuple(sample.labels.values())): sample.value
            for family in WorkerMemoryCollector(os.getpid()).collect()
            for sample in family.samples
        }
        me = psutil.Process()
        expected_pool = sum(p.memory_info().rss for p in me.children(recursive=True))
        largest = max(p.memory_info().rss for p in me.children(recursive=True))
    finally:
        for child in children:
            child.kill()
            child.join()
    assert samples[("assay_worker_resident_memory_bytes", ("main",))] == pytest.approx(
        me.memory_info().rss, rel=0.1
    )
    pool = samples[("assay_worker_resident_memory_bytes", ("pool",))]
    assert pool == pytest.approx(expected_pool, rel=0.1)
    assert pool > 120 * MIB
    assert samples[("assay_worker_process_max_resident_memory_bytes", ())] == pytest.approx(
        largest, rel=0.1
    )
