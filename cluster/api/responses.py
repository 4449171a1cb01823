"""OpenAI's Responses API (`POST /v1/responses`), stateless, on the same coordinator, router
and engine as the chat route: reasoning, message, function_call and custom_tool_call output
items, streamed as the Responses API's events."""

import json
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from ..coordinator.coordinator import Coordinator
from ..coordinator.errors import APIError, BadRequest
from . import unseen
from .chat import ChatDefaults, build_prompt, chat_processor, outcome_headers, start
from .heartbeat import beating
from .offload import LONG_CHARS, chars, off_loop
from .openai_out import collect_unless_disconnected
from .responses_items import not_read
from .responses_out import OutputItems, final_response, new_id, was_cut
from .responses_schemas import ResponsesRequest
from .structured import reply_limits, reply_schema

log = logging.getLogger(__name__)


def router(coordinator: Coordinator, defaults: ChatDefaults) -> APIRouter:
    api = APIRouter()

    def prompt_of(body: ResponsesRequest):
        try:
            messages = body.template_messages()
        except ValueError as e:
            raise BadRequest(str(e), param="input") from None
        tools = body.openai_tools()
        args = defaults.template_args | body.template_args()

        def build(messages):
            return build_prompt(coordinator.tokenizer, messages, tools, body.choice(), args,
                                defaults.tool_grammar, formats=body.custom_formats())  # fmt: skip

        prompt, dropped = build(messages), 0
        room = coordinator.max_model_len - (body.max_output_tokens or 1)
        if body.truncation == "auto" and len(prompt.tokens) > room:
            # Drop the oldest turns, as few as fit (a binary search: a build tokenizes all).
            low, high = 1, len(turn_starts(messages)) - 1
            dropped, best = high, None
            while low <= high:
                mid = (low + high) // 2
                shorter = build(without_turns(messages, mid))
                if len(shorter.tokens) <= room:
                    dropped, best, high = mid, shorter, mid - 1
                else:
                    low = mid + 1
            prompt = best or build(without_turns(messages, dropped))
        return prompt, tools, dropped

    @api.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request):
        coordinator.check_model(body.model)
        long = chars(body.input, body.instructions, body.tools) > LONG_CHARS
        prompt, tools, dropped = await off_loop(long, prompt_of, body)
        # a named function (or custom tool) is exactly one call, as in OpenAI's API
        one = not isinstance(body.tool_choice, str) or not body.parallel_tool_calls
        max_calls = 1 if one else body.max_tool_calls
        processor = chat_processor(coordinator.tokenizer, prompt, tools, [], max_calls)
        try:
            max_tokens = coordinator.check_length(
                len(prompt.tokens), body.max_output_tokens, "max_output_tokens", "input"
            )
        except BadRequest as e:
            if not body.stream or e.code != "context_length_exceeded":
                raise
            # Streamed, as OpenAI sends it: a response.failed event that Codex reads to drop
            # its oldest turns and retry (an HTTP 400 ends its turn).
            log.info("responses: %s (sent as response.failed)", e.message)
            return StreamingResponse(_failed_stream(body, coordinator, e),
                                     media_type="text/event-stream")  # fmt: skip
        rid = coordinator.new_request_id("resp")
        limits = prompt.limits(defaults.thinking_budget)
        if (schema := reply_schema(body.text_format, "text.format")) is not None:
            limits |= reply_limits(schema, prompt, coordinator.tokenizer, "text.format")
        sampling = body.sampling(max_tokens, limits)
        stream, headers = await start(
            coordinator, request, body, rid, prompt.tokens, sampling, processor
        )
        headers = unseen.with_header(headers, unseen.count(body.input), rid)
        if isinstance(body.input, list) and (left := not_read(body.input)[1]):  # said
            said = ",".join(f"{k}={n}" for k, n in sorted(left.items()))
            log.info("%s: history items left out of the prompt (not read here): %s", rid, said)
            headers = headers | {"x-omitted-items": said}
        if omitted := body.omitted_tools():  # said, never silent
            log.info("%s: hosted tools left out (none runs here): %s", rid, ", ".join(omitted))
            headers = headers | {"x-omitted-tools": ",".join(omitted)}
        if dropped:  # truncation "auto": said, never silent
            log.info("%s: truncation auto dropped the %d oldest turns of input", rid, dropped)
            headers = headers | {"x-truncated-turns": str(dropped)}
        base = {
            "id": new_id("resp_"), "object": "response", "created_at": int(time.time()),
            "model": coordinator.reply_name(body.model), "instructions": body.instructions,
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
            "tool_choice": body.tool_choice if isinstance(body.tool_choice, str)
            else body.tool_choice.model_dump(exclude_none=True),
            "parallel_tool_calls": body.parallel_tool_calls, "temperature": body.temperature,
            "top_p": body.top_p, "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls, "truncation": body.truncation,
            "text": body.text or {"format": {"type": "text"}},
            "reasoning": body.reasoning.model_dump() if body.reasoning
            else {"effort": None, "summary": None},
            "user": body.user, "metadata": body.metadata or {}, "error": None,
            "incomplete_details": None, "store": False,
        }  # fmt: skip
        if body.stream:
            events = beating(_stream_events(stream, base, body.summarized, body.custom_names(),
                                            body.namespaced()))  # fmt: skip
            return StreamingResponse(events, media_type="text/event-stream", headers=headers,
                                     background=BackgroundTask(stream.aclose))  # fmt: skip
        got = await collect_unless_disconnected(request, stream)
        items = OutputItems(body.summarized, body.custom_names(), body.namespaced())
        for out in got.outputs:  # piece by piece, as a stream: items in generation order
            items.events(out)
        items.close(cut=was_cut(got.last))
        reply = final_response(base, items, got.last)
        return JSONResponse(reply, headers=outcome_headers(headers, stream, got.last))

    return api


