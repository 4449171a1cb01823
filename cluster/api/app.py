"""FastAPI routes: OpenAI's chat and text completions, models, health, status."""

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from ..coordinator.coordinator import Coordinator
from ..coordinator.errors import APIError
from ..coordinator.metrics import ClusterCollector
from ..coordinator.output import OutputProcessor
from .anthropic import router as anthropic_router
from .chat import (
    ChatDefaults,
    build_prompt,
    chat_processor,
    openai_messages,
    outcome_headers,
    start,
)
from .errors import error_json, install
from .heartbeat import beating
from .offload import LONG_CHARS, chars, off_loop
from .openai_out import Shape, collect_unless_disconnected, sse
from .responses import router as responses_router
from .schemas import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from .structured import reply_limits, reply_schema
from .unseen import with_header as omitted_header

OPEN_PATHS = ("/health", "/metrics")


def sent_keys(headers: dict[bytes, bytes]) -> list[str]:
    """The keys a request carries: a bearer token (the scheme in any case, RFC 7235) and
    Anthropic's x-api-key; either may hold the key."""
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    bearer = [token.strip()] if scheme.lower() == "bearer" else []
    return bearer + [headers.get(b"x-api-key", b"").decode("latin-1").strip()]


class ApiKeyMiddleware:
    """Bearer keys on every path but probes. Plain ASGI: Starlette's BaseHTTPMiddleware would
    relay every streamed chunk through an extra task and queue."""

    def __init__(self, app, keys: frozenset[str]):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self._allowed(scope):
            message = (
                "Missing or invalid API key: send 'Authorization: Bearer <key>' "
                "(or 'x-api-key: <key>')."
            )
            response = error_json(
                scope["path"], 401, message, "authentication_error", None, "invalid_api_key"
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        """Probes need no key; other paths a served key in either header."""
        if scope["path"] in OPEN_PATHS:
            return True
        return any(key in self.keys for key in sent_keys(dict(scope["headers"])))


class RefusalCounter:
    """Counts the client errors the API answers (`requests_rejected_total{status}`): a 400 for
    a bad field, 401, 404, 413, ... (429 and 503 are counted where the coordinator refuses).
    Plain ASGI, as above; the rest of a response passes straight through."""

    COUNTED_ELSEWHERE = (429, 499)  # 499: the client left, its request aborted

    def __init__(self, app, rejected, model_name: str):
        self.app, self.rejected, self.model_name = app, rejected, model_name

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                if 400 <= status < 500 and status not in self.COUNTED_ELSEWHERE:
                    self.rejected.labels(self.model_name, str(status)).inc()
            await send(message)

        await self.app(scope, receive, counted)


def create_app(
    coordinator: Coordinator,
    api_keys: frozenset[str] = frozenset(),
    chat_defaults: ChatDefaults | None = None,
) -> FastAPI:
    """chat_defaults: the server's defaults for chat requests (template args, tool-call
    grammar, thinking budget); requests override them."""
    app = FastAPI(title="cluster", version="0.1.0")
    app.state.coordinator = coordinator
    chat_defaults = chat_defaults or ChatDefaults()
    install(app)

    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    metrics = coordinator.metrics  # outermost: a 401 from the key check is counted too
    app.add_middleware(RefusalCounter, rejected=metrics.rejected, model_name=metrics.model_name)

    @app.get("/health")
    async def health():
        ready = [r.name for r in coordinator.replicas if r.state == "ready"]
        status = 200 if ready else 503
        return JSONResponse({"status": "ok" if ready else "unavailable", "ready": ready}, status)

    def card(name: str) -> dict:
        """A model in OpenAI's shape and Anthropic's at once (each SDK reads its fields)."""
        created = int(coordinator.started)
        return {
            "id": name, "object": "model", "created": created, "owned_by": "cluster",
            "max_model_len": coordinator.max_model_len,
            "type": "model", "display_name": name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        }  # fmt: skip

    @app.get("/v1/models")
    async def models():
        names = [n for n in (coordinator.model_name, *coordinator.aliases) if "*" not in n]
        cards = [card(name) for name in names]
        return {"object": "list", "data": cards, "has_more": False,
                "first_id": names[0], "last_id": names[-1]}  # fmt: skip

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        coordinator.check_model(model)
        return card(model)

    coordinator.metrics.registry.register(ClusterCollector(coordinator))

    @app.get("/metrics")
    async def metrics():
        return Response(
            generate_latest(coordinator.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.get("/v1/status")
    async def status():
        return await coordinator.status()

    app.include_router(anthropic_router(coordinator, chat_defaults))
    app.include_router(responses_router(coordinator, chat_defaults))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        coordinator.check_model(body.model)
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
        choice = body.tool_choice
        if isinstance(choice, NamedToolChoice):
            choice = choice.function.name
        args = chat_defaults.template_args | body.template_kwargs()
        tok = coordinator.tokenizer
        # Templating and tokenizing a long transcript take long: off the event loop.
        messages = openai_messages(body.messages)
        long = chars(messages, tools) > LONG_CHARS
        grammar = chat_defaults.tool_grammar
        prompt = await off_loop(long, build_prompt, tok, messages, tools, choice, args, grammar,
                                body.continue_final_message)  # fmt: skip
        # OpenAI: a named function is exactly one call; parallel_tool_calls false at most one
        one = isinstance(body.tool_choice, NamedToolChoice) or not body.parallel_tool_calls
        max_calls = 1 if one else None
        processor = chat_processor(tok, prompt, tools, body.stop, max_calls)
        limits = prompt.limits(chat_defaults.budget(body.thinking_budget))
        if (schema := reply_schema(body.response_format, "response_format")) is not None:
            limits |= reply_limits(schema, prompt, tok, "response_format")
        found: dict[str, int] = {}
        for m in body.messages:
            for part in m.content if isinstance(m.content, list) else ():
                if part.unseen:
                    found[part.unseen] = found.get(part.unseen, 0) + 1
        return await _complete(request, body, prompt.tokens, processor, limits, unseen=found)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        coordinator.check_model(body.model)
        p = body.prompt
        tok = coordinator.tokenizer
        if isinstance(p, str):
            prompt = await off_loop(len(p) > LONG_CHARS, tok.encode, p)
        else:
            prompt = list(p)
        vocab = coordinator.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(
                f"prompt token ids must be in [0, {vocab})", param="prompt", code="invalid_value"
            )
        tok = coordinator.tokenizer
        processor = OutputProcessor(tok.decode, body.stop, tok.stream_bytes)
        echo = (p if isinstance(p, str) else tok.decode(prompt), prompt) if body.echo else None
        return await _complete(request, body, prompt, processor, echo=echo)

    async def _complete(request: Request, body, prompt: list[int], processor, limits=None,
                        echo=None, unseen: dict | None = None):  # fmt: skip
        chat = isinstance(body, ChatCompletionRequest)
        limit, param = body.token_limit
        max_tokens = coordinator.check_length(len(prompt), limit, param,
                                              "messages" if chat else "prompt")  # fmt: skip
        rid = coordinator.new_request_id("chatcmpl" if chat else "cmpl")
        sampling = body.sampling(max_tokens, limits or {})
        stream, headers = await start(coordinator, request, body, rid, prompt, sampling, processor)
        headers = omitted_header(headers, unseen or {}, rid)
        name = coordinator.reply_name(body.model)
        shape = Shape(rid, name, chat, coordinator.tokenizer.token_bytes, echo)
        if body.stream:
            return StreamingResponse(
                beating(sse(stream, shape, body.include_usage, body.continuous_usage)),
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(stream.aclose),
            )
        got = await collect_unless_disconnected(request, stream)
        return JSONResponse(shape.full(got), headers=outcome_headers(headers, stream, got.last))

    return app
