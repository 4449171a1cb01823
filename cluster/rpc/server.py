"""The leader rank's gRPC server: Generate, Abort, Status, CacheEvents, health, reflection."""

import asyncio
import json
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.service import EngineService
from ..types import RequestId
from ..wire import events_to_pb, request_from_pb
from .auth import TokenInterceptor
from .gen import engine_pb2 as pb
from .gen import engine_pb2_grpc as pb_grpc
from .mailbox import Mailbox
from .tls import LEADER, MESSAGE_LIMITS, bind

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Engine"].full_name


class EngineServicer(pb_grpc.EngineServicer):
    def __init__(self, service: EngineService, describe: dict):
        self.service = service
        self.describe = describe
        self._mailbox: Mailbox | None = None

    @property
    def mailbox(self) -> Mailbox:
        if self._mailbox is None:  # made on first use, inside the server's event loop
            self._mailbox = Mailbox(asyncio.get_running_loop())
        return self._mailbox

    async def Generate(self, request, context):
        events: asyncio.Queue = asyncio.Queue()
        engine_request = request_from_pb(request)
        mailbox = self.mailbox
        self.service.submit(engine_request, lambda e: mailbox.post(events, e))
        finished = False
        try:
            while not finished:
                batch = [await events.get()]
                # Tokens that queued up while the stream was busy go out as one message.
                while batch[-1].finish_reason is None and not events.empty():
                    batch.append(events.get_nowait())
                finished = batch[-1].finish_reason is not None
                yield events_to_pb(batch)
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
            kv_capacity_tokens=info.kv_capacity_tokens,
            stats_json=json.dumps(stats),
        )

    async def CacheEvents(self, request, context):
        events: asyncio.Queue = asyncio.Queue()
        mailbox = self.mailbox

        def sink(stored, evicted, done):
            mailbox.post(events, (stored, evicted, done))

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
    server = grpc.aio.server(interceptors=interceptors, options=MESSAGE_LIMITS + LEADER)
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
