"""Run inside a network namespace that has only loopback (tests/cluster/test_ray.py makes it):
a local Ray cluster of two nodes, `cluster serve` with the ray launcher (TP 2, one actor per rank),
and the same prompts on a TP 1 replica; the results go to OUT/result.json."""

import json
import sys
import tempfile
from pathlib import Path

import yaml
from conftest import ROOT, Server
from test_cluster import greedy_outputs, status

from cluster.launch.local import free_port


def main(out: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"cluster_host:local-rank0": 1},
            "include_dashboard": False,
        },
    )
    try:
        cluster.add_node(num_cpus=1, resources={"cluster_host:local-rank1": 1})
        cluster.wait_for_nodes()
        inventory = yaml.safe_load((ROOT / "inventory" / "local-tp2.yaml").read_text())
        inventory["all"]["vars"].update(
            launcher="ray", ray_address=cluster.address, ring_base_port=free_port()
        )
        path = out / "ray-tp2.yaml"
        path.write_text(yaml.safe_dump(inventory))
        home = tempfile.mkdtemp(prefix="ray-home-")
        srv = Server(["--inventory", str(path)], env={"CLUSTER_HOME": home}, timeout=300)
        try:
            ray_outputs, ray_status = greedy_outputs(srv), status(srv)
        finally:
            srv.stop()
        srv = Server([], env={"CLUSTER_HOME": home})
        try:
            tp1 = greedy_outputs(srv)
        finally:
            srv.stop()
    finally:
        cluster.shutdown()
    result = {"ray_outputs": ray_outputs, "tp1_outputs": tp1, "status": ray_status}
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
