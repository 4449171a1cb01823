"""The one owner of a replica's speculation: its state, the governors that keep it on only
while it pays (one per batch-size bucket), the per-step observation, the seed-003 watchdog,
and what each request got.
Status, metrics, the `x-speculation` header and the log all read this object's state.
"""

import logging
from collections import deque

from .mtp import SpecStats
from .sequence import Sequence
from .speculation import SpeculationState

log = logging.getLogger("cluster.speculation")


class SpeedGovernor:
    """Keeps speculation on only while it pays (seed 002: a draft can make decoding slower),
    and at the draft length that pays most.

    While speculating, every `probe_every` steps it decodes `probe_len` steps without drafts
    and, with `adapt_k`, `probe_len` steps at a neighbouring draft length (one shorter, then
    one longer, within 1..k_max), and compares tokens per second with the last `probe_len`
    speculating steps before the probe: a length faster by more than `K_MARGIN` is tried again
    at the next probe and kept after `K_WINS` such probes in a row (an 8-step probe over mixed
    prompts swings by more than the margin; one probe switching k made it hop back and forth).
    Accepting less than `min_acceptance` of the drafts turns speculation off at once;
    measuring slower with drafts than without, at k and at the length tried, does so after
    `losses` probes in a row (one probe is a few steps: one noisy probe must not switch a
    batch size off). Off lasts `cooldown` steps, then it tries again.
    """

    K_MARGIN = 0.05
    K_WINS = 2

    def __init__(self, state, stats: SpecStats, min_acceptance: float = 0.0,
                 probe_every: int = 64, probe_len: int = 8, cooldown: int = 512,
                 label: str = "", losses: int = 2, k_max: int = 1,
                 adapt_k: bool = False):  # fmt: skip
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
        self.k_max, self.adapt_k = k_max, adapt_k and k_max > 1
        self.k = k_max
        """The draft length this batch size speculates with now."""
        self.tried = k_max
        """The neighbouring length of the latest probe (k when there was none)."""
        self.won = 0
        """Probes in a row, up to now, in which `tried` measured faster than k."""
        self.mode, self.count = "spec", 0
        self._reset()

    def _reset(self) -> None:
        self.seconds: dict[int, float] = {}
        self.tokens: dict[int, int] = {}
        """Probe steps by draft length; 0 is plain decoding."""
        self.latest: deque[tuple[float, int]] = deque(maxlen=self.probe_len)
        """The last speculating steps before the probe, as many as it has: acceptance drifts
        along a reply, so the probe is compared with the steps next to it."""
        self.drafts_at = (self.stats.draft_tokens, self.stats.accepted)

    def allow(self) -> int:
        """The draft length of the next step at this batch size (0: plain decoding)."""
        if self.mode == "off" and self.count >= self.cooldown:
            self.mode, self.count, self.lost, self.won = "spec", 0, 0, 0
            self._reset()
            self.state.set(True, None)
        elif self.mode == "spec" and self.count >= self.probe_every:
            self.mode, self.count = "probe", 0
        elif self.mode == "probe" and self.count >= self.probe_len:
            if self.adapt_k:
                self.mode, self.count, self.tried = "try", 0, self._neighbour()
            else:
                self._judge()
        elif self.mode == "try" and self.count >= self.probe_len:
            self._judge()
        return self.stepping()

    def stepping(self) -> int:
        """The draft length its current mode decodes with."""
        return {"spec": self.k, "try": self.tried}.get(self.mode, 0)

    def _neighbour(self) -> int:
        """The length next to k to try: one shorter first, one longer after a shorter one
        (a switch to the shorter keeps going down), within 1..k_max; the same one again
        after it measured faster."""
        if self.won:
            return self.tried
        near = (self.k + 1, self.k - 1) if self.tried < self.k else (self.k - 1, self.k + 1)
        return next(x for x in near if 1 <= x <= self.k_max)

    def observe(self, k: int, seconds: float, tokens: float) -> None:
        """A step that decoded only, with drafts of up to k tokens (0: plain); `tokens` per
        decoding sequence (its rows' tokens over its rows), so that a bucket's steps of 3 and
        of 4 rows weigh alike: a probe that ran on more rows is not faster for that."""
        self.count += 1
        if self.mode == "spec":
            self.latest.append((seconds, tokens))
            return
        self.seconds[k] = self.seconds.get(k, 0.0) + seconds
        self.tokens[k] = self.tokens.get(k, 0) + tokens

    def _rate(self, k: int) -> float:
        if k == self.k and self.latest:
            return sum(t for _, t in self.latest) / max(sum(s for s, _ in self.latest), 1e-9)
        return self.tokens.get(k, 0) / max(self.seconds.get(k, 0.0), 1e-9)

    def _judge(self) -> None:
        where = f" ({self.label})" if self.label else ""
        plain, spec, tried, switched = self._rate(0), self._rate(self.k), None, None
        best = spec  # the fastest length this probe measured: off only when none beat plain
        if self.tried != self.k:
            other = self._rate(self.tried)
            best = max(spec, other)
            faster = other > spec * (1 + self.K_MARGIN)
            self.won = self.won + 1 if faster else 0
            tried = {"k": self.tried, "tok_s": round(other, 1), "faster_in_a_row": self.won}
            if self.won >= self.K_WINS:
                self.state.switch_k(
                    self.tried,
                    f"speculation {self.state.requested} k {self.k} -> {self.tried}{where}: "
                    f"{other:.1f} tok/s per sequence at k={self.tried}, {spec:.1f} at "
                    f"k={self.k} ({self.won} probes in a row)",
                )
                switched = {"k": self.k, "tok_s": round(spec, 1)}
                self.k, spec, self.won = self.tried, other, 0
        drafted = self.stats.draft_tokens - self.drafts_at[0]
        accepted = self.stats.accepted - self.drafts_at[1]
        rate = accepted / drafted if drafted else 0.0
        self.mode, self.count = "spec", 0
        self.lost = self.lost + 1 if best < plain else 0
        self.last = {"spec_tok_s": round(spec, 1), "plain_tok_s": round(plain, 1),
                     "accepted": round(rate, 3), "slower_in_a_row": self.lost, "k": self.k,
                     "tried": tried}  # fmt: skip
        if switched:  # the length it left, and its rate in the same probe
            self.last["switched_from"] = switched
        if drafted and rate < self.min_acceptance:
            self.mode = "off"
            self.off = ("auto_disabled_low_acceptance", f"{rate:.0%} accepted{where}")
        elif self.lost >= self.losses:
            self.mode = "off"
            self.off = ("auto_disabled_no_speedup",
                        f"{spec:.1f} tok/s per sequence with drafts, {plain:.1f} without, "
                        f"{self.lost} probe(s) in a row{where}")  # fmt: skip
        elif self.lost:
            log.info("speculation probe%s: %.1f tok/s per sequence with drafts, %.1f without "
                     "(%d of %d in a row before it turns off)", where, spec, plain, self.lost,
                     self.losses)  # fmt: skip
        if self.mode == "off":
            self.state.route_k(self.k)  # the length it judged (a probe may have switched it)
            self.state.set(False, *self.off)
        self._reset()


