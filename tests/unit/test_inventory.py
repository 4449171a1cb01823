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
        ({"all": {"hosts": {"a": _host(memory_gb="lots")}}}, "host 'a' needs numbers"),
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
    assert load_inventory().served_model_names == ()


def test_mtp_weights_is_an_inventory_var():
    data = {"all": {"vars": {"mtp_weights": "/m/mtp.safetensors"}, "hosts": {"a": _host()}}}
    assert parse_inventory(data).mtp_weights == "/m/mtp.safetensors"
    assert load_inventory().mtp_weights is None
