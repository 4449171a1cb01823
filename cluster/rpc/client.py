"""The coordinator's side of the gRPC protocol: an EngineClient for a remote leader rank."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import grpc

from ..types import EngineRequest, ModelInfo, RequestId, TokenEvent
from ..wire import event_from_pb, request_to_pb
from .auth import HEADER
from .gen import engine_pb2 as pb
from .gen import engine_pb2_grpc as pb_grpc
from .tls import open_channel

REFUSALS = frozenset({
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a message over the size limit
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
})  # fmt: skip
"""Statuses that fault the request, not the leader: another replica would answer the same."""


class RequestRefused(Exception):
    """The leader is there but the call failed for this request (a status in REFUSALS)."""


class ChannelClosed(ConnectionError):
    """The client was closed under a call (the supervisor gave its replica up): gRPC cancels
    such calls, which would read as our own task being cancelled."""


def _cancelled_here() -> bool:
    """Whether the running task itself is being cancelled (not a call under it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def _unless_closed(address: str):
    """A call under a closed channel raises ChannelClosed, not our own cancellation."""
    try:
        yield
    except asyncio.CancelledError:
        if _cancelled_here():
            raise
        raise ChannelClosed(f"the channel to {address} was closed") from None


class EventStream:
    """One Generate call's token events; a lost leader ends it with an error event, a refused
    request raises RequestRefused."""

    def __init__(self, call, request_id: RequestId, address: str):
        self._call, self._request_id, self._address = call, request_id, address
        self._done = False

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._call.read()
        except asyncio.CancelledError:
            if self._done or _cancelled_here():
                raise  # our own reader was cancelled (the client left)
            self._done = True  # the channel was closed under the call: the replica went down
            message = (f"lost the replica's leader at {self._address}: its channel was closed "
                       "(the leader stopped answering, or was restarted)")  # fmt: skip
            return TokenEvent(self._request_id, (), "error", error=message)
        except grpc.aio.AioRpcError as e:
            self._done = True
            if e.code() in REFUSALS:
                raise RequestRefused(f"the call to the replica's leader at {self._address} "
                                     f"failed: {e.code().name}: {e.details()}") from e  # fmt: skip
            message = f"lost the replica's leader at {self._address}: {e.code().name}"
            return TokenEvent(self._request_id, (), "error", error=message)
        if chunk is grpc.aio.EOF:
            self._done = True
            raise StopAsyncIteration
        return event_from_pb(chunk)

    async def aclose(self) -> None:
        """Cancel the call (the leader aborts the request); a finished call ignores it."""
        self._done = True
        self._call.cancel()


class GrpcEngineClient:
    def __init__(self, address: str, token: str | None = None):
        self.address = address
        self.metadata = ((HEADER, token),) if token else ()
        self.channel = open_channel(address)
        self.stub = pb_grpc.EngineStub(self.channel)
        self.info: ModelInfo | None = None

    async def _call(self, method, request, **kw):
        """A unary call; a channel closed under it raises ChannelClosed."""
        with _unless_closed(self.address):
            return await method(request, metadata=self.metadata, **kw)

    async def connect(self, timeout: float = 10) -> ModelInfo:
        reply = await self._call(self.stub.Status, pb.StatusRequest(), timeout=timeout)
        self.info = ModelInfo(
            reply.model_id,
            reply.max_model_len,
            tuple(reply.eos_token_ids),
            reply.model_type,
            reply.kv_capacity_tokens,
        )
        return self.info

    def generate(self, request: EngineRequest) -> EventStream:
        """The request leaves at the caller's next await, before the stream is first read: the
        engine prefills while the caller sends its response headers."""
        call = self.stub.Generate(request_to_pb(request), metadata=self.metadata)
        return EventStream(call, request.request_id, self.address)

    async def cache_events(self, snapshot: bool = True) -> AsyncIterator[pb.CacheEvent]:
        """Blocks stored and evicted by the replica's prefix cache (snapshot first)."""
        call = self.stub.CacheEvents(
            pb.CacheEventsRequest(snapshot=snapshot), metadata=self.metadata
        )
        try:
            with _unless_closed(self.address):
                async for event in call:
                    yield event
        finally:
            call.cancel()

    async def abort(self, request_id: RequestId) -> None:
        await self._call(self.stub.Abort, pb.AbortRequest(request_id=request_id))

    async def status(self, timeout: float = 2) -> dict:
        reply = await self._call(self.stub.Status, pb.StatusRequest(), timeout=timeout)
        return json.loads(reply.stats_json)

    async def close(self) -> None:
        await self.channel.close()
