"""Token ids to text: incremental detokenization and stop strings."""

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field


class IncrementalDetokenizer:
    """Decodes a growing token list, holding back text until its bytes form whole characters.

    With token_bytes (each token's own bytes, b"" for tokens decoding skips), the work per
    token is constant: its bytes go through an incremental UTF-8 decoder. Without, a window
    of recent tokens is decoded twice per call (any tokenizer)."""

    def __init__(self, decode, token_bytes: Callable[[int], bytes] | None = None):
        self.decode = decode
        self.token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if token_bytes else None
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_ids) -> str:
        if self._utf8 is not None:
            return self._utf8.decode(b"".join(map(self.token_bytes, token_ids)))
        self.ids.extend(token_ids)
        prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix) :]

    def flush(self) -> str:
        if self._utf8 is not None:
            return self._utf8.decode(b"", final=True)
        prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


class StopMatcher:
    """Finds stop strings in streamed text; holds back a tail that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops or () if s]
        self.held = ""
        self.matched: str | None = None
        """The stop string that ended the text, once one has."""

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self.held + text
        hits = [(i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.held = ""
            at, self.matched = min(hits)
            return buf[:at], True
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def _partial_tail(self, buf: str) -> int:
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


@dataclass
class Delta:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    reasoning: str = ""
    """Chat only: reasoning text, kept out of `text`."""
    tool_calls: list = field(default_factory=list)
    """Chat only: tool-call pieces (glm_output.ToolCallDelta) in OpenAI's streaming order."""


class OutputProcessor:
    """Turns one request's token events into text deltas, ending early on a stop string."""

    def __init__(self, decode, stops: list[str], token_bytes=None):
        self.detok = IncrementalDetokenizer(decode, token_bytes)
        self.stop = StopMatcher(stops)
        self.num_tokens = 0

    def pieces(self, token_ids, finish_reason: str | None) -> list[Delta]:
        """An event's deltas (one here; a chat reply's may be several: glm_output.py)."""
        return [self.process(token_ids, finish_reason)]

    def process(self, token_ids, finish_reason: str | None) -> Delta:
        self.num_tokens += len(token_ids)
        text, stopped = self.stop.feed(self.detok.add(token_ids))
        if stopped:
            return Delta(text, tuple(token_ids), "stop")
        if finish_reason is not None:
            tail, stopped = self.stop.feed(self.detok.flush())
            text += tail if stopped else tail + self.stop.flush()
            finish_reason = "stop" if stopped else finish_reason
        return Delta(text, tuple(token_ids), finish_reason)
