"""The interface the coordinator uses to reach a replica's engine, and its in-process form."""

from collections.abc import AsyncIterator
from typing import Protocol

from .service import ModelInfo
from .types import EngineRequest, RequestId, TokenEvent


class EngineClient(Protocol):
    """What a replica offers: generate a stream of token events, abort, report status."""

    info: ModelInfo

    def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]: ...

    async def abort(self, request_id: RequestId) -> None: ...

    async def status(self) -> dict: ...

    async def close(self) -> None: ...
