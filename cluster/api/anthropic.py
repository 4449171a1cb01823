"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) on the same
coordinator, router and engine as OpenAI's routes."""

import asyncio
import json
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from ..coordinator.coordinator import Coordinator, Output
from ..coordinator.errors import APIError, BadRequest
from . import unseen
from .anthropic_schemas import CountTokensRequest, MessagesRequest
from .chat import ChatDefaults, ChatPrompt, build_prompt, chat_processor, outcome_headers, start
from .heartbeat import beating
from .offload import LONG_CHARS, chars, off_loop
from .openai_out import collect_unless_disconnected
from .structured import reply_limits, reply_schema

PREFIX = "/v1/messages"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(status: int, message: str) -> dict:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def stop_reason(finish: str | None, stop_sequence: str | None) -> str:
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence else "end_turn"


def _usage(last: Output | None, output_tokens: int | None = None) -> dict:
    prompt = last.prompt_tokens if last else 0
    cached = last.cached_tokens if last else 0
    return {
        "input_tokens": prompt - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": output_tokens
        if output_tokens is not None
        else (last.num_tokens if last else 0),
    }


class _Blocks:
    """Turns the reply's pieces into Anthropic's content blocks, opening and closing them in
    order: thinking, text and tool_use, each a block of its own."""

    def __init__(self):
        self.blocks: list[dict] = []
        self.kind: str | None = None
        self._json: dict[int, str] = {}

    def events(self, out: Output) -> list[tuple[str, dict]]:
        ev: list[tuple[str, dict]] = []
        if out.reasoning:
            ev += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.blocks[-1]["thinking"] += out.reasoning
            ev.append(self._delta({"type": "thinking_delta", "thinking": out.reasoning}))
        if out.text:
            ev += self._open("text", {"type": "text", "text": ""})
            self.blocks[-1]["text"] += out.text
            ev.append(self._delta({"type": "text_delta", "text": out.text}))
        for d in out.tool_calls:
            if d.id is not None:
                ev += self._open(
                    "tool_use",
                    {"type": "tool_use", "id": d.id, "name": d.name, "input": {}},
                    new=True,
                )
                self._json[len(self.blocks) - 1] = ""
            elif d.arguments:
                self._json[len(self.blocks) - 1] += d.arguments
                ev.append(self._delta({"type": "input_json_delta", "partial_json": d.arguments}))
        return ev

    def close(self) -> list[tuple[str, dict]]:
        if self.kind is None:
            return []
        self.kind = None
        index = len(self.blocks) - 1
        block = self.blocks[index]
        if block["type"] == "tool_use":
            block["input"] = _loads_partial(self._json.get(index, ""))
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open(self, kind: str, block: dict, new: bool = False) -> list[tuple[str, dict]]:
        if self.kind == kind and not new:
            return []
        ev = self.close()
        self.blocks.append(block)
        self.kind = kind
        start = {
            "type": "content_block_start",
            "index": len(self.blocks) - 1,
            "content_block": dict(block),
        }
        return ev + [("content_block_start", start)]

    def _delta(self, delta: dict) -> tuple[str, dict]:
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": len(self.blocks) - 1,
            "delta": delta,
        }


def _loads_partial(text: str) -> dict:
    """A tool_use block's input: its JSON, or what a cut-off call completed (a string value
    cut mid-way is left out, as the SDK's stream helper leaves out a cut `partial_json`'s)."""
    if not text:
        return {}
    for candidate in (text, text + "}"):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    built: list[list] = []  # every object's pairs; the outermost is built last
    try:
        json.loads(text + '"}', object_pairs_hook=lambda pairs: built.append(pairs) or dict(pairs))
    except ValueError:
        return {}
    return dict(built[-1][:-1])  # all but the string still open when the call was cut


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def router(coordinator: Coordinator, defaults: ChatDefaults) -> APIRouter:
    api = APIRouter()

    def prompt_of(body) -> tuple[ChatPrompt, list[dict]]:
        coordinator.check_model(body.model)
        try:
            choice = body.choice()
        except ValueError as e:
            raise BadRequest(str(e), param="tool_choice") from None
        tools = body.openai_tools()
        args = defaults.template_args | body.template_args()
        messages, prefill = body.template_messages()
        return build_prompt(
            coordinator.tokenizer, messages, tools, choice, args, defaults.tool_grammar, prefill
        ), tools  # fmt: skip

    @api.post(PREFIX + "/count_tokens")
    async def count_tokens(body: CountTokensRequest):
        long = chars(body.messages, body.system, body.tools) > LONG_CHARS
        prompt, _ = await off_loop(long, prompt_of, body)
        return {"input_tokens": len(prompt.tokens)}

    @api.post(PREFIX)
    async def messages(body: MessagesRequest, request: Request):
        long = chars(body.messages, body.system, body.tools) > LONG_CHARS
        prompt, tools = await off_loop(long, prompt_of, body)
        max_calls = 1 if body.tool_choice and body.tool_choice.disable_parallel_tool_use else None
        processor = chat_processor(
            coordinator.tokenizer, prompt, tools, body.stop_sequences or [], max_calls, "toolu_"
        )
        max_tokens = _check_length(coordinator, len(prompt.tokens), body.max_tokens)
        rid = coordinator.new_request_id("msg")
        mid = "msg_" + secrets.token_hex(12)
        budget = defaults.budget(body.thinking_budget())
        limits = prompt.limits(budget)
        fmt, param = body.output_schema()
        if (schema := reply_schema(fmt, param)) is not None:
            limits |= reply_limits(schema, prompt, coordinator.tokenizer, param)
        sampling = body.sampling(max_tokens, limits)
        stream, headers = await start(
            coordinator, request, body, rid, prompt.tokens, sampling, processor
        )
        found = unseen.count([body.system, [m.content for m in body.messages]])
        headers = unseen.with_header(headers, found, rid)
        model = coordinator.reply_name(body.model)
        if body.stream:
            events = _stream_events(stream, processor, mid, model, len(prompt.tokens))
            return StreamingResponse(
                beating(events, PING),
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(stream.aclose),
            )
        got = await collect_unless_disconnected(request, stream)
        blocks = _Blocks()
        for out in got.outputs:  # piece by piece, as a stream: blocks in generation order
            blocks.events(out)
        blocks.close()
        matched = getattr(processor.stop, "matched", None)
        reply = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks.blocks,
            "stop_reason": stop_reason(got.last.finish_reason, matched),
            "stop_sequence": matched,
            "usage": _usage(got.last),
        }
        return JSONResponse(reply, headers=outcome_headers(headers, stream, got.last))

    return api


