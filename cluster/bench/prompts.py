"""The default prompt set, shaped like the seeds' reports: short facts, explanations, code,
Korean, translation, a haiku, and two repeats (each request carries a fresh tag, so a repeat
is not served from a cache: the prefix-cache phase measures that)."""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    label: str
    text: str


DEFAULT_PROMPTS = [
    Prompt("France capital", "What is the capital of France?"),
    Prompt("TCP vs UDP", "Explain the differences between TCP and UDP."),
    Prompt("Python prime function", "Write a Python function that checks if a number is prime."),
    Prompt("한국 수도/인구", "한국의 수도는 어디이며 인구는 얼마인가요?"),
    Prompt("OOP principles", "Explain the four principles of object-oriented programming."),
    Prompt("Python vs Rust", "Compare Python and Rust for systems programming."),
    Prompt("AI haiku", "Write a haiku about artificial intelligence."),
    Prompt("한국어→영어 번역", "다음 문장을 영어로 번역하세요: 오늘은 날씨가 정말 좋습니다."),
    Prompt("France capital (again)", "What is the capital of France?"),
    Prompt("TCP vs UDP (again)", "Explain the differences between TCP and UDP."),
]

PREFIX_CONTEXT = (
    "You are reviewing a service's design notes. The service accepts requests over HTTP, "
    "validates them, queues them, and runs them on a pool of workers that share a cache. "
) * 12
PREFIX_QUESTIONS = [
    Prompt("France capital", "In one sentence: what is the capital of France?"),
    Prompt("TCP vs UDP", "In one sentence: how does TCP differ from UDP?"),
    Prompt("Python prime", "In one line of Python: test whether n is prime."),
]


def load_prompts(path: str | Path | None) -> list[Prompt]:
    """A JSON list of strings or {"label", "text"} objects, or the default set; a file of
    another shape is an error that says what it holds."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--prompts {path}: not a JSON file of prompts ({e})") from None
    if not isinstance(items, list):
        raise ValueError(f"--prompts {path}: a JSON list of strings or {{\"label\", \"text\"}} "
                         f"objects, not a {type(items).__name__}")  # fmt: skip
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            prompts.append(Prompt(item[:40], item))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            prompts.append(Prompt(str(item.get("label") or item["text"][:40]), item["text"]))
        else:
            raise ValueError(f"--prompts {path}: item {i} is neither a string nor an object "
                             f"with a \"text\" string: {item!r:.80}")  # fmt: skip
    if not prompts:
        raise ValueError(f"--prompts {path} has no prompts")
    return prompts
