"""A replica's KV budget through a real server: what cannot fit is refused with the number
that can, a flood of long prompts waits its turn, and memory stays bounded."""

import concurrent.futures as cf
import json
import threading
import time

import httpx
import openai
import pytest

from cluster.plan.model_size import model_size

BUDGET = 3_000_000


@pytest.fixture(scope="module")
def srv(model_dir, tmp_path_factory):
    from conftest import Server

    home = tmp_path_factory.mktemp("home")
    server = Server(["--model", str(model_dir), "--kv-cache-bytes", str(BUDGET)],
                    env={"CLUSTER_HOME": str(home)})  # fmt: skip
    yield server
    server.stop()


def replica(srv) -> dict:
    return httpx.get(f"{srv.url}/v1/status", timeout=10).json()["replicas"][0]


def test_what_the_budget_cannot_hold_gets_a_400_naming_what_it_can(srv, model_dir):
    kv = replica(srv)["engine"]["kv"]
    cap = kv["capacity_tokens"]
    assert kv["budget_bytes"] == BUDGET and 0 < cap < 4096
    # Bytes per position as the planner counts them (the indexer's values one wide), fp32 here.
    config = json.loads((model_dir / "config.json").read_text())
    layers, mtp = config["num_hidden_layers"], config["num_nextn_predict_layers"]
    planned = model_size(config).kv_bytes_per_token // 2 // (layers + mtp)
    assert kv["per_token_bytes"] == planned * 4 * layers
    assert httpx.get(f"{srv.url}/v1/status").json()["max_model_len"] == cap
    with pytest.raises(openai.BadRequestError) as info:
        srv.client().completions.create(
            model=srv.model, prompt=[20 + i % 900 for i in range(cap - 10)], max_tokens=100
        )
    body = info.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "max_tokens"
    assert f"KV cache budget (--kv-cache-bytes) holds at most {cap} tokens" in body["message"]
    assert "at most 10" in body["message"]  # what to lower max_tokens to


def test_a_flood_of_long_prompts_waits_its_turn_within_memory(srv):
    cap = replica(srv)["engine"]["kv"]["capacity_tokens"]
    length = cap * 3 // 5  # one such sequence at a time fits the budget

    def one(i: int):
        prompt = [20 + (i * 7 + j) % 900 for j in range(length)]
        stream = srv.client().completions.create(
            model=srv.model, prompt=prompt, max_tokens=16, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        return [c.choices[0].finish_reason for c in stream if c.choices][-1]

    one(99)  # warm: the allocator has seen one such sequence
    time.sleep(3)  # a status poll records the rank's resident memory
    base = max(r.get("memory_bytes", 0) for r in replica(srv)["ranks"])
    peak = {"used": 0, "rss": 0, "booked": 0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            r = replica(srv)
            peak["used"] = max(peak["used"], r["engine"]["kv"]["used_bytes"])
            peak["booked"] = max(peak["booked"], r["engine"]["kv"]["booked_bytes"])
            peak["rss"] = max(peak["rss"], *(x.get("memory_bytes", 0) for x in r["ranks"]))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with cf.ThreadPoolExecutor(12) as pool:
            finishes = list(pool.map(one, range(12), timeout=300))
    finally:
        done.set()
        watcher.join()
    print(f"flood of 12 x {length} tokens: KV used peak {peak['used']} of {BUDGET}, "
          f"rank RSS {base} before, {peak['rss']} peak")  # fmt: skip
    assert finishes == ["length"] * 12  # every request completed
    assert 0 < peak["used"] <= BUDGET, peak
    # What admission counts (rows at their full length): requests wait while it is near the
    # budget, which the bytes in use (growing as prompts prefill) do not show.
    assert 0 < peak["booked"] <= BUDGET, peak
    assert base and peak["rss"] <= base + BUDGET + 64_000_000, (base, peak)
    metrics = httpx.get(f"{srv.url}/metrics").text
    labels = f'{{model_name="{srv.model}",replica="r0"}}'
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("cluster:kv_cache") and labels in line
    }
    assert values["cluster:kv_cache_budget_bytes"] == BUDGET
    assert "cluster:kv_cache_preemptions_total" in values
    assert "cluster:kv_cache_booked_bytes" in values
