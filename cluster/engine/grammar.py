"""Limits on what a row may write next: a tool call's grammar, and a thinking budget.

Outside a call only a call's inner tags are kept out (`</tool_call>`, `<arg_key>`, `</arg_key>`,
`<arg_value>`, `</arg_value>`: nothing reads them there, and a small model that writes one in
its reasoning goes on with a call's tail instead of closing `</think>`). From `<tool_call>` on,
each token must continue an offered tool's name, then one of its keys not used yet (its
required keys in the schema's order; any text without tags for a tool whose keys are open),
then a value (one of its choices when the schema lists them, a number, JSON of its schema for
an array or object (json_values.py), else any text without tags), then the next tag, one
newline at most between two parts; `</tool_call>` only once the required keys are in. So
every call the engine emits parses as a call of an offered tool. A thinking budget ends the
reasoning with `</think>` once it has taken its tokens. Pure Python but for the JSON values
(llguidance): the runner turns each row's `Limit` into a logits mask.
"""

import copy
import re
from dataclasses import dataclass
from enum import Enum

from ..types import ToolGrammar, ToolParam, ToolSpec


class TokenMask:
    """Tokens excluded, as a bool array over the vocabulary (a JSON value's limit: too many
    tokens for a set on GLM-5's 150K vocabulary); ids past its end are excluded too. Equal
    when their `key` is (the bit mask it was made from)."""

    def __init__(self, excluded, key: bytes):
        self.excluded, self.key = excluded, key

    def excludes(self, token: int) -> bool:
        return token >= len(self.excluded) or bool(self.excluded[token])

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenMask) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


@dataclass(frozen=True)
class Limit:
    """The tokens a row may take next: only `allow` when it is set, else any but `ban`; and
    none that `mask` excludes."""

    allow: frozenset[int] | None = None
    ban: frozenset[int] = frozenset()
    mask: TokenMask | None = None

    def permits(self, token: int) -> bool:
        if self.mask is not None and self.mask.excludes(token):
            return False
        return (self.allow is None or token in self.allow) and token not in self.ban


FREE = Limit()


class _Mode(Enum):
    FREE = "free"
    NAME = "name"
    BETWEEN = "between"  # after the name or a value: the next tag
    KEY = "key"
    AFTER_KEY = "after_key"
    VALUE = "value"


def _next(seqs, prefix: tuple[int, ...]) -> tuple[set[int], bool]:
    """Tokens that continue `prefix` towards one of `seqs`, and whether it is one of them."""
    n = len(prefix)
    nxt = {s[n] for s in seqs if len(s) > n and s[:n] == prefix}
    return nxt, any(s == prefix for s in seqs)


_INT = r"-?(0|[1-9][0-9]*)"
_WHOLE = {
    "integer": re.compile(_INT),
    "number": re.compile(_INT + r"(\.[0-9]+)?([eE][+-]?[0-9]+)?"),
}
_BEGUN = {  # the text a whole value can still grow from
    "integer": re.compile(r"-?(0|[1-9][0-9]*)?"),
    "number": re.compile(r"-?((0|[1-9][0-9]*)(\.[0-9]*|(\.[0-9]+)?[eE][+-]?[0-9]*)?)?"),
}


class Numbers:
    """Which number tokens keep a value a JSON integer or number (no "2026-02-1" for an
    integer, no "1..5"); cached by the text so far, shared by a row's clones."""

    def __init__(self, ids: tuple[int, ...], texts: tuple[str, ...]):
        self.text = dict(zip(ids, texts, strict=True))
        self._cache: dict[tuple[str, str], tuple[frozenset[int], bool]] = {}

    def next(self, kind: str, text: str) -> tuple[frozenset[int], bool]:
        """(tokens that may follow `text`, whether `text` is a whole value)."""
        key = (kind, text)
        if key not in self._cache:
            begun = _BEGUN[kind]
            ok = frozenset(t for t, s in self.text.items() if begun.fullmatch(text + s))
            self._cache[key] = ok, bool(_WHOLE[kind].fullmatch(text))
        return self._cache[key]


