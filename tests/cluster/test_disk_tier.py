"""The prefix cache's disk tier through a real server: a session's prefix written while the
replica is idle survives kill -9 of its rank; the restarted replica serves the next turn from
disk, and /v1/status and Prometheus count those tokens under the disk tier."""

import os
import signal
import time

import httpx
from conftest import ROOT, Server
from test_cluster import rank_pids


def status(srv) -> dict:
    return httpx.get(f"{srv.url}/v1/status", timeout=5).json()


def test_a_session_prefix_survives_a_replica_restart_on_disk(tmp_path):
    code = (ROOT / "cluster" / "coordinator" / "coordinator.py").read_text()[:6000]
    srv = Server(["--prefix-cache-disk-bytes", str(256 << 20)],
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
        files = list((tmp_path / "home" / "prefix-cache" / "r0" / "rank-0").rglob("*.safetensors"))
        assert len(files) == 1

        os.kill(rank_pids(srv)[("r0", 0)], signal.SIGKILL)
        deadline = time.time() + 90
        while time.time() < deadline:
            replica = status(srv)["replicas"][0]
            if replica["state"] == "ready" and replica["restarts"] == 1:
                break
            time.sleep(0.5)
        assert replica["state"] == "ready" and replica["restarts"] == 1
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
    finally:
        srv.stop()
