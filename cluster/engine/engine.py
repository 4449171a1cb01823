"""The engine: step() is schedule, run, postprocess."""

import logging
import time

from ..config import EngineConfig
from ..hashing import hash_seed
from ..models.eager import applies as eager_applies
from ..types import EngineRequest, RequestId, TokenEvent
from .disk_cache import MIN_WRITING_BYTES, DiskTier
from .kv_budget import KVBudget
from .prefix_cache import PrefixCache
from .runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Sequence
from .spec_control import Speculation
from .speculation import SpeculationState

log = logging.getLogger(__name__)


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
        self.runner = ModelRunner(
            model, config.seed, drafter, config.pipeline_decode, config.eager_layers
        )
        self.runner.queue.mode = config.queue_ahead
        if config.eager_layers and not eager_applies(model.model):
            log.info("--eager-layers has no effect on %s (only GLM-5's layers go one by one); "
                     "steps build whole", type(model.model).__name__)  # fmt: skip
        self.kv = KVBudget(config.kv_cache_bytes, self.runner.kv_bytes_per_token())
        self.max_model_len = min(max_model_len, self.kv.capacity_tokens or max_model_len)
        """The context length, or less when the KV budget holds fewer tokens."""
        self.cache = PrefixCache(
            config.block_size, config.prefix_cache_bytes, hash_seed(model_id), config.kv_bits,
            disk,
        )  # fmt: skip
        self.cache.limit(self.kv.room([], []))  # the budget's bound from the start
        self.disk_off = disk_off
        self.json_values = None
        """Holds tool calls' array and object values to their schemas (json_values.JsonValues,
        set by build_engine from the model's tokenizer; None: free text)."""
        self.on_schedule = None
        """Called with each step's schedule before it runs (the watchdog weighs its work)."""
        if disk is not None:  # evicted entries wait in memory for their files: bounded
            disk.max_writing_bytes = max(MIN_WRITING_BYTES, (config.kv_cache_bytes or 0) // 16)
        self.cache.lag = self.runner.hooks.lag
        self.scheduler = Scheduler(
            config, self.cache, eos_ids, self.max_model_len, lambda: self.spec.header(), self.kv
        )
        self.spec = Speculation(
            speculation or SpeculationState(config.speculation, config.num_speculative_tokens),
            drafter.stats if drafter is not None else None,
            config.speculation_min_acceptance,
            config.speculation_max_batch,
            (config.speculation_probe_every, config.speculation_probe_steps,
             config.speculation_cooldown, config.speculation_probe_losses),
            config.speculation_adapt_k,
        )  # fmt: skip
        """The one owner of speculation: status, metrics and headers read its state."""

    def add_request(self, request: EngineRequest) -> None:
        self.scheduler.add(Sequence.from_request(request, self.json_values))

    def abort(self, request_id: RequestId) -> TokenEvent | None:
        seq = self.scheduler.abort(request_id)
        if seq is None:
            return None
        # What it computed is kept: a client that gave up on a long prefill and retries (an
        # agent's timeout, a proxy's) resumes from there instead of from zero.
        released = self.runner.release([seq])
        self.scheduler.refresh_room()  # its own booking is gone: the room it leaves
        for cache in released.values():
            self._offer(seq, cache)
        self.spec.settle(len(self.scheduler.running))
        return self.scheduler.event(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(
        self, speculate: int | None = None, queue_at: dict[str, float] | None = None
    ) -> list[TokenEvent]:
        """One step; `speculate` (the draft length, 0: none) and `queue_at` (when a
        speculative step may be queued ahead) come from the leader in a tensor-parallel
        group."""
        queue_at = self.want_queue_ahead() if queue_at is None else queue_at
        schedule = self.scheduler.schedule()
        if self.on_schedule is not None:
            self.on_schedule(schedule)
        if schedule.preempted:  # their KV is freed; they prefill again when there is room
            self.runner.release(schedule.preempted)
        speculate = self.want_speculation() if speculate is None else speculate
        self.runner.speculate, self.runner.queue.allowed = speculate, queue_at
        before = self.spec.steps_so_far()
        started = time.perf_counter()
        sampled = self.runner.run(schedule)
        self.spec.observe(schedule, sampled, time.perf_counter() - started, speculate, before)
        events, done = self.scheduler.postprocess(schedule, sampled)
        self.spec.settle(len(self.scheduler.running))
        self._remember(schedule, done)
        return events

    def want_speculation(self) -> int:
        return self.spec.want(len(self.scheduler.running))

    def want_queue_ahead(self) -> dict[str, float]:
        """The break-even of queueing a speculative step ahead at the batch sizes this step
        may decode (the running ones, and all waiting joining them)."""
        if not self.runner.hooks.queues_ahead:
            return {}
        running = len(self.scheduler.running)
        most = min(running + len(self.scheduler.waiting), self.config.max_num_seqs)
        return self.runner.queue.thresholds(range(max(running, 1), most + 1))

    def _remember(self, schedule, done: list[Sequence]) -> None:
        """Offer new prompt caches and finished sequences' caches to the prefix cache."""
        offers = [(seq, seq.cache) for seq, _ in schedule.prefill
                  if seq.is_prefilled and seq.cache is not None]  # fmt: skip
        offers += self.runner.release(done).items()
        if offers:  # judged by the room the finished ones leave (most steps offer nothing)
            self.scheduler.refresh_room()
        for seq, cache in offers:
            self._offer(seq, cache)

    def close_disk_tier(self) -> None:
        """Write what a restart would lose and finish the files being written (at stop)."""
        try:
            if (disk := self.cache.disk) is not None:
                self.cache.persist()
                disk.close()
        except Exception:
            log.exception("the disk tier could not be closed cleanly")

    def _offer(self, seq: Sequence, cache) -> None:
        """The cache of what seq has computed, to the prefix cache."""
        self.cache.insert(tuple(seq.tokens[: seq.num_computed]), cache, seq.hashes, seq.num_prompt)

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
        """Read from the gRPC server's thread while the engine thread steps: copies of what
        the step may change, nothing changed."""
        s = self.cache.stats
        batch = self.runner.batch_kv_bytes()
        waiting = list(self.scheduler.waiting)
        caches = [seq.cache for seq in waiting]
        prefilling = [q for q in waiting if q.admitted]
        own = sum(c.nbytes for cache in caches if cache for c in cache)
        booked = self.kv.booked_bytes(*self.scheduler.booked())  # what admission counts
        used = {"used_bytes": batch + own + self.cache.nbytes, "booked_bytes": booked}
        return {
            "kv": self.kv.to_json() | used,
            "max_num_seqs": self.config.max_num_seqs,
            # Whether tool calls' array and object values are held to their schemas.
            "tool_json_values": self.json_values is not None,
            # vLLM's sense: a prompt being prefilled runs (it read as waiting, so a dashboard
            # showed nothing running through a two-minute prefill).
            "num_running": len(self.scheduler.running) + len(prefilling),
            "num_waiting": len(self.scheduler.waiting) - len(prefilling),
            "num_prefilling": len(prefilling),
            "prefill_tokens_left": sum(q.prefill_target - q.num_computed for q in prefilling),
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
