"""When queueing the next speculative step ahead pays, per batch size, from step times.

A right guess saves S (the step's graph building, hidden behind the device); a wrong one
costs L (the device computes a step that is thrown away while the real one waits). So queue
while the chance that a step keeps every draft is at least L / (L + S). S is the measured
graph building until steps were queued, then what a queued step took off a step's time; L is
the measured compute less S, or what a cancelled step added to the next when that was more.
Pure Python: the runner times its steps and asks `worth`.
"""

from collections import Counter
from dataclasses import dataclass, field

from ..config import QUEUE_AHEAD

MIN_TIMED = 4
"""Steps of a kind timed before their moving average counts."""
STALE = 256
"""Speculative steps at a batch size without a queued one before what queued steps measured
there is forgotten (and the graph building estimates S again): conditions change."""
FLOOR = 0.5
"""The least break-even `auto` uses: a wrong guess throws away a verify's whole compute, which
costs at least the graph building a right guess hides (10-13 ms against 5.4 ms at batch 1 on
the 24-layer copy here; on Metal the compute weighs more). A measured break-even below it is a
measurement that cannot tell them apart: with eager layers the device computes while the graph
builds, so the timed build holds most of the compute (80 against 15 ms at batch 8), and the
estimate fell to 0: every step guessed, at batch 8 every guess wrong."""
MODES = dict(zip(QUEUE_AHEAD, (None, 0.0, 2.0), strict=True))
"""--queue-ahead -> its fixed threshold (None: the measured break-even; 2.0: never reached)."""


@dataclass
class QueueAhead:
    mode: str = "auto"
    """--queue-ahead: auto (measured), always or never."""
    kept: dict[int, float] = field(default_factory=dict)
    """Batch size -> moving average (about 20 steps) of steps where every row kept every draft."""
    held: dict[int, float] = field(default_factory=dict)
    """Batch size -> moving average of the guesses queued steps made that held. Guesses are
    made when `kept` is high, which has held less often than `kept` said (41-44% at 0.6 and
    above on the model shipped): the lower of the two decides; between guesses it returns to
    `kept`."""
    times: dict[int, dict[str, float]] = field(default_factory=dict)
    """Batch size -> moving averages of seconds: `build` and `compute` of a step not queued,
    whole steps `plain` (not queued), `queued` (computed ahead) and `after_cancel`."""
    counts: dict[int, Counter] = field(default_factory=dict)
    """Batch size -> how many steps of each kind were timed, and `unqueued` steps since the
    last queued one."""
    allowed: dict[str, float] | None = None
    """This step's thresholds by batch size ("*": any), as the leader decided them before the
    step (followers must queue exactly when it does; None: the ones measured here)."""
    cancelled: bool = False
    """A queued step was cancelled since the last speculative step: the next one waits behind
    it."""
    last: tuple | None = None
    """(batch size, kind or None, start) of the last speculative step, while the batch holds."""

    def observe(self, size: int, every: bool, guessed: bool) -> None:
        """A speculative step's outcome; `guessed`: a step was queued on it keeping every draft."""
        kept = self.kept[size] = 0.95 * self.kept.get(size, 0.0) + 0.05 * every
        n = self.counts.setdefault(size, Counter())
        if guessed:
            held = self.held.get(size)
            self.held[size] = every if held is None else 0.8 * held + 0.2 * every
            n["unqueued"] = 0
            return
        if size in self.held:
            self.held[size] += 0.05 * (kept - self.held[size])
        n["unqueued"] += 1
        if n["unqueued"] > STALE and n["queued"]:  # measure again when it next queues
            for kind in ("queued", "after_cancel"):
                n[kind] = 0
                self.times.get(size, {}).pop(kind, None)

    def time(self, size: int, **seconds: float) -> None:
        got, n = self.times.setdefault(size, {}), self.counts.setdefault(size, Counter())
        for kind, value in seconds.items():
            got[kind] = value if kind not in got else 0.9 * got[kind] + 0.1 * value
            n[kind] += 1

    def break_even(self, size: int) -> float | None:
        """The chance of an all-kept step above which queueing gains (None: not measured yet;
        1.0: it does not gain)."""
        if (fixed := MODES[self.mode]) is not None:
            return fixed
        t, n = self.times.get(size, {}), self.counts.get(size, Counter())
        if n["plain"] < MIN_TIMED or n["build"] < MIN_TIMED:
            return None
        saving = t["plain"] - t["queued"] if n["queued"] >= MIN_TIMED else t["build"]
        loss = t["compute"] - saving  # a thrown-away step's compute, less what it overlapped
        if n["after_cancel"] >= MIN_TIMED:  # unless a cancel was seen to cost more
            loss = max(loss, t["after_cancel"] - t["plain"])
        if saving <= 0:
            return 1.0
        return max(FLOOR, max(0.0, loss) / (max(0.0, loss) + saving))

    def thresholds(self, sizes) -> dict[str, float]:
        """Batch size -> the break-even now, for those of `sizes` measured ("*": every size,
        under always or never): what a step's message carries, so that every rank of a
        tensor-parallel group decides alike."""
        if (fixed := MODES[self.mode]) is not None:
            return {"*": fixed}
        found = {size: self.break_even(size) for size in sizes}
        return {str(size): b for size, b in found.items() if b is not None}

    def to_json(self) -> dict:
        """What /v1/status shows: the mode, and per batch size measured the break-even."""
        shown = self.thresholds(sorted(self.times)) if self.mode == "auto" else {}
        return {"mode": self.mode, "break_even": {k: round(b, 3) for k, b in shown.items()}}

    def worth(self, size: int) -> bool:
        """Whether a step of this batch size is worth queueing ahead now."""
        if self.allowed is not None:
            threshold = self.allowed.get(str(size), self.allowed.get("*"))
        else:
            threshold = self.break_even(size)
        kept = self.kept.get(size, 0.0)
        likely = min(kept, self.held.get(size, kept))
        return threshold is not None and threshold < 1.0 and likely >= threshold
