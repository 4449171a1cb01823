import re

import pytest

from cluster.inventory import InventoryError, load_inventory
from cluster.inventory.inventory import parse_inventory


def _host(**kw):
    base = {"interconnect": ["10.0.0.1"], "memory_gb": 512, "chip": "M3 Ultra"}
    return base | {"memory_bandwidth_gbs": 819} | kw


def test_embedded_default_is_this_machine():
    inv = load_inventory()
    assert [h.name for h in inv.hosts] == ["local"]
    assert inv.replicas == 1 and inv.mlx_backend == "ring"
    assert inv.coordinator_host == "127.0.0.1"


def test_children_groups_inherit_vars():
    data = {
        "all": {
            "vars": {"mlx_backend": "jaccl"},
            "children": {"studios": {"hosts": {"a": _host(), "b": _host()}}},
        }
    }
    inv = parse_inventory(data)
    assert [h.name for h in inv.hosts] == ["a", "b"] and inv.mlx_backend == "jaccl"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"all": {"hosts": {"a": {"memory_gb": 1}}}}, "host 'a' is missing field 'interconnect'"),
        (
            {"all": {"hosts": {"a": _host()}, "children": {"g": {"hosts": {"a": _host()}}}}},
            "host 'a' appears twice",
        ),
        ({"all": {"vars": {"mlx_backend": "nccl"}, "hosts": {"a": _host()}}}, "'nccl' is unknown"),
        (
            {"all": {"hosts": {"a": _host(memory_gb="256GB")}}},
            "host 'a': memory_gb must be a positive number .*not '256GB'",
        ),
        (
            {"all": {"vars": {"max_num_seqs": 8}, "hosts": {"a": _host()}}},
            "'max_num_seqs' is a `serve` option, not an inventory var: pass --max-num-seqs",
        ),
        (
            {"all": {"vars": {"api_key": "k"}, "hosts": {"a": _host()}}},
            "'api_key' is a `serve` option.*or list it in vars.serve_args",
        ),
        (
            {"all": {"vars": {"serve_args": ["--max-num-seqs", 0]}, "hosts": {"a": _host()}}},
            "vars.serve_args: --max-num-seqs 0: must be >= 1",
        ),
        (
            {"all": {"vars": {"serve_args": "--port 9000"}, "hosts": {"a": _host()}}},
            "vars.serve_args: --port is set by vars.coordinator_port, not in serve_args",
        ),
        (
            {"all": {"vars": {"serve_args": ["--max-num-seq", "4"]}, "hosts": {"a": _host()}}},
            "vars.serve_args: unrecognized arguments: --max-num-seq 4",
        ),
        (
            {"all": {"vars": {"serve_args": ["--routing", "random"]}, "hosts": {"a": _host()}}},
            "vars.serve_args: argument --routing: invalid choice: 'random'",
        ),
        (
            {"all": {"vars": {"serve_args": "--chat-template-args [1]"}, "hosts": {"a": _host()}}},
            "vars.serve_args: --chat-template-args must be a JSON object",
        ),
        (
            {"all": {"vars": {"serve_args": {"max_num_seqs": 4}}, "hosts": {"a": _host()}}},
            "vars.serve_args must be a list of `serve` arguments",
        ),
        (
            {"all": {"hosts": {"a": _host(wired_limit_gb=600)}}},
            "host 'a': wired_limit_gb 600 is above its memory_gb 512",
        ),
        (
            {"all": {"hosts": {"a": _host(memory_bandwidth_gbs=0)}}},
            "host 'a': memory_bandwidth_gbs must be a positive number",
        ),
        *(
            (
                {"all": {"vars": {key: value}, "hosts": {"a": _host()}}},
                f"vars.{key} must be a whole number {span}, not {value!r}",
            )
            for key, value, span in (
                ("quantization_bits", "4bit", "at least 1"),
                ("replicas", "two", "at least 1"),
                ("replicas", 0, "at least 1"),
                ("coordinator_port", "80OO", "from 0 to 65535"),
                ("coordinator_port", 70000, "from 0 to 65535"),
                ("grpc_base_port", -1, "from 0 to 65535"),
                ("num_speculative_tokens", -2, "from 1 to 8"),
            )
        ),
        ({"all": {}}, "no hosts"),
    ],
)
def test_bad_inventories_name_host_and_field(data, message):
    with pytest.raises(InventoryError, match=message):
        parse_inventory(data, "inv.yaml")


def test_served_model_name_is_a_name_or_a_name_and_aliases():
    one = {"all": {"vars": {"served_model_name": "glm-5"}, "hosts": {"a": _host()}}}
    assert parse_inventory(one).served_model_names == ("glm-5",)
    more = {"all": {"vars": {"served_model_name": ["glm-5", "claude-haiku-4-5"]},
                    "hosts": {"a": _host()}}}  # fmt: skip
    assert parse_inventory(more).served_model_names == ("glm-5", "claude-haiku-4-5")
    empty = {"all": {"vars": {"grpc_base_port": 0, "coordinator_port": 0},
                     "hosts": {"a": _host(wired_limit_gb=None)}}}  # fmt: skip
    inv = parse_inventory(empty)  # left empty or 0: the default, as before
    assert inv.grpc_base_port is None and inv.hosts[0].wired_limit_gb is None
    number = {"all": {"vars": {"served_model_name": 5}, "hosts": {"a": _host()}}}
    assert parse_inventory(number).served_model_names == ("5",)  # YAML read a name as a number
    assert load_inventory().served_model_names == ()


