"""Two agent sessions through one replica's bounded prefix cache, then the first resumed.

    .venv/bin/python scripts/session_cache.py [--turns 9] [--cache-bytes 30000000]

Each turn resends the transcript with the last reply, a read_file call and its result (a
slice of a standard-library file), as an agent does, streamed through the `openai` client.
Per turn: prompt and cached tokens, time to the first token, and the prefix cache's entries,
bytes held and bytes of distinct blocks (/v1/status). With one entry kept per session the
resumed first session still finds its transcript cached.
"""

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file from the repository",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]  # fmt: skip
FILES = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))


def file_slice(i: int, chars: int = 1400) -> tuple[str, str]:
    path = FILES[(i * 7) % len(FILES)]
    text = Path(path).read_text(errors="replace")
    start = (i * 1013) % max(1, len(text) - chars)
    return os.path.basename(path), text[start : start + chars]


def turn(client: OpenAI, messages: list[dict]) -> dict:
    started, ttft, reply, usage = time.perf_counter(), None, "", None
    stream = client.chat.completions.create(
        model="glm-5-fixture", messages=messages, tools=TOOLS, max_tokens=24, temperature=0,
        stream=True, stream_options={"include_usage": True},
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].delta.tool_calls):
            ttft = ttft or time.perf_counter() - started
            reply += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    return {"prompt": usage.prompt_tokens, "cached": usage.prompt_tokens_details.cached_tokens,
            "ttft": ttft or time.perf_counter() - started, "reply": reply}  # fmt: skip


def answer(messages: list[dict], got: dict, i: int) -> None:
    """The reply, then a read_file call and its result, as the agent sends the next turn."""
    name, text = file_slice(i)
    call = {"id": f"call_{i}", "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": name})}}  # fmt: skip
    messages.append({"role": "assistant", "content": got["reply"], "tool_calls": [call]})
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": f"# {name}\n{text}"})


def cache(url: str, block_bytes: int) -> str:
    pc = httpx.get(f"{url}/v1/status").json()["replicas"][0]["engine"]["prefix_cache"]
    return (f"entries {pc['entries']}, {pc['bytes'] / 1e6:.1f} MB held, "
            f"{pc['blocks'] * block_bytes / 1e6:.1f} MB of distinct blocks")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=9)
    parser.add_argument("--cache-bytes", type=int, default=30_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        proc, url = start_cluster(home, "--prefix-cache-bytes", str(args.cache_bytes))
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
            # Bytes of one block of KV, from the first turn: the cache then holds one entry.
            sessions = {}
            block_bytes = None
            for tag, offset in (("A", 0), ("B", 100)):
                messages = [{"role": "system", "content": f"Agent {tag}."},
                            {"role": "user", "content": f"Task {tag}: read the files."}]  # fmt: skip
                for i in range(args.turns):
                    got = turn(client, messages)
                    if block_bytes is None:
                        pc = httpx.get(f"{url}/v1/status").json()["replicas"][0]["engine"]
                        pc = pc["prefix_cache"]
                        block_bytes = pc["bytes"] // max(pc["blocks"], 1)
                    print(f"{tag} turn {i}: prompt {got['prompt']}, cached {got['cached']}, "
                          f"first token {got['ttft']:.2f} s; {cache(url, block_bytes)}",
                          flush=True)  # fmt: skip
                    answer(messages, got, offset + i)
                sessions[tag] = messages
            got = turn(client, sessions["A"])
            print(f"A resumed: prompt {got['prompt']}, cached {got['cached']}, first token "
                  f"{got['ttft']:.2f} s; {cache(url, block_bytes)}")  # fmt: skip
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
