"""The one wire codec: every field of the wire types round-trips through protobuf and the
lockstep's JSON, and a field added to a dataclass but not to the .proto fails here."""

import json
import types
import typing
from dataclasses import fields

import pytest

from cluster import wire
from cluster.rpc.gen import engine_pb2 as pb
from cluster.types import (
    EngineRequest,
    RequestId,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    ToolGrammar,
    ToolParam,
    ToolSpec,
)

PAIRS = [
    (SamplingParams, pb.SamplingParams),
    (TokenEvent, pb.GenerateChunk),
    (EngineRequest, pb.GenerateRequest),
]


def _unusual(cls, f):
    """A value of the field's type that differs from its default (floats exact in float32)."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = hint
    base = getattr(base, "__supertype__", base)  # NewType ids
    if typing.get_origin(base) is typing.Literal:
        return typing.get_args(base)[-1]
    if cls is TokenEvent and f.name == "logprobs":
        return (TokenLogprob(5, -0.5, ((5, -0.5), (6, -1.25))), TokenLogprob(7, -2.0))
    if cls is TokenEvent and f.name == "prompt_logprobs":
        return (TokenLogprob(9, -0.25, ((9, -0.25),)), TokenLogprob(3, -4.0))
    if base is ToolGrammar:
        params = (ToolParam((5, 6), ((7,), (8, 9)), True), ToolParam((10,), kind="integer"))
        return ToolGrammar((1, 2, 3, 4, 5, 6), (ToolSpec((11, 12), params), ToolSpec((13,))),
                           (14,), (1, 2), (1, 11), (15, 16), (15, 16, 17))  # fmt: skip
    if typing.get_origin(base) is tuple:
        return (3, 1, 4)
    return {int: 7, float: 0.75, bool: True, str: "x"}[base]


@pytest.mark.parametrize(("cls", "message"), PAIRS)
def test_every_field_has_a_protobuf_field_of_its_name(cls, message):
    missing = {f.name for f in fields(cls)} - set(message.DESCRIPTOR.fields_by_name)
    assert not missing, f"{cls.__name__} fields missing from the .proto: {missing}"


def _values(cls) -> dict:
    return {f.name: _unusual(cls, f) for f in fields(cls)}


def test_sampling_params_round_trip_field_by_field():
    values = _values(SamplingParams)
    hashes = (2**64 - 1, 0, 12345)  # block hashes use all 64 bits
    request = EngineRequest(RequestId("r1"), (1, 2, 3), SamplingParams(**values), hashes)
    back = wire.request_from_pb(
        pb.GenerateRequest.FromString(wire.request_to_pb(request).SerializeToString())
    )
    assert back == request
    frame = json.loads(json.dumps(wire.request_to_json(request)))
    assert wire.request_from_json(frame) == request
    default = EngineRequest(RequestId("r2"), (9,))  # unset optional fields stay None
    assert wire.request_from_pb(wire.request_to_pb(default)) == default
    assert wire.request_from_json(wire.request_to_json(default)) == default


def test_token_event_round_trip_field_by_field():
    values = _values(TokenEvent) | {"request_id": RequestId("r1"), "finish_reason": "stop"}
    event = TokenEvent(**values)
    msg = pb.GenerateChunk.FromString(wire.events_to_pb([event]).SerializeToString())
    assert wire.event_from_pb(msg) == event
    plain = TokenEvent(RequestId("r2"), (4,))
    assert wire.event_from_pb(wire.events_to_pb([plain])) == plain


def test_consecutive_events_merge_into_one_chunk():
    a = TokenEvent(
        RequestId("r"),
        (1, 2),
        prompt_tokens=5,
        logprobs=(TokenLogprob(1, -1.0), TokenLogprob(2, -2.0)),
    )
    last = TokenLogprob(3, -3.0)
    b = TokenEvent(RequestId("r"), (3,), "length", prompt_tokens=5, draft_tokens=4,
                   accepted_tokens=2, decode_seconds=0.5, logprobs=(last,))  # fmt: skip
    merged = wire.event_from_pb(wire.events_to_pb([a, b]))
    assert merged.token_ids == (1, 2, 3) and merged.finish_reason == "length"
    assert [lp.token_id for lp in merged.logprobs] == [1, 2, 3]
    assert (merged.draft_tokens, merged.accepted_tokens, merged.decode_seconds) == (4, 2, 0.5)
