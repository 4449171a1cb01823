"""The model runner only computes: prompt chunks, one batched decode step, sampling."""

import os
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..models.eager import forward
from .drafter import NO_DRAFTER, Drafter
from .kv import _arrays, in_order
from .kv_budget import STEP
from .prefill_batch import batch_cache, batchable, prefill_groups
from .queue_ahead import QueueAhead
from .sampler import position_key, sample_lazy, token_logprobs
from .scheduler import Schedule
from .sequence import Sequence
from .spec_step import SpecAhead, SpeculativeSteps

FAULT_ENV = "CLUSTER_FAULT_INJECT"
"""Set to `skip_speculation` to make the runner skip speculative steps while asked to run
them (seed 003's failure, for the watchdog's tests), or `load_delay=SECONDS` to make a rank
take that long before it loads (tests of what serves meanwhile); unset in any real
deployment."""

PROMPT_LOGITS_SLICE = 256
"""Prompt positions whose logits are computed at once (GLM-5's vocabulary: 155 MB each in
float32 at 256)."""


@dataclass
class Ahead:
    """A decode step of the whole batch, queued before the previous step's tokens were read."""

    tokens: mx.array
    """Its tokens, one per batch row, not read yet."""
    undo: list[Any]
    """Per row, its carry from before it: what cancelling it restores."""
    limits: dict
    """Per sequence, the limit its token was drawn under (the one before it): the token holds
    only if its own limit turns out the same."""


