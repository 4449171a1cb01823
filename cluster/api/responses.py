"""OpenAI's Responses API (`POST /v1/responses`), stateless, on the same coordinator, router
and engine as the chat route: reasoning, message, function_call and custom_tool_call output
items, streamed as the Responses API's events."""

import json
import logging
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from ..coordinator.coordinator import Coordinator, Output
from ..coordinator.errors import APIError, BadRequest
from . import unseen
from .chat import ChatDefaults, build_prompt, chat_processor, outcome_headers, start
from .heartbeat import beating
from .offload import LONG_CHARS, chars, off_loop
from .openai_out import collect_unless_disconnected
from .responses_schemas import ResponsesRequest, not_read
from .structured import reply_limits, reply_schema

log = logging.getLogger(__name__)


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class _Items:
    """Turns the reply's pieces into output items in order (reasoning, message, function
    calls), with the events that open, fill and close each."""

    def __init__(self, summary: bool = False, custom: frozenset[str] = frozenset(),
                 namespaced: dict[str, tuple[str, str]] | None = None):  # fmt: skip
        """summary: the request asked for a reasoning summary (reasoning.summary): the
        reasoning comes as it (this server does not summarize) rather than as content.
        custom: the custom tools' names (their calls are custom_tool_call items).
        namespaced: a namespace's tools by qualified name (their calls name both)."""
        self.items: list[dict] = []
        self.open: dict | None = None
        self.summary = summary
        self.custom = custom
        self.namespaced = namespaced or {}
        self._args = ""  # the open custom call's arguments as the parser streams them

    def events(self, out: Output) -> list[dict]:
        ev: list[dict] = []
        if out.reasoning:
            ev += self._start("reasoning", {"summary": [], "content": []})
            if self.summary:
                ev += self._summary(out.reasoning)
            else:
                ev += self._text(out.reasoning, "reasoning_text", "response.reasoning_text.delta")
        if out.text:
            ev += self._start("message", {"role": "assistant", "status": "in_progress",
                                          "content": []})  # fmt: skip
            ev += self._text(out.text, "output_text", "response.output_text.delta")
        for d in out.tool_calls:
            if d.id is not None:
                name = {"call_id": d.id, "name": d.name}
                if d.name in self.namespaced:
                    namespace, inner = self.namespaced[d.name]
                    name = {"call_id": d.id, "namespace": namespace, "name": inner}
            if d.id is not None and d.name in self.custom:
                self._args = ""
                ev += self._start("custom_tool_call", {**name, "input": ""}, new=True)
            elif d.id is not None:
                ev += self._start("function_call", {**name, "arguments": "",
                                                    "status": "in_progress"}, new=True)  # fmt: skip
            elif d.arguments and self.open is not None and self.open["type"] == "custom_tool_call":
                self._args += d.arguments
                ev += self._input(self.open, custom_input(self._args, done=False))
            elif d.arguments and self.open is not None:
                self.open["arguments"] += d.arguments
                ev.append(self._event("response.function_call_arguments.delta",
                                      delta=d.arguments))  # fmt: skip
        return ev

    def _input(self, item: dict, text: str) -> list[dict]:
        """A custom call's text so far: the part not yet sent, as a delta."""
        sent = item["input"]
        if len(text) <= len(sent) or not text.startswith(sent):
            return []
        item["input"] = text
        return [self._event("response.custom_tool_call_input.delta", item,
                            delta=text[len(sent) :])]  # fmt: skip

    def close(self, cut: bool = False) -> list[dict]:
        """Close the open item (`cut`: max_output_tokens ended it: incomplete)."""
        item, self.open = self.open, None
        if item is None:
            return []
        ev = []
        if item["type"] == "function_call":
            ev.append(self._event("response.function_call_arguments.done", item,
                                  arguments=item["arguments"], name=item["name"]))  # fmt: skip
        elif item["type"] == "custom_tool_call":
            whole = custom_input(self._args, done=True)
            ev += self._input(item, whole)
            item["input"] = whole  # (the arguments as written, when not the text's shape)
            ev.append(self._event("response.custom_tool_call_input.done", item,
                                  input=item["input"]))  # fmt: skip
        elif item["type"] == "reasoning" and item["summary"]:
            part = item["summary"][0]
            ev.append(self._event("response.reasoning_summary_text.done", item, summary_index=0,
                                  text=part["text"]))  # fmt: skip
            ev.append(self._event("response.reasoning_summary_part.done", item, summary_index=0,
                                  part=dict(part)))  # fmt: skip
        elif item["content"]:
            part = item["content"][0]
            kind = part["type"]
            extra = {"logprobs": []} if kind == "output_text" else {}
            ev.append(self._event(f"response.{kind}.done", item, content_index=0,
                                  text=part["text"], **extra))  # fmt: skip
            if kind == "output_text":
                ev.append(self._event("response.content_part.done", item, content_index=0,
                                      part=dict(part)))  # fmt: skip
        if "status" in item:
            item["status"] = "incomplete" if cut else "completed"
        ev.append(self._event("response.output_item.done", item, item=_copy(item)))
        return ev

    def _start(self, kind: str, fields: dict, new: bool = False) -> list[dict]:
        if self.open is not None and self.open["type"] == kind and not new:
            return []
        ev = self.close()
        prefix = {"reasoning": "rs_", "message": "msg_", "function_call": "fc_",
                  "custom_tool_call": "ctc_"}[kind]  # fmt: skip
        self.open = {"id": _id(prefix), "type": kind, **fields}
        self.items.append(self.open)
        return ev + [self._event("response.output_item.added", item=_copy(self.open))]

    def _text(self, text: str, kind: str, delta_event: str) -> list[dict]:
        ev = []
        if not self.open["content"]:
            part = {"type": kind, "text": ""} | ({"annotations": [], "logprobs": []}
                                                 if kind == "output_text" else {})  # fmt: skip
            self.open["content"].append(part)
            if kind == "output_text":
                ev.append(self._event("response.content_part.added", content_index=0,
                                      part=dict(part)))  # fmt: skip
        self.open["content"][0]["text"] += text
        extra = {"logprobs": []} if kind == "output_text" else {}
        return ev + [self._event(delta_event, content_index=0, delta=text, **extra)]

    def _summary(self, text: str) -> list[dict]:
        ev = []
        if not self.open["summary"]:
            part = {"type": "summary_text", "text": ""}
            self.open["summary"].append(part)
            ev.append(self._event("response.reasoning_summary_part.added", summary_index=0,
                                  part=dict(part)))  # fmt: skip
        self.open["summary"][0]["text"] += text
        return ev + [self._event("response.reasoning_summary_text.delta", summary_index=0,
                                 delta=text)]  # fmt: skip

    def _event(self, kind: str, owner: dict | None = None, **fields) -> dict:
        """An event of `owner` (the open item by default)."""
        owner = owner or self.open
        index = next(i for i, it in enumerate(self.items) if it is owner)
        return {"type": kind, "output_index": index, "item_id": owner["id"], **fields}


