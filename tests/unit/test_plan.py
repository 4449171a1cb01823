"""Planner unit tests with fake nodes: GLM-5's real config on Mac Studio inventories."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from data_glm5_config import GLM5

from cluster.inventory import load_inventory
from cluster.inventory.inventory import parse_inventory
from cluster.plan.model_size import model_size
from cluster.plan.planner import make_plan


def studios(*memory_gb, replicas=1, backend="jaccl", chip="M3 Ultra"):
    hosts = {
        f"s{i}": {
            "interconnect": [f"10.0.0.{i}"],
            "memory_gb": m,
            "chip": chip,
            "memory_bandwidth_gbs": 819,
            "rdma_devices": [f"rdma_en{j}" for j in range(len(memory_gb) // replicas - 1)],
        }
        for i, m in enumerate(memory_gb)
    }
    return parse_inventory(
        {"all": {"vars": {"replicas": replicas, "mlx_backend": backend}, "hosts": hosts}}
    )


def test_glm5_size_matches_the_published_744b_total_40b_active():
    size = model_size(GLM5)
    assert 740e9 < size.total < 748e9
    assert 39e9 < size.active < 42e9
    assert size.mtp > 5e9  # one MoE layer plus eh_proj


@pytest.mark.parametrize("inv,tp", [("mac-studio-2x", 2), ("mac-studio-4x", 4)])
def test_glm5_4bit_plans_on_2_and_4_m3_ultras(inv, tp):
    plan = make_plan(GLM5, 4, load_inventory(ROOT / f"inventory/{inv}.yaml"), mtp_weights=True)
    assert plan.ok, plan.refusals
    (replica,) = plan.replicas
    assert replica.tensor_parallel == tp and replica.pipeline_stages == 1
    assert replica.backend == "jaccl" and len(replica.hostfile) == tp
    for node in replica.memory:
        assert node.weights_gb + node.mtp_gb + node.kv_budget_gb <= node.usable_gb
        assert node.kv_budget_gb > 50
    assert replica.speculation["mtp"] == "supported"
    assert replica.decode_tok_s_expected < replica.decode_tok_s_roofline


def test_more_nodes_predict_faster_decode():
    two = make_plan(GLM5, 4, studios(512, 512)).replicas[0]
    four = make_plan(GLM5, 4, studios(512, 512, 512, 512)).replicas[0]
    assert four.decode_tok_s_roofline > two.decode_tok_s_roofline
    # Ring's millisecond-scale collectives eat most of that gain.
    ring = make_plan(GLM5, 4, studios(512, 512, 512, 512, backend="ring")).replicas[0]
    assert ring.decode_tok_s_roofline < four.decode_tok_s_roofline


def test_glm5_4bit_refuses_two_256gb_nodes_with_the_numbers():
    plan = make_plan(GLM5, 4, studios(256, 256))
    assert not plan.ok
    message = plan.refusals[0]
    assert "needs" in message and "GB" in message and "192.0 GB usable" in message
    assert "wired" in message  # and says how to get more


def test_mixed_memory_says_the_tightest_node_sets_every_ranks_kv():
    from cluster.plan.render import render_plan

    plan = make_plan(GLM5, 4, studios(512, 256, 512, 256))
    assert "r0: every rank keeps the KV of its tightest node, " in render_plan(plan)
    assert "tightest" not in render_plan(make_plan(GLM5, 4, studios(512, 512)))


def test_uneven_memory_refuses_the_small_node_only():
    plan = make_plan(GLM5, 4, studios(512, 256))
    assert [r for r in plan.refusals if "s1 has" in r] and not [
        r for r in plan.refusals if "s0 has" in r
    ]


def test_raised_wired_limit_lets_one_512gb_node_fit_4bit():
    inv = studios(512)
    assert not make_plan(GLM5, 4, inv).ok
    raised = parse_inventory(
        {
            "all": {
                "hosts": {
                    "s0": {
                        "interconnect": ["10.0.0.1"],
                        "memory_gb": 512,
                        "chip": "M3 Ultra",
                        "memory_bandwidth_gbs": 819,
                        "wired_limit_gb": 480,
                    }
                }
            }
        }
    )
    assert make_plan(GLM5, 4, raised).ok


def test_non_divisible_tp_falls_back_to_pipeline_and_says_so():
    plan = make_plan(GLM5, 4, studios(512, 512, 512))  # 64 heads are not divisible by 3
    (replica,) = plan.replicas
    assert replica.tensor_parallel == 1 and replica.pipeline_stages == 3
    assert replica.layer_ranges == ((0, 26), (26, 52), (52, 78))
    assert replica.speculation["mtp"] == "pipeline_parallel"
    # Planned, but serve and deploy refuse it with one reason.
    assert plan.ok and "pipeline parallelism" in plan.unservable()
    assert make_plan(GLM5, 4, studios(512, 512)).unservable() is None


def test_six_nodes_pipeline_two_stages_of_tp_two():
    plan = make_plan(GLM5, 8, studios(*[512] * 6))
    (replica,) = plan.replicas
    assert (replica.tensor_parallel, replica.pipeline_stages) == (2, 3)


def test_hosts_that_do_not_split_into_replicas_are_refused():
    plan = make_plan(GLM5, 4, studios(512, 512, 512, replicas=2))
    assert "3 hosts cannot form 2 replicas" in plan.refusals[0]


def test_two_replicas_of_tp2():
    plan = make_plan(GLM5, 4, studios(512, 512, 512, 512, replicas=2))
    assert plan.ok and [r.tensor_parallel for r in plan.replicas] == [2, 2]
    assert [p.host for p in plan.replicas[1].ranks] == ["s2", "s3"]


def test_plan_command_prints_table_and_json(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(GLM5))
    base = [sys.executable, "-m", "cluster", "plan", "--model-config", str(config)]
    inv = ["--inventory", str(ROOT / "inventory/mac-studio-2x.yaml")]
    table = subprocess.run(base + inv, capture_output=True, text=True, cwd=ROOT)
    assert table.returncode == 0 and "TP 2" in table.stdout and "plan OK" in table.stdout
    out = subprocess.run(base + inv + ["--json"], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(out.stdout)["replicas"][0]["tensor_parallel"] == 2
    small = tmp_path / "small.yaml"
    small.write_text(
        (ROOT / "inventory/mac-studio-2x.yaml")
        .read_text()
        .replace("memory_gb: 512", "memory_gb: 256")
    )
    refused = subprocess.run(
        base + ["--inventory", str(small)], capture_output=True, text=True, cwd=ROOT
    )
    assert refused.returncode == 1 and "REFUSED" in refused.stdout


def test_jaccl_without_one_rdma_device_per_peer_is_refused():
    inv = studios(512, 512)
    bare = type(inv)(**{**inv.__dict__, "hosts": tuple(
        type(h)(**{**h.__dict__, "rdma_devices": ()}) for h in inv.hosts)})  # fmt: skip
    plan = make_plan(GLM5, 4, bare)
    assert not plan.ok
    assert "s0 needs 1 rdma_devices" in plan.refusals[0]


def test_presets_plan_before_downloading():
    """`plan --model glm-5` on the shipped Mac inventories: no config.json needed, MTP said to
    need its weights (mlx-community's conversions drop the layer)."""
    from cluster.plan.presets import PRESETS

    glm5 = PRESETS["glm-5"]
    assert {k: GLM5[k] for k in glm5 if k in GLM5} == {k: v for k, v in glm5.items() if k in GLM5}
    size = model_size(glm5)
    assert 735e9 < size.total < 750e9 and 38e9 < size.active < 42e9
    assert PRESETS["glm-5.1"] == glm5  # same architecture and shapes, new weights
    v32 = model_size(PRESETS["deepseek-v3.2"])
    assert 665e9 < v32.total < 690e9 and 36e9 < v32.active < 39e9  # 671B + indexer, 37B active
    for inv in ("mac-studio-2x", "mac-studio-4x"):
        out = subprocess.run(
            [sys.executable, "-m", "cluster", "plan", "--model", "glm-5",
             "--inventory", str(ROOT / f"inventory/{inv}.yaml")],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "743.9B parameters" in out.stdout and "mtp: needs_mtp_weights" in out.stdout


def test_mtp_is_supported_only_when_its_weights_exist():
    inv = load_inventory(str(ROOT / "inventory/mac-studio-2x.yaml"))
    said = {
        w: make_plan(GLM5, 4, inv, w).replicas[0].speculation["mtp"] for w in (True, False, None)
    }
    assert said == {True: "supported", False: "no_mtp_weights", None: "needs_mtp_weights"}


def test_a_checkpoint_the_installed_mlx_lm_cannot_run_is_refused_with_a_sentence(tmp_path):
    from cluster.plan.model_config import unrunnable

    assert unrunnable(GLM5) is None
    assert "no model for model_type 'glm_moe_dsa_v9'" in unrunnable(
        GLM5 | {"model_type": "glm_moe_dsa_v9"}
    )
    newer = GLM5 | {"indexer_types": ["full", "sparse"]}
    assert "indexer_types" in unrunnable(newer) and "upgrade mlx-lm" in unrunnable(newer)
    (tmp_path / "config.json").write_text(json.dumps(newer))
    out = subprocess.run(
        [sys.executable, "-m", "cluster", "plan", "--model-config", str(tmp_path / "config.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "indexer_types" in out.stderr


def test_the_load_timeout_follows_the_checkpoint_size_per_rank(tmp_path):
    from cluster.plan.model_config import load_timeout

    assert load_timeout(tmp_path, 1) == 600  # small: the floor
    with open(tmp_path / "model-00001.safetensors", "wb") as f:
        f.truncate(400 * 10**9)  # sparse: a 400 GB checkpoint
    assert load_timeout(tmp_path, 1) == 120 + 800 and load_timeout(tmp_path, 2) == 600
    assert load_timeout(tmp_path, 4) == 600
    with open(tmp_path / "model-00002.safetensors", "wb") as f:
        f.truncate(400 * 10**9)
    assert load_timeout(tmp_path, 2) == 120 + 800


def test_three_tokens_read_the_union_of_their_experts():
    """GLM-5: 256 experts, top 8 each; three tokens touch ~23, 2.9x one token's."""
    from cluster.plan.spec_forecast import expert_union

    assert expert_union(256, 8, 1) == pytest.approx(8)
    assert expert_union(256, 8, 3) == pytest.approx(23.3, abs=0.1)
    assert expert_union(8, 8, 3) == pytest.approx(8)  # every token reads every expert


def test_the_mtp_forecast_says_which_k_pays_and_when_none_does():
    from cluster.plan.spec_forecast import StepBytes, best, forecast

    bw, lat = 800e9, 30e-6
    # Weight-read bound (no overhead), routed experts most of the bytes: each extra token of a
    # verify reads ~8 more experts per layer, so a low acceptance never pays...
    moe = StepBytes(routed=15e9, other=5e9, draft=0.3e9, collectives=150, layers=78,
                    n_experts=256, top_k=8)  # fmt: skip
    low = forecast(moe, bw, lat, efficiency=1.0, acceptance=(0.5, 0.25, 0.1))
    assert best([r.__dict__ for r in low]) is None
    assert all(b.verify_cost > a.verify_cost for a, b in zip(low, low[1:], strict=False))
    # ...a dense model with the same bytes verifies almost for free and pays at every k...
    dense = StepBytes(routed=0, other=20e9, draft=0.3e9, collectives=150, layers=78,
                      n_experts=0, top_k=0)  # fmt: skip
    rows = forecast(dense, bw, lat, efficiency=1.0, acceptance=(0.9, 0.8, 0.7))
    assert all(r.speedup > 1.5 for r in rows) and rows[0].verify_cost == pytest.approx(1.0)
    # ...and a measured verify cost replaces the byte count's.
    slow = forecast(dense, bw, lat, 1.0, (0.9, 0.8, 0.7), verify_cost=2.5)
    assert slow[0].verify_cost == pytest.approx(2.5) and slow[0].speedup < rows[0].speedup


def test_the_plan_forecasts_mtp_for_glm5_on_the_shipped_studios():
    plan = make_plan(GLM5, 4, load_inventory(ROOT / "inventory/mac-studio-2x.yaml"))
    rows = plan.replicas[0].mtp_forecast
    assert [r["k"] for r in rows] == [1, 2, 3]
    assert [r["tokens_per_step"] for r in rows] == [1.938, 2.707, 3.279]  # published acceptance
    # one MTP layer plus the head, against 78 layers plus the head: a few percent of a step
    assert 0.01 < rows[0]["draft_cost"] < 0.06
    assert 1.0 < rows[0]["verify_cost"] < rows[1]["verify_cost"] < rows[2]["verify_cost"]
    out = subprocess.run(
        [sys.executable, "-m", "cluster", "plan", "--model", "glm-5", "--inventory",
         str(ROOT / "inventory/mac-studio-2x.yaml"), "--verify-cost", "2.2",
         "--mtp-weights", "/nodes/only/glm-5-mtp.safetensors"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert "MTP forecast" in out.stdout and "does not pay at any k" in out.stdout, out.stdout
    assert "from the measured 2-token verify, 2.2 plain steps" in out.stdout
    # the MoE effect, shown: 2, 3, 4 tokens read the union of the experts they pick
    assert "routed experts: 15.8/23.3/30.5 per layer, 1.97x/2.91x/3.82x" in out.stdout
    assert "/nodes/only/glm-5-mtp.safetensors are not on this machine" in out.stdout
    assert [r["experts"] for r in rows] == [15.8, 23.3, 30.5]


def test_the_plan_says_what_the_inventorys_speculation_will_do():
    """The forecast advises a k only where MTP can run; the inventory's own setting is
    checked against it (seed 002's question, answered before deploying)."""
    from dataclasses import replace

    from cluster.plan.render import render_plan

    inv = load_inventory(str(ROOT / "inventory/mac-studio-2x.yaml"))
    assert inv.speculation == "mtp" and inv.num_speculative_tokens == 1
    unknown = render_plan(make_plan(GLM5, 4, inv, None))
    assert "if it ran, use k=3" in unknown and "needs_mtp_weights" in unknown
    assert "inventory asks for speculation mtp, which needs the MTP layer's weights" in unknown
    given = render_plan(make_plan(GLM5, 4, inv, True))
    assert "; use k=3" in given and "if it ran" not in given
    assert "by weight bytes: a ceiling" in given and "--verify-cost" in given
    gone = render_plan(make_plan(GLM5, 4, inv, False))  # a conversion that dropped the layer
    assert "no_mtp_weights" in gone and "`extract-mtp`" in gone and "--speculation ngram" in gone
    assert "the inventory asks for k=1; the forecast favours k=3" in given
    slow = render_plan(make_plan(GLM5, 4, inv, True, verify_cost=2.2))
    assert "leave speculation off" in slow and "which the forecast says does not pay" in slow
    none = render_plan(make_plan(GLM5, 4, replace(inv, speculation="none"), True))
    assert "inventory asks" not in none
    drafts = [make_plan(GLM5, 4, inv, True, draft_model=d).replicas[0].speculation["draft"]
              for d in (True, False, None)]  # fmt: skip
    assert drafts == ["supported", "no_draft_model", "needs_draft_model"]


def test_plan_reads_a_preset_named_by_the_inventory_and_says_where_a_node_path_is(tmp_path):
    """`model: glm-5` in an inventory plans from the preset; a checkpoint path that exists
    only on the nodes gets a sentence saying how to plan from here, not a bare 'no such
    directory'."""
    text = (ROOT / "inventory/mac-studio-2x.yaml").read_text()
    preset = tmp_path / "preset.yaml"
    preset.write_text(text.replace("model: /opt/models/GLM-5-4bit", "model: glm-5"))
    assert "model: glm-5" in preset.read_text()

    def plan(inv):
        return subprocess.run([sys.executable, "-m", "cluster", "plan", "--inventory", str(inv)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip

    ok = plan(preset)
    assert ok.returncode == 0 and "743.9B parameters" in ok.stdout, ok.stderr
    away = plan(ROOT / "inventory/mac-studio-2x.yaml")
    assert away.returncode == 1 and "is not on this machine" in away.stderr
    assert "--model" in away.stderr and "glm-5" in away.stderr


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", "plan", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_a_layout_serve_cannot_run_is_not_plan_ok(tmp_path):
    """Three nodes fit GLM-5 only pipelined, which serve and deploy refuse: `plan` said
    "plan OK" and exited 0 (JSON "ok": true). Now it says why and exits 1; JSON adds
    servable / not_servable."""
    three = tmp_path / "three.yaml"
    hosts = "".join(f"    s{i}: {{interconnect: [10.0.0.{i}], memory_gb: 256, chip: M3 Ultra, "
                    "memory_bandwidth_gbs: 819}\n" for i in range(3))  # fmt: skip
    three.write_text("all:\n  hosts:\n" + hosts)
    out = _plan_cli("--model-config", "glm-5", "--inventory", str(three), "--bits", "4")
    assert out.returncode == 1 and "NOT SERVABLE" in out.stdout and "plan OK" not in out.stdout
    data = json.loads(
        _plan_cli("--model", "glm-5", "--inventory", str(three), "--bits", "4", "--json").stdout
    )
    assert data["ok"] and not data["servable"] and "pipeline" in data["not_servable"]


def test_plan_inputs_an_operator_gets_wrong_are_errors_or_notes(tmp_path):
    inv = ["--inventory", str(ROOT / "inventory/mac-studio-2x.yaml"), "--model", "glm-5"]
    for cost in ("0", "0.5", "-1", "nan", "inf"):  # a verify forward costs at least a step
        out = _plan_cli(*inv, "--verify-cost", cost)
        assert out.returncode == 2 and "at least 1" in out.stderr, (cost, out.stderr)
    out = _plan_cli(*inv[:2], "--model", "GLM5")
    assert out.returncode == 1 and "did you mean the preset glm-5" in out.stderr
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    quantized = GLM5 | {"quantization": {"bits": 8, "group_size": 64}}
    (ckpt / "config.json").write_text(json.dumps(quantized))
    out = _plan_cli(*inv[:2], "--model-config", str(ckpt / "config.json"), "--bits", "2")
    assert "stores 8-bit weights" in out.stdout, out.stdout[-500:]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({k: v for k, v in GLM5.items() if k != "q_lora_rank"}))
    out = _plan_cli(*inv[:2], "--model-config", str(broken))
    assert out.returncode == 1 and "q_lora_rank" in out.stderr and "Traceback" not in out.stderr


def test_a_chip_named_another_way_is_still_a_mac():
    """The 75% wired limit applies to every Apple-silicon spelling; a chip string that did
    not start with M ("Mac Studio (M3 Ultra)") got 90% and a plan that would not fit."""
    for chip in ("M3 Ultra", "Mac Studio (M3 Ultra)", "Apple M4 Max", "m2 ultra"):
        plan = make_plan(GLM5, 8, studios(512, 512, chip=chip))
        assert not plan.ok and "75% of 512 GB" in plan.refusals[0], chip
    other = make_plan(GLM5, 8, studios(512, 512, chip="x86_64"))
    assert other.ok and other.replicas[0].memory[0].usable_gb == 460.8  # 90%


def test_a_node_too_small_for_any_wired_limit_is_told_so():
    plan = make_plan(GLM5, 4, studios(128, 128))
    assert "more than the machine can give the model" in plan.refusals[0]
    assert "raise iogpu" not in plan.refusals[0]


def test_the_forecast_stops_at_the_largest_k_serve_takes():
    plan = make_plan(GLM5, 4, studios(512, 512), True, acceptance=tuple([0.99] * 10))
    assert max(r["k"] for r in plan.replicas[0].mtp_forecast) == 8


def test_the_checkpoints_group_size_and_mode_price_its_weights():
    """4 bits in groups of 32 carry an fp16 scale and bias per 32 weights (0.625 bytes, not
    the 0.5625 of groups of 64); MXFP4 one 8-bit scale per 32 (0.53125)."""

    def bpp(quant: dict, bits: int = 4) -> float:
        config = GLM5 | {"quantization": quant}
        return make_plan(config, bits, studios(512, 512)).assumptions["bytes_per_param"]

    assert bpp({"bits": 4, "group_size": 64}) == 0.5625
    assert bpp({"bits": 4, "group_size": 32}) == 0.625
    assert bpp({"bits": 4, "group_size": 32, "mode": "mxfp4"}) == 0.53125
    assert bpp({"bits": 8, "group_size": 32}, bits=4) == 0.5625  # another bits: MLX's default
    wide = make_plan(GLM5 | {"quantization": {"bits": 4, "group_size": 32}}, 4, studios(512, 512))
    narrow = make_plan(GLM5 | {"quantization": {"bits": 4, "group_size": 64}}, 4, studios(512, 512))
    assert wide.replicas[0].memory[0].weights_gb > narrow.replicas[0].memory[0].weights_gb + 20


def test_decode_is_priced_at_agents_context_lengths():
    """Each decode step also reads the context's KV: with DSA the indexer's keys of every
    token (about 20 KB a token on GLM-5) and the top-2048 tokens' latent KV, not split by
    TP. The plan's one figure held at any context; measured TP decode falls with it."""
    from cluster.plan.planner import context_bytes
    from cluster.plan.render import render_plan

    plan = make_plan(GLM5, 4, studios(512, 512))
    (replica,) = plan.replicas
    at = replica.decode_tok_s_at_context
    assert list(at) == ["32000", "128000", "200000"]
    assert replica.decode_tok_s_expected > at["32000"] > at["128000"] > at["200000"]
    per_token = (context_bytes(GLM5, 200_000) - context_bytes(GLM5, 100_000)) / 100_000
    assert per_token == 78 * 2 * (GLM5["index_head_dim"] + 1)  # the indexer's keys alone
    assert "decode at 32K / 128K / 200K tokens of context" in render_plan(plan)


def test_min_context_beyond_the_models_context_keeps_only_the_models_context():
    """No request holds more than the model's context length: the KV every node must keep is
    counted up to it (refusing the plan instead broke the built-in model's default serve)."""
    from dataclasses import replace

    at_max = make_plan(GLM5, 4, replace(studios(512, 512), min_context_tokens=202_752))
    beyond = make_plan(GLM5, 4, replace(studios(512, 512), min_context_tokens=1_000_000))
    assert beyond.ok and beyond.replicas == at_max.replicas


def test_hosts_listed_with_one_address_are_pointed_out():
    """Two hosts at one address are likely one machine listed twice: its memory counted twice."""
    from dataclasses import replace

    from cluster.plan.render import render_plan

    inv = studios(512, 512)
    twice = replace(inv, hosts=tuple(replace(h, interconnect=("10.0.0.9",)) for h in inv.hosts))
    assert "note: hosts s0, s1 share the address 10.0.0.9" in render_plan(make_plan(GLM5, 4, twice))
    assert "share the address" not in render_plan(make_plan(GLM5, 4, inv))


def test_the_served_context_is_the_models_unless_the_kv_budget_holds_less():
    """Agents send 100K-token transcripts: GLM-5 is served at its own 202,752 tokens (it was
    capped at 32,768 by default), and the plan says what a replica will take, or the fewer
    tokens its KV budget holds."""
    from dataclasses import replace

    from cluster.config import EngineConfig
    from cluster.engine.build import context_length
    from cluster.plan.render import render_plan

    assert context_length(GLM5, EngineConfig()) == 202_752
    assert context_length(GLM5, EngineConfig(max_model_len=65_536)) == 65_536
    roomy = make_plan(GLM5, 4, studios(512, 512))
    assert roomy.replicas[0].context_tokens == 202_752
    assert "r0 serves up to 202,752 tokens of context" in render_plan(roomy)
    tight = make_plan(GLM5, 4, replace(studios(192, 192, 192, 192), min_context_tokens=1024))
    (replica,) = tight.replicas
    per_token = model_size(GLM5).kv_bytes_per_token
    held = min(m.kv_budget_gb for m in replica.memory) * 1e9 / (2 * per_token)
    assert tight.ok and replica.context_tokens == int(held) < 202_752


def test_max_model_len_is_the_context_the_plan_states_and_past_the_models_own_it_warns():
    """`serve --max-model-len N` serves N tokens: the plan said the model's own context all the
    same (8,192 where 65,536 were served); past the model's own it says so."""
    from cluster.plan.render import render_plan

    shorter = make_plan(GLM5, 4, studios(512, 512), max_model_len=65_536)
    assert shorter.replicas[0].context_tokens == 65_536
    text = render_plan(shorter)
    assert "r0 serves up to 65,536 tokens of context" in text and "past the model" not in text
    longer = make_plan(GLM5, 4, studios(512, 512), max_model_len=300_000)
    assert longer.replicas[0].context_tokens == 300_000
    assert "past the model's own context (202,752 tokens" in render_plan(longer)
    assert "past the model" not in render_plan(make_plan(GLM5, 4, studios(512, 512)))
