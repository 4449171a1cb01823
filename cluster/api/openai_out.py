"""OpenAI's response objects: whole completions, streamed chunks, usage, tool calls."""

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from ..coordinator.coordinator import Output
from .errors import ClientGone, sse_error


@dataclass
class Collected:
    """A whole reply gathered from its stream."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict] = field(default_factory=dict)
    logprobs: list = field(default_factory=list)
    prompt_logprobs: tuple = ()
    last: Output | None = None
    outputs: list[Output] = field(default_factory=list)
    """Every piece in order, for builders of blocks or items (they keep generation order)."""

    def add(self, out: Output) -> None:
        self.outputs.append(out)
        self.text += out.text
        self.logprobs += out.logprobs
        self.prompt_logprobs += out.prompt_logprobs
        self.reasoning += out.reasoning
        for d in out.tool_calls:
            call = self.calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["arguments"] += d.arguments
        self.last = out


def finite(logprob: float) -> float:
    """A log-probability JSON can carry: OpenAI's -9999.0 for an impossible token (-inf is
    not JSON; it failed a whole reply with a 500)."""
    return logprob if math.isfinite(logprob) else -9999.0


def usage(last: Output) -> dict:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.num_tokens,
        "total_tokens": last.prompt_tokens + last.num_tokens,
        "prompt_tokens_details": {"cached_tokens": last.cached_tokens},
        # Speculative decoding's draft tokens, in the fields OpenAI has for predictions.
        "completion_tokens_details": {
            "reasoning_tokens": last.reasoning_tokens,
            "accepted_prediction_tokens": last.accepted_tokens,
            "rejected_prediction_tokens": last.draft_tokens - last.accepted_tokens,
        },
    } | ({"speculation": last.speculation} if last.speculation else {})


def tool_call_delta(d) -> dict:
    """OpenAI's streamed tool-call piece: index, then id, type and name first, then arguments."""
    piece: dict = {"index": d.index}
    if d.id is not None:
        piece |= {"id": d.id, "type": "function", "function": {"name": d.name, "arguments": ""}}
    else:
        piece["function"] = {"arguments": d.arguments}
    return piece


class Shape:
    """OpenAI's response objects for one request."""

    def __init__(self, rid: str, model: str, chat: bool, token_bytes=None, echo=None):
        """token_bytes: token id -> its bytes, for logprobs; echo: (text, token ids) of a
        completion's prompt, which then precedes its text (and its logprobs, when asked)."""
        self.rid, self.model, self.chat = rid, model, chat
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.token_bytes = token_bytes
        self.text_offset = 0
        self.echo = echo[0] if echo else None
        """The prompt's text still to send (a stream sends it in its first chunk)."""
        self.first_prompt_token = echo[1][0] if echo else None

    def _token(self, token_id: int, logprob: float) -> dict:
        raw = self.token_bytes(token_id)
        return {"token": raw.decode("utf-8", "replace"), "logprob": finite(logprob),
                "bytes": list(raw)}  # fmt: skip

    def _name(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", "replace")

    def logprobs(self, logprobs, prompt_logprobs=()):
        """Chat: OpenAI's logprobs.content; completions: the legacy columns (text offsets
        count on across a stream's chunks), an echoed prompt's tokens first (the first
        without a log-probability)."""
        if not logprobs and not prompt_logprobs:
            return None
        if self.chat:
            content = [
                self._token(lp.token_id, lp.logprob)
                | {"top_logprobs": [self._token(t, v) for t, v in lp.top]}
                for lp in logprobs
            ]
            return {"content": content, "refusal": None}
        entries = [(lp.token_id, lp.logprob, lp.top) for lp in (*prompt_logprobs, *logprobs)]
        if prompt_logprobs:
            entries.insert(0, (self.first_prompt_token, None, None))
        tokens = [self._name(t) for t, _, _ in entries]
        offsets = []
        for token in tokens:
            offsets.append(self.text_offset)
            self.text_offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [None if lp is None else finite(lp) for _, lp, _ in entries],
            "top_logprobs": [  # OpenAI's: the sampled token always among them (logprobs + 1)
                None
                if top is None
                else {self._name(t): finite(v) for t, v in top} | {self._name(t): finite(lp)}
                for t, lp, top in entries
            ],  # fmt: skip
            "text_offset": offsets,
        }

    def _echoed(self, text: str) -> str:
        """A completion's text, its echoed prompt first (once, in a stream's first chunk)."""
        if self.echo is None or self.chat:
            return text
        return self.echo + text

    def _base(self, obj: str) -> dict:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def full(self, got: Collected) -> dict:
        last = got.last
        if self.chat:
            message: dict = {"role": "assistant", "content": got.text}
            if got.reasoning:
                message["reasoning_content"] = got.reasoning
            if got.calls:
                message["content"] = got.text or None
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function",
                     "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for _, c in sorted(got.calls.items())
                ]  # fmt: skip
            choice = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": self._echoed(got.text)}
        logprobs = self.logprobs(got.logprobs, got.prompt_logprobs)
        choice |= {"finish_reason": last.finish_reason, "logprobs": logprobs}
        return self._base(self.object) | {"choices": [choice], "usage": usage(last)}

    def chunk(self, out: Output | None, first: bool = False) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if first else {}
            if out is not None:
                if out.reasoning:
                    delta["reasoning_content"] = out.reasoning
                if out.text:
                    delta["content"] = out.text
                if out.tool_calls:
                    delta["tool_calls"] = [tool_call_delta(d) for d in out.tool_calls]
            choice = {"index": 0, "delta": delta}
            obj = "chat.completion.chunk"
        else:
            text = self._echoed(out.text if out else "")
            self.echo = None  # echoed in this first chunk
            choice, obj = {"index": 0, "text": text}, "text_completion"
        finish = out.finish_reason if out is not None else None
        logprobs = self.logprobs(out.logprobs, out.prompt_logprobs) if out is not None else None
        choice |= {"finish_reason": finish, "logprobs": logprobs}
        return self._base(obj) | {"choices": [choice]}

    def usage_chunk(self, last: Output) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self._base(obj) | {"choices": [], "usage": usage(last)}


def data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def sse(stream: AsyncIterator[Output], shape: Shape, include_usage: bool,
              continuous: bool = False):  # fmt: skip
    """OpenAI's event stream; `continuous` adds the usage so far to every chunk (vLLM's
    `continuous_usage_stats`)."""
    last = None
    try:
        if shape.chat:
            yield data(shape.chunk(None, first=True))
        async for out in stream:
            last = out
            if (out.text or out.reasoning or out.tool_calls or out.finish_reason or out.logprobs
                    or out.prompt_logprobs or shape.echo):  # fmt: skip
                chunk = shape.chunk(out)
                yield data(chunk | {"usage": usage(out)} if continuous else chunk)
        if include_usage and last is not None:
            yield data(shape.usage_chunk(last))
    except Exception as e:
        yield sse_error(e)
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"


async def _collect(stream: AsyncIterator[Output]) -> Collected:
    got = Collected()
    async for out in stream:
        got.add(out)
    return got


async def collect_unless_disconnected(request: Request, stream) -> Collected:
    """Collect the whole completion; a client that leaves aborts it."""
    task = asyncio.ensure_future(_collect(stream))
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done and await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise ClientGone(request.url.path)
        return task.result()
    finally:
        await stream.aclose()