_INPUT = '{"input": "'


def custom_input(args: str, done: bool) -> str:
    """A custom tool's text from its call's arguments as they stream (`{"input": "..."}`, the
    function the model sees): the string so far; done: the whole of it, or the arguments as
    written when the model wrote another shape (without the tool-call grammar)."""
    if args.startswith(_INPUT):
        for tail in ("", '"'):  # closed, or still open
            try:
                return json.decoder.scanstring(args + tail, len(_INPUT))[0]
            except ValueError:
                continue
    if not done:
        return ""
    try:
        value = json.loads(args)
    except ValueError:
        return args
    text = value.get("input") if isinstance(value, dict) else None
    return text if isinstance(text, str) else args


def _copy(item: dict) -> dict:
    return json.loads(json.dumps(item))


def _usage(last: Output | None) -> dict:
    """Usage in the Responses API's shape; reasoning tokens as the parser counted them."""
    prompt = last.prompt_tokens if last else 0
    output = last.num_tokens if last else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": last.cached_tokens if last else 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": last.reasoning_tokens if last else 0},
        "total_tokens": prompt + output,
    }


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
        max_calls = 1 if not body.parallel_tool_calls else body.max_tool_calls
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
            "id": _id("resp_"), "object": "response", "created_at": int(time.time()),
            "model": coordinator.reply_name(body.model), "instructions": body.instructions,
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
            "tool_choice": body.tool_choice if isinstance(body.tool_choice, str)
            else body.tool_choice.model_dump(),
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
        items = _Items(body.summarized, body.custom_names(), body.namespaced())
        for out in got.outputs:  # piece by piece, as a stream: items in generation order
            items.events(out)
        items.close(cut=_cut(got.last))
        reply = _final(base, items, got.last)
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


def _cut(last: Output | None) -> bool:
    """max_output_tokens ended the reply."""
    return last is not None and last.finish_reason == "length"


def _final(base: dict, items: _Items, last: Output | None) -> dict:
    """The finished response: its items, status and usage (reasoning tokens as the parser
    counted them, as chat reports them: re-encoding the text could count more than were
    written)."""
    cut = _cut(last)
    return base | {
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": items.items,
        "usage": _usage(last),
    }


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
    items, last = _Items(summary, custom, namespaced), None
    try:
        async for out in stream:
            last = out
            for event in items.events(out):
                yield sse(event)
        for event in items.close(cut=_cut(last)):
            yield sse(event)
        final = _final(base, items, last)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield sse({"type": kind, "response": final})
    except Exception as e:
        status = e.status if isinstance(e, APIError) else 500
        message = e.message if isinstance(e, APIError) else f"internal error: {type(e).__name__}"
        yield sse({"type": "error", "code": str(status), "message": message, "param": None})
        code = getattr(e, "code", None) or ("server_error" if status >= 500 else "invalid_request")
        failed = _final(base, items, last) | {
            "status": "failed",
            "error": {"code": code, "message": message},
        }
        yield sse({"type": "response.failed", "response": failed})  # (what Codex reads)
    finally:
        await stream.aclose()


async def _failed_stream(body: ResponsesRequest, coordinator: Coordinator, e: APIError):
    """A streamed request refused before it began: response.created, then response.failed
    with the error's code (context_length_exceeded)."""
    base = {"id": _id("resp_"), "object": "response", "created_at": int(time.time()),
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
