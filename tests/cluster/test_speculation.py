"""Speculation is never silent: seed 003's situation (MTP requested, no MTP weights) is
reported in status, metrics, the response header and the log, and --speculation-required
refuses to serve."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import mlx.core as mx
import pytest

from cluster.config import EngineConfig
from cluster.engine import speculation
from cluster.fixture.model import FixtureSize, write_fixture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def no_mtp_dir(model_dir, tmp_path_factory) -> Path:
    """The fixture as mlx-community ships GLM-5: the MTP layer dropped from the checkpoint."""
    out = tmp_path_factory.mktemp("no-mtp") / "glm5-no-mtp"
    shutil.copytree(model_dir, out)
    weights = mx.load(str(out / "model.safetensors"))
    layer = f"model.layers.{config_of(out)['num_hidden_layers']}."
    mx.save_safetensors(
        str(out / "model.safetensors"),
        {k: v for k, v in weights.items() if not k.startswith(layer)},
    )
    return out


def config_of(path: Path) -> dict:
    import json

    return json.loads((path / "config.json").read_text())


def test_none_is_not_requested_and_quiet(model_dir, caplog):
    with caplog.at_level(logging.WARNING, "cluster.speculation"):
        state = speculation.resolve(EngineConfig(), model_dir, config_of(model_dir))
    assert (state.active, state.reason, state.fallbacks) == (False, "not_requested", {})
    assert state.header() == "off;reason=not_requested" and not caplog.records


def test_missing_mtp_weights_is_reported_once_with_its_reason(no_mtp_dir, caplog):
    cfg = EngineConfig(speculation="mtp", num_speculative_tokens=2)
    with caplog.at_level(logging.WARNING, "cluster.speculation"):
        state = speculation.resolve(cfg, no_mtp_dir, config_of(no_mtp_dir))
    assert not state.active and state.reason == "no_mtp_weights"
    assert state.fallbacks == {"no_mtp_weights": 1}
    assert state.header() == "off;reason=no_mtp_weights"
    (record,) = caplog.records
    assert "speculation mtp k=2 is OFF: no_mtp_weights" in record.getMessage()


def test_a_checkpoint_with_mtp_weights_is_not_reported_missing(model_dir):
    state = speculation.resolve(EngineConfig(speculation="mtp"), model_dir, config_of(model_dir))
    assert speculation.has_mtp_weights(model_dir, config_of(model_dir))
    assert state.reason != "no_mtp_weights"  # what remains is said as it is


def test_required_speculation_refuses(no_mtp_dir):
    cfg = EngineConfig(speculation="mtp", speculation_required=True)
    with pytest.raises(speculation.SpeculationRequired, match="no_mtp_weights"):
        speculation.resolve(cfg, no_mtp_dir, config_of(no_mtp_dir))


def test_draft_with_another_vocabulary_is_refused_with_the_numbers(model_dir, tmp_path):
    draft = write_fixture(tmp_path / "draft", seed=1, size=FixtureSize(vocab_size=2048))
    cfg = EngineConfig(speculation="draft", draft_model=str(draft))
    state = speculation.resolve(cfg, model_dir, config_of(model_dir))
    assert state.reason == "draft_vocab_mismatch"
    why = speculation.unavailable(cfg, model_dir, config_of(model_dir))
    assert "target has 4096 tokens, draft 2048" in why[1]
    no_draft = EngineConfig(speculation="draft")
    assert speculation.resolve(no_draft, model_dir, config_of(model_dir)).reason == "no_draft_model"


def test_seed_003_mtp_requested_without_weights_shows_everywhere(no_mtp_dir, tmp_path):
    from conftest import ROOT, Server

    home = tmp_path / "home"
    srv = Server(
        ["--model", str(no_mtp_dir), "--speculation", "mtp", "--num-speculative-tokens", "2"],
        env={"CLUSTER_HOME": str(home)},
    )
    try:
        status = httpx.get(f"{srv.url}/v1/status").json()
        spec = status["replicas"][0]["engine"]["speculation"]
        assert spec["requested"] == "mtp" and spec["k"] == 2
        assert spec["active"] is False and spec["reason"] == "no_mtp_weights"
        assert "MTP layer" in spec["explanation"]
        r = httpx.post(
            f"{srv.url}/v1/completions", json={"prompt": "def f():", "max_tokens": 4}, timeout=30
        )
        assert r.status_code == 200
        assert r.headers["x-speculation"] == "off;reason=no_mtp_weights"
        with httpx.stream(
            "POST", f"{srv.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
        ) as s:  # fmt: skip
            assert s.headers["x-speculation"] == "off;reason=no_mtp_weights"
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert (
            'cluster:spec_decode_active{method="mtp",model_name="glm5-no-mtp",reason="no_mtp_weights",replica="r0"} 0.0'
            in metrics
        )
        assert (
            'cluster:spec_decode_fallbacks_total{method="mtp",model_name="glm5-no-mtp",reason="no_mtp_weights",replica="r0"} 1.0'
            in metrics
        )
        logs = "".join(p.read_text() for p in home.glob("run/*/r0/rank0.log"))
        assert "speculation mtp k=2 is OFF: no_mtp_weights" in logs
    finally:
        srv.stop()
    refused = subprocess.run(
        [sys.executable, "-m", "cluster", "serve", "--port", "0", "--model", str(no_mtp_dir),
         "--speculation", "mtp", "--speculation-required"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**srv.env, "CLUSTER_HOME": str(tmp_path / "home2")},
    )  # fmt: skip
    assert refused.returncode != 0
    assert "--speculation-required" in refused.stderr + refused.stdout
    assert "no_mtp_weights" in refused.stderr + refused.stdout


@pytest.mark.parametrize("tp", [1, 2])
def test_governor_turning_speculation_off_shows_everywhere(model_dir, tmp_path, tp):
    """The governor's decision reaches what the operator reads: with an acceptance threshold
    random MTP weights cannot meet, the first probe turns MTP off, and status, the next
    response's header, the gauge and the rank's log all say so (they once kept saying on).
    At TP 2 the follower's log too, on its own node (it once said on from start-up on)."""
    import time

    from conftest import Server

    home = tmp_path / "home"
    layout = ["--inventory", str(ROOT / "inventory/local-tp2.yaml")] if tp == 2 else []
    srv = Server(
        ["--model", str(model_dir), "--speculation", "mtp", "--num-speculative-tokens", "2",
         "--speculation-min-acceptance", "0.99", *layout],
        env={"CLUSTER_HOME": str(home)},
    )  # fmt: skip
    try:
        body = {"prompt": "def f():", "max_tokens": 120, "temperature": 0, "ignore_eos": True}
        first = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)
        # it got MTP (k=2, and k=1 while the probe tried one fewer) but for the probe's plain
        # steps, until the governor switched it off, and says both
        assert first.headers["x-speculation"] == (
            "mtp;k=1-2;partly_off=governor_probe,auto_disabled_low_acceptance"
        )
        spec = httpx.get(f"{srv.url}/v1/status").json()["replicas"][0]["engine"]["speculation"]
        assert spec["active"] is False and spec["reason"] == "auto_disabled_low_acceptance"
        assert spec["fallbacks"] == {"auto_disabled_low_acceptance": 1}
        assert spec["queue_ahead"]["mode"] == "auto"  # the default, thresholds as measured
        assert all(0.0 <= b <= 1.0 for b in spec["queue_ahead"]["break_even"].values())
        second = httpx.post(f"{srv.url}/v1/completions", json=body | {"max_tokens": 2}, timeout=60)
        assert second.headers["x-speculation"] == "off;reason=auto_disabled_low_acceptance"
        line = (
            'cluster:spec_decode_active{method="mtp",model_name="glm5-fixture",'
            'reason="auto_disabled_low_acceptance",replica="r0"} 0.0'
        )
        deadline = time.time() + 30  # gauges follow the supervisor's status poll
        while line not in (metrics := httpx.get(f"{srv.url}/metrics").text):
            assert time.time() < deadline, metrics
            time.sleep(0.5)
        # Every rank's log, in the length status gives (the probe may have kept k=1).
        off = f"speculation mtp k={spec['k_now']} is OFF: auto_disabled_low_acceptance"
        for rank in range(tp):
            logs = "".join(p.read_text() for p in home.glob(f"run/*/r0/rank{rank}.log"))
            assert "speculation mtp k=2 is ON" in logs and off in logs, (rank, logs)
    finally:
        srv.stop()


