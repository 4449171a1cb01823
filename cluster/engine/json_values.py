"""Tool-call values held to their JSON Schema: an array or object parameter's value must stay a
prefix of JSON its schema allows, token by token (llguidance computes which tokens keep it one),
and `</arg_value>` may come only once the value is whole. A model that writes a string where a
list of objects is asked, or a raw newline inside a JSON string, is kept to valid JSON."""

import logging
from pathlib import Path

import llguidance  # a hard dependency: every rank of a group must hold values alike
import numpy as np

from .grammar import Limit, TokenMask

log = logging.getLogger(__name__)


class JsonValues:
    """Matchers over one model's tokens (its tokenizer.json), made per value written."""

    def __init__(self, tokenizer_json: str | Path):
        self.tokenizer = llguidance.LLTokenizer(str(tokenizer_json))

    @classmethod
    def of_model(cls, model_dir: str | Path) -> "JsonValues | None":
        """For a model directory; None when it has no tokenizer.json llguidance can read (the
        same files on every rank: the same answer), its array and object values then free
        text, as every value was."""
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            log.warning("%s has no tokenizer.json: tool-call array and object values are not "
                        "held to their schemas", model_dir)  # fmt: skip
            return None
        try:
            return cls(path)
        except Exception as e:
            log.warning("tool-call array and object values are not held to their schemas: "
                        "llguidance cannot read %s (%s)", path, e)  # fmt: skip
            return None

    def start(self, grammar: str) -> "JsonValue | None":
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():  # the coordinator validated it: not expected
            log.warning("a JSON value's grammar (a tool call's value or a structured reply) "
                        "failed: %s", matcher.get_error())  # fmt: skip
            return None
        return JsonValue(matcher, self.tokenizer.vocab_size, self.tokenizer.eos_tokens)


class JsonValue:
    """One value being written: its matcher, and the limit on its next token (kept until a
    token moves it on)."""

    def __init__(self, matcher, vocab: int, ends: list[int]):
        self.matcher, self.vocab = matcher, vocab
        self.ends = [t for t in ends if t < vocab]
        """The tokenizer's end tokens, which llguidance allows once the value is whole (its
        grammar's end): here the value ends with `</arg_value>`, never the reply."""
        self._limit: tuple[int, Limit] | None = None

    def limit(self, close: int) -> Limit | None:
        """The tokens that keep the value JSON of its schema, `close` (</arg_value>) once it is
        whole; None when the matcher has failed or allows nothing (free text from there)."""
        if self._limit is not None and self._limit[0] == close:
            return self._limit[1]
        if self.matcher.is_error():
            log.warning("a JSON value's matcher (a tool call's value or a structured reply) "
                        "failed: %s", self.matcher.get_error())  # fmt: skip
            return None
        raw = self.matcher.compute_bitmask()
        ok = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        ok = ok[: self.vocab].astype(bool)
        ok[self.ends] = False
        whole = self.matcher.is_accepting()
        if close < self.vocab:
            ok[close] = whole
        if not ok.any():  # (llguidance allows only a special token here: a key spelled as a tag)
            log.warning("a tool-call value's schema allows no token the value may take here; "
                        "it goes on as free text")  # fmt: skip
            return None
        lim = Limit(mask=TokenMask(~ok, raw + bytes([whole])))
        self._limit = (close, lim)
        return lim

    def consume(self, token: int) -> bool:
        self._limit = None
        return self.matcher.consume_token(token)

    def clone(self) -> "JsonValue":
        other = JsonValue(self.matcher.deep_copy(), self.vocab, self.ends)
        other._limit = self._limit
        return other
