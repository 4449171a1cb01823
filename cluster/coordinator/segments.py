"""Token ids of a prompt's pieces between added tokens, kept across requests.

An agent resends its whole transcript every turn: 170K tokens took ~0.6 s to tokenize on every
turn, though only the newest messages were new. A tokenizer encodes the text between its added
tokens (`<|user|>`, `<tool_call>`, ...) piece by piece, each on its own, so a piece seen before
has the same ids again: only unseen pieces are tokenized, and a self-check at start confirms the
tokenizer works that way (otherwise every prompt is tokenized whole, as before).
"""

import logging
import re
import threading
from array import array
from collections import OrderedDict

log = logging.getLogger(__name__)

MAX_CHARS = 32_000_000
"""Characters of pieces kept (least recently used first out): ~60 sessions of 170K tokens."""

_AROUND = ("", " ", "  ", "\n", "\t", "é", "日本", "🙂", "x", '{"a": 1}')
"""What the self-check puts on each side of every added token: spaces, newlines, multi-byte
characters, words, punctuation."""


def _sample(tokens: list[str]) -> str:
    """Every added token between each pair of `_AROUND`, and the tokens side by side."""
    return "".join(a + t + b for t in tokens for a in _AROUND for b in _AROUND) + "".join(tokens)


class SegmentTokens:
    """encode(text) == backend.encode(text).ids, tokenizing only pieces not seen lately."""

    def __init__(self, backend, max_chars: int = MAX_CHARS):
        self._backend = backend
        self._max = max_chars
        added = backend.get_added_tokens_decoder()
        self._ids = {t.content: i for i, t in added.items()}
        alternatives = "|".join(re.escape(t) for t in sorted(self._ids, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})") if alternatives else None
        self._pieces: OrderedDict[str, array] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.tokenized_chars = 0  # characters run through the tokenizer (for tests and logs)
        # Tokens that take in text around them, or are found only after normalizing, do not
        # split the raw text where a regex over it would.
        normalizes = backend.normalizer is not None
        plain = not any(
            t.lstrip or t.rstrip or t.single_word or (t.normalized and normalizes)
            for t in added.values()
        )
        self.enabled = self._split is not None and plain and self._agrees(_sample([*self._ids]))
        if self._split is not None and not self.enabled:
            log.warning("prompt pieces: this tokenizer does not encode the text between its "
                        "added tokens on its own; every prompt is tokenized whole")  # fmt: skip

    def _whole(self, text: str) -> list[int]:
        # encode_batch lets go of the GIL while it works (encode does not): a long transcript
        # tokenized in a worker thread does not stop the event loop.
        self.tokenized_chars += len(text)
        return self._backend.encode_batch([text], add_special_tokens=False)[0].ids

    def _agrees(self, sample: str) -> bool:
        return self._pieced(sample) == self._whole(sample)

    def encode(self, text: str) -> list[int]:
        return self._pieced(text) if self.enabled else self._whole(text)

    def _pieced(self, text: str) -> list[int]:
        parts = self._split.split(text)  # plain text at even indices, added tokens at odd
        with self._lock:
            known = {p: ids for p in set(parts[0::2]) if p and (ids := self._hit(p)) is not None}
        new = [p for p in dict.fromkeys(parts[0::2]) if p and p not in known]
        if new:
            self.tokenized_chars += sum(map(len, new))
            done = self._backend.encode_batch(new, add_special_tokens=False)
            fresh = {p: array("i", e.ids) for p, e in zip(new, done, strict=True)}
            known |= fresh
            with self._lock:
                for p, ids in fresh.items():
                    self._keep(p, ids)
        out: list[int] = []
        for i, p in enumerate(parts):
            if i % 2:
                out.append(self._ids[p])
            elif p:
                out.extend(known[p])
        return out

    def _hit(self, piece: str) -> array | None:
        ids = self._pieces.get(piece)
        if ids is not None:
            self._pieces.move_to_end(piece)
        return ids

    def _keep(self, piece: str, ids: array) -> None:
        if len(piece) > self._max or piece in self._pieces:
            return
        self._pieces[piece] = ids
        self._chars += len(piece)
        while self._chars > self._max:
            old, _ = self._pieces.popitem(last=False)
            self._chars -= len(old)
