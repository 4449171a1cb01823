"""The interface the coordinator uses to reach a replica's engine, and its in-process form."""

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from .service import EngineService, ModelInfo
from .types import EngineRequest, RequestId, TokenEvent


class EngineClient(Protocol):
    """What a replica offers: generate a stream of token events, abort, report status."""

    info: ModelInfo

    def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]: ...

    async def abort(self, request_id: RequestId) -> None: ...

    async def status(self) -> dict: ...

    async def close(self) -> None: ...


class LocalEngineClient:
    """An engine in this process (one replica of one rank)."""

    def __init__(self, service: EngineService):
        self.service = service
        self.info = service.info

    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.service.submit(request, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        finished = False
        try:
            while not finished:
                event = await events.get()
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:
                self.service.abort(request.request_id)

    async def abort(self, request_id: RequestId) -> None:
        self.service.abort(request_id)

    async def status(self) -> dict:
        return self.service.stats()

    async def close(self) -> None:
        await asyncio.to_thread(self.service.stop)
