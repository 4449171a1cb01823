"""The leader rank's gRPC server: Generate, Abort, Status, CacheEvents, health, reflection."""

import asyncio
import json
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.service import EngineService
from ..engine.types import EngineRequest, RequestId, SamplingParams
from .auth import TokenInterceptor
from .gen import engine_pb2 as pb
from .gen import engine_pb2_grpc as pb_grpc
from .tls import bind

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Engine"].full_name


def request_from_pb(msg: pb.GenerateRequest) -> EngineRequest:
    s = msg.sampling
    sampling = SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
    )
    return EngineRequest(RequestId(msg.request_id), tuple(msg.prompt_token_ids), sampling)


class EngineServicer(pb_grpc.EngineServicer):
    def __init__(self, service: EngineService, describe: dict):
        self.service = service
        self.describe = describe

    async def Generate(self, request, context):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        engine_request = request_from_pb(request)
        self.service.submit(
            engine_request, lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
        )
        finished = False
        try:
            while not finished:
                event = await events.get()
                finished = event.finish_reason is not None
                yield pb.GenerateChunk(
                    request_id=event.request_id,
                    token_ids=event.token_ids,
                    finish_reason=event.finish_reason or "",
                    prompt_tokens=event.prompt_tokens,
                    cached_tokens=event.cached_tokens,
                    error=event.error or "",
                    queue_seconds=event.queue_seconds,
                    prefill_seconds=event.prefill_seconds,
                    decode_seconds=event.decode_seconds,
                )
        finally:
            if not finished:  # the coordinator went away or cancelled
                self.service.abort(engine_request.request_id)

    async def Abort(self, request, context):
        self.service.abort(RequestId(request.request_id))
        return pb.AbortReply()

    async def Status(self, request, context):
        info = self.service.info
        stats = self.service.stats() | self.describe
        return pb.StatusReply(
            model_id=info.model_id,
            max_model_len=info.max_model_len,
            eos_token_ids=info.eos_token_ids,
            model_type=info.model_type,
            stats_json=json.dumps(stats),
        )

    async def CacheEvents(self, request, context):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(stored, evicted, done):
            loop.call_soon_threadsafe(events.put_nowait, (stored, evicted, done))

        self.service.subscribe_cache(sink, snapshot=request.snapshot)
        try:
            while True:
                stored, evicted, done = await events.get()
                yield pb.CacheEvent(stored=stored, evicted=evicted, snapshot_done=done)
        finally:
            self.service.unsubscribe_cache(sink)


async def serve_grpc(
    service: EngineService, host: str, port: int, describe: dict, token: str | None = None
):
    """Start the server; returns it and the bound port."""
    interceptors = [TokenInterceptor(token)] if token else []
    server = grpc.aio.server(interceptors=interceptors)
    pb_grpc.add_EngineServicer_to_server(EngineServicer(service, describe), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    bound = bind(server, f"{host}:{port}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set(SERVICE_NAME, serving)
    await health_servicer.set("", serving)
    return server, bound, health_servicer
