"""The lockstep frame: a step message of any size comes back whole, past its first 4 KiB."""

import mlx.core as mx

from cluster.engine.lockstep import FRAME, Channel, StepMessage
from cluster.types import EngineRequest, RequestId, SamplingParams
from cluster.wire import request_from_json, request_to_json


def test_messages_round_trip_below_at_and_beyond_one_frame():
    channel = Channel(mx.distributed.init())  # a group of one: all_sum is the identity
    for n in (0, 10, FRAME // 4, 5 * FRAME):
        request = EngineRequest(RequestId(f"r{n}"), tuple(range(n)), SamplingParams(seed=n))
        at = {"1": 0.1 + 0.2, "4": 1 / 3}  # exact: followers compare against the same float
        sent = StepMessage(adds=[request_to_json(request)], aborts=["x"], step=True,
                           speculate=True, queue_at=at, speculation=[False, "x", 1],
                           digest="abc")  # fmt: skip
        got = channel.exchange(sent)
        assert (got.aborts, got.step, got.speculate, got.digest) == (["x"], True, True, "abc")
        assert got.queue_at == at and got.speculation == [False, "x", 1]
        assert request_from_json(got.adds[0]) == request
