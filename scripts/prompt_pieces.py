"""The coordinator's per-turn prompt work on a growing agent transcript, pieces against whole.

    .venv/bin/python scripts/prompt_pieces.py [--tokens 170000] [--model DIR]

An agent session (a read_file call and a slice of a standard-library file as its result, turn
after turn) grows to --tokens; at each printed turn the same rendered prompt is tokenized
whole (the tokenizer on all of it, as before) and in pieces (`cluster/coordinator/segments.py`:
only text not seen in earlier turns), interleaved, and the routing hashes timed beside them.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.coordinator.tokenizer import PromptTokenizer  # noqa: E402
from cluster.hashing import block_hashes  # noqa: E402
from cluster.model_store import TRAINED  # noqa: E402

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file from the repository",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]  # fmt: skip
FILES = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "..", "asyncio", "*.py")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=170_000)
    ap.add_argument("--model", default=str(TRAINED), help="a checkpoint with tokenizer.json")
    args = ap.parse_args()
    tok = PromptTokenizer(args.model)
    backend = tok._backend
    messages = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Read the event loop's sources and explain them."},
    ]
    print(
        "| prompt tokens | tokenize whole (ms) | in pieces (ms) | whole / pieces | routing hashes (ms) |"
    )
    print("|---|---|---|---|---|")
    turn, mark, n = 0, 10_000, 0
    while n < args.tokens:
        path = FILES[turn % len(FILES)]
        call = {"id": f"call_{turn}", "type": "function",
                "function": {"name": "read_file", "arguments": {"path": path}}}  # fmt: skip
        messages += [
            {
                "role": "assistant",
                "content": f"Next, {os.path.basename(path)}.",
                "tool_calls": [call],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": Path(path).read_text()[:6000]},
        ]
        turn += 1
        text = tok.hf.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True,
                                          tokenize=False)  # fmt: skip
        ids = tok.encode(text)  # the turn as served: its pieces now known
        n = len(ids)
        if n < mark and n < args.tokens:
            continue
        mark *= 2 if mark < 80_000 else 1.25
        whole, pieces, hashes = [], [], []
        for _ in range(3):
            t = time.perf_counter()
            assert backend.encode_batch([text], add_special_tokens=False)[0].ids == ids
            whole.append(time.perf_counter() - t)
            t = time.perf_counter()
            tok.encode(text)
            pieces.append(time.perf_counter() - t)
            t = time.perf_counter()
            block_hashes(ids, 16)
            hashes.append(time.perf_counter() - t)
        w, p, h = (statistics.median(x) * 1000 for x in (whole, pieces, hashes))
        print(f"| {n:,} | {w:.0f} | {p:.1f} | {w / p:.0f}x | {h:.0f} |")


if __name__ == "__main__":
    main()
