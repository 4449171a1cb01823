"""The prefix cache's disk tier through a real server: a session's prefix written while the
replica is idle survives kill -9 of its rank; the restarted replica serves the next turn from
disk, and /v1/status and Prometheus count those tokens under the disk tier. Under TP every rank
keeps files of its own and a hit must be a hit on all of them."""

import os
import signal
import time

import httpx
import pytest
from conftest import ROOT, Server
from test_cluster import rank_pids


def status(srv) -> dict:
    return httpx.get(f"{srv.url}/v1/status", timeout=5).json()


def _restarted(srv, times: int) -> dict:
    deadline = time.time() + 90
    while time.time() < deadline:
        replica = status(srv)["replicas"][0]
        if replica["state"] == "ready" and replica["restarts"] == times:
            break
        time.sleep(0.5)
    assert replica["state"] == "ready" and replica["restarts"] == times
    return replica


@pytest.mark.parametrize("tp", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_session_prefix_survives_a_replica_restart_on_disk(tmp_path, tp):
    code = (ROOT / "cluster" / "coordinator" / "coordinator.py").read_text()[:6000]
    inventory = ["--inventory", str(ROOT / "inventory" / "local-tp2.yaml")] if tp == 2 else []
    srv = Server(["--prefix-cache-disk-bytes", str(256 << 20), *inventory],
                 env={"CLUSTER_HOME": str(tmp_path / "home")})  # fmt: skip
    try:
        client = srv.client()
        messages = [{"role": "user", "content": "Read this file:\n" + code}]
        first = client.chat.completions.create(model=srv.model, messages=messages, max_tokens=4)
        deadline = time.time() + 30  # idle now: the engine writes the entry
        while time.time() < deadline:
            disk = status(srv)["replicas"][0]["engine"]["prefix_cache"]["disk"]
            if disk["entries"]:
                break
            time.sleep(0.2)
        assert disk["entries"] == 1 and disk["bytes"] > 0, disk
        ranks = [tmp_path / "home" / "prefix-cache" / "r0" / f"rank-{r}" for r in range(tp)]
        deadline = time.time() + 10  # (followers write when the leader tells them it is idle)
        while time.time() < deadline and not all(list(d.rglob("*.safetensors")) for d in ranks):
            time.sleep(0.2)
        assert [len(list(d.rglob("*.safetensors"))) for d in ranks] == [1] * tp

        os.kill(rank_pids(srv)[("r0", tp - 1)], signal.SIGKILL)  # TP 2: the follower
        replica = _restarted(srv, 1)
        disk = replica["engine"]["prefix_cache"]["disk"]
        assert disk["entries"] == 1 and disk["hit_tokens"] == 0  # found at start, unused yet

        messages += [{"role": "assistant", "content": first.choices[0].message.content or "ok"},
                     {"role": "user", "content": "What does it do?"}]  # fmt: skip
        reply = client.chat.completions.create(model=srv.model, messages=messages, max_tokens=4)
        cached = reply.usage.prompt_tokens_details.cached_tokens
        assert cached >= first.usage.prompt_tokens - 32, (cached, first.usage.prompt_tokens)
        disk = status(srv)["replicas"][0]["engine"]["prefix_cache"]["disk"]
        assert disk["hit_tokens"] == cached and disk["loaded"] == 1
        deadline, seen = time.time() + 15, None  # Prometheus reads the supervisor's last poll
        while time.time() < deadline and seen != cached:
            metrics = httpx.get(f"{srv.url}/metrics").text
            seen = next(float(x.split()[-1]) for x in metrics.splitlines()
                        if x.startswith("cluster:prefix_cache_tier_hits_total")
                        and 'tier="disk"' in x)  # fmt: skip
            time.sleep(0.3)
        assert seen == cached
        if tp == 2:  # one rank loses its files: a miss on both ranks, never a divergence
            for f in ranks[1].rglob("*.safetensors"):
                f.unlink()
            os.kill(rank_pids(srv)[("r0", 1)], signal.SIGKILL)
            replica = _restarted(srv, 2)
            assert replica["engine"]["prefix_cache"]["disk"]["entries"] >= 1  # rank 0 has it
            again = client.chat.completions.create(model=srv.model, messages=messages,
                                                   max_tokens=4)  # fmt: skip
            assert again.usage.prompt_tokens_details.cached_tokens == 0
            assert status(srv)["replicas"][0]["state"] == "ready"
    finally:
        srv.stop()


@pytest.mark.slow  # (about 20-70 s: `make test-slow`)
def test_other_weights_or_speculation_never_read_the_old_files(tmp_path):
    """Weights changed under the same shapes and file sizes (a fine-tune, a re-download) read
    the old weights' KV from disk: wrong output, no word. Speculation turned on over a plain
    server's files failed every hit with a 500. Each now starts on a directory of its own."""
    import json
    import shutil

    import mlx.core as mx

    model = tmp_path / "glm"
    shutil.copytree(ROOT / "cluster" / "fixture" / "trained", model)
    weights = model / "model.safetensors"

    def resave(scale: float) -> None:  # same names, shapes and bytes: only values differ
        arrays = mx.load(str(weights))
        name = next(k for k in sorted(arrays) if k.endswith("kv_a_proj_with_mqa.weight"))
        arrays[name] = arrays[name] * scale
        mx.save_safetensors(str(weights), arrays, {"format": "mlx"})

    resave(1.0)
    size = weights.stat().st_size
    code = (ROOT / "cluster" / "coordinator" / "coordinator.py").read_text()[:5000]
    prompt = "Read this file:\n" + code
    env = {"CLUSTER_HOME": str(tmp_path / "home")}
    args = ["--model", str(model), "--served-model-name", "glm",
            "--prefix-cache-disk-bytes", str(256 << 20)]  # fmt: skip

    def ask(srv):
        return srv.client().completions.create(model="glm", prompt=prompt, max_tokens=8,
                                               temperature=0)  # fmt: skip

    def disk(srv) -> dict:
        return status(srv)["replicas"][0]["engine"]["prefix_cache"]["disk"]

    srv = Server(args, env=env)
    try:
        ask(srv)
        deadline = time.time() + 30
        while time.time() < deadline and not disk(srv)["entries"]:
            time.sleep(0.2)
        assert disk(srv)["entries"] == 1
    finally:
        srv.stop()

    resave(0.8)
    assert weights.stat().st_size == size
    srv = Server(args, env=env)
    try:
        assert disk(srv)["entries"] == 0
        first = ask(srv)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        assert ask(srv).choices[0].text == first.choices[0].text
        deadline = time.time() + 30
        while time.time() < deadline and not disk(srv)["entries"]:
            time.sleep(0.2)
    finally:
        srv.stop()
    rank = tmp_path / "home" / "prefix-cache" / "r0" / "rank-0"
    assert len([d for d in rank.iterdir() if d.is_dir()]) == 2  # the old weights' stays: small

    srv = Server([*args, "--speculation", "mtp"], env=env)
    try:
        reply = ask(srv)
        assert reply.usage.prompt_tokens_details.cached_tokens == 0
        assert reply.choices[0].text == first.choices[0].text  # lossless, and no 500
        assert json.dumps(disk(srv)).count("off") == 0
    finally:
        srv.stop()
