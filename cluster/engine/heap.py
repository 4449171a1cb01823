"""Freed heap pages back to the OS (glibc only), so a rank's RSS follows its live memory.

MLX on the CPU allocates arrays with malloc. Under steady load glibc keeps the pages of freed
chunks between live ones, and a rank's resident size drifts up although nothing leaks.
`malloc_trim(0)` hands those pages back; elsewhere (macOS, musl) this does nothing.
"""

import ctypes
import ctypes.util
import platform
import time


def _malloc_trim():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


IDLE_TRIM_SECONDS = 1.0
"""Going idle trims sooner than `every`, but not more often than this."""


class HeapTrimmer:
    """Trims every `every` seconds under load, and once on going idle; counts time spent."""

    def __init__(self, every: float):
        self.every = every
        self._trim = _malloc_trim() if every > 0 else None
        self._last = float("-inf")  # the first trim is due at once
        self._worked = False
        self.trims = 0
        self.seconds = 0.0

    @property
    def active(self) -> bool:
        return self._trim is not None

    def maybe_trim(self, idle: bool) -> None:
        """Called before each step (idle=False) and before waiting for work (idle=True)."""
        now = time.monotonic()
        self._worked |= not idle
        due = min(self.every, IDLE_TRIM_SECONDS) if idle else self.every
        if self._trim is None or not self._worked or now - self._last < due:
            return
        self._trim(0)
        self._worked = False
        self._last = time.monotonic()
        self.trims += 1
        self.seconds += self._last - now

    def to_json(self) -> dict:
        ms = 1000 * self.seconds / max(self.trims, 1)
        return {
            "active": self.active,
            "trims": self.trims,
            "seconds": round(self.seconds, 6),
            "trim_ms_avg": round(ms, 3),
        }
