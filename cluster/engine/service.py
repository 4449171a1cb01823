"""Runs an Engine in its own thread; other threads talk to it through a queue only.

In a tensor-parallel replica the leader's loop also sends each step's work to the followers,
which run `follower.run_follower` and take exactly the same steps.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import EngineConfig
from ..types import EngineRequest, ModelInfo, RequestId, TokenEvent
from ..wire import request_to_json
from .build import build_engine
from .engine import Engine
from .heap import HeapTrimmer
from .lockstep import Channel, StepMessage, tokens_digest
from .watchdog import StepWatchdog, step_work

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5.0
Sink = Callable[[TokenEvent], None]
CacheSink = Callable[[list[int], list[int], bool], None]
"""Receives (stored block hashes, evicted block hashes, snapshot_done)."""


# Commands other threads queue for the engine loop, applied between steps.
@dataclass(frozen=True)
class Add:
    request: EngineRequest
    sink: Sink


@dataclass(frozen=True)
class Abort:
    request_id: RequestId


@dataclass(frozen=True)
class Subscribe:
    sink: CacheSink
    snapshot: bool


@dataclass(frozen=True)
class Unsubscribe:
    sink: CacheSink


@dataclass(frozen=True)
class Stop:
    pass


Command = Add | Abort | Subscribe | Unsubscribe | Stop


def _mlx_memory(name: str) -> int:
    """MLX's own allocator counters (arrays alive, freed buffers kept for reuse)."""
    import mlx.core as mx

    return int(getattr(mx, name, lambda: 0)())


