"""GLM-5's output format, parsed from token ids: reasoning, content and tool calls.

GLM-5 writes `<think>reasoning</think>answer` and calls tools as
`<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>`; every tag is one
special token, so the parser switches state on token ids and decodes only the text between them.
Markup never reaches `content`. GLM-4.5's newlines after the name and between pairs are allowed.
"""

import ast
import json
from dataclasses import dataclass, field
from enum import Enum

from .output import Delta, IncrementalDetokenizer, StopMatcher
from .tool_schema import as_item, item_type, value_type

TAGS = (
    "<think>", "</think>", "<tool_call>", "</tool_call>",
    "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
)  # fmt: skip


@dataclass(frozen=True)
class Markers:
    """Token ids of GLM-5's tags in one tokenizer."""

    ids: dict[int, str]

    @classmethod
    def from_vocab(cls, vocab: dict[str, int]) -> "Markers | None":
        """The tags' ids, or None when the tokenizer lacks GLM's tags as single tokens."""
        if not all(t in vocab for t in TAGS):
            return None
        return cls({vocab[t]: t for t in TAGS})

    def id_of(self, tag: str) -> int:
        return next(i for i, t in self.ids.items() if t == tag)


@dataclass(frozen=True)
class ToolCallDelta:
    """OpenAI's streamed tool-call piece: the first carries id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: dict = field(default_factory=dict)
    arguments_json: str = ""
    complete: bool = False


class _State(Enum):
    CONTENT = "content"
    REASONING = "reasoning"
    NAME = "name"
    BODY = "body"
    KEY = "key"
    VALUE = "value"


def param_types(tools: list[dict] | None, of=value_type) -> dict[str, dict[str, object]]:
    """tool name -> parameter name -> its JSON-schema type (None when the schema says none;
    `tool_schema.value_type`), or what `of` says of its schema."""
    out: dict[str, dict[str, object]] = {}
    for tool in tools or []:
        f = tool.get("function", tool)
        schema = f.get("parameters") or f.get("input_schema") or {}
        props = schema.get("properties") if isinstance(schema, dict) else None
        props = props if isinstance(props, dict) else {}  # not a schema: values untyped
        out[f.get("name", "")] = {k: of(v, schema) for k, v in props.items()}
    return out


def is_string(schema_type) -> bool:
    """Whether a schema's type keeps a value as the raw text GLM wrote."""
    return schema_type == "string" or (isinstance(schema_type, list) and "string" in schema_type)


def typed_value(raw: str, schema_type) -> object:
    """A value as its schema types it: strings stay raw; others JSON, then a Python literal;
    a lone value where the schema asks for an array is that array's one item (`ls` for a
    command array is `["ls"]`, as a client that validates the schema needs it); `null`
    where the schema allows null is null, a string's too."""
    if isinstance(schema_type, list) and "null" in schema_type and raw.strip() == "null":
        return None
    if is_string(schema_type):
        return raw
    value = _literal(raw)
    if schema_type == "array" and not isinstance(value, list):
        return [value]
    return value


def _literal(raw: str) -> object:
    text = raw.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw
    return value if isinstance(value, int | float | bool | list | dict | str) else raw


