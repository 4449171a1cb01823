"""The coordinator's side of the gRPC protocol: an EngineClient for a remote leader rank."""

import json
from collections.abc import AsyncIterator

import grpc

from ..types import EngineRequest, ModelInfo, RequestId, TokenEvent
from ..wire import event_from_pb, request_to_pb
from .auth import HEADER
from .gen import engine_pb2 as pb
from .gen import engine_pb2_grpc as pb_grpc
from .tls import open_channel


class GrpcEngineClient:
    def __init__(self, address: str, token: str | None = None):
        self.address = address
        self.metadata = ((HEADER, token),) if token else ()
        self.channel = open_channel(address)
        self.stub = pb_grpc.EngineStub(self.channel)
        self.info: ModelInfo | None = None

    async def connect(self, timeout: float = 10) -> ModelInfo:
        reply = await self.stub.Status(pb.StatusRequest(), metadata=self.metadata, timeout=timeout)
        self.info = ModelInfo(
            reply.model_id,
            reply.max_model_len,
            tuple(reply.eos_token_ids),
            reply.model_type,
            reply.kv_capacity_tokens,
        )
        return self.info

    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        call = self.stub.Generate(request_to_pb(request), metadata=self.metadata)
        try:
            async for chunk in call:
                yield event_from_pb(chunk)
        except grpc.aio.AioRpcError as e:
            message = f"lost the replica's leader at {self.address}: {e.code().name}"
            yield TokenEvent(request.request_id, (), "error", error=message)
        finally:
            call.cancel()

    async def cache_events(self, snapshot: bool = True) -> AsyncIterator[pb.CacheEvent]:
        """Blocks stored and evicted by the replica's prefix cache (snapshot first)."""
        call = self.stub.CacheEvents(
            pb.CacheEventsRequest(snapshot=snapshot), metadata=self.metadata
        )
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()

    async def abort(self, request_id: RequestId) -> None:
        await self.stub.Abort(pb.AbortRequest(request_id=request_id), metadata=self.metadata)

    async def status(self, timeout: float = 2) -> dict:
        reply = await self.stub.Status(pb.StatusRequest(), metadata=self.metadata, timeout=timeout)
        return json.loads(reply.stats_json)

    async def close(self) -> None:
        await self.channel.close()