PING = 'event: ping\ndata: {"type": "ping"}\n\n'
"""Anthropic's keep-alive event, sent again whenever the stream has been silent a while."""
OPENING_WAIT = 1.0
"""Seconds message_start waits for the first piece (which says how much of the prompt the
prefix cache held); a longer prefill gets it at once, its cache share left to message_delta."""


def _opening(mid: str, model: str, first: Output | None, prompt_tokens: int) -> str:
    """message_start (usage as the first piece has it, else the prompt uncached) and a ping."""
    usage = _usage(first, output_tokens=0)
    if first is None:
        usage["input_tokens"] = prompt_tokens
    start = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    return _sse("message_start", {"type": "message_start", "message": start}) + _sse(
        "ping", {"type": "ping"}
    )


async def _stream_events(stream, processor, mid: str, model: str, prompt_tokens: int):
    """Anthropic's event stream: message_start, ping, the blocks, message_delta, message_stop;
    a failure is an `error` event. message_start waits up to OPENING_WAIT for the first piece
    (the prefix cache's share of the prompt is known from then), never a long prefill."""
    blocks, last = _Blocks(), None
    first = asyncio.ensure_future(anext(stream, None))
    try:
        done, _ = await asyncio.wait({first}, timeout=OPENING_WAIT)
        opened = not done
        if opened:  # a long prefill: the client hears from us now
            yield _opening(mid, model, None, prompt_tokens)
        out = await first
        while out is not None:
            if not opened:
                yield _opening(mid, model, out, prompt_tokens)
                opened = True
            last = out
            for event, data in blocks.events(out):
                yield _sse(event, data)
            out = await anext(stream, None)
        if not opened:  # a stream that ended with no piece still opens its message
            yield _opening(mid, model, None, prompt_tokens)
        for event, data in blocks.close():
            yield _sse(event, data)
        matched = getattr(processor.stop, "matched", None)
        delta = {
            "stop_reason": stop_reason(last.finish_reason if last else None, matched),
            "stop_sequence": matched,
        }
        yield _sse(
            "message_delta", {"type": "message_delta", "delta": delta, "usage": _usage(last)}
        )
        yield _sse("message_stop", {"type": "message_stop"})
    except Exception as e:
        status = e.status if isinstance(e, APIError) else 500
        message = (
            e.message if isinstance(e, APIError) else f"internal error: {type(e).__name__}: {e}"
        )
        yield _sse("error", error_body(status, message))
    finally:
        if not first.done():  # the client left during a long prefill
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()


def _check_length(coordinator: Coordinator, prompt: int, max_tokens: int) -> int:
    """The chat route's check in Anthropic's own words, which Claude Code reads: it retries
    with a max_tokens that fits, or offers /compact for a prompt that is too long."""
    try:
        return coordinator.check_length(prompt, max_tokens, "max_tokens")
    except BadRequest as e:
        if e.code != "context_length_exceeded":
            raise
        limit = coordinator.max_model_len
        if prompt >= limit:
            e.message = f"prompt is too long: {prompt} tokens > {limit} maximum"
        else:
            e.message = (f"input length and `max_tokens` exceed context limit: {prompt} + "
                         f"{max_tokens} > {limit}, decrease input length or `max_tokens` and "
                         "try again")  # fmt: skip
        raise
