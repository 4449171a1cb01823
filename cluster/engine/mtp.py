"""MTP drafting and verification for the model runner (GLM-5 / DeepSeek MTP layer).

The MTP layer's KV cache rides as the last entry of a sequence's cache list, so the prefix
cache, batching and filtering treat it like any layer. It lags the main model by one position:
its entry for position i needs token i+1. A sequence's `carry` is the main model's hidden state
at its last computed position, waiting for that token.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx

from .drafter import Drafter
from .sampler import gumbel_draw, penalize, position_key, processed_rows

MAX_PENDING = 64  # a long-lived batch still catches its MTP layer up now and then


@dataclass
class SpecStats:
    """vLLM's definitions: a draft is one proposal of k tokens; per-position counts are
    unconditional (position i counts only if 0..i-1 were accepted too)."""

    k: int
    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    plain_steps: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    """Drafts by where they came from, when a drafter combines several (mtp+ngram)."""
    empty: int = 0
    """Rows of speculative steps whose drafter had nothing to propose (n-gram: no match)."""
    verify_steps: int = 0
    """Batched forwards that verified drafts (one per speculative step with any draft)."""
    no_draft_steps: int = 0
    """Speculative steps where no row had a draft: decoded as a plain step."""
    queued: int = 0
    """Speculative steps queued before the step before them was read (every draft kept)."""
    queued_wasted: int = 0
    """Of those, the ones cancelled because a row rejected a draft after all."""
    queue_ahead: Callable[[], dict] | None = None
    """--queue-ahead's mode and, per batch size, the chance of a step keeping every draft
    above which steps are queued ahead (the runner's `QueueAhead`, which measures it)."""

    def __post_init__(self):
        self.accepted_per_pos = [0] * self.k

    @property
    def speculative_steps(self) -> int:
        """Batched forwards that speculated (the unit of plain_steps)."""
        return self.verify_steps + self.no_draft_steps

    @property
    def speculative_rows(self) -> int:
        """Sequences' turns in speculative steps: each proposes one draft, or none."""
        return self.drafts + self.empty

    def record(self, accepted: int, proposed: int) -> None:
        if proposed == 0:
            self.empty += 1
            return
        self.drafts += 1
        self.draft_tokens += proposed
        self.accepted += accepted
        for i in range(accepted):
            self.accepted_per_pos[i] += 1

    def to_json(self) -> dict:
        mean = 1 + self.accepted / self.drafts if self.drafts else 0.0
        return {
            "drafts": self.drafts,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted,
            "accepted_per_position": list(self.accepted_per_pos),
            "mean_acceptance_length": mean,
            "speculative_steps": self.speculative_steps,
            "plain_steps": self.plain_steps,
            "speculative_rows": self.speculative_rows,
            "empty_rows": self.empty,
            "verify_steps": self.verify_steps,
            "no_draft_steps": self.no_draft_steps,
            "queued_steps": self.queued,
            "queued_wasted": self.queued_wasted,
            "queue_ahead": self.queue_ahead() if self.queue_ahead else {},
        } | ({"drafts_by_source": dict(self.by_source)} if self.by_source else {})


def pick_drafts(seqs, logits: mx.array, dists: list[list]) -> mx.array:
    """One draft token per row from draft logits [B, V]: the argmax for greedy rows, for the
    others the draw with the key of the position it drafts (the key the target's draw there
    will use, so a draft close to the target is kept as often as rejection sampling keeps
    it). Each row's list in `dists` grows by one (its length: the draft's position)."""
    tokens = mx.argmax(logits, axis=-1)
    drawn = [r for r, s in enumerate(seqs) if not s.request.sampling.greedy]
    if drawn:
        rows = mx.array(drawn)
        params = [seqs[r].request.sampling for r in drawn]
        keys = [position_key(seqs[r].sample_base, seqs[r].num_output + len(dists[r]))
                for r in drawn]  # fmt: skip
        picked = gumbel_draw(processed_rows(logits[rows], params), keys)
        tokens[rows] = picked.astype(tokens.dtype)
    for row in dists:
        row.append(None)
    return tokens


def greedy_accept(drafts: list[int], best: list[int]) -> tuple[int, int]:
    """(accepted count, next token) given the target's argmax at each verified position."""
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == best[accepted]:
        accepted += 1
    return accepted, best[accepted]


def verify_drafts(seq, drafts: list[int], dists, target_logits: mx.array) -> tuple[int, int]:
    """(accepted count, next token): the target's own token at each position, greedy or drawn
    with that position's key as a plain step would draw it, and the drafts kept while they
    equal it. Each token is the target's draw given the ones before (lossless), and the same
    token a plain step draws (a seeded reply does not depend on speculation).
    target_logits come with the row's limits applied (banned tokens, grammar, budget)."""
    params = seq.request.sampling
    rows = [params] * target_logits.shape[0]
    if params.penalized:  # row i follows the output plus drafts[:i]
        prompt, output = seq.tokens[: seq.num_prompt], seq.output
        history = [(prompt, output + drafts[:i]) for i in range(len(rows))]
        target_logits = penalize(target_logits, rows, history)
    if params.greedy:
        return greedy_accept(drafts, mx.argmax(target_logits, axis=-1).tolist())
    keys = [position_key(seq.sample_base, seq.num_output + i) for i in range(len(rows))]
    return greedy_accept(drafts, gumbel_draw(processed_rows(target_logits, rows), keys).tolist())


class MTPDrafter(Drafter):
    """Its layer's cache is the one after the main model's. Batched plain steps do not run
    the layer: it catches up on them in one forward when it is needed (a speculative step,
    a batch change), every row at once (new rows join only after a catch-up)."""

    lag = 1
    needs_hidden = True
    queues_ahead = True
    """It drafts on the device from device inputs (`draft`), so the runner may queue the next
    step before this one's drafts are read (see spec_step.SpecAhead)."""

    def __init__(self, model, mtp, k: int):
        self.model = model
        self.mtp = mtp
        self.k = self.k_max = k
        self.stats = SpecStats(k)
        self.pending: list[tuple[mx.array, mx.array]] = []
        """Batched steps' (carry, token) [B, H], [B, 1] the layer has not seen yet."""

    def embed(self, tokens: mx.array) -> mx.array:
        return self.model.model.embed_tokens(tokens)

    def logits(self, hidden: mx.array) -> mx.array:
        return self.model.lm_head(self.mtp.head_norm(hidden))

    def make_cache(self) -> list:
        return [self.mtp.make_cache()]

    def after_prefill(self, hidden, tokens, caches, carry) -> None:
        self.follow(hidden, tokens, caches[0], carry)

    def after_decode(self, seqs, tokens, caches) -> None:
        self.pending.append((mx.concatenate([s.carry for s in seqs], axis=0), tokens))
        if len(self.pending) >= MAX_PENDING:
            self.sync(caches)

    def sync(self, caches) -> None:
        if not self.pending:
            return
        carry = mx.stack([c for c, _ in self.pending], axis=1)
        tokens = mx.concatenate([t for _, t in self.pending], axis=1)
        self.mtp(carry, self.embed(tokens), cache=caches[0])
        self.pending = []

    def cancel_last(self, caches) -> None:
        # Pending steps are always the latest ones: the last step is pending or written.
        if self.pending:
            self.pending.pop()
        else:
            caches[0].trim(1)

    def filter(self, index: mx.array) -> None:
        self.pending = [(c[index], t[index]) for c, t in self.pending]

    def reset(self) -> None:
        self.pending = []

    def follow(self, hidden: mx.array, tokens: mx.array, cache, carry: mx.array | None):
        """After a main forward over `tokens` [B, L] giving `hidden` [B, L, H]: write the MTP
        entries whose next token is now known; returns the MTP output at the last of them."""
        if carry is not None:
            h = mx.concatenate([carry[:, None, :], hidden[:, :-1, :]], axis=1)
            e = self.embed(tokens)
        else:
            h, e = hidden[:, :-1, :], self.embed(tokens[:, 1:])
        if h.shape[1] == 0:
            return None
        return self.mtp(h, e, cache=cache)

    def draft(self, seqs, carry: mx.array, last: mx.array, caches) -> tuple[mx.array, list]:
        """k draft tokens after each row's last token [B, 1] and carry [B, 1, H], every row in
        one MTP forward per draft position, on the device: the drafts [B, k], not read, and
        the draft distributions they came from."""
        self.sync(caches)
        cache = caches[0]
        out = self.mtp(carry, self.embed(last), cache=cache)
        steps, dists = [], [[] for _ in seqs]
        for i in range(self.k):
            tokens = pick_drafts(seqs, self.logits(out)[:, -1], dists)
            steps.append(tokens)
            if i + 1 < self.k:  # speculative entries; trimmed after verification
                out = self.mtp(out[:, -1:, :], self.embed(tokens[:, None]), cache=cache)
        return mx.stack(steps, axis=1).astype(mx.int32), dists

    def catch_up(self, drafts: mx.array, hidden: mx.array, caches) -> None:
        """After a verify forward: drop the draft entries, then write the layer's entries for
        every verified position (drafts [B, K] as fed, hidden [B, K+1, H] its output)."""
        cache, width = caches[0], hidden.shape[1] - 1
        cache.trim(self.k - 1)
        self.mtp(hidden[:, :width, :], self.embed(drafts), cache=cache)

    def undo_draft(self, caches) -> None:
        """Drop the entries a `draft` wrote (a queued step was cancelled)."""
        caches[0].trim(self.k)

    def rollback_batch(self, seqs, proposals, accepted, hidden, caches) -> None:
        """The MTP layer keeps its one true new entry per row, then catches up on each row's
        accepted positions from the verify forward's hidden states."""
        width = hidden.shape[1] - 1
        drafts = mx.array([d + [0] * (width - len(d)) for d, _ in proposals])
        self.catch_up(drafts, hidden, caches)
        self.trim_rejected(seqs, [width - a for a in accepted], caches)