class CallState:
    """One row's place in the grammar, moved on by each token it writes."""

    def __init__(self, grammar: ToolGrammar, values=None):
        """values: json_values.JsonValues, which holds array and object values to their
        schemas (None: they are free text)."""
        self.g = grammar
        self.values = values
        self.json = None  # the JSON value being written (json_values.JsonValue)
        (self.open, self.close, self.key_open, self.key_close, self.value_open,
         self.value_close) = grammar.tags  # fmt: skip
        self.mode = _Mode.FREE
        self.stray = Limit(ban=frozenset(grammar.tags[1:]))  # outside a call: all but the open
        self.prefix: tuple[int, ...] | None = ()  # None: a value left its closed set
        self.tool: ToolSpec | None = None
        self.param: ToolParam | None = None
        self.used: set[tuple[int, ...]] = set()
        self.value_ban = frozenset(grammar.value_banned) - {self.value_close}
        self.key_ban = frozenset(grammar.value_banned) - {self.key_close}
        self.spaced = False  # the last token was a newline between parts
        self.numbers = Numbers(grammar.number_ids, grammar.number_texts)
        self.text: str | None = ""  # a number value's text so far (None: not a number)
        self.calls = 0  # calls written to the end
        for token in grammar.opening:
            self.advance(token)

    def clone(self) -> "CallState":
        other = copy.copy(self)
        other.used = set(self.used)
        other.json = self.json and self.json.clone()
        return other

    def _unused(self) -> list[ToolParam]:
        return [p for p in self.tool.params if p.key not in self.used]

    def _next_keys(self) -> list[ToolParam]:
        """The keys a call may write next: any optional one not used yet, and of the required
        ones only the first not used yet in the schema's order (as OpenAI's strict mode and
        xgrammar keep a schema's order: the model picks values, not which key comes first)."""
        unused = self._unused()
        first = next((p for p in unused if p.required), None)
        return [p for p in unused if not p.required or p is first]

    def _tags_after_part(self) -> set[int]:
        """After the name or a value: another key while keys remain, the end once the
        required keys are in; a newline before either, one."""
        unused = self._unused()
        tags = {self.key_open} if unused or self.tool.open_keys else set()
        if not any(p.required for p in unused):
            tags.add(self.close)
        return tags | self._spacers()

    def _spacers(self) -> set[int]:
        return set() if self.spaced else set(self.g.spacers)

    def limit(self) -> Limit:
        m = self.mode
        if m is _Mode.FREE:
            if self.calls and self.g.after_calls:  # a reply of calls: another, or the end
                return Limit(frozenset({self.open, *self.g.after_calls, *self._spacers()}))
            return self.stray
        if m is _Mode.NAME:
            nxt, whole = _next([t.name for t in self.g.tools], self.prefix)
            if whole:
                self.tool = self._tool(self.prefix)
                nxt |= self._tags_after_part()
            return Limit(frozenset(nxt))
        if m is _Mode.BETWEEN:
            return Limit(frozenset(self._tags_after_part()))
        if m is _Mode.KEY:
            if self.tool.open_keys:  # any key not used yet, the listed ones too
                used = self.prefix in self.used
                return Limit(ban=self.key_ban | ({self.key_close} if used or not self.prefix
                                                 else set()))  # fmt: skip
            nxt, whole = _next([p.key for p in self._next_keys()], self.prefix)
            return Limit(frozenset(nxt | ({self.key_close} if whole else set())))
        if m is _Mode.AFTER_KEY:
            return Limit(frozenset({self.value_open, *self._spacers()}))
        if self.json is not None:  # JSON its schema allows, then the end once it is whole
            if (lim := self.json.limit(self.value_close)) is not None:
                return lim
            self.json = None  # its matcher failed (logged): the value goes on as free text
        if not self.param.choices and self.param.kind not in _WHOLE:
            return Limit(ban=self.value_ban)
        # VALUE: one of a closed set, or a number (tokens that keep it one), or either (a
        # nullable number: null besides); the end once whole.
        nxt, whole = set(), False
        if self.param.choices and self.prefix is not None:
            nxt, whole = _next(self.param.choices, self.prefix)
        if self.param.kind in _WHOLE and self.text is not None:
            digits, number = self.numbers.next(self.param.kind, self.text)
            nxt, whole = nxt | digits, whole or number
        return Limit(frozenset(nxt | ({self.value_close} if whole else set())))

    def _tool(self, name: tuple[int, ...]) -> ToolSpec:
        return next(t for t in self.g.tools if t.name == name)

    def advance(self, token: int) -> None:
        m = self.mode
        if m is _Mode.FREE:
            if token == self.open:
                self.mode, self.prefix, self.used = _Mode.NAME, (), set()
            self.spaced = token in self.g.spacers
            return
        # Not written under this grammar (a draft run, a tag inside a value): let go.
        if not self.limit().permits(token):
            self.mode, self.json = _Mode.FREE, None
            return
        self.spaced = token in self.g.spacers and m is not _Mode.VALUE
        if m is _Mode.NAME:
            if token in _next([t.name for t in self.g.tools], self.prefix)[0]:
                self.prefix += (token,)
                return
            self.mode = _Mode.BETWEEN  # the name is whole (limit() set self.tool)
            m = self.mode
        if m is _Mode.BETWEEN:
            if token == self.key_open:
                self.mode, self.prefix = _Mode.KEY, ()
            elif token == self.close:
                self.mode, self.calls = _Mode.FREE, self.calls + 1
        elif m is _Mode.KEY:
            if token == self.key_close:
                listed = [p for p in self._unused() if p.key == self.prefix]
                self.param = listed[0] if listed else ToolParam(self.prefix)  # an open key
                self.mode = _Mode.AFTER_KEY
            else:
                self.prefix += (token,)
        elif m is _Mode.AFTER_KEY:
            if token == self.value_open:
                self.mode, self.prefix, self.text = _Mode.VALUE, (), ""
                if self.param.json and self.values is not None:
                    self.json = self.values.start(self.param.json)
        elif m is _Mode.VALUE:
            if token == self.value_close:
                self.used.add(self.param.key)
                self.mode, self.json = _Mode.BETWEEN, None
            elif self.json is not None and not self.json.consume(token):
                self.json = None  # (not expected: limit() allowed it) free text from here
            else:  # a path the token leaves is closed (None); free text needs none kept
                if self.param.choices and self.prefix is not None:
                    on = token in _next(self.param.choices, self.prefix)[0]
                    self.prefix = self.prefix + (token,) if on else None
                if self.param.kind in _WHOLE and self.text is not None:
                    digit = self.numbers.text.get(token)
                    self.text = None if digit is None else self.text + digit


