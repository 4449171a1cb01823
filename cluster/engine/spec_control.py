"""The one owner of a replica's speculation: its state, the governor that keeps it on only
while it pays, the per-step observation, the seed-003 watchdog, and what each request got.
Status, metrics, the `x-speculation` header and the log all read this object's state.
"""

from .mtp import SpecStats
from .sequence import Sequence
from .speculation import SpeculationState


class SpeedGovernor:
    """Keeps speculation on only while it pays (seed 002: a draft can make decoding slower).

    While speculating, every `probe_every` lone steps it decodes `probe_len` steps without
    drafts and compares tokens per second; slower with drafts, or accepting less than
    `min_acceptance` of them, turns speculation off for `cooldown` steps, then it tries again.
    """

    def __init__(self, state, stats: SpecStats, min_acceptance: float = 0.0,
                 probe_every: int = 64, probe_len: int = 8, cooldown: int = 512):  # fmt: skip
        self.state, self.stats = state, stats
        self.min_acceptance = min_acceptance
        self.probe_every, self.probe_len, self.cooldown = probe_every, probe_len, cooldown
        self.mode, self.count = "spec", 0
        self._reset()

    def _reset(self) -> None:
        self.seconds = {True: 0.0, False: 0.0}
        self.tokens = {True: 0, False: 0}
        self.drafts_at = (self.stats.draft_tokens, self.stats.accepted)

    def allow(self) -> bool:
        """Whether the next lone decoding step speculates."""
        if self.mode == "off" and self.count >= self.cooldown:
            self.mode, self.count = "spec", 0
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
        if drafted and rate < self.min_acceptance:
            self.mode = "off"
            self.state.set(False, "auto_disabled_low_acceptance", f"{rate:.0%} accepted")
        elif spec < plain:
            self.mode = "off"
            self.state.set(
                False,
                "auto_disabled_no_speedup",
                f"{spec:.1f} tok/s with drafts, {plain:.1f} without",
            )
        self._reset()


class Speculation:
    def __init__(self, state: SpeculationState, stats: SpecStats | None,
                 min_acceptance: float = 0.0):  # fmt: skip
        """state: as loading resolved it; stats: the drafter's counts (None: no drafter)."""
        self.state = state
        self.stats = stats
        self.governor = SpeedGovernor(state, stats, min_acceptance) if stats is not None else None

    def header(self) -> str:
        return self.state.header()

    def want(self, decoding: int) -> bool:
        """Whether the next step speculates: for a lone decoding sequence, while it pays; a
        batch decodes plainly and says so."""
        if self.governor is None or decoding == 0:
            return False
        if decoding > 1:
            if self.governor.mode != "off":
                self.state.set(False, "batch_size_above_limit")
            return False
        if self.governor.mode != "off":
            self.state.set(True, None)
        return self.governor.allow()

    def steps_so_far(self) -> int:
        return self.stats.speculative_steps if self.stats else 0

    def observe(self, schedule, sampled: dict, seconds: float, speculate: bool, before: int):
        """After a step that was asked to speculate or not (`speculate`): the governor's
        timing, the watchdog, and each decoded sequence's outcome."""
        speculated = self.stats is not None and self.stats.speculative_steps > before
        if self.governor is not None and len(schedule.decode) == 1 and not schedule.prefill:
            (seq,) = schedule.decode
            self.governor.observe(speculate, seconds, len(sampled.get(seq, ())))
            # The seed-003 watchdog: reported on, a lone sequence decoded, no speculative step.
            if speculate and not speculated:
                self.governor.mode, self.governor.count = "off", 0
                self.state.set(
                    False, "engine_error", "speculation was on but no speculative step ran"
                )
        self._note_outcomes(schedule.decode, speculated)

    def _note_outcomes(self, decoded: list[Sequence], speculated: bool) -> None:
        """Per sequence: whether this decode step speculated, and if not, why."""
        if self.state.requested == "none" or not decoded:
            return
        if speculated:  # a speculative step serves one sequence
            decoded[0].spec_steps += 1
            return
        why = self.state.reason if not self.state.active else (
            "batch_size_above_limit" if len(decoded) > 1 else "governor_probe")  # fmt: skip
        for seq in decoded:
            seq.spec_off = why

    def to_json(self) -> dict:
        return self.state.to_json() | (self.stats.to_json() if self.stats else {})
