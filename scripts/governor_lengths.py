"""Which draft length each batch size's governor settles on, on a long enough run to probe.

    .venv/bin/python scripts/governor_lengths.py [--method ngram|mtp|mtp+ngram] [--k 4]
        [--batch 8] [--max-tokens 400] [--workload edit|code] [--model DIR]

One server (TP 1) speculating with `--speculation-probe-every 16` (so that a few hundred tokens
hold several probes), `batch` concurrent greedy completions of the benchmark's prompts; then
prints each request's `x-speculation` (the lengths it got), the governors' lengths and last
probes from `/v1/status`, and the rank's log lines where a length or the state changed. The
default model is the 24-layer benchmark copy of the built-in model (`fixture-model OUT
--layers 24`), built here when not given.
"""

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_speculation import CODE, edit_prompts  # noqa: E402

from cluster.bench.cluster_process import start_cluster, stop  # noqa: E402


async def run(url: str, prompts: list[str], batch: int, max_tokens: int) -> list[str]:
    async with httpx.AsyncClient(timeout=900) as client:

        async def one(prompt: str) -> str:
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True}  # fmt: skip
            r = await client.post(f"{url}/v1/completions", json=body)
            r.raise_for_status()
            return r.headers.get("x-speculation", "")

        return await asyncio.gather(*[one(prompts[i % len(prompts)]) for i in range(batch)])


def wait_ready(url: str, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"{url} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="ngram", choices=["ngram", "mtp", "mtp+ngram"])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--workload", default="edit", choices=["edit", "code"])
    parser.add_argument("--model", help="default: the 24-layer benchmark copy, built here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "bench24")
            subprocess.run([sys.executable, "-m", "cluster", "fixture-model", model, "--layers",
                            "24"], cwd=ROOT, check=True)  # fmt: skip
        home = Path(tmp) / "home"
        proc, url = start_cluster(str(home), "--model", model, "--speculation", args.method,
                               "--num-speculative-tokens", str(args.k),
                               "--speculation-probe-every", "16",
                               "--prefix-cache-bytes", "0")  # fmt: skip
        try:
            wait_ready(url)
            prompts = edit_prompts() if args.workload == "edit" else CODE
            got = asyncio.run(run(url, prompts, args.batch, args.max_tokens))
            print("x-speculation of each request:", ", ".join(sorted(set(got))))
            status = httpx.get(f"{url}/v1/status", timeout=30).json()
            spec = status["replicas"][0]["engine"]["speculation"]
            keys = ("k_by_batch_size", "by_batch_size", "last_probe", "mean_acceptance_length")
            print(json.dumps({k: spec.get(k) for k in keys}, indent=1))
        finally:
            stop(proc)
        for log in sorted(home.glob("run/*/r0/rank0.log")):
            for line in log.read_text().splitlines():
                if "cluster.speculation" in line and ("->" in line or " is O" in line):
                    print(line)


if __name__ == "__main__":
    main()
