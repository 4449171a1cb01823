"""Runs an Engine in its own thread; other threads talk to it through a queue only."""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import EngineConfig
from .types import EngineRequest, RequestId, TokenEvent

log = logging.getLogger(__name__)
Sink = Callable[[TokenEvent], None]


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    model_type: str


def load_model(path: str | Path):
    """Load a model with mlx-lm and its config."""
    import mlx_lm

    model, tokenizer, config = mlx_lm.load(str(path), return_config=True)
    return model, tokenizer, config


def context_length(config: dict, engine: EngineConfig) -> int:
    native = int(config.get("max_position_embeddings", 4096))
    return engine.max_model_len or min(native, 32768)


class EngineService:
    """The engine loop: take commands between steps, step while there is work, hand out events."""

    def __init__(self, model_path: str | Path, config: EngineConfig, model_id: str):
        self.model_path = str(model_path)
        self.config = config
        self.model_id = model_id
        self.info: ModelInfo | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[RequestId, Sink] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._engine = None
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.started_at = time.time()
        self.steps = 0

    def start(self, timeout: float = 600) -> ModelInfo:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"model {self.model_path} did not load in {timeout:.0f}s")
        if self._error is not None:
            raise RuntimeError(f"model {self.model_path} failed to load: {self._error}")
        return self.info

    def submit(self, request: EngineRequest, sink: Sink) -> None:
        self._inbox.put(("add", request, sink))

    def abort(self, request_id: RequestId) -> None:
        self._inbox.put(("abort", request_id, None))

    def stop(self) -> None:
        self._inbox.put(("stop", None, None))
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def stats(self) -> dict:
        engine = self._engine
        stats = engine.stats() if engine else {"num_running": 0, "num_waiting": 0}
        return stats | {"steps": self.steps, "alive": self._thread.is_alive()}

    def _load(self):
        from .engine import Engine

        model, tokenizer, config = load_model(self.model_path)
        max_len = context_length(config, self.config)
        eos = tuple(sorted(tokenizer.eos_token_ids))
        self.info = ModelInfo(self.model_id, max_len, eos, config.get("model_type", "?"))
        return Engine(model, set(eos), self.config, max_len, self.model_id)

    def _run(self) -> None:
        try:
            self._engine = self._load()
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        engine = self._engine
        while True:
            if not self._take_commands(block=not engine.has_work()):
                break
            if not engine.has_work():
                continue
            try:
                events = engine.step()
                self.steps += 1
            except Exception as e:
                log.exception("engine step failed; failing in-flight requests")
                events = engine.fail_all(f"engine error: {type(e).__name__}: {e}")
            for event in events:
                self._dispatch(event)
        for event in engine.fail_all("engine stopped"):
            self._dispatch(event)

    def _take_commands(self, block: bool) -> bool:
        """Apply queued commands; False once asked to stop."""
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            kind, arg, sink = item
            if kind == "stop":
                return False
            if kind == "add":
                self._add(arg, sink)
            elif kind == "abort" and (event := self._engine.abort(arg)):
                log.info("aborted %s after %d tokens", arg, len(event.token_ids))
                self._dispatch(event)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _add(self, request: EngineRequest, sink: Sink) -> None:
        if request.request_id in self._sinks:
            sink(TokenEvent(request.request_id, (), "error", error="duplicate request id"))
            return
        self._sinks[request.request_id] = sink
        self._engine.add_request(request)

    def _dispatch(self, event: TokenEvent) -> None:
        sink = self._sinks.get(event.request_id)
        if event.finish_reason is not None:
            self._sinks.pop(event.request_id, None)
        if sink is not None:
            sink(event)
