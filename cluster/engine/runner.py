"""The model runner only computes: prompt chunks, one batched decode step, sampling."""

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .kv import _arrays
from .sampler import sample
from .scheduler import Schedule
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model: nn.Module, seed: int = 0):
        self.model = model
        self.seed = seed
        self.batch: list[Sequence] = []
        self.batch_cache: list[Any] | None = None
        self._num_keys = 0

    def run(self, schedule: Schedule) -> dict[Sequence, int]:
        """Compute a schedule; returns the sampled token of every sequence that got logits."""
        rows: list[mx.array] = []
        seqs: list[Sequence] = []
        for seq, n in schedule.prefill:
            logits = self._prefill(seq, n)
            if logits is not None:
                rows.append(logits)
                seqs.append(seq)
        if schedule.decode:
            self._sync_batch(schedule.decode)
            rows.append(self._decode())
            seqs.extend(self.batch)
        if not seqs:
            return {}
        return self._sample(seqs, mx.concatenate(rows, axis=0))

    def _prefill(self, seq: Sequence, n: int) -> mx.array | None:
        if seq.cache is None:
            seq.cache = self.model.make_cache()
        start = seq.num_computed
        tokens = mx.array(seq.tokens[start : start + n])[None]
        logits = self.model(tokens, cache=seq.cache)
        if start + n < seq.num_prompt:
            mx.eval(_arrays(seq.cache))
            return None
        return logits[:, -1, :]

    def _decode(self) -> mx.array:
        tokens = mx.array([seq.tokens[-1] for seq in self.batch])[:, None]
        return self.model(tokens, cache=self.batch_cache)[:, -1, :]

    def _sample(self, seqs: list[Sequence], logits: mx.array) -> dict[Sequence, int]:
        params = [s.request.sampling for s in seqs]
        keys = [self._key(s) for s in seqs]
        tokens, keys = sample(logits, params, keys)
        for seq, key in zip(seqs, keys, strict=True):
            seq.rng_key = key
        return dict(zip(seqs, tokens, strict=True))

    def _key(self, seq: Sequence):
        if seq.rng_key is None and not seq.request.sampling.greedy:
            seed = seq.request.sampling.seed
            if seed is None:
                seed, self._num_keys = self.seed * 1_000_003 + self._num_keys, self._num_keys + 1
            seq.rng_key = mx.random.key(seed)
        return seq.rng_key

    def _sync_batch(self, seqs: list[Sequence]) -> None:
        """Make the batched cache hold exactly these sequences (kept ones first)."""
        wanted = set(seqs)
        self._keep([i for i, s in enumerate(self.batch) if s in wanted])
        members = set(self.batch)
        new = [s for s in seqs if s not in members]
        if not new:
            return
        layers = zip(*(s.cache for s in new), strict=True)
        merged = [type(layer[0]).merge(list(layer)) for layer in layers]
        if self.batch_cache is None:
            self.batch_cache = merged
        else:
            for mine, theirs in zip(self.batch_cache, merged, strict=True):
                mine.extend(theirs)
        for seq in new:
            seq.cache = None
        self.batch.extend(new)

    def _keep(self, indices: list[int]) -> None:
        if len(indices) == len(self.batch):
            return
        if not indices:
            self.batch, self.batch_cache = [], None
            return
        index = mx.array(indices)
        for layer in self.batch_cache:
            layer.filter(index)
        self.batch = [self.batch[i] for i in indices]

    def release(self, seqs: list[Sequence]) -> dict[Sequence, list[Any]]:
        """Take finished sequences out; returns the cache each of them held."""
        caches = {}
        gone = set(seqs)
        for i, seq in enumerate(self.batch):
            if seq in gone:
                caches[seq] = [layer.extract(i) for layer in self.batch_cache]
        for seq in seqs:
            if seq.cache is not None:
                caches[seq], seq.cache = seq.cache, None
        self._keep([i for i, s in enumerate(self.batch) if s not in gone])
        return caches

    def model_bytes(self) -> int:
        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    def batch_kv_bytes(self) -> int:
        cache = self.batch_cache
        return sum(layer.nbytes for layer in cache) if cache else 0

    def reset(self) -> None:
        self.batch, self.batch_cache = [], None