@dataclass
class ParsedDelta:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class GlmParser:
    """Feeds on generated token ids; returns what each feed adds, in OpenAI's delta terms."""

    def __init__(self, markers: Markers, decode, tools: list[dict] | None = None,
                 reasoning: bool = False, call_ids=None, token_bytes=None,
                 continuing: bool = False):  # fmt: skip
        """token_bytes: each token's bytes, for constant work per token (output.py);
        continuing: the reply goes on with text already begun (a prefill), kept as written."""
        self.markers = markers
        self.decode = decode
        self.token_bytes = token_bytes
        self.types = param_types(tools)
        self.items = param_types(tools, item_type)  # arrays of scalars: the items' type
        self.state = _State.REASONING if reasoning else _State.CONTENT
        self.calls: list[ToolCall] = []
        self._new_id = call_ids or (lambda i: f"call_{i}")
        self._detok = IncrementalDetokenizer(decode, token_bytes)
        self._buf = ""  # text of the current name, key or value
        self._key = ""
        self._streaming = False  # the open value is a string sent as it is written
        self._resume = _State.CONTENT  # where the reply goes on after the current call
        self._seen_content = continuing
        self.reasoning_tokens = 0
        """Tokens written inside the reasoning (its tags not counted)."""

    @property
    def in_call(self) -> bool:
        return self.state in (_State.NAME, _State.BODY, _State.KEY, _State.VALUE)

    def feed(self, token_ids) -> ParsedDelta:
        out = ParsedDelta()
        for t in token_ids:
            tag = self.markers.ids.get(t)
            if tag is None:
                self.reasoning_tokens += self.state == _State.REASONING
                self._text(self._detok.add([t]), out)
            else:
                self._text(self._detok.flush(), out)
                self._detok = IncrementalDetokenizer(self.decode, self.token_bytes)
                self._tag(tag, out)
        return out

    def finish(self) -> ParsedDelta:
        """Flush held-back text; a call cut off mid-way keeps the arguments it completed, and
        one cut inside its name is left out unless the name is an offered tool's. A value cut
        off that is not a string (those stream as written) ends the arguments as written so
        far, unparsed: the client sees where the cut fell, as with a string."""
        out = ParsedDelta()
        self._text(self._detok.flush(), out)
        written = self._buf.strip()  # the name or value cut off
        if self.state == _State.NAME and written and written in self.types:
            self._start_call(out)
        elif self.state == _State.VALUE and not self._streaming and written:
            call = self.calls[-1]
            self._emit_args(call, self._key_piece(call) + written, out)
        return out

    def _text(self, text: str, out: ParsedDelta) -> None:
        if not text:
            return
        if self.state == _State.CONTENT:
            if not self._seen_content:  # no leading newlines before the answer
                text = text.lstrip("\n")
                self._seen_content = bool(text)
            out.content += text
        elif self.state == _State.REASONING:
            out.reasoning += text
        elif self.state in (_State.NAME, _State.KEY, _State.VALUE):
            self._buf += text
            if self._streaming:  # escaping is per character, so pieces join to the whole
                self._emit_args(self.calls[-1], json.dumps(text, ensure_ascii=False)[1:-1], out)
        # BODY: whitespace between pairs (GLM-4.5 puts newlines there); nothing to keep.

    def _tag(self, tag: str, out: ParsedDelta) -> None:
        s = self.state
        if tag == "<think>" and s == _State.CONTENT and not self._seen_content:
            self.state = _State.REASONING
        elif tag == "</think>" and s == _State.REASONING:
            self.state = _State.CONTENT
        elif tag == "</think>" and self.in_call:  # the reasoning closed (a budget) mid-call
            self._resume = _State.CONTENT
        elif tag == "<tool_call>" and s in (_State.CONTENT, _State.REASONING):
            self.state, self._buf, self._resume = _State.NAME, "", s
        elif tag == "<arg_key>" and s in (_State.NAME, _State.BODY):
            if s == _State.NAME:
                self._start_call(out)
            self.state, self._buf = _State.KEY, ""
        elif tag == "</arg_key>" and s == _State.KEY:
            self._key, self.state = self._buf.strip(), _State.BODY
        elif tag == "<arg_value>" and s == _State.BODY:
            self.state, self._buf = _State.VALUE, ""
            self._open_string(out)
        elif tag == "</arg_value>" and s == _State.VALUE:
            self._add_argument(out)
            self.state = _State.BODY
        elif tag == "</tool_call>" and s in (_State.NAME, _State.BODY):
            if s == _State.NAME:
                self._start_call(out)
            self._end_call(out)
            self.state = self._resume  # a call written inside the reasoning: back to it
        # Any other tag out of place (a stray </think>, say) is dropped, never shown as text.

    def _start_call(self, out: ParsedDelta) -> None:
        index = len(self.calls)
        call = ToolCall(index, self._new_id(index), self._buf.strip())
        self.calls.append(call)
        self._buf = ""
        out.tool_calls.append(ToolCallDelta(index, call.id, call.name))

    def _key_piece(self, call: ToolCall) -> str:
        sep = ", " if call.arguments_json else "{"
        return sep + json.dumps(self._key, ensure_ascii=False) + ": "

    def _open_string(self, out: ParsedDelta) -> None:
        """A string value streams as GLM writes it (a file a call writes shows as it comes);
        other types go whole once their value ends, since only then can they be typed."""
        call = self.calls[-1]
        self._streaming = is_string(self.types.get(call.name, {}).get(self._key))
        if self._streaming:
            self._emit_args(call, self._key_piece(call) + '"', out)

    def _add_argument(self, out: ParsedDelta) -> None:
        call = self.calls[-1]
        # A string value is kept exactly, its edge newlines too (a file's last line break).
        value = typed_value(self._buf, self.types.get(call.name, {}).get(self._key))
        if isinstance(value, list) and (kind := self.items.get(call.name, {}).get(self._key)):
            value = [as_item(v, kind) for v in value]
        call.arguments[self._key] = value
        if self._streaming:
            self._streaming = False
            self._emit_args(call, '"', out)
        else:
            self._emit_args(
                call, self._key_piece(call) + json.dumps(value, ensure_ascii=False), out
            )

    def _end_call(self, out: ParsedDelta) -> None:
        call = self.calls[-1]
        call.complete = True
        self._emit_args(call, "}" if call.arguments_json else "{}", out)

    @staticmethod
    def _emit_args(call: ToolCall, piece: str, out: ParsedDelta) -> None:
        """Pieces of one call in one feed go out as one delta."""
        if not piece:
            return
        call.arguments_json += piece
        _join(out.tool_calls, ToolCallDelta(call.index, arguments=piece))


