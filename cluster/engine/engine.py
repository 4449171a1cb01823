"""The engine: step() is schedule, run, postprocess."""

import time

from ..config import EngineConfig
from ..hashing import hash_seed
from ..types import EngineRequest, RequestId, TokenEvent
from .disk_cache import DiskTier
from .kv_budget import KVBudget
from .mtp import SpeedGovernor
from .prefix_cache import PrefixCache
from .runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Sequence
from .speculation import SpeculationState


class Engine:
    def __init__(
        self,
        model,
        eos_ids: set[int],
        config: EngineConfig,
        max_model_len: int,
        model_id,
        drafter=None,
        speculation: SpeculationState | None = None,
        disk: DiskTier | None = None,
        disk_off: str | None = None,
    ):
        """speculation: the replica's state as loading resolved it; the governor and the
        watchdog change this very object, which status, metrics and headers read. disk: the
        prefix cache's disk tier; disk_off: why there is none although one was asked for."""
        self.config = config
        self.runner = ModelRunner(model, config.seed, drafter, config.pipeline_decode)
        self.kv = KVBudget(config.kv_cache_bytes, self.runner.kv_bytes_per_token())
        self.max_model_len = min(max_model_len, self.kv.capacity_tokens or max_model_len)
        """The context length, or less when the KV budget holds fewer tokens."""
        self.cache = PrefixCache(
            config.block_size, config.prefix_cache_bytes, hash_seed(model_id), config.kv_bits,
            disk,
        )  # fmt: skip
        self.disk_off = disk_off
        self.cache.lag = self.runner.hooks.lag
        self.scheduler = Scheduler(
            config, self.cache, eos_ids, self.max_model_len, lambda: self.speculation.header(),
            self.kv,
        )  # fmt: skip
        self.speculation = speculation or SpeculationState(
            config.speculation, config.num_speculative_tokens
        )
        self.governor = None
        if drafter is not None:
            self.governor = SpeedGovernor(
                self.speculation, drafter.stats, config.speculation_min_acceptance
            )

    def add_request(self, request: EngineRequest) -> None:
        self.scheduler.add(Sequence.from_request(request))

    def abort(self, request_id: RequestId) -> TokenEvent | None:
        seq = self.scheduler.abort(request_id)
        if seq is None:
            return None
        self.runner.release([seq])
        return self.scheduler.event(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self, speculate: bool | None = None) -> list[TokenEvent]:
        """One step; `speculate` comes from the leader in a tensor-parallel group."""
        schedule = self.scheduler.schedule()
        if schedule.preempted:  # their KV is freed; they prefill again when there is room
            self.runner.release(schedule.preempted)
        self.runner.speculate = self.want_speculation() if speculate is None else speculate
        stats = self.runner.drafter.stats if self.runner.drafter else None
        before = stats.speculative_steps if stats else 0
        started = time.perf_counter()
        sampled = self.runner.run(schedule)
        speculated = stats is not None and stats.speculative_steps > before
        self._observe(schedule, sampled, time.perf_counter() - started, speculated)
        self._note_outcomes(schedule.decode, speculated)
        events, done = self.scheduler.postprocess(schedule, sampled)
        self._remember(schedule, done)
        return events

    def want_speculation(self) -> bool:
        """Speculation serves a lone decoding sequence while it pays; the rest is reported."""
        decoding = len(self.scheduler.running)
        if self.governor is None or decoding == 0:
            return False
        if decoding > 1:
            if self.governor.mode != "off":
                self.speculation.set(False, "batch_size_above_limit")
            return False
        if self.governor.mode != "off":
            self.speculation.set(True, None)
        return self.governor.allow()

    def _observe(self, schedule, sampled, seconds: float, speculated: bool) -> None:
        if self.governor is None or len(schedule.decode) != 1 or schedule.prefill:
            return
        (seq,) = schedule.decode
        self.governor.observe(self.runner.speculate, seconds, len(sampled.get(seq, ())))
        # The seed-003 watchdog: reported on, a lone sequence decoded, no speculative step ran.
        if self.runner.speculate and not speculated:
            self.governor.mode, self.governor.count = "off", 0
            self.speculation.set(
                False, "engine_error", "speculation was on but no speculative step ran"
            )

    def _note_outcomes(self, decoded: list[Sequence], speculated: bool) -> None:
        """Per sequence: whether this decode step speculated, and if not, why."""
        if self.config.speculation == "none" or not decoded:
            return
        if speculated:  # a speculative step serves one sequence
            decoded[0].spec_steps += 1
            return
        state = self.speculation
        why = state.reason if not state.active else (
            "batch_size_above_limit" if len(decoded) > 1 else "governor_probe")  # fmt: skip
        for seq in decoded:
            seq.spec_off = why

    def _remember(self, schedule, done: list[Sequence]) -> None:
        """Offer new prompt caches and finished sequences' caches to the prefix cache."""
        for seq, _ in schedule.prefill:
            if seq.is_prefilled and seq.cache is not None:
                self.cache.insert(tuple(seq.tokens[: seq.num_computed]), seq.cache)
        for seq, cache in self.runner.release(done).items():
            self.cache.insert(tuple(seq.tokens[: seq.num_computed]), cache)

    def fail_all(self, message: str) -> list[TokenEvent]:
        """End every request with an error, after a fault in a step."""
        seqs = self.scheduler.drain()
        self.runner.reset()
        events = []
        for seq in seqs:
            seq.finish_reason = "error"
            events.append(self.scheduler.event(seq, error=message))
        return events

    def stats(self) -> dict:
        s = self.cache.stats
        batch = self.runner.batch_kv_bytes()
        own = sum(c.nbytes for seq in self.scheduler.waiting if seq.cache for c in seq.cache)
        return {
            "kv": self.kv.to_json() | {"used_bytes": batch + own + self.cache.nbytes},
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "prefix_cache": {
                "entries": len(self.cache.entries),
                "blocks": self.cache.num_blocks,
                "bytes": self.cache.nbytes,
                "capacity_bytes": self.cache.capacity_bytes,
                "query_tokens": s.queries,
                "hit_tokens": s.hits,
                "disk": self.cache.disk.to_json() if self.cache.disk else {"off": self.disk_off},
            },
        }
