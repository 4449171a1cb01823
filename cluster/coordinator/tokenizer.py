"""The model's own tokenizer and chat template, as the coordinator uses them."""

import json
import os
from functools import cached_property
from pathlib import Path

from .glm_output import Markers
from .segments import SegmentTokens


class TemplateArgsError(ValueError):
    """A template argument the chat template cannot take, or a conversation it refuses."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class PromptTokenizer:
    def __init__(self, model_path: str | Path):
        # Only the tokenizer is used: transformers' note that PyTorch is absent is noise here.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # One core for tokenizing a long prompt: the event loop and the ranks keep the rest.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(model_path))
        self._backend = self.hf.backend_tokenizer
        self.path = Path(model_path)
        self._tokens_of: dict[str, tuple[int, ...]] = {}

    def chat(self, messages: list[dict], tools: list | None = None, continue_final: bool = False,
             /, **template_args) -> list[int]:  # fmt: skip
        """Apply the chat template with a generation prompt, or (continue_final) leave the
        final message open for the reply to continue; no tokens added twice. template_args
        reach the template (enable_thinking, clear_thinking, ...): TemplateArgsError for one
        that names an argument of the call itself, or that the template refuses."""
        from jinja2 import TemplateError

        if clash := sorted(set(template_args) & self.reserved_args):
            raise TemplateArgsError(
                f"{', '.join(clash)}: not a chat template argument (the server sets "
                f"{'it' if len(clash) == 1 else 'them'} from the request); send template "
                "variables such as enable_thinking or clear_thinking only",
                "chat_template_kwargs",
            )
        try:
            text = self.hf.apply_chat_template(
                messages, tools=tools, add_generation_prompt=not continue_final,
                continue_final_message=continue_final, tokenize=False, **template_args,
            )  # fmt: skip
        except TemplateError as e:  # the template's own check (raise_exception)
            raise TemplateArgsError(
                f"the chat template refused the conversation: {e}", "messages"
            ) from None
        return self.encode(text)

    @cached_property
    def reserved_args(self) -> frozenset[str]:
        """Names a template argument may not take: the parameters of the template call."""
        import inspect

        params = inspect.signature(self.hf.apply_chat_template).parameters
        named = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
        return frozenset(named | {"messages", "continue_final", "self"})

    @cached_property
    def _byte_of_char(self) -> dict[str, int] | None:
        """Byte-level BPE's printable stand-ins for bytes (GPT-2's table), when it is one."""
        if "ByteLevel" not in str(self._backend.pre_tokenizer):
            return None
        printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
        chars, extra = list(printable), 0
        for b in range(256):
            if b not in printable:
                printable.append(b)
                chars.append(256 + extra)
                extra += 1
        return {chr(c): b for b, c in zip(printable, chars, strict=True)}

    def token_bytes(self, token_id: int) -> bytes:
        """One token's own bytes (a piece of a character's UTF-8 bytes, possibly)."""
        piece = self._backend.id_to_token(token_id) or ""
        table = self._byte_of_char
        if piece in self.special_tokens:
            return piece.encode()
        if table is None:
            return self.decode([token_id]).encode()
        return bytes(table.get(ch, 63) for ch in piece)

    @cached_property
    def stream_bytes(self):
        """For streaming detokenizers: each token's bytes as decode() renders them (special
        tokens skipped), or None when the tokenizer is not byte-level."""
        if self._byte_of_char is None:
            return None
        table: dict[int, bytes] = {}

        def of(token_id: int) -> bytes:
            if (b := table.get(token_id)) is None:
                piece = self._backend.id_to_token(token_id) or ""
                b = b"" if piece in self.special_tokens else self.token_bytes(token_id)
                table[token_id] = b
            return b

        return of

    @cached_property
    def special_tokens(self) -> set[str]:
        return set(self.hf.all_special_tokens) | {
            t.content for t in self._backend.get_added_tokens_decoder().values()
        }

    @cached_property
    def generation_defaults(self) -> dict:
        """The checkpoint's sampling defaults (generation_config.json's temperature, top_p,
        top_k), for requests that leave them out, as vLLM applies them."""
        path = self.path / "generation_config.json"
        try:
            config = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            return {}
        out: dict = {}
        t, p, k = config.get("temperature"), config.get("top_p"), config.get("top_k")
        if isinstance(t, int | float) and 0 <= t <= 2:
            out["temperature"] = float(t)
        if isinstance(p, int | float) and 0 < p <= 1:
            out["top_p"] = float(p)
        if isinstance(k, int) and k >= 0:
            out["top_k"] = k
        return out

    def tokens_of(self, chars: str) -> tuple[int, ...]:
        """Ids of the tokens whose text is made of these characters only (cached)."""
        cache = self._tokens_of
        if chars not in cache:
            allowed = set(chars.encode())
            special = set(self.special_ids)
            cache[chars] = tuple(
                i for i in range(self.vocab_size)
                if i not in special and (b := self.token_bytes(i)) and set(b) <= allowed
            )  # fmt: skip
        return cache[chars]

    @cached_property
    def special_ids(self) -> tuple[int, ...]:
        """Every special token's id (tags, turns, end of text)."""
        vocab = self._backend.get_vocab()
        return tuple(sorted(vocab[t] for t in self.special_tokens if t in vocab))

    def special_id(self, text: str) -> int | None:
        """The id of a special token, None when this tokenizer has none of that text."""
        return self._backend.token_to_id(text) if text in self.special_tokens else None

    @cached_property
    def markers(self) -> Markers | None:
        """GLM-5's tag tokens, when this tokenizer has them."""
        return Markers.from_vocab(self._backend.get_vocab())

    def encode(self, text: str) -> list[int]:
        """Token ids of text, its added tokens as tokens (pieces seen lately not tokenized
        again: `segments.py`)."""
        return self.pieces.encode(text)

    @cached_property
    def pieces(self) -> SegmentTokens:
        return SegmentTokens(self._backend)

    def decode(self, ids) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()