class ModelRunner(SpeculativeSteps):
    def __init__(self, model: nn.Module, seed: int = 0, drafter=None, pipeline: bool = True,
                 eager: bool = True):  # fmt: skip
        self.model = model
        self.pipeline = pipeline
        """Queue each plain decode step before reading the previous one's tokens."""
        self.eager = eager
        """Hand each decoder layer to the device as soon as it is built (`models/eager.py`)."""
        self.ahead: Ahead | None = None
        self.spec_ahead: SpecAhead | None = None
        """A speculative step queued on the guess that every draft is kept."""
        self.queue = QueueAhead()
        """Whether queueing a speculative step ahead pays, from what it measures."""
        if drafter is not None:
            drafter.stats.queue_ahead = self.queue.to_json  # status reads it there
        self._read_drafts = False
        """The speculative step being timed read its drafts first (a plain one, timed so)."""
        self.seed = seed
        self.drafter = drafter
        """An MTPDrafter or a DraftModelDrafter, or None."""
        self.hooks: Drafter = drafter if drafter is not None else NO_DRAFTER
        """The drafter's cache hooks (no-ops without one)."""
        self.speculate = drafter.k if drafter is not None else 0
        """The batch's draft length, 0 when it decodes plainly (the engine sets it per step)."""
        self.fault_skip_speculation = os.environ.get(FAULT_ENV) == "skip_speculation"
        """Fault injection (tests of the seed-003 watchdog): never run the speculative step."""
        self.num_layers = len(model.make_cache())
        """A cache list holds this many main-model caches, then the drafter's."""
        self.batch_prefill = all(batchable(c) for c in model.make_cache())
        """Whether fresh prompts can prefill together (every layer's cache is a KVCache)."""
        self.batch: list[Sequence] = []
        self.batch_cache: list[Any] | None = None
        self._num_keys = 0

    def make_cache(self) -> list[Any]:
        """Per-layer caches, the drafter's after the main model's."""
        return self.model.make_cache() + self.hooks.make_cache()

    def _main(self, cache: list[Any]) -> list[Any]:
        return cache[: self.num_layers]

    def _own(self, cache: list[Any]) -> list[Any]:
        """The drafter's part of a cache list."""
        return cache[self.num_layers :]

    def run(self, schedule: Schedule) -> dict[Sequence, list[int]]:
        """Compute a schedule; returns the new tokens of every sequence that got logits."""
        rows: list[mx.array] = []
        seqs: list[Sequence] = []
        out: dict[Sequence, list[int]] = {}
        prefill = schedule.prefill
        changed = set(schedule.decode) != set(self.batch)  # rows joined or left
        if prefill or changed:
            self.queue.last = None  # the time to the next speculative step is not one step's
        groups, alone = prefill_groups(prefill) if self.batch_prefill else ([], prefill)
        for group in groups:
            got = self._prefill_batch(group)
            rows += [logits for _, logits in got]
            seqs += [seq for seq, _ in got]
        for seq, n in alone:
            logits = self._prefill(seq, n)
            if logits is not None:
                rows.append(logits)
                seqs.append(seq)
        if schedule.decode:
            if self.spec_ahead is not None and (
                changed or self.speculate != self.drafter.k
                or self.fault_skip_speculation
            ):  # fmt: skip
                self._cancel_spec_ahead()
            if self.speculate:  # the governor's length for this batch size, at most the most
                if self.speculate != self.drafter.k:
                    self.queue.last = None  # steps of another length are not timed together
                self.drafter.set_k(self.speculate)
            piped = self._pipelined(schedule.decode)
            if self.ahead is not None and not piped:
                self._cancel_ahead()
            self._sync_batch(schedule.decode)
            if not piped and self.speculate and not self.fault_skip_speculation:
                out |= self._speculative_step(self.batch)
            else:
                self.queue.last, self.queue.cancelled = None, False
                if piped:
                    out |= self._pipelined_decode()
                else:
                    rows.append(self._decode())
                    seqs.extend(self.batch)
                if self.drafter is not None:
                    self.drafter.stats.plain_steps += 1
        if seqs:
            sampled = self._sample(seqs, mx.concatenate(rows, axis=0))
            out |= {seq: [token] for seq, token in sampled.items()}
        return out

    def _pipelined(self, seqs: list[Sequence]) -> bool:
        """Plain decode steps pipeline, unless a row needs its tokens on the host before the
        next step (penalties count them, logprobs read each step's logits, a limit that
        allows only some tokens changes with each), or the step queued ahead drew a row's
        token under another limit than its own (a call's tag or a budget's end came)."""
        if not self.pipeline or self.speculate:
            return False
        drawn = self.ahead.limits if self.ahead is not None else {}
        return all(not s.request.sampling.penalized and s.request.sampling.logprobs is None
                   and (lim := s.limit()).allow is None and drawn.get(s, lim) == lim
                   for s in seqs)  # fmt: skip

    def _pipelined_decode(self) -> dict[Sequence, list[int]]:
        """This step's tokens (queued by the step before; computed now if there was none),
        with the next step queued behind them before they are read. Rows that joined the
        batch since get their next token from the step queued now."""
        if self.ahead is None:
            current, old = self._sample_lazy(self.batch, self._decode()), list(self.batch)
            mx.async_eval(current)
            inputs = current
        else:
            current = self.ahead.tokens
            old, new = self.batch[: current.shape[0]], self.batch[current.shape[0] :]
            inputs = (
                mx.concatenate([current, mx.array([s.tokens[-1] for s in new])]) if new else current
            )
        undo = [s.carry for s in self.batch]
        # Old rows' current tokens are not in their output yet: theirs is one position on.
        ahead = [1] * len(old) + [0] * (len(self.batch) - len(old))
        queued = self._sample_lazy(self.batch, self._decode(inputs[:, None]), ahead=ahead)
        mx.async_eval(queued)
        self.ahead = Ahead(queued, undo, {s: s.limit() for s in self.batch})
        return {seq: [token] for seq, token in zip(old, current.tolist(), strict=True)}

    def _cancel_ahead(self) -> None:
        """Undo the queued step: every row's KV loses its last entry, carry and key go back."""
        ahead, self.ahead = self.ahead, None
        for layer in self._main(self.batch_cache):
            layer.trim(1)
        self.hooks.cancel_last(self._own(self.batch_cache))
        for seq, carry in zip(self.batch, ahead.undo, strict=True):
            seq.carry = carry

    def _sample_lazy(self, seqs: list[Sequence], logits: mx.array, histories=None,
                     ahead: list[int] | None = None) -> mx.array:  # fmt: skip
        """Each row's token, not read yet, drawn with the key of its output position (ahead:
        per row, how many tokens it has drawn that its output does not hold yet)."""
        params = [s.request.sampling for s in seqs]
        keys = [None if s.request.sampling.greedy
                else position_key(self._base(s), s.num_output + (ahead[i] if ahead else 0))
                for i, s in enumerate(seqs)]  # fmt: skip
        return sample_lazy(logits, params, keys, histories, [s.limit() for s in seqs])

    def _prefill(self, seq: Sequence, n: int) -> mx.array | None:
        if seq.cache is None:
            seq.cache = self.make_cache()
        start = seq.num_computed
        tokens = mx.array(seq.tokens[start : start + n])[None]
        hidden = self._forward(tokens, self._main(seq.cache))
        self.hooks.after_prefill(hidden, tokens, self._own(seq.cache), seq.carry)
        if seq.wants_prompt_logprobs:
            self._prompt_logprobs(seq, hidden[0], start)
        seq.carry = hidden[:, -1, :]
        if start + n < seq.prefill_target or seq.num_output:
            # A chunk before the last (or any of a preempted sequence, which has its next
            # input) computes only the KV cache (the last layer's output too when the drafter
            # follows it).
            mx.eval(_arrays(seq.cache), *([seq.carry] if self.hooks.needs_hidden else []))
            return None
        return self.model.lm_head(hidden[:, -1, :])

    def _prompt_logprobs(self, seq: Sequence, hidden: mx.array, start: int) -> None:
        """Log-probabilities of the prompt tokens a chunk's positions predict (hidden [L, H]
        from position `start`), the LM head applied a slice of positions at a time."""
        s = seq.request.sampling
        end = min(start + hidden.shape[0], seq.num_prompt - 1)  # position p predicts token p+1
        for lo in range(max(start, len(seq.prompt_logprobs)), end, PROMPT_LOGITS_SLICE):
            hi = min(lo + PROMPT_LOGITS_SLICE, end)
            logits = self.model.lm_head(hidden[lo - start : hi - start])
            seq.prompt_logprobs += token_logprobs(logits, seq.tokens[lo + 1 : hi + 1],
                                                  s.prompt_logprobs)  # fmt: skip

    def _prefill_batch(self, group: list[tuple[Sequence, int]]) -> list[tuple[Sequence, mx.array]]:
        """First chunks of several prompts in one left-padded forward; each then keeps its own
        cache. Returns the logits of those whose prompt is now complete."""
        longest = max(n for _, n in group)
        pads = [longest - n for _, n in group]
        tokens = mx.array([[0] * p + s.tokens[:n] for (s, n), p in zip(group, pads, strict=True)])
        cache = batch_cache(self.model.make_cache(), pads)
        hidden = self._forward(tokens, cache)
        done, pending = [], []
        for i, ((seq, n), pad) in enumerate(zip(group, pads, strict=True)):
            seq.cache = [layer.extract(i) for layer in cache] + self.hooks.make_cache()
            mine = hidden[i : i + 1, pad:]
            self.hooks.after_prefill(mine, tokens[i : i + 1, pad:], self._own(seq.cache), None)
            seq.carry = mine[:, -1, :]
            if n < seq.prefill_target:
                pending += _arrays(seq.cache) + ([seq.carry] if self.hooks.needs_hidden else [])
            else:
                done.append((seq, self.model.lm_head(seq.carry)))
        if pending:
            mx.eval(pending)
        return done

    def _forward(self, tokens: mx.array, cache: list[Any]) -> mx.array:
        """The main model's hidden states for `tokens` on `cache`, layer by layer if eager."""
        if self.eager:
            return forward(self.model.model, tokens, cache)
        return self.model.model(tokens, cache=cache)

    def _decode(self, tokens: mx.array | None = None) -> mx.array:
        """Logits of one step of the batch; tokens [B, 1] default to each row's last token."""
        if tokens is None:
            tokens = mx.array([seq.tokens[-1] for seq in self.batch])[:, None]
        hidden = self._forward(tokens, self._main(self.batch_cache))
        self.hooks.after_decode(self.batch, tokens, self._own(self.batch_cache))
        for i, seq in enumerate(self.batch):
            seq.carry = hidden[i : i + 1, -1, :]
        return self.model.lm_head(hidden[:, -1, :])

    def _sample(self, seqs: list[Sequence], logits: mx.array) -> dict[Sequence, int]:
        histories = [(s.tokens[: s.num_prompt], s.output) if s.request.sampling.penalized else None
                     for s in seqs]  # fmt: skip
        tokens = self._sample_lazy(seqs, logits, histories).tolist()
        for i, seq in enumerate(seqs):
            if (top := seq.request.sampling.logprobs) is not None:
                seq.logprobs += token_logprobs(logits[i : i + 1], [tokens[i]], top)
        return dict(zip(seqs, tokens, strict=True))

    def _base(self, seq: Sequence) -> int:
        """A sampled sequence's seed: the request's, else the next of the runner's own."""
        if seq.sample_base is None:
            seed = seq.request.sampling.seed
            if seed is None:
                seed, self._num_keys = self.seed * 1_000_003 + self._num_keys, self._num_keys + 1
            seq.sample_base = seed
        return seq.sample_base

    def _sync_batch(self, seqs: list[Sequence]) -> None:
        """Make the batched cache hold exactly these sequences (kept ones first)."""
        wanted = set(seqs)
        self._keep([i for i, s in enumerate(self.batch) if s in wanted])
        members = set(self.batch)
        new = [s for s in seqs if s not in members]
        if not new:
            return
        if self.batch_cache is not None:
            self.hooks.sync(self._own(self.batch_cache))
        layers = zip(*(s.cache for s in new), strict=True)
        merged = [type(layer[0]).merge(list(layer)) for layer in layers]
        if self.batch_cache is None:
            self.batch_cache = merged
        else:
            for mine, theirs in zip(self.batch_cache, merged, strict=True):
                mine.extend(theirs)
        for seq in new:
            seq.cache = None
            seq.slot_orders.clear()
        self.batch.extend(new)

    def _keep(self, indices: list[int]) -> None:
        if len(indices) == len(self.batch):
            return
        self._cancel_spec_ahead()  # it holds entries of every row
        if not indices:
            self.reset()
            return
        index = mx.array(indices)
        for layer in self.batch_cache:
            layer.filter(index)
        if self.ahead is not None:
            self.ahead.tokens = self.ahead.tokens[index]
            self.ahead.undo = [self.ahead.undo[i] for i in indices]
        self.hooks.filter(index)
        self.batch = [self.batch[i] for i in indices]

    def release(self, seqs: list[Sequence]) -> dict[Sequence, list[Any]]:
        """Take finished sequences out; returns the cache each of them held."""
        caches = {}
        gone = set(seqs)
        if any(seq in gone for seq in self.batch):
            self._cancel_spec_ahead()
            self.hooks.sync(self._own(self.batch_cache))  # a stored cache lags by `lag`
        for i, seq in enumerate(self.batch):
            if seq in gone:
                rows = [layer.extract(i) for layer in self.batch_cache]
                orders = seq.slot_orders
                caches[seq] = in_order(self._main(rows), orders.get("main")) + in_order(
                    self._own(rows), orders.get("drafter")
                )
                orders.clear()
                if self.ahead is not None:  # its queued step's entry is not part of its KV
                    for layer in caches[seq]:
                        layer.trim(1)
                    seq.carry = self.ahead.undo[i]  # nor its carry
        for seq in seqs:
            if seq.cache is not None:
                caches[seq], seq.cache = seq.cache, None
            seq.draft_cache = None
        self._keep([i for i, s in enumerate(self.batch) if s not in gone])
        return caches

    def kv_bytes_per_token(self) -> int:
        """Bytes one position costs in a sequence's caches, measured: a fresh cache list
        grows by one step at its first token (every rank measures: the forward is TP)."""
        cache = self.model.make_cache()
        mx.eval(self.model.model(mx.array([[0]]), cache=cache), _arrays(cache))
        per_layer = sum(c.nbytes for c in cache) / len(cache)
        measured = self.hooks.own_kv_bytes_per_token()
        layers = len(cache) + (len(self.hooks.make_cache()) if measured is None else 0)
        return max(1, round(per_layer * layers / STEP) + (measured or 0))

    def model_bytes(self) -> int:
        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    def batch_kv_bytes(self) -> int:
        cache = self.batch_cache
        return sum(layer.nbytes for layer in cache) if cache else 0

    def reset(self) -> None:
        self.batch, self.batch_cache, self.ahead, self.spec_ahead = [], None, None, None
        self.hooks.reset()
