"""The default prompt set, shaped like the seeds' reports: short facts, explanations, code,
Korean, translation, a haiku, and two repeats that a prefix cache should serve."""

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
    Prompt("France capital (cached)", "What is the capital of France?"),
    Prompt("TCP vs UDP (cached)", "Explain the differences between TCP and UDP."),
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
    """A JSON list of strings or {"label", "text"} objects, or the default set."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    items = json.loads(Path(path).read_text())
    prompts = []
    for item in items:
        if isinstance(item, str):
            prompts.append(Prompt(item[:40], item))
        else:
            prompts.append(Prompt(item.get("label") or item["text"][:40], item["text"]))
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts
