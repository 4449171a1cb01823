"""The one owner of a replica's speculation: its state, the governors that keep it on only
while it pays (one per batch-size bucket), the per-step observation, the seed-003 watchdog,
and what each request got.
Status, metrics, the `x-speculation` header and the log all read this object's state.
"""

import logging

from .mtp import SpecStats
from .sequence import Sequence
from .speculation import SpeculationState

log = logging.getLogger("cluster.speculation")


class SpeedGovernor:
    """Keeps speculation on only while it pays (seed 002: a draft can make decoding slower).

    While speculating, every `probe_every` steps it decodes `probe_len` steps without drafts
    and compares tokens per second. Accepting less than `min_acceptance` of the drafts turns
    speculation off at once; measuring slower with drafts does so after `losses` probes in a
    row (one probe is a few steps: one noisy probe must not switch a batch size off). Off
    lasts `cooldown` steps, then it tries again.
    """

    def __init__(self, state, stats: SpecStats, min_acceptance: float = 0.0,
                 probe_every: int = 64, probe_len: int = 8, cooldown: int = 512,
                 label: str = "", losses: int = 2):  # fmt: skip
        self.state, self.stats, self.label = state, stats, label
        self.off: tuple[str, str] | None = None
        """(reason, detail) of its latest decision to turn speculation off."""
        self.min_acceptance = min_acceptance
        self.probe_every, self.probe_len, self.cooldown = probe_every, probe_len, cooldown
        self.losses = losses
        self.lost = 0
        """Probes in a row, up to now, that measured drafts slower."""
        self.last: dict | None = None
        """The latest probe's figures, for status."""
        self.mode, self.count = "spec", 0
        self._reset()

    def _reset(self) -> None:
        self.seconds = {True: 0.0, False: 0.0}
        self.tokens = {True: 0, False: 0}
        self.drafts_at = (self.stats.draft_tokens, self.stats.accepted)

    def allow(self) -> bool:
        """Whether the next lone decoding step speculates."""
        if self.mode == "off" and self.count >= self.cooldown:
            self.mode, self.count, self.lost = "spec", 0, 0
            self._reset()
            self.state.set(True, None)
        elif self.mode == "spec" and self.count >= self.probe_every:
            self.mode, self.count = "probe", 0
        elif self.mode == "probe" and self.count >= self.probe_len:
            self._judge()
        return self.mode == "spec"

    def observe(self, speculated: bool, seconds: float, tokens: int) -> None:
        self.count += 1
        self.seconds[speculated] += seconds
        self.tokens[speculated] += tokens

    def _judge(self) -> None:
        spec = self.tokens[True] / max(self.seconds[True], 1e-9)
        plain = self.tokens[False] / max(self.seconds[False], 1e-9)
        drafted = self.stats.draft_tokens - self.drafts_at[0]
        accepted = self.stats.accepted - self.drafts_at[1]
        rate = accepted / drafted if drafted else 0.0
        self.mode, self.count = "spec", 0
        self.lost = self.lost + 1 if spec < plain else 0
        self.last = {"spec_tok_s": round(spec, 1), "plain_tok_s": round(plain, 1),
                     "accepted": round(rate, 3), "slower_in_a_row": self.lost}  # fmt: skip
        where = f" ({self.label})" if self.label else ""
        if drafted and rate < self.min_acceptance:
            self.mode = "off"
            self.off = ("auto_disabled_low_acceptance", f"{rate:.0%} accepted{where}")
        elif self.lost >= self.losses:
            self.mode = "off"
            self.off = ("auto_disabled_no_speedup",
                        f"{spec:.1f} tok/s with drafts, {plain:.1f} without, "
                        f"{self.lost} probe(s) in a row{where}")  # fmt: skip
        elif self.lost:
            log.info("speculation probe%s: %.1f tok/s with drafts, %.1f without (%d of %d "
                     "in a row before it turns off)", where, spec, plain, self.lost,
                     self.losses)  # fmt: skip
        if self.mode == "off":
            self.state.set(False, *self.off)
        self._reset()


