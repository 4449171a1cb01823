"""Draft-model speculation in batches, in-process: decode tok/s with and without it.

    .venv/bin/python scripts/draft_batches.py [--target DIR] [--draft DIR] [--k 2] [--batches 1 4 8]

Target: the 24-layer benchmark copy of the built-in model (built here when not given; GLM-5's
cost ratios, the built-in model's outputs); draft: the built-in model itself, which predicts
the copy exactly, so every draft is accepted and what is measured is the cost of drafting and
verifying a batch. For each batch size, `batch` code prompts decode 64 tokens greedily, twice;
the faster round of each engine counts (this machine is shared and noisy).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.model_store import TRAINED  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402

TEXTS = [
    "import os\nimport sys\n\ndef main(",
    "class Foo:\n    def __init__(self",
    "for i in range(10):\n",
    "def parse(path):\n    with open(",
    "import json\n\nclass Config:\n",
    "def fib(n):\n    if n <",
    "from collections import defaultdict\n\n",
    "async def fetch(url):\n",
]


def decode_rate(target: str, config: EngineConfig, prompts, batch: int, tokens: int = 64):
    engine, _ = build_engine(target, config, "draft-batches")
    best = 0.0
    for rnd in range(2):
        for i in range(batch):
            params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
            prompt = tuple(prompts[i % len(prompts)])
            engine.add_request(EngineRequest(RequestId(f"{rnd}-{i}"), prompt, params))
        while engine.scheduler.waiting:  # prefill first: decode speed is what is compared
            engine.step()
        started, made = time.perf_counter(), 0
        while engine.has_work():
            made += sum(len(e.token_ids) for e in engine.step())
        best = max(best, made / (time.perf_counter() - started))
    return best, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", help="default: the 24-layer benchmark copy, built here")
    parser.add_argument("--draft", default=str(TRAINED))
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    target = args.target
    if target is None:
        target = str(Path(tempfile.mkdtemp()) / "bench24")
        subprocess.run([sys.executable, "-m", "cluster", "fixture-model", target, "--layers",
                        "24"], check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.draft)
    prompts = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    draft = EngineConfig(speculation="draft", draft_model=args.draft,
                         num_speculative_tokens=args.k, speculation_max_batch=16)  # fmt: skip
    print(
        f"| batch | decode tok/s, plain | draft model, k={args.k} | speed-up | accepted | state |"
    )
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        plain, _ = decode_rate(target, EngineConfig(), prompts, batch)
        drafted, engine = decode_rate(target, draft, prompts, batch)
        stats = engine.runner.drafter.stats
        print(f"| {batch} | {plain:.0f} | {drafted:.0f} | **{drafted / plain:.2f}x** | "
              f"{stats.accepted}/{stats.draft_tokens} | {engine.spec.state.header()} |")  # fmt: skip


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)  # OpenBLAS, as served ranks have it
    main()