def turn_starts(messages: list[dict]) -> list[int]:
    """Where each turn begins among the messages that are not system messages: at each user
    message (and at the first message)."""
    rest = [m for m in messages if m["role"] != "system"]
    return sorted({0} | {i for i, m in enumerate(rest) if m["role"] == "user"})


def without_turns(messages: list[dict], n: int) -> list[dict]:
    """The messages without their oldest n turns (a user message and what answers it); the
    system messages stay, and so does the last turn."""
    rest = [m for m in messages if m["role"] != "system"]
    starts = turn_starts(messages)
    cut = starts[min(n, len(starts) - 1)]
    return [m for m in messages if m["role"] == "system"] + rest[cut:]


async def _stream_events(stream, base: dict, summary: bool = False,
                         custom: frozenset[str] = frozenset(),
                         namespaced: dict[str, tuple[str, str]] | None = None):  # fmt: skip
    """The Responses API's event stream: response.created and .in_progress, each item's
    events, then response.completed (or .incomplete); a failure is an `error` event."""
    seq = 0

    def sse(event: dict) -> str:
        nonlocal seq
        event["sequence_number"], seq = seq, seq + 1
        return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    start = base | {"status": "in_progress", "output": [], "usage": None}
    yield sse({"type": "response.created", "response": start})
    yield sse({"type": "response.in_progress", "response": dict(start)})
    items, last = OutputItems(summary, custom, namespaced), None
    try:
        async for out in stream:
            last = out
            for event in items.events(out):
                yield sse(event)
        for event in items.close(cut=was_cut(last)):
            yield sse(event)
        final = final_response(base, items, last)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield sse({"type": kind, "response": final})
    except Exception as e:
        status = e.status if isinstance(e, APIError) else 500
        message = e.message if isinstance(e, APIError) else f"internal error: {type(e).__name__}"
        yield sse({"type": "error", "code": str(status), "message": message, "param": None})
        code = getattr(e, "code", None) or ("server_error" if status >= 500 else "invalid_request")
        failed = final_response(base, items, last) | {
            "status": "failed",
            "error": {"code": code, "message": message},
        }
        yield sse({"type": "response.failed", "response": failed})  # (what Codex reads)
    finally:
        await stream.aclose()


async def _failed_stream(body: ResponsesRequest, coordinator: Coordinator, e: APIError):
    """A streamed request refused before it began: response.created, then response.failed
    with the error's code (context_length_exceeded)."""
    base = {"id": new_id("resp_"), "object": "response", "created_at": int(time.time()),
            "model": coordinator.reply_name(body.model), "output": [], "usage": None,
            "incomplete_details": None}  # fmt: skip
    error = {"code": e.code, "message": e.message}
    events = [
        {"type": "response.created", "response": base | {"status": "in_progress", "error": None}},
        {"type": "response.failed", "response": base | {"status": "failed", "error": error}},
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
        yield f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