class ChatOutputProcessor:
    """One chat request's tokens as reasoning, content and tool calls; stop strings apply to
    content. The same interface as output.OutputProcessor (`pieces`, `num_tokens`)."""

    def __init__(self, parser: GlmParser, stops: list[str], max_calls: int | None = None,
                 opening: ParsedDelta | None = None):  # fmt: skip
        """opening: what the parser made of the reply's forced opening (a named call's start),
        sent with the first output."""
        self.parser = parser
        self._opening = opening
        self.stop = StopMatcher(stops)
        self.max_calls = max_calls
        """Finish once this many calls are complete (parallel_tool_calls false: 1)."""
        self.num_tokens = 0

    @property
    def reasoning_tokens(self) -> int:
        return self.parser.reasoning_tokens

    def pieces(self, token_ids, finish_reason: str | None) -> list[Delta]:
        """One engine event's tokens as deltas in generation order: each delta holds reasoning,
        then text, then call pieces (the order the Anthropic and Responses builders read), so
        a step that closes a call and goes on with text (a speculative step of several
        tokens) is two deltas. The reply ends at a stop string or at the call that reaches
        `max_calls`, whatever the event's size: later tokens are neither sent nor counted."""
        out: list[Delta] = []
        cur, ids, quiet = self._opening or ParsedDelta(), [], []
        self._opening = None
        finish, by_stop = None, False

        def add(got: ParsedDelta) -> None:
            nonlocal cur, ids
            if _last_rank(cur) > _first_rank(got):  # back in the order: a new delta
                out.append(_delta(cur, ids, None))
                cur, ids = ParsedDelta(), []
            _merge(cur, got)

        for t in token_ids:
            if self._calls_done():
                finish = "stop"
                break
            got, by_stop = self._through_stops(self.parser.feed([t]))
            self.num_tokens += 1
            if not by_stop and not (got.reasoning or got.content or got.tool_calls):
                quiet.append(t)  # no output yet (a tag, a held-back byte): goes with the next
                continue
            add(got)
            ids += [*quiet, t]
            quiet = []
            if by_stop:  # a stop string: the reply ends with this token
                finish = "stop"
                break
        ids += quiet
        if finish is None and self._calls_done():
            finish = "stop"
        if finish is None and finish_reason is not None:
            tail, by_stop = self._through_stops(self.parser.finish())
            if not by_stop:
                tail.content += self.stop.flush()
            finish = "stop" if by_stop else finish_reason
            add(tail)
        if finish == "stop" and not by_stop and self._calls_done(1):
            finish = "tool_calls"
        out.append(_delta(cur, ids, finish))
        return out

    def _calls_done(self, at_least: int | None = None) -> bool:
        """Whether `at_least` calls (default: max_calls) are complete."""
        n = at_least or self.max_calls
        return bool(n) and sum(c.complete for c in self.parser.calls) >= n

    def _through_stops(self, got: ParsedDelta) -> tuple[ParsedDelta, bool]:
        """got with its content through the stop strings (held back while a stop string may
        be starting, released where a call follows: none runs on past a call), and whether a
        stop string matched (then its calls are not sent)."""
        text, stopped = self.stop.feed(got.content) if got.content else ("", False)
        if stopped:
            return ParsedDelta(text, got.reasoning), True
        got.content = text + (self.stop.flush() if got.tool_calls else "")
        return got, False


def _delta(p: ParsedDelta, ids: list[int], finish: str | None) -> Delta:
    return Delta(p.content, tuple(ids), finish, p.reasoning, p.tool_calls)


def _first_rank(p: ParsedDelta) -> int:
    """Where a piece's first part falls in a delta's order: reasoning 0, text 1, calls 2."""
    return 0 if p.reasoning else 1 if p.content else 2 if p.tool_calls else 3


def _last_rank(p: ParsedDelta) -> int:
    return 2 if p.tool_calls else 1 if p.content else 0 if p.reasoning else -1


def _merge(into: ParsedDelta, p: ParsedDelta) -> None:
    """p after into; a call's argument pieces in a row become one piece."""
    into.reasoning += p.reasoning
    into.content += p.content
    for d in p.tool_calls:
        _join(into.tool_calls, d)


def _join(pieces: list[ToolCallDelta], d: ToolCallDelta) -> None:
    """Append d; argument pieces of one call in a row become one piece."""
    last = pieces[-1] if pieces else None
    if d.id is None and last is not None and last.id is None and last.index == d.index:
        pieces[-1] = ToolCallDelta(d.index, arguments=last.arguments + d.arguments)
    else:
        pieces.append(d)
