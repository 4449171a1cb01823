"""The gRPC protocol: generated stubs are current, the cluster token is enforced, no pickle."""

import asyncio
from pathlib import Path

import grpc
import pytest

from cluster.config import EngineConfig
from cluster.engine.service import EngineService
from cluster.engine.types import EngineRequest, RequestId, SamplingParams
from cluster.rpc import codegen
from cluster.rpc.client import GrpcEngineClient
from cluster.rpc.server import serve_grpc


def test_generated_stubs_are_current():
    assert codegen.stale() == []


def test_no_pickle_anywhere_in_the_package():
    root = Path(codegen.__file__).resolve().parents[1]
    offenders = [p for p in root.rglob("*.py") if "import pickle" in p.read_text()]
    assert offenders == []


@pytest.fixture(scope="module")
def service(model_dir):
    svc = EngineService(model_dir, EngineConfig(), "fixture")
    svc.start()
    yield svc
    svc.stop()


def test_grpc_round_trip_and_token(service):
    async def scenario():
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {"replica": "t"}, "s3cret")
        try:
            good = GrpcEngineClient(f"127.0.0.1:{port}", "s3cret")
            info = await good.connect()
            assert info.model_type == "glm_moe_dsa" and info.max_model_len > 0
            sampling = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, seed=3)
            request = EngineRequest(RequestId("x1"), (2, 4, 7, 100, 200), sampling)
            events = [e async for e in good.generate(request)]
            assert sum(len(e.token_ids) for e in events) == 5
            assert events[-1].finish_reason == "length" and events[-1].prompt_tokens == 5
            assert (await good.status())["replica"] == "t"
            # Cache events: a snapshot of the blocks the request above stored, then changes.
            events = good.cache_events(snapshot=True)
            first = await anext(events)
            assert first.snapshot_done
            long_prompt = tuple(range(10, 80))  # 70 tokens: four full blocks of 16
            request = EngineRequest(RequestId("x2"), long_prompt, sampling)
            _ = [e async for e in good.generate(request)]
            change = await asyncio.wait_for(anext(events), 10)
            assert len(change.stored) >= 4 and not change.snapshot_done
            await events.aclose()
            for token in (None, "wrong"):
                bad = GrpcEngineClient(f"127.0.0.1:{port}", token)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await bad.connect()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                await bad.close()
            await good.close()
        finally:
            await server.stop(0)

    asyncio.run(scenario())
