"""Metrics and dashboards: a real Prometheus scrapes a running cluster; every panel has data."""

import json
import platform
import re
import shutil
import subprocess
import time

import httpx
import pytest

from cluster import dashboards
from cluster.launch.local import free_port


def test_dashboards_are_current_and_query_only_defined_metrics():
    assert dashboards.check() == []


def test_dashboard_json_has_grafana_shape():
    for path in sorted(dashboards.OUT.glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert {"model_name", "replica"} <= variables.keys()
        assert board["panels"]
        for panel in board["panels"]:
            assert panel["type"] == "timeseries" and panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
            assert panel["targets"]
            for target in panel["targets"]:
                assert target["expr"] and target["refId"]
                assert target["datasource"]["uid"] == "${datasource}"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """A speculating (n-gram) server: the speculation panels get data as well."""
    from conftest import Server

    home = tmp_path_factory.mktemp("home")
    args = ["--model", str(model_dir), "--speculation", "ngram", "--num-speculative-tokens", "3"]
    srv = Server(args, env={"CLUSTER_HOME": str(home)})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed; `make test` installs Debian's package")
    folder = tmp_path_factory.mktemp("prometheus")
    target = server.url.removeprefix("http://")
    (folder / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: cluster\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _query(url: str, expr: str) -> list:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_every_dashboard_query_returns_data_from_prometheus(server, prometheus):
    client = server.client()
    deadline = time.time() + 30
    while time.time() < deadline and not _query(prometheus, "up{job='cluster'} == 1"):
        time.sleep(0.5)
    # Traffic: streamed and not, a repeated prefix for cache hits, over a few scrapes.
    for i in range(6):
        prompt = "Shared context for the cache. " * 20 + f"Question {i % 2}"
        client.completions.create(model=server.model, prompt=prompt, max_tokens=12)
        stream = client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=12,
            stream=True,
        )
        list(stream)
        repeating = [30 + j % 12 for j in range(96)]  # prompt lookup finds drafts here
        client.completions.create(model=server.model, prompt=repeating, max_tokens=24,
                                  temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
        time.sleep(0.5)
    time.sleep(3)
    substitutions = {
        "$model_name": server.model,
        "$replica": ".*",
        "$__rate_interval": "1m",
    }
    empty = []
    for _, panels in dashboards.DASHBOARDS.values():
        for title, _, targets in panels:
            for expr, _ in targets:
                for key, value in substitutions.items():
                    expr = expr.replace(key, value)
                if not _query(prometheus, expr):
                    empty.append(f"{title}: {expr}")
    assert empty == []
    # The acceptance panels compute from the counters themselves, not their fallback 0.
    for title, _, targets in dashboards.SPECULATION:
        if title.startswith(("Draft tokens accepted", "Accepted per draft")):
            expr = targets[0][0].replace("$model_name", server.model).replace("$replica", ".*")
            expr = expr.replace("$__rate_interval", "1m").removesuffix(" or on() vector(0)")
            values = [float(r["value"][1]) for r in _query(prometheus, expr)]
            assert values and all(0 <= v <= 1 for v in values), (title, values)
    # Hit rate is computed in PromQL from token counters, and the repeated prefix hit.
    hits = _query(prometheus, "sum(cluster:prefix_cache_hits_total)")
    assert float(hits[0]["value"][1]) > 0


def test_status_command_shows_replicas(server):
    import sys

    from conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "cluster", "status", "--url", server.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "r0" in out.stdout and "ready" in out.stdout and "TP 1" in out.stdout


def test_metrics_count_requests_by_finish_reason(server):
    def successes(reason):
        text = httpx.get(f"{server.url}/metrics").text
        for line in text.splitlines():
            if line.startswith("cluster:request_success_total") and f'"{reason}"' in line:
                return float(line.split()[-1])
        return 0.0

    before = successes("length")
    server.client().completions.create(
        model=server.model, prompt="x", max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert successes("length") == before + 1
    # Going idle after work, the leader trims its heap (Linux), and the metric says so.
    deadline = time.time() + 10
    while time.time() < deadline and not re.search(
        r"^cluster:heap_trims_total\{[^}]*replica=\"r0\"\} [1-9]", metrics(server), re.M
    ):
        time.sleep(0.5)
    assert re.search(r"^cluster:heap_trim_seconds_total\{", metrics(server), re.M)
    if platform.system() == "Linux":
        assert re.search(r"^cluster:heap_trims_total\{[^}]*\} [1-9]", metrics(server), re.M)


def metrics(server) -> str:
    return httpx.get(f"{server.url}/metrics").text