class ThinkBudget:
    """A reply that starts inside <think> may think `budget` tokens; then `end` is its next."""

    def __init__(self, budget: int, end: int):
        self.budget, self.end = budget, end
        self.written = 0
        self.closed = False

    def advance(self, token: int) -> None:
        self.written += 1
        self.closed = self.closed or token == self.end

    def limit(self) -> Limit:
        if self.closed or self.written < self.budget:
            return FREE
        return Limit(frozenset({self.end}))

    def clone(self) -> "ThinkBudget":
        return copy.copy(self)


class ReplyJson:
    """A structured reply (response_format): from its first token, or from the token `after`
    (`</think>`), its text stays JSON its grammar allows, and `end` comes once it is whole.
    With `call` (`<tool_call>`), its first token may be that instead: a reply of calls, which
    the tool-call grammar holds (OpenAI's structured output beside tools)."""

    def __init__(self, value, end: int, after: int | None, call: int | None = None):
        """value: the reply's json_values.JsonValue."""
        self.value, self.end, self.after, self.call = value, end, after, call
        self.started = after is None
        self.begun = False  # a token of the reply read (JSON's, or the call's)

    def advance(self, token: int) -> None:
        if not self.started:
            self.started = token == self.after
            return
        first, self.begun = not self.begun, True
        if first and token == self.call and self.call is not None:
            self.value = None  # a reply of calls
        elif self.value is not None and token != self.end and not self.value.consume(token):
            self.value = None  # (not expected: limit() allowed it) free text from here

    def limit(self) -> Limit:
        if not self.started or self.value is None:
            return FREE
        if (lim := self.value.limit(self.end)) is None:
            self.value = None  # its matcher failed (logged): free text from here
            return FREE
        if self.call is None or self.begun or self.call >= len(lim.mask.excluded):
            return lim
        excluded = lim.mask.excluded.copy()  # the call's opening besides the JSON's
        excluded[self.call] = False
        return Limit(mask=TokenMask(excluded, lim.mask.key + b"|call"))

    def clone(self) -> "ReplyJson":
        other = copy.copy(self)
        other.value = self.value and self.value.clone()
        return other


class Limiter:
    """A row's limits: its thinking budget first, then its tool-call grammar or its reply's
    JSON grammar, and tokens its request bans (e.g. <tool_call> under tool_choice none) never."""

    def __init__(
        self, call: CallState | None, budget: ThinkBudget | None, banned: frozenset = frozenset(),
        reply: ReplyJson | None = None,
    ):  # fmt: skip
        self.call, self.budget, self.banned, self.reply = call, budget, banned, reply
        self.seen = 0

    def follow(self, output: list[int]) -> Limit:
        """Read the output tokens not read yet; the limit on the next one."""
        for token in output[self.seen :]:
            self._advance(token)
        self.seen = len(output)
        return self.limit()

    def along(self, drafts: list[int]) -> list[Limit]:
        """The limits at each position of a draft run after the output read so far: the
        next token's, then each one's if the drafts before it are kept."""
        other = Limiter(self.call and self.call.clone(), self.budget and self.budget.clone(),
                        self.banned, self.reply and self.reply.clone())  # fmt: skip
        limits = [other.limit()]
        for token in drafts:
            other._advance(token)
            limits.append(other.limit())
        return limits

    def _advance(self, token: int) -> None:
        if self.budget is not None:
            self.budget.advance(token)
        if self.call is not None:
            self.call.advance(token)
        if self.reply is not None:
            self.reply.advance(token)

    def limit(self) -> Limit:
        if self.budget is not None and (forced := self.budget.limit()) is not FREE:
            return forced
        lim = self.call.limit() if self.call is not None else FREE
        if self.reply is not None and (lim is FREE or lim is self.call.stray):
            lim = reply if (reply := self.reply.limit()) is not FREE else lim
        if not self.banned:
            return lim
        if lim.allow is not None:
            return Limit(lim.allow - self.banned, mask=lim.mask)
        return Limit(ban=lim.ban | self.banned, mask=lim.mask)
