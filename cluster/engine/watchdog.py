"""The step watchdog: a leader rank times every engine step and every collective, and a step
that runs far past its recent peers marks the replica hung (a rank stopped, a collective or a
device fence that never returns). The loop itself is stuck then, so this runs in a thread."""

import threading
import time
from collections import deque
from collections.abc import Callable

RECENT = 64  # steps remembered
FACTOR = 8.0  # a step may take this many times the slowest recent one
MIN_CHUNK = 256
"""Prompt tokens a step must compute for its time to give a rate (a few tokens' step is its
fixed cost: divided by their tiny work, it made the bound hours long)."""
MAX_WORK_BOUND = 600.0
"""The most seconds the work-weighed bound grants a step (a hang mid-prefill is still one),
and what it grants a large prefill before any gave a rate (a restarted replica's first step
may be a session's next turn over its transcript read back from the disk tier)."""
PER_TOKEN_KEYS = 4096
"""A prompt token's own cost (its MLP, projections) counted as this many keys attended."""


class StepWatchdog:
    def __init__(self, floor: float, on_hang: Callable[[str], None], clock=time.monotonic,
                 poll: float = 0.5):  # fmt: skip
        """floor: seconds any step may take (0: no watchdog); on_hang(reason) runs once."""
        self.floor, self.on_hang, self.clock, self.poll = floor, on_hang, clock, poll
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.rates: deque[float] = deque(maxlen=RECENT)
        """Seconds per unit of work of the recent steps that prefilled MIN_CHUNK tokens."""
        self.work = 0.0
        """The prompt work of the step in progress (`step_work`), once it is scheduled."""
        self.tokens = 0
        """The prompt tokens the step in progress computes."""
        self.phase: str | None = None
        self.started = 0.0
        self.fired: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def bound(self) -> float:
        """The floor, the slowest recent step, and the step's work at the slowest rate recent
        prefills ran at (a chunk attends to all the context before it: a session's next turn
        costs more per token than its last, and may come after more than RECENT decode
        steps)."""
        if self.rates:
            work = min(MAX_WORK_BOUND, FACTOR * self.work * max(self.rates))
        else:
            work = MAX_WORK_BOUND if self.tokens >= MIN_CHUNK else 0.0
        return max(self.floor, FACTOR * max(self.recent, default=0.0), work)

    def begin(self, phase: str) -> None:
        self.started, self.phase, self.work, self.tokens = self.clock(), phase, 0.0, 0

    def end(self) -> None:
        took = self.clock() - self.started
        self.recent.append(took)
        if self.tokens >= MIN_CHUNK:
            self.rates.append(took / self.work)
        self.phase, self.work, self.tokens = None, 0.0, 0

    def progress(self) -> dict | None:
        """The phase in progress and how long it has run (read from another thread)."""
        phase, started = self.phase, self.started
        if phase is None:
            return None
        return {"phase": phase, "running_s": round(self.clock() - started, 2),
                "bound_s": round(self.bound, 2)}  # fmt: skip

    def check(self) -> str | None:
        """The hang, if the phase in progress has run past the bound; fires on_hang once."""
        phase = self.phase
        if self.floor <= 0 or phase is None or self.fired:
            return self.fired
        took = self.clock() - self.started
        if took > (bound := self.bound):
            self.fired = f"hung: {phase} running for {took:.1f}s (bound {bound:.1f}s)"
            self.on_hang(self.fired)
        return self.fired

    def start(self) -> None:
        if self.floor > 0:
            self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self.fired:
            time.sleep(self.poll)
            self.check()


def step_work(chunks) -> tuple[float, int]:
    """A step's prompt work and tokens: per chunk of n tokens after `start` computed ones,
    n x (start + n + PER_TOKEN_KEYS), the keys its tokens attend to (DSA's indexer scores
    every one) and their own cost."""
    work = sum(n * (seq.num_computed + n + PER_TOKEN_KEYS) for seq, n in chunks)
    return float(work), sum(n for _, n in chunks)
