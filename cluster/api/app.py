"""FastAPI routes: OpenAI's chat and text completions, models, health, status."""

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from ..coordinator.coordinator import Coordinator, Output
from ..coordinator.errors import APIError
from ..coordinator.metrics import ClusterCollector
from .errors import envelope, install, sse_error
from .schemas import ChatCompletionRequest, CompletionRequest

OPEN_PATHS = ("/health", "/metrics")


class ApiKeyMiddleware:
    """Bearer keys on every path but probes. Plain ASGI: Starlette's BaseHTTPMiddleware would
    relay every streamed chunk through an extra task and queue."""

    def __init__(self, app, keys: frozenset[str]):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not auth.startswith("Bearer ") or auth[7:] not in self.keys:
                message = "Missing or invalid API key: send 'Authorization: Bearer <key>'."
                body = envelope(message, "authentication_error", None, "invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(coordinator: Coordinator, api_keys: frozenset[str] = frozenset()) -> FastAPI:
    app = FastAPI(title="cluster", version="0.1.0")
    app.state.coordinator = coordinator
    install(app)

    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)

    @app.get("/health")
    async def health():
        ready = [r.name for r in coordinator.replicas if r.state == "ready"]
        status = 200 if ready else 503
        return JSONResponse({"status": "ok" if ready else "unavailable", "ready": ready}, status)

    @app.get("/v1/models")
    async def models():
        card = {
            "id": coordinator.model_name,
            "object": "model",
            "created": int(coordinator.started),
            "owned_by": "cluster",
            "max_model_len": coordinator.max_model_len,
        }
        return {"object": "list", "data": [card]}

    coordinator.metrics.registry.register(ClusterCollector(coordinator))

    @app.get("/metrics")
    async def metrics():
        return Response(
            generate_latest(coordinator.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.get("/v1/status")
    async def status():
        return await coordinator.status()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        coordinator.check_model(body.model)
        messages = [m.as_template_input() for m in body.messages]
        prompt = coordinator.tokenizer.chat(messages, tools=body.tools)
        return await _complete(request, body, prompt, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        coordinator.check_model(body.model)
        p = body.prompt
        prompt = coordinator.tokenizer.encode(p) if isinstance(p, str) else list(p)
        vocab = coordinator.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(
                f"prompt token ids must be in [0, {vocab})", param="prompt", code="invalid_value"
            )
        return await _complete(request, body, prompt, chat=False)

    async def _complete(request: Request, body, prompt: list[int], chat: bool):
        limit, param = body.token_limit
        max_tokens = coordinator.check_length(len(prompt), limit, param)
        rid = coordinator.new_request_id("chatcmpl" if chat else "cmpl")
        session = request.headers.get("x-session-id")
        stream = coordinator.start(rid, prompt, body.sampling(max_tokens), body.stop, session)
        shape = _Shape(rid, coordinator.model_name, chat)
        spec = (stream.replica.stats or {}).get("speculation") or {}
        headers = {"x-request-id": rid, "x-speculation": spec.get("summary", "unknown")}
        if body.stream:
            sse = _sse(stream, shape, body.include_usage)
            return StreamingResponse(
                sse,
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(stream.aclose),
            )
        text, last = await _collect_unless_disconnected(request, stream)
        headers["x-speculation-accepted"] = f"{last.accepted_tokens}/{last.draft_tokens}"
        return JSONResponse(shape.full(text, last), headers=headers)

    return app


class _Shape:
    """OpenAI's response objects for one request."""

    def __init__(self, rid: str, model: str, chat: bool):
        self.rid, self.model, self.chat = rid, model, chat
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _base(self, obj: str) -> dict:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def usage(self, last: Output) -> dict:
        return {
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.num_tokens,
            "total_tokens": last.prompt_tokens + last.num_tokens,
            "prompt_tokens_details": {"cached_tokens": last.cached_tokens},
            # Speculative decoding's draft tokens, in the fields OpenAI has for predictions.
            "completion_tokens_details": {
                "accepted_prediction_tokens": last.accepted_tokens,
                "rejected_prediction_tokens": last.draft_tokens - last.accepted_tokens,
            },
        }

    def full(self, text: str, last: Output) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"finish_reason": last.finish_reason, "logprobs": None}
        return self._base(self.object) | {"choices": [choice], "usage": self.usage(last)}

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta}
            obj = "chat.completion.chunk"
        else:
            choice, obj = {"index": 0, "text": text or ""}, "text_completion"
        choice |= {"finish_reason": finish, "logprobs": None}
        return self._base(obj) | {"choices": [choice]}

    def usage_chunk(self, last: Output) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._base(obj) | {"choices": [], "usage": self.usage(last)}


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(stream: AsyncIterator[Output], shape: _Shape, usage: bool):
    last = None
    try:
        if shape.chat:
            yield _data(shape.chunk(None, None, first=True))
        async for out in stream:
            last = out
            if out.text or out.finish_reason:
                yield _data(shape.chunk(out.text, out.finish_reason))
        if usage and last is not None:
            yield _data(shape.usage_chunk(last))
    except Exception as e:
        yield sse_error(e)
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"


async def _collect(stream: AsyncIterator[Output]) -> tuple[str, Output]:
    parts, last = [], None
    async for out in stream:
        parts.append(out.text)
        last = out
    return "".join(parts), last


async def _collect_unless_disconnected(request: Request, stream) -> tuple[str, Output]:
    """Collect the whole completion; a client that leaves aborts it."""
    task = asyncio.ensure_future(_collect(stream))
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise asyncio.CancelledError
        return task.result()
    finally:
        await stream.aclose()
