"""A follower rank of a tensor-parallel replica: it takes each step its leader sends."""

import logging
import os

from ..config import EngineConfig
from ..types import RequestId, TokenEvent
from ..wire import request_from_json
from .build import build_engine
from .engine import Engine
from .heap import HeapTrimmer
from .lockstep import Channel, LeaderGone, StepMessage, tokens_digest
from .watchdog import StepWatchdog

log = logging.getLogger(__name__)


def _leader_lost(reason: str) -> None:
    log.error("follower: the leader stopped sending (%s); exiting", reason)
    logging.shutdown()
    os._exit(3)


def follow_step(engine: Engine, message: StepMessage) -> list[TokenEvent]:
    """A follower's step: the one its leader decided (`decide`), not its own measurements'."""
    engine.spec.state.follow(message.speculation)
    engine.spec.state.flush()
    return engine.step(message.speculate, message.queue_at)


def run_follower(model_path, config: EngineConfig, model_id: str, group) -> None:
    """A follower rank: receive each step's work from the leader and take the same step."""
    engine, _ = build_engine(model_path, config, model_id, group)
    engine.spec.following = True
    channel = Channel(group)
    heap = HeapTrimmer(config.heap_trim_seconds)
    # The leader sends at least a heartbeat every HEARTBEAT_SECONDS: a follower left waiting
    # far longer has lost its leader (stopped, or its node gone) and exits, so nothing hangs.
    floor = max(30.0, 2 * config.step_timeout) if config.step_timeout else 0.0
    watchdog = StepWatchdog(floor, _leader_lost)
    watchdog.start()
    digest = ""
    while True:
        watchdog.begin("waiting for the leader's next step")
        try:
            message = channel.exchange(None)
        except LeaderGone as e:
            _leader_lost(str(e))
        watchdog.end()
        heap.maybe_trim(idle=not message.step)
        if not message.step:  # idle, as the leader is: write what a restart would lose
            engine.cache.persist()
            engine.spec.state.flush(idle=True)
        if message.digest != digest:
            raise RuntimeError(
                f"rank {group.rank()} diverged from the leader: sampled tokens differ"
            )
        for data in message.adds:
            engine.add_request(request_from_json(data))
        for request_id in message.aborts:
            engine.abort(RequestId(request_id))
        if message.stop:  # as the leader does: files being written get finished
            engine.close_disk_tier()
            return
        if message.step:
            digest = tokens_digest(follow_step(engine, message))