class EngineService:
    """The engine loop: take commands between steps, step while there is work, hand out events."""

    def __init__(self, model_path: str | Path, config: EngineConfig, model_id: str, group=None):
        self.model_path = str(model_path)
        self.config = config
        self.model_id = model_id
        self.group = group
        self.info: ModelInfo | None = None
        self.broken: str | None = None
        """Why this replica can no longer serve (a rank was lost); None while healthy."""
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[RequestId, Sink] = {}
        self._cache_sinks: list[CacheSink] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._engine = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._model_bytes = 0
        self.heap = HeapTrimmer(config.heap_trim_seconds)
        self.watchdog = StepWatchdog(config.step_timeout, self._hung)
        self.steps = 0
        self.step_seconds = 0.0
        self.exchange_seconds = 0.0
        self._channel = None

    @property
    def distributed(self) -> bool:
        return self.group is not None and self.group.size() > 1

    def start(self, timeout: float = 600) -> ModelInfo:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"model {self.model_path} did not load in {timeout:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"model {self.model_path} failed to load: {self._error}")
        return self.info

    def submit(self, request: EngineRequest, sink: Sink) -> None:
        if self.broken:
            sink(TokenEvent(request.request_id, (), "error", error=self.broken))
            return
        self._inbox.put(Add(request, sink))

    def abort(self, request_id: RequestId) -> None:
        self._inbox.put(Abort(request_id))

    def subscribe_cache(self, sink: CacheSink, snapshot: bool = True) -> None:
        """Send every stored block first (if snapshot), then each step's changes."""
        self._inbox.put(Subscribe(sink, snapshot))

    def unsubscribe_cache(self, sink: CacheSink) -> None:
        self._inbox.put(Unsubscribe(sink))

    def stop(self) -> None:
        self._inbox.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def stats(self) -> dict:
        engine = self._engine
        stats = engine.stats() if engine else {"num_running": 0, "num_waiting": 0}
        steps = max(self.steps, 1)
        extra = {
            "model_bytes": self._model_bytes,
            "mlx_active_bytes": _mlx_memory("get_active_memory"),
            "mlx_cache_bytes": _mlx_memory("get_cache_memory"),
            "speculation": self._speculation_json(engine),
            "batch_kv_bytes": engine.runner.batch_kv_bytes() if engine else 0,
            "heap_trim": self.heap.to_json(),
            "steps": self.steps,
            "step": self.watchdog.progress(),
            "step_ms_avg": round(1000 * self.step_seconds / steps, 3),
            "exchange_ms_avg": round(1000 * self.exchange_seconds / steps, 3),
            "alive": self._thread.is_alive(),
            "broken": self.broken,
            "open_streams": len(self._sinks),
        }
        # Followers that sleep while the replica idles (else they spin); 0 without followers.
        channel = self._channel if self.distributed else None
        extra["sleeping_followers"] = channel.sleeping_followers if channel else 0
        return stats | extra

    @staticmethod
    def _speculation_json(engine) -> dict | None:
        if engine is None:
            return None
        return engine.spec.to_json()

    def _run(self) -> None:
        if not self._load():
            return
        self._engine.on_schedule = self._weigh
        self.watchdog.start()
        channel = Channel(self.group) if self.distributed else None
        self._channel = channel
        digest, stepped = "", False
        while True:
            try:
                message, stepped = self._next_message(channel, digest, stepped)
            except Exception as e:  # outside a step (an abort, the disk tier): not recoverable
                log.exception("engine loop failed; failing in-flight requests")
                self.broken = f"engine loop failed: {type(e).__name__}: {e}"
                break
            try:
                if channel is not None:
                    self._exchange(channel, message)
                if message.stop:
                    break
                if message.step:
                    events = self._step(message.speculate, message.queue_at)
                    digest, stepped = tokens_digest(events), True
                    self._publish(events)
            except Exception as e:
                self._fail(e)
                if self.distributed:
                    break
        self._dispatch_all(self._engine.fail_all(self.broken or "engine stopped"))
        self._engine.close_disk_tier()
        self._drain_after_stop()

    def _load(self) -> bool:
        try:
            self._engine, self.info = build_engine(
                self.model_path, self.config, self.model_id, self.group
            )
            self._model_bytes = self._engine.runner.model_bytes()
        except BaseException as e:  # reported by start()
            self._error = e
        self._ready.set()
        return self._error is None

    def _next_message(self, channel, digest: str, stepped: bool) -> tuple[StepMessage, bool]:
        """Idle work (heap trim, the disk tier), then the next step's message."""
        idle = not self._engine.has_work()
        self.heap.maybe_trim(idle)
        if idle:  # what a restart would lose goes to the disk tier (if there is one)
            self._engine.cache.persist()
            self._engine.spec.state.flush(idle=True)  # where speculation stands, if unlogged
        if idle and stepped and channel is not None:
            return StepMessage(digest=digest), False  # the followers trim too when idle
        return self._intake(digest, block=idle), stepped

    def _intake(self, digest: str, block: bool) -> StepMessage:
        """This step's message: the commands queued since the last step (waiting for one
        while idle) and what the step will do, for the followers to do the same."""
        message = self._take_commands(block)
        message.step, message.digest = self._engine.has_work(), digest
        return decide(self._engine, message) if message.step else message

    def _weigh(self, schedule) -> None:
        """Tell the watchdog what the step about to run computes."""
        self.watchdog.work, self.watchdog.tokens = step_work(schedule.prefill)

    def _exchange(self, channel: Channel, message: StepMessage) -> None:
        started = time.perf_counter()
        self.watchdog.begin("lockstep exchange with the followers")
        try:
            channel.exchange(message)
        finally:
            self.watchdog.end()
        self.exchange_seconds += time.perf_counter() - started

    def _step(self, speculate: int, queue_at: dict[str, float]) -> list[TokenEvent]:
        started = time.perf_counter()
        self.watchdog.begin("engine step")
        try:
            events = self._engine.step(speculate, queue_at)
        finally:  # a step that raised must not leave the watchdog timing it
            self.watchdog.end()
        self.step_seconds += time.perf_counter() - started
        self.steps += 1
        return events

    def _publish(self, events: list[TokenEvent]) -> None:
        self._dispatch_all(events)
        self._publish_cache_events()

    def _hung(self, reason: str) -> None:
        """From the watchdog's thread, while the loop is stuck: refuse new work and end every
        request with an error now; the supervisor sees `broken` and restarts the replica."""
        log.error("replica hung: %s; failing in-flight requests", reason)
        self.broken = reason
        for rid, sink in list(self._sinks.items()):
            self._sinks.pop(rid, None)
            sink(TokenEvent(rid, (), "error", error=reason))

    def _fail(self, e: Exception) -> None:
        log.exception("engine step failed; failing in-flight requests")
        reason = f"engine error: {type(e).__name__}: {e}"
        if self.distributed:
            self.broken = f"tensor-parallel group lost ({e})"
            reason = self.broken
        self._dispatch_all(self._engine.fail_all(reason))

    def _take_commands(self, block: bool) -> StepMessage:
        """Apply queued commands and describe them for the followers."""
        message = StepMessage()
        try:  # an idle leader still sends an empty message now and then: its heartbeat
            item = self._inbox.get(block=block, timeout=HEARTBEAT_SECONDS if block else None)
        except queue.Empty:
            return message
        while True:
            if isinstance(item, Stop):
                message.stop = True
                return message
            self._apply(item, message)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return message

    def _apply(self, command: Command, message: StepMessage) -> None:
        match command:
            case Add(request, sink) if self._add(request, sink):
                message.adds.append(request_to_json(request))
            case Subscribe(sink, snapshot):
                if snapshot:
                    sink(self._engine.cache.blocks(), [], True)
                self._cache_sinks.append(sink)
            case Unsubscribe(sink) if sink in self._cache_sinks:
                self._cache_sinks.remove(sink)
            case Abort(request_id) if event := self._engine.abort(request_id):
                log.info("aborted %s", request_id)
                message.aborts.append(request_id)
                self._dispatch(event)

    def _add(self, request: EngineRequest, sink: Sink) -> bool:
        if request.request_id in self._sinks:
            sink(TokenEvent(request.request_id, (), "error", error="duplicate request id"))
            return False
        self._sinks[request.request_id] = sink
        self._engine.add_request(request)
        return True

    def _drain_after_stop(self) -> None:
        """Requests that arrive after the loop ended are refused, never left waiting."""
        reason = self.broken or "engine stopped"
        while True:
            try:
                command = self._inbox.get(timeout=0.5)
            except queue.Empty:
                if not self.broken:
                    return
                continue
            if isinstance(command, Add):
                command.sink(TokenEvent(command.request.request_id, (), "error", error=reason))
            elif isinstance(command, Stop):
                return

    def _publish_cache_events(self) -> None:
        events = self._engine.cache.drain_events()
        if events.stored or events.evicted:
            for sink in self._cache_sinks:
                sink(events.stored, events.evicted, False)

    def _dispatch_all(self, events: list[TokenEvent]) -> None:
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: TokenEvent) -> None:
        sink = self._sinks.get(event.request_id)
        if event.finish_reason is not None:
            self._sinks.pop(event.request_id, None)
        if sink is not None:
            sink(event)


def decide(engine: Engine, message: StepMessage) -> StepMessage:
    """The leader's decisions for a step, in its message: the draft length, when a step may be
    queued ahead, and the speculation state (followers take all three, `follow_step`)."""
    message.speculate = engine.want_speculation()
    message.queue_at = engine.want_queue_ahead()
    message.speculation = engine.spec.state.shared()
    return message
