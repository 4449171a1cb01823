"""The model's own tokenizer and chat template, as the coordinator uses them."""

import os
from pathlib import Path


class PromptTokenizer:
    def __init__(self, model_path: str | Path):
        # Only the tokenizer is used: transformers' note that PyTorch is absent is noise here.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(model_path))
        self._backend = self.hf.backend_tokenizer

    def chat(self, messages: list[dict], tools: list | None = None) -> list[int]:
        """Apply the chat template with a generation prompt; no tokens added twice."""
        text = self.hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False
        )
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size()
