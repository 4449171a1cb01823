"""The one codec of the engine's wire types: EngineRequest, SamplingParams and TokenEvent to
and from protobuf (coordinator <-> leader) and JSON-ready dicts (the leader's lockstep frames).

Fields convert by name: every dataclass field has a protobuf field of the same name (a test
fails when one is missing), so a new sampling field is added to the dataclass and the .proto.
"""

from dataclasses import MISSING, asdict, fields

from .rpc.gen import engine_pb2 as pb
from .types import EngineRequest, RequestId, SamplingParams, TokenEvent, TokenLogprob, ToolGrammar

_AS_JSON = {"tool_grammar": ToolGrammar}
"""Nested types a message carries as their JSON text (to_json / from_json)."""


def _to_pb(obj, msg, skip: tuple[str, ...] = ()):
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or f.name in skip:
            continue
        if f.name in _AS_JSON:
            value = value.to_json()
        if isinstance(value, tuple):
            getattr(msg, f.name).extend(value)
        else:
            setattr(msg, f.name, value)
    return msg


def _from_pb(cls, msg, **given):
    """The dataclass of a message; fields the message left unset keep their defaults."""
    kw = {}
    for f in fields(cls):
        if f.name in given:
            continue
        desc = msg.DESCRIPTOR.fields_by_name[f.name]
        value = getattr(msg, f.name)
        if desc.is_repeated:
            value = tuple(value)
        elif desc.has_presence and not msg.HasField(f.name):
            continue
        elif value == "" and f.default is None:
            value = None  # proto3 strings have no null: "" stands for None
        elif f.name in _AS_JSON:
            value = _AS_JSON[f.name].from_json(value)
        kw[f.name] = value
    return cls(**kw, **given)


def request_to_pb(request: EngineRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request.request_id,
        prompt_token_ids=request.prompt_token_ids,
        sampling=_to_pb(request.sampling, pb.SamplingParams()),
        block_hashes=request.block_hashes,
    )


def request_from_pb(msg: pb.GenerateRequest) -> EngineRequest:
    sampling = _from_pb(SamplingParams, msg.sampling)
    return EngineRequest(RequestId(msg.request_id), tuple(msg.prompt_token_ids), sampling,
                         tuple(msg.block_hashes))  # fmt: skip


def _logprob_to_pb(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=lp.token_id,
        logprob=lp.logprob,
        top_ids=[t for t, _ in lp.top],
        top_logprobs=[v for _, v in lp.top],
    )


def events_to_pb(events: list[TokenEvent]) -> pb.GenerateChunk:
    """One message for consecutive events of a request: their tokens and logprobs, the largest
    counts and timings, the last one's ending."""
    last = events[-1]
    msg = _to_pb(last, pb.GenerateChunk(), skip=("token_ids", "logprobs", "prompt_logprobs"))
    msg.token_ids.extend(t for e in events for t in e.token_ids)
    for name in ("prompt_tokens", "cached_tokens", "queue_seconds", "prefill_seconds",
                 "decode_seconds"):  # fmt: skip
        setattr(msg, name, max(getattr(e, name) for e in events))
    msg.logprobs.extend(_logprob_to_pb(lp) for e in events for lp in e.logprobs)
    msg.prompt_logprobs.extend(_logprob_to_pb(lp) for e in events for lp in e.prompt_logprobs)
    return msg


def _logprobs_from_pb(items) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(lp.token_id, lp.logprob, tuple(zip(lp.top_ids, lp.top_logprobs, strict=True)))
        for lp in items
    )


def event_from_pb(msg: pb.GenerateChunk) -> TokenEvent:
    return _from_pb(TokenEvent, msg, request_id=RequestId(msg.request_id),
                    logprobs=_logprobs_from_pb(msg.logprobs),
                    prompt_logprobs=_logprobs_from_pb(msg.prompt_logprobs))  # fmt: skip


def request_to_json(request: EngineRequest) -> dict:
    """A request as the lockstep frame carries it (JSON; never pickle)."""
    sampling = asdict(request.sampling)
    for name in _AS_JSON:
        if (value := getattr(request.sampling, name)) is not None:
            sampling[name] = value.to_json()
    return {
        "id": request.request_id,
        "prompt": list(request.prompt_token_ids),
        "sampling": sampling,
        "hashes": list(request.block_hashes),
    }


def request_from_json(data: dict) -> EngineRequest:
    s = data["sampling"]
    tuples = {f.name for f in fields(SamplingParams) if isinstance(_default(f), tuple)}
    s = {k: _AS_JSON[k].from_json(v) if k in _AS_JSON and v is not None else v
         for k, v in s.items()}  # fmt: skip
    sampling = SamplingParams(**{k: tuple(v) if k in tuples else v for k, v in s.items()})
    hashes = tuple(data.get("hashes", ()))
    return EngineRequest(RequestId(data["id"]), tuple(data["prompt"]), sampling, hashes)


def _default(f):
    return f.default if f.default is not MISSING else None
