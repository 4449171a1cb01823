"""Where a decode step's time goes: py-spy on the leader rank and on the coordinator under load.

    .venv/bin/python scripts/profile_decode.py [--concurrency 1,16] [--max-tokens 128] [--out bench-out/profile]

Runs the leader rank (TP 1, built-in model) and a coordinator attached to it
(`serve --launcher service`) each under `py-spy record`, sends streamed chat completions at each
concurrency, then prints each process's top functions by own time and the time by part of the
stack (model forward, sampling, scheduler, prefix cache, gRPC, HTTP, detokenization, ...).
Needs `pip install py-spy`.
"""

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.bench.prompts import load_prompts  # noqa: E402
from cluster.bench.runner import run_phase  # noqa: E402
from cluster.launch.blas import openblas_env  # noqa: E402
from cluster.launch.local import free_port  # noqa: E402

# First matching frame pattern (innermost first) names the part a sample belongs to.
# MLX is lazy: a step's forward pass runs when sample() reads the tokens (.tolist()), so time
# there is the model's compute; "model forward" is Python building the graph in mlx_lm.
PARTS = [
    ("model compute (MLX, waited on in sample())", r"sample|categorical|top_p|top_k|_logprobs"),
    ("speculation", r"mtp\.py|speculat"),
    ("model forward (graph building in mlx_lm)", r"mlx_lm/models|runner\.py:.*_forward|\(mlx"),
    ("host/device sync (.tolist/eval)", r"tolist|\beval\b|async_eval"),
    ("prefix cache", r"prefix_cache\.py|kv\.py"),
    ("scheduler", r"scheduler\.py|sequence\.py"),
    ("lockstep", r"lockstep\.py"),
    ("detokenize / stop strings", r"output\.py|tokenizers|detok"),
    ("gRPC", r"grpc|rpc/"),
    ("HTTP / JSON", r"uvicorn|starlette|fastapi|httptools|h11|json|sse|api/"),
    ("asyncio", r"asyncio"),
]


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's collapsed stacks, without imports (start-up, not serving)."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit() and "_find_and_load" not in stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarize(name: str, stacks: list[tuple[list[str], int]], top: int = 12) -> str:
    total = sum(c for _, c in stacks) or 1
    own: collections.Counter = collections.Counter()
    parts: collections.Counter = collections.Counter()
    for frames, count in stacks:
        own[re.sub(r" \(.*?:\d+\)$", "", frames[-1]) + frame_file(frames[-1])] += count
        for frame in reversed(frames):
            part = next((p for p, rx in PARTS if re.search(rx, frame)), None)
            if part:
                parts[part] += count
                break
        else:
            parts["other"] += count
    lines = [f"## {name}: {total} samples while busy", "", "| part | share |", "|---|---|"]
    lines += [f"| {p} | {c / total:.1%} |" for p, c in parts.most_common()]
    lines += ["", "| function (own time) | share |", "|---|---|"]
    lines += [f"| `{f}` | {c / total:.1%} |" for f, c in own.most_common(top)]
    return "\n".join(lines)


def frame_file(frame: str) -> str:
    m = re.search(r"\(([^()]*?):\d+\)$", frame)
    return f" ({Path(m.group(1)).name})" if m else ""


def spy(out: Path, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cmd = [pyspy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(
        [*cmd, "--", *argv],
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if m := re.search(pattern, log.read_text()):
            return m.group(0)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"{log.name}: no {pattern!r}\n{log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default="bench-out/profile")
    parser.add_argument("--summarize", action="store_true", help="only summarize --out's files")
    args = parser.parse_args()
    out = Path(args.out)
    if args.summarize:
        print(report(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="profile-"))
    grpc_port, http_port = free_port(), free_port()
    inventory = yaml.safe_load((ROOT / "cluster" / "inventory" / "local.yaml").read_text())
    inventory["all"]["vars"].update(grpc_base_port=grpc_port, coordinator_port=http_port)
    (home / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    # Preloaded here, so the rank does not re-exec itself away from py-spy.
    env = openblas_env() | {"CLUSTER_HOME": str(home), "CLUSTER_TOKEN": "profile"}
    py = [sys.executable, "-m", "cluster"]
    rank = spy(
        out / "leader.raw",
        [*py, "rank", "--model", "default", "--model-id", "glm-5-fixture", "--grpc-port",
         str(grpc_port)],
        env,
        out / "leader.log",
    )  # fmt: skip
    coordinator = None
    try:
        wait_for(out / "leader.log", r"serving gRPC", rank)
        coordinator = spy(
            out / "coordinator.raw",
            [*py, "serve", "--inventory", str(home / "inventory.yaml"), "--launcher", "service"],
            env,
            out / "coordinator.log",
        )
        url = wait_for(out / "coordinator.log", r"http://\S+(?=/v1)", coordinator)
        prompts = load_prompts(None)
        for c in [int(x) for x in args.concurrency.split(",")]:
            phase = asyncio.run(
                run_phase(f"c{c}", url, None, prompts * max(1, c // 4), c, args.max_tokens)
            )
            ok = [r for r in phase.results if r.ok]
            tokens = sum(r.completion_tokens for r in ok)
            wall = phase.wall_s
            print(f"concurrency {c}: {len(ok)}/{len(phase.results)} ok, {tokens / wall:.1f} tok/s")
    finally:
        for proc, name in ((coordinator, "coordinator"), (rank, "leader")):
            if proc is None:
                continue
            proc.send_signal(signal.SIGINT)  # py-spy alone: it writes its file, then the target
            deadline = time.time() + 60
            while not (out / f"{name}.raw").exists() and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(1)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    print(report(out))


def report(out: Path) -> str:
    text = "\n\n".join(summarize(n, parse_raw(out / f"{n}.raw")) for n in ("leader", "coordinator"))
    (out / "profile.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