def test_mtp_weights_is_an_inventory_var():
    data = {"all": {"vars": {"mtp_weights": "/m/mtp.safetensors"}, "hosts": {"a": _host()}}}
    assert parse_inventory(data).mtp_weights == "/m/mtp.safetensors"
    assert load_inventory().mtp_weights is None


def test_typos_duplicates_and_bits_are_refused_by_name(tmp_path):
    """What an operator mistypes: a var one letter off (it was ignored: `replcas: 2` served
    one replica), a host listed twice (YAML kept the last), bits no checkpoint has."""
    host = {"interconnect": "10.0.0.1", "memory_gb": 64, "chip": "M3", "memory_bandwidth_gbs": 800}
    with pytest.raises(InventoryError, match="unknown key 'replcas' \\(did you mean 'replicas'"):
        parse_inventory({"all": {"vars": {"replcas": 2}, "hosts": {"a": host}}})
    with pytest.raises(InventoryError, match="unknown key 'memroy_gb'"):
        parse_inventory({"all": {"hosts": {"a": host | {"memroy_gb": 64}}}})
    # Ansible's own vars, and ones of the operator's far from ours, pass.
    parse_inventory({"all": {"vars": {"ansible_python_interpreter": "/x", "team": "infra"},
                             "hosts": {"a": host}}})  # fmt: skip
    with pytest.raises(InventoryError, match="quantization_bits 7 must be one of"):
        parse_inventory({"all": {"vars": {"quantization_bits": 7}, "hosts": {"a": host}}})
    path = tmp_path / "dup.yaml"
    path.write_text("all:\n  hosts:\n    a: {memory_gb: 64}\n    a: {memory_gb: 32}\n")
    with pytest.raises(InventoryError, match="line 4: 'a' appears twice"):
        load_inventory(path)


def test_serve_options_are_checked_before_anything_starts():
    from cluster.config import EngineConfig
    from cluster.serve import ServeOptions

    for kwargs, message in (
        ({"port": 70000}, "--port: a port from 1 to 65535"),
        ({"probe_seconds": -1}, "--probe-seconds"),
        ({"load_timeout": 0}, "--load-timeout"),
        ({"thinking_budget": -1}, "--thinking-budget"),
        ({"served_model_name": " "}, "--served-model-name"),
    ):
        with pytest.raises(ValueError, match=message):
            ServeOptions(**kwargs)
    for kwargs, message in (
        ({"ngram_max": 1}, "--ngram-max 1: must be from --ngram-min \\(2\\) to 32"),
        ({"speculation_min_acceptance": 1.5}, "--speculation-min-acceptance 1.5: must be a share"),
        ({"seed": -1}, "--seed -1: must be >= 0"),
        ({"max_num_seqs": 0}, "--max-num-seqs 0: must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            EngineConfig(**kwargs)


@pytest.mark.parametrize("change,message", [
    ({"memory_gb": 549755813888}, "memory_gb 549755813888 is not a number of GB"),
    ({"memory_gb": float("inf")}, "memory_gb must be a positive number"),
    ({"memory_bandwidth_gbs": 0.819}, "is not a number of GB/s"),
    ({"rdma_devices": "rdma_en0"}, None),  # one name: a list of one
    ({"rdma_devices": [None]}, "rdma_devices must be a list of names"),
    ({"interconnect": 12345}, "interconnect must be a list of names"),
    ({"interconnect": [None]}, "interconnect must be a list of names"),
    ({"chip": None}, "chip must name the chip"),
])  # fmt: skip
def test_host_facts_in_the_wrong_shape_or_unit_are_errors(change, message):
    data = {"all": {"hosts": {"a": _host(**change)}}}
    if message is None:
        assert parse_inventory(data).hosts[0].rdma_devices == ("rdma_en0",)
        return
    with pytest.raises(InventoryError, match=re.escape(message)):
        parse_inventory(data)


@pytest.mark.parametrize("data,message", [
    ({"all": {"hosts": {"a": "oops"}}}, "all.hosts.a must be a mapping"),
    ({"all": {"hosts": ["a", "b"]}}, "all.hosts must be a mapping"),
    ({"all": {"vars": ["x"], "hosts": {"a": {}}}}, "all.vars must be a mapping"),
    ({"all": {"vars": {"allreduce_latency_us": "30us"}}}, "allreduce_latency_us must be a number"),
    ({"all": {"vars": {"allreduce_latency_us": -5}}}, "allreduce_latency_us must be a number"),
    ({"all": {"vars": {"speculation": "mpt"}}}, "vars.speculation 'mpt' is not one of none, mtp"),
    ({"all": {"vars": {"mtp_weights": 5}}}, "vars.mtp_weights must be a path"),
])  # fmt: skip
def test_groups_and_vars_in_the_wrong_shape_are_errors_not_tracebacks(data, message):
    data["all"].setdefault("hosts", {"a": _host()})
    with pytest.raises(InventoryError, match=re.escape(message)):
        parse_inventory(data)
