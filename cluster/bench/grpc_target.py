"""A replica's leader called directly over gRPC, as a bench target (`grpc://host:port`).

Measuring it next to the coordinator in one `bench --compare` run shows what the coordinator,
HTTP and the extra gRPC hop add to TTFT. Prompts go through the model's own chat template.
"""

import contextlib
import itertools
import os
import time
from functools import cache

from ..coordinator.output import IncrementalDetokenizer
from ..launch.rank import shared_token
from ..types import EngineRequest, RequestId, SamplingParams
from .prompts import Prompt
from .stats import Result

_ids = itertools.count()


@cache
def tokenizer(model: str):
    from ..coordinator.tokenizer import PromptTokenizer
    from ..model_store import resolve_model

    return PromptTokenizer(resolve_model(model)[0])


_clients: dict[str, object] = {}


def client(target: str):
    from ..rpc.client import GrpcEngineClient

    if target not in _clients:
        _clients[target] = GrpcEngineClient(target.removeprefix("grpc://"), shared_token())
    return _clients[target]


async def close_clients() -> None:
    while _clients:
        await _clients.popitem()[1].close()


async def one_grpc_request(target: str, prompt: Prompt, max_tokens: int) -> Result:
    result = Result(prompt.label, target)
    model = os.environ.get("CLUSTER_BENCH_TOKENIZER", "default")
    start = time.perf_counter()
    first = last = None
    try:
        tok = tokenizer(model)
        ids = tok.chat([{"role": "user", "content": prompt.text}])
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        request = EngineRequest(
            RequestId(f"bench-{os.getpid()}-{next(_ids)}"), tuple(ids), sampling
        )
        # Timed like an HTTP stream: from the first token that makes text (the coordinator
        # holds back tokens that decode to nothing or to part of a character).
        detok = IncrementalDetokenizer(tok.decode)
        async with contextlib.aclosing(client(target).generate(request)) as events:
            async for event in events:
                if event.error:
                    raise RuntimeError(event.error)
                result.completion_tokens += len(event.token_ids)
                if detok.add(event.token_ids) or (first and event.token_ids):
                    now = time.perf_counter()
                    first = first or now
                    last = now
        result.prompt_tokens = len(ids)
        result.ok = first is not None
        result.error = "" if result.ok else "no tokens streamed"
    except Exception as e:  # every failure becomes a FAIL row in the report
        result.error = f"{type(e).__name__}: {e}"
    result.total_s = time.perf_counter() - start
    if first is not None:
        result.ttft_s = first - start
        result.decode_s = (last or first) - first
    return result
