"""The heap trimmer gives freed malloc pages back to the OS (Linux/glibc)."""

import platform

import pytest

from cluster.engine.heap import HeapTrimmer
from cluster.launch.supervisor import resident_bytes


def rss() -> int:
    import os

    return resident_bytes(os.getpid()) or 0


@pytest.mark.skipif(platform.system() != "Linux", reason="malloc_trim is glibc's")
def test_trim_returns_freed_pages_between_live_chunks():
    # 100 KB chunks come from the heap (below glibc's mmap threshold); keeping every tenth
    # alive pins the heap's top, so freeing the rest lowers RSS only after a trim.
    chunks = [bytearray(b"x" * 100_000) for _ in range(2000)]
    kept = chunks[::10]
    del chunks
    before = rss()
    trimmer = HeapTrimmer(every=0.01)
    trimmer.maybe_trim(idle=False)
    after = rss()
    assert trimmer.trims == 1 and trimmer.active
    assert before - after > 100 << 20, (before, after)
    assert len(kept) == 200


def test_idle_trims_once_after_work_and_zero_disables():
    trimmer = HeapTrimmer(every=3600)
    if not trimmer.active:
        pytest.skip("no malloc_trim here")
    trimmer.maybe_trim(idle=True)
    assert trimmer.trims == 0  # no work yet
    trimmer.maybe_trim(idle=False)
    assert trimmer.trims == 1  # the first is due at once
    trimmer.maybe_trim(idle=False)
    assert trimmer.trims == 1  # then under load only every hour
    trimmer.maybe_trim(idle=True)
    assert trimmer.trims == 1  # going idle: not within a second of the last trim
    trimmer._last -= 2
    trimmer.maybe_trim(idle=True)
    assert trimmer.trims == 2  # going idle after work
    trimmer._last -= 2
    trimmer.maybe_trim(idle=True)
    assert trimmer.trims == 2  # once per stretch of work
    off = HeapTrimmer(every=0)
    off.maybe_trim(idle=False)
    assert not off.active and off.trims == 0
