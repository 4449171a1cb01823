"""Mean acceptance length of MTP drafts for sampled requests, in-process.

    .venv/bin/python scripts/sampled_acceptance.py [--k 2] [--requests 12] [--tokens 64]
        [--temperatures 0.6 1.0]

The built-in model with MTP speculation (probes off, so every step speculates), `requests`
seeded sampled requests over three code prompts decoding together, `tokens` each, at each
temperature; prints the drafts, the accepted tokens and the mean acceptance length. Run it at
a commit before sampling was keyed by position (rejection sampling) to compare the two.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.model_store import TRAINED  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402

PROMPTS = ["import os\nimport sys\n\ndef main(", "class Foo:\n    def __init__(self",
           "for i in range(10):\n"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 1.0])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    prompts = [tok.encode(p) for p in PROMPTS]
    config = EngineConfig(speculation="mtp", num_speculative_tokens=args.k,
                          speculation_probe_every=10**9)  # fmt: skip
    for temperature in args.temperatures:
        engine, _ = build_engine(TRAINED, config, "m")
        for i in range(args.requests):
            params = SamplingParams(max_tokens=args.tokens, temperature=temperature, seed=i,
                                    ignore_eos=True)  # fmt: skip
            engine.add_request(EngineRequest(RequestId(str(i)), tuple(prompts[i % 3]), params))
        while engine.has_work():
            engine.step()
        stats = engine.runner.drafter.stats.to_json()
        print(f"temperature {temperature}: drafts {stats['drafts']}, accepted tokens "
              f"{stats['accepted_tokens']}, mean acceptance length "
              f"{stats['mean_acceptance_length']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