def bucket(decoding: int) -> int:
    """The batch sizes one governor judges together: 1, 2, 3-4, 5-8, 9-16, ..."""
    return 1 << (decoding - 1).bit_length()


class Speculation:
    def __init__(self, state: SpeculationState, stats: SpecStats | None,
                 min_acceptance: float = 0.0, max_batch: int = 16,
                 schedule: tuple[int, int, int, int] = (64, 8, 512, 2),
                 adapt_k: bool = False):  # fmt: skip
        """state: as loading resolved it; stats: the drafter's counts (None: no drafter);
        max_batch: the most sequences decoding together that still speculate; schedule: the
        governors' (probe every, probe steps, cooldown) in steps and slower probes in a row
        that turn speculation off; adapt_k: the governors also try draft lengths below the
        state's k (its most) and keep the fastest per batch size."""
        self.schedule, self.adapt_k = schedule, adapt_k
        self.state = state
        self.stats = stats
        self.min_acceptance = min_acceptance
        self.max_batch = max_batch
        self.governors: dict[int, SpeedGovernor] = {}
        """One per batch-size bucket: speculation pays at some batch sizes and not others."""
        self.following = False
        """A tensor-parallel follower: its state is the leader's (`SpeculationState.follow`),
        never its own governors' or watchdog's."""
        if stats is not None:
            self._governor(1)

    @property
    def governor(self) -> SpeedGovernor | None:
        """The governor of a lone decoding sequence."""
        return self.governors.get(1)

    def _governor(self, decoding: int) -> SpeedGovernor:
        size = bucket(decoding)
        if size not in self.governors:
            low = size // 2 + 1
            label = f"batch size {size}" if size <= low else f"batch size {low}-{size}"
            every, steps, cooldown, losses = self.schedule
            self.governors[size] = SpeedGovernor(self.state, self.stats, self.min_acceptance,
                                                 every, steps, cooldown, label, losses,
                                                 self.state.k, self.adapt_k)  # fmt: skip
        return self.governors[size]

    def header(self) -> str:
        return self.state.header()

    def want(self, decoding: int) -> int:
        """The next step's draft length (0: no speculation): at most max_batch decoding
        sequences, while it pays at this batch size (its bucket's governor), at the length
        that governor keeps; the state says what holds now."""
        if self.stats is None or decoding == 0:
            return 0
        self.state.flush()
        if decoding > self.max_batch:
            detail = f"{decoding} decoding, --speculation-max-batch {self.max_batch}"
            self.state.set(False, "batch_size_above_limit", detail, routed=True)
            return 0
        governor = self._governor(decoding)
        allowed = governor.allow()
        self._show(governor)
        return allowed

    def _show(self, governor: SpeedGovernor) -> None:
        """The state says what a batch size's governor holds: its length, on or off."""
        self.state.route_k(governor.k)
        if governor.mode == "off":
            self.state.set(False, *governor.off, routed=True)
        else:
            self.state.set(True, None, routed=True)

    def settle(self, decoding: int) -> None:
        """After a step: a batch that shrank to --speculation-max-batch or below (or ended)
        no longer holds speculation off; the state reads its new size's governor."""
        if self.stats is None or decoding > self.max_batch or self.following:
            return
        if self.state.reason == "batch_size_above_limit":
            self._show(self._governor(max(decoding, 1)))

    def steps_so_far(self) -> int:
        return self.stats.speculative_steps if self.stats else 0

    def observe(self, schedule, sampled: dict, seconds: float, speculate: int, before: int):
        """After a step that was asked to draft up to `speculate` tokens (0: none): the
        governor's timing, the watchdog, and each decoded sequence's outcome."""
        speculated = self.stats is not None and self.stats.speculative_steps > before
        decoded = schedule.decode
        if self.stats is not None and decoded and len(decoded) <= self.max_batch:
            governor = self._governor(len(decoded))
            if not schedule.prefill:  # timed: steps that only decode
                tokens = sum(len(sampled.get(seq, ())) for seq in decoded)
                governor.observe(speculate, seconds, tokens / len(decoded))
            # The seed-003 watchdog: reported on, sequences decoded, no speculative step.
            if speculate and not speculated and not self.following:
                governor.mode, governor.count = "off", 0
                governor.off = ("engine_error", "speculation was on but no speculative step ran")
                self.state.set(False, *governor.off)
        self._note_outcomes(decoded, speculate if speculated else 0)

    def _note_outcomes(self, decoded: list[Sequence], speculated: int) -> None:
        """Per sequence: whether this decode step speculated, and if not, why."""
        if self.state.requested == "none" or not decoded:
            return
        if speculated:  # a speculative step serves every row of the batch
            for seq in decoded:
                seq.spec_steps += 1
                seq.spec_ks.add(speculated)
            return
        why = self.state.reason if not self.state.active else "governor_probe"
        for seq in decoded:  # every reason the request met, in the order it met them
            if seq.spec_off is None:
                seq.spec_off = why
            elif why not in seq.spec_off.split(","):
                seq.spec_off += "," + why

    def to_json(self) -> dict:
        out = self.state.to_json() | (self.stats.to_json() if self.stats else {})
        if self.stats is not None:
            out["max_batch"] = self.max_batch
            out["by_batch_size"] = {g.label: g.mode if g.mode != "off" else f"off: {g.off[0]}"
                                    for g in self.governors.values()}  # fmt: skip
            out["k_by_batch_size"] = {g.label: g.k for g in self.governors.values()}
            out["adapt_k"] = self.adapt_k
            out["last_probe"] = {g.label: g.last for g in self.governors.values() if g.last}
        return out