def test_ngram_speculation_serves_a_checkpoint_without_mtp_weights(no_mtp_dir, tmp_path):
    """Prompt lookup needs no weights: on the MTP-less checkpoint it is on, says so in the
    header and status, and counts its steps (a lookup may find nothing, never silently)."""
    from conftest import Server

    srv = Server(["--model", str(no_mtp_dir), "--speculation", "ngram",
                  "--num-speculative-tokens", "3"], env={"CLUSTER_HOME": str(tmp_path / "h")})  # fmt: skip
    try:
        prompt = [30 + i % 12 for i in range(96)]  # a repeating prompt: lookups match
        body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
        reply = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)
        assert reply.status_code == 200 and reply.headers["x-speculation"] == "ngram;k=3"
        spec = httpx.get(f"{srv.url}/v1/status").json()["replicas"][0]["engine"]["speculation"]
        assert spec["active"] is True and spec["requested"] == "ngram"
        assert spec["speculative_steps"] > 0
        assert spec["drafts"] + spec["empty_rows"] == spec["speculative_rows"]
        assert 0 < spec["speculative_steps"] <= spec["speculative_rows"]
        # Nothing in the prompt or output to look up: the header says none was drafted.
        free = body | {"prompt": list(range(3000, 3040)), "max_tokens": 2}
        reply = httpx.post(f"{srv.url}/v1/completions", json=free, timeout=120)
        assert reply.headers["x-speculation-accepted"] == "0/0"
        assert reply.headers["x-speculation"] == "ngram;k=3;no_drafts", reply.headers
        # A reply a stop string ends (the coordinator finds it, on any event) still reports
        # what speculation it got; log-probabilities of a limited row stay JSON numbers.
        whole = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120).json()
        text = whole["choices"][0]["text"]
        stopped = body | {"stop": [text[len(text) // 2 :][:3]], "logprobs": 2}
        reply = httpx.post(f"{srv.url}/v1/completions", json=stopped, timeout=120).json()
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert reply["usage"]["speculation"].startswith("ngram;k=3"), reply["usage"]
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
        chat = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": tools,
                "max_tokens": 16, "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
        reply = httpx.post(f"{srv.url}/v1/chat/completions", json=chat, timeout=120)
        assert reply.status_code == 200, reply.text
    finally:
        srv.stop()


def _completion(srv, max_tokens: int) -> httpx.Response:
    body = {"prompt": "def f():", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    return httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)


def _spec(srv) -> dict:
    return httpx.get(f"{srv.url}/v1/status").json()["replicas"][0]["engine"]["speculation"]


def _wait_metric(srv, line: str) -> None:
    import time

    deadline = time.time() + 30  # gauges follow the supervisor's status poll
    while line not in (metrics := httpx.get(f"{srv.url}/metrics").text):
        assert time.time() < deadline, metrics
        time.sleep(0.5)


def test_governor_probe_no_speedup_and_cooldown_show_everywhere(model_dir, tmp_path):
    """Random MTP weights accept almost nothing, so k=3 drafts make decoding slower: the real
    engine probes (a request ending inside the probe says so), turns MTP off for no speed-up
    (status, header, gauge, log), and after the cooldown turns it on again. One slower probe
    is enough here (`--speculation-probe-losses 1`; the default, two in a row, is tested on
    the governor)."""
    from conftest import Server

    home = tmp_path / "home"
    srv = Server(
        ["--model", str(model_dir), "--speculation", "mtp", "--num-speculative-tokens", "3",
         "--speculation-probe-every", "8", "--speculation-probe-steps", "8",
         "--speculation-cooldown", "24", "--speculation-probe-losses", "1",
         "--no-speculation-adapt-k"],
        env={"CLUSTER_HOME": str(home)},
    )  # fmt: skip
    try:
        # 1 token from the prefill, 8 speculative steps (at least 8 tokens), then the probe.
        probed = _completion(srv, 13)
        assert probed.headers["x-speculation"] == "mtp;k=3;partly_off=governor_probe"
        assert _spec(srv)["active"] is True  # probing is still on: the judgement comes after
        judged = _completion(srv, 16)  # the probe's last steps, the judgement, then off
        # no step of it speculated: the probe's plain steps, then the judgement's off
        assert (
            judged.headers["x-speculation"] == "off;reason=governor_probe,auto_disabled_no_speedup"
        )
        spec = _spec(srv)
        assert spec["active"] is False and spec["reason"] == "auto_disabled_no_speedup"
        assert spec["by_batch_size"] == {"batch size 1": "off: auto_disabled_no_speedup"}
        probe = spec["last_probe"]["batch size 1"]
        assert probe["slower_in_a_row"] == 1 and probe["spec_tok_s"] < probe["plain_tok_s"]
        assert _completion(srv, 2).headers["x-speculation"] == "off;reason=auto_disabled_no_speedup"
        _wait_metric(srv, 'cluster:spec_decode_active{method="mtp",model_name="glm5-fixture",'
                     'reason="auto_disabled_no_speedup",replica="r0"} 0.0')  # fmt: skip
        # The cooldown (24 steps) passes inside this request: speculation comes back on.
        again = _completion(srv, 40)
        assert again.headers["x-speculation"].startswith("mtp;k=3")
        logs = "".join(p.read_text() for p in home.glob("run/*/r0/rank0.log"))
        assert "speculation mtp k=3 is OFF: auto_disabled_no_speedup" in logs
        assert "tok/s per sequence with drafts" in logs and "(batch size 1)" in logs
        assert logs.count("speculation mtp k=3 is ON") >= 2  # at load, and after the cooldown
        assert _spec(srv)["fallbacks"]["auto_disabled_no_speedup"] >= 1
    finally:
        srv.stop()


def test_a_draft_length_probe_shows_everywhere_and_every_reader_agrees(model_dir, tmp_path):
    """The draft-length governor through a real server (adapt-k, the default): a request that
    spans a probe is decoded at k=3 and at the neighbour it tries, k=2, and its header says
    both. Which length the probe keeps is a timing call, so the test does not pin it; it pins
    that status, the gauge, the next request's header and the log all tell the same one."""
    from conftest import Server

    home = tmp_path / "home"
    srv = Server(
        ["--model", str(model_dir), "--speculation", "mtp", "--num-speculative-tokens", "3",
         "--speculation-probe-every", "8", "--speculation-probe-steps", "8",
         "--speculation-probe-losses", "1000"],
        env={"CLUSTER_HOME": str(home)},
    )  # fmt: skip
    try:
        # 1 token from the prefill, 8 steps at k=3, 8 plain, 8 at k=2 (the shorter neighbour
        # is tried first), then the judgement and a few steps at the kept length.
        spanned = _completion(srv, 28)
        assert spanned.headers["x-speculation"] == "mtp;k=2-3;partly_off=governor_probe"
        spec = _spec(srv)
        assert spec["adapt_k"] is True and spec["active"] is True
        probe = spec["last_probe"]["batch size 1"]
        assert probe["tried"]["k"] in (2, 3) and probe["tried"]["tok_s"] > 0
        kept = spec["k_by_batch_size"]["batch size 1"]
        assert kept == probe["k"] == spec["k_now"] and kept in (2, 3)
        _wait_metric(srv, f'cluster:spec_decode_draft_length{{batch_size="1",'
                          f'model_name="glm5-fixture",replica="r0"}} {float(kept)}')  # fmt: skip
        # A short request decodes at the kept length alone (a probe comes only every 8 steps).
        short = _spec(srv)
        after = _completion(srv, 3)
        if _spec(srv)["last_probe"] == short["last_probe"]:  # no new judgement in between
            assert after.headers["x-speculation"].startswith(f"mtp;k={kept}")
        logs = "".join(p.read_text() for p in home.glob("run/*/r0/rank0.log"))
        switched = [line for line in logs.splitlines() if "speculation mtp k " in line]
        if kept == 2:  # the switch is logged with both rates
            assert switched and "k 3 -> 2 (batch size 1)" in switched[-1], logs
        else:
            assert not any("-> 2" in line for line in switched), logs
    finally:
        srv.stop()


def test_the_watchdog_catches_speculation_that_does_not_run(model_dir, tmp_path):
    """Seed 003's failure injected into the real runner: asked to speculate, it never does.
    The watchdog turns the state off with engine_error, everywhere the operator reads it."""
    from conftest import Server

    from cluster.engine.runner import FAULT_ENV

    home = tmp_path / "home"
    srv = Server(["--model", str(model_dir), "--speculation", "mtp"],
                 env={"CLUSTER_HOME": str(home), FAULT_ENV: "skip_speculation"})  # fmt: skip
    try:
        first = _completion(srv, 6)
        assert first.headers["x-speculation"] == "off;reason=engine_error"
        spec = _spec(srv)
        assert spec["active"] is False and spec["reason"] == "engine_error"
        assert spec["speculative_steps"] == 0
        assert _completion(srv, 2).headers["x-speculation"] == "off;reason=engine_error"
        _wait_metric(srv, 'cluster:spec_decode_active{method="mtp",model_name="glm5-fixture",'
                     'reason="engine_error",replica="r0"} 0.0')  # fmt: skip
        logs = "".join(p.read_text() for p in home.glob("run/*/r0/rank0.log"))
        assert "is OFF: engine_error" in logs and "no speculative step ran" in logs
    finally:
        srv.stop()