def bucket(decoding: int) -> int:
    """The batch sizes one governor judges together: 1, 2, 3-4, 5-8, 9-16, ..."""
    return 1 << (decoding - 1).bit_length()


class Speculation:
    def __init__(self, state: SpeculationState, stats: SpecStats | None,
                 min_acceptance: float = 0.0, max_batch: int = 16,
                 schedule: tuple[int, int, int, int] = (64, 8, 512, 2)):  # fmt: skip
        """state: as loading resolved it; stats: the drafter's counts (None: no drafter);
        max_batch: the most sequences decoding together that still speculate; schedule: the
        governors' (probe every, probe steps, cooldown) in steps and slower probes in a row
        that turn speculation off."""
        self.schedule = schedule
        self.state = state
        self.stats = stats
        self.min_acceptance = min_acceptance
        self.max_batch = max_batch
        self.governors: dict[int, SpeedGovernor] = {}
        """One per batch-size bucket: speculation pays at some batch sizes and not others."""
        if stats is not None:
            self._governor(1)

    @property
    def governor(self) -> SpeedGovernor | None:
        """The governor of a lone decoding sequence."""
        return self.governors.get(1)

    def _governor(self, decoding: int) -> SpeedGovernor:
        size = bucket(decoding)
        if size not in self.governors:
            label = "batch size 1" if size == 1 else f"batch size {size // 2 + 1}-{size}"
            every, steps, cooldown, losses = self.schedule
            self.governors[size] = SpeedGovernor(self.state, self.stats, self.min_acceptance,
                                                 every, steps, cooldown, label, losses)  # fmt: skip
        return self.governors[size]

    def header(self) -> str:
        return self.state.header()

    def want(self, decoding: int) -> bool:
        """Whether the next step speculates: at most max_batch decoding sequences, while it
        pays at this batch size (its bucket's governor); the state says what holds now."""
        if self.stats is None or decoding == 0:
            return False
        if decoding > self.max_batch:
            detail = f"{decoding} decoding, --speculation-max-batch {self.max_batch}"
            self.state.set(False, "batch_size_above_limit", detail)
            return False
        governor = self._governor(decoding)
        allowed = governor.allow()
        if governor.mode == "off":
            self.state.set(False, *governor.off)
        else:
            self.state.set(True, None)
        return allowed

    def steps_so_far(self) -> int:
        return self.stats.speculative_steps if self.stats else 0

    def observe(self, schedule, sampled: dict, seconds: float, speculate: bool, before: int):
        """After a step that was asked to speculate or not (`speculate`): the governor's
        timing, the watchdog, and each decoded sequence's outcome."""
        speculated = self.stats is not None and self.stats.speculative_steps > before
        decoded = schedule.decode
        if self.stats is not None and decoded and len(decoded) <= self.max_batch:
            governor = self._governor(len(decoded))
            if not schedule.prefill:  # timed: steps that only decode
                tokens = sum(len(sampled.get(seq, ())) for seq in decoded)
                governor.observe(speculate, seconds, tokens)
            # The seed-003 watchdog: reported on, sequences decoded, no speculative step.
            if speculate and not speculated:
                governor.mode, governor.count = "off", 0
                governor.off = ("engine_error", "speculation was on but no speculative step ran")
                self.state.set(False, *governor.off)
        self._note_outcomes(decoded, speculated)

    def _note_outcomes(self, decoded: list[Sequence], speculated: bool) -> None:
        """Per sequence: whether this decode step speculated, and if not, why."""
        if self.state.requested == "none" or not decoded:
            return
        if speculated:  # a speculative step serves every row of the batch
            for seq in decoded:
                seq.spec_steps += 1
            return
        why = self.state.reason if not self.state.active else "governor_probe"
        for seq in decoded:
            seq.spec_off = why

    def to_json(self) -> dict:
        out = self.state.to_json() | (self.stats.to_json() if self.stats else {})
        if self.stats is not None:
            out["max_batch"] = self.max_batch
            out["by_batch_size"] = {g.label: g.mode if g.mode != "off" else f"off: {g.off[0]}"
                                    for g in self.governors.values()}  # fmt: skip
            out["last_probe"] = {g.label: g.last for g in self.governors.values() if g.last}
        return out
