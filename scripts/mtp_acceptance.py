"""MTP's acceptance per draft position, greedy, in-process, on the speculation benchmark's
workloads, for one or more models side by side.

    .venv/bin/python scripts/mtp_acceptance.py [MODEL ...] [--k 2] [--tokens 96]

Each model (default: the built-in one) decodes every prompt of each workload (`code`, `free`,
and the four distinct `edit` prompts of scripts/bench_speculation.py) together, `tokens` each,
with MTP speculation on every step (probes off); prints seed 004's table: the share of drafts
whose position i was accepted, and the mean acceptance length. Acceptance does not depend on
the decoder layers a benchmark model adds, so the built-in model stands for it.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_speculation import CODE, FREE, edit_prompts  # noqa: E402

from cluster.config import EngineConfig  # noqa: E402
from cluster.engine.build import build_engine  # noqa: E402
from cluster.model_store import TRAINED  # noqa: E402
from cluster.types import EngineRequest, RequestId, SamplingParams  # noqa: E402


def acceptance(model: Path, prompts: list[str], k: int, tokens: int) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    config = EngineConfig(speculation="mtp", num_speculative_tokens=k,
                          speculation_probe_every=10**9)  # fmt: skip
    engine, _ = build_engine(model, config, "m")
    for i, p in enumerate(prompts):
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        engine.add_request(EngineRequest(RequestId(str(i)), tuple(tok.encode(p)), params))
    while engine.has_work():
        engine.step()
    return engine.runner.drafter.stats.to_json()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=[str(TRAINED)])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    workloads = {"code": CODE, "free": FREE, "edit": sorted(set(edit_prompts()))}
    print("| model | workload | " + " | ".join(f"Pos {i + 1}" for i in range(args.k))
          + " | Avg Length |")  # fmt: skip
    print("|---|---|" + "---|" * (args.k + 1))
    for model in args.models:
        for name, prompts in workloads.items():
            s = acceptance(Path(model), prompts, args.k, args.tokens)
            cells = " | ".join(f"{a / s['drafts']:.1%}" for a in s["accepted_per_position"])
            print(f"| {model} | {name} | {cells} | {s['mean_acceptance_length']:.2f} |")


if __name__ == "__main__":
    from cluster.launch.blas import reexec_with_openblas

    reexec_with_openblas(script=True)
    main()
