"""Grafana dashboards and provisioning, generated from this one source.

`python -m cluster.dashboards` writes dashboards/; `--check` fails if the files are stale or a
panel queries a metric the code does not define.
"""

import argparse
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model_name="$model_name", replica=~"$replica"'
RATE = "$__rate_interval"


def quantiles(metric: str, qs=(0.5, 0.95, 0.99)) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{int(q * 100)}",
        )
        for q in qs
    ]


def mean(metric: str) -> tuple[str, str]:
    return (
        f"sum(rate({metric}_sum{{{SEL}}}[{RATE}])) / sum(rate({metric}_count{{{SEL}}}[{RATE}]))",
        "mean",
    )


OVERVIEW = [
    (
        "Time to first token",
        "s",
        quantiles("cluster:time_to_first_token_seconds")
        + [mean("cluster:time_to_first_token_seconds")],
    ),
    ("Inter-token latency", "s", quantiles("cluster:inter_token_latency_seconds")),
    (
        "End-to-end request latency",
        "s",
        quantiles("cluster:e2e_request_latency_seconds")
        + [mean("cluster:e2e_request_latency_seconds")],
    ),
    (
        "Token throughput",
        "tok/s",
        [
            (f"sum(rate(cluster:prompt_tokens_total{{{SEL}}}[{RATE}]))", "prompt"),
            (f"sum(rate(cluster:generation_tokens_total{{{SEL}}}[{RATE}]))", "generation"),
        ],
    ),
    (
        "Requests running, waiting, in flight",
        "short",
        [
            (f"sum(cluster:num_requests_running{{{SEL}}})", "running"),
            (f"sum(cluster:num_requests_waiting{{{SEL}}})", "waiting"),
            (f"sum(cluster:num_requests_prefilling{{{SEL}}})", "prefilling"),
            (f"sum(cluster:num_requests_in_flight{{{SEL}}})", "in flight"),
        ],
    ),
    (
        "Finished requests by reason",
        "reqps",
        [
            (
                f"sum by (finished_reason) (rate(cluster:request_success_total{{{SEL}}}[{RATE}]))",
                "{{finished_reason}}",
            ),
        ],
    ),
    (
        "Refused requests (429 queue full, 503 no replica)",
        "reqps",
        [
            (
                f'sum by (status) (rate(cluster:requests_rejected_total{{model_name="$model_name"}}[{RATE}]))',
                "{{status}}",
            ),
        ],
    ),
]
REPLICAS = [
    ("Replica up", "short", [(f"cluster:replica_up{{{SEL}}}", "{{replica}} {{state}}")]),
    ("Replica restarts", "short", [(f"cluster:replica_restarts{{{SEL}}}", "{{replica}}")]),
    (
        "Replica plan",
        "short",
        [(f"cluster:replica_info{{{SEL}}}", "{{replica}} TP {{tensor_parallel}} {{backend}}")],
    ),
    ("Engine step time", "s", [(f"cluster:step_seconds_avg{{{SEL}}}", "{{replica}}")]),
    (
        "Per-step collective (leader to followers)",
        "s",
        [(f"cluster:lockstep_seconds_avg{{{SEL}}}", "{{replica}}")],
    ),
    (
        "Idle followers asleep (doorbell; none while it serves)",
        "short",
        [(f"cluster:lockstep_sleeping_followers{{{SEL}}}", "{{replica}}")],
    ),
    (
        "Rank memory",
        "bytes",
        [(f"cluster:rank_memory_bytes{{{SEL}}}", "{{replica}}/{{node}} rank {{rank}}")],
    ),
    ("Rank up", "short", [(f"cluster:rank_up{{{SEL}}}", "{{replica}}/{{node}} rank {{rank}}")]),
    ("Model bytes per rank", "bytes", [(f"cluster:model_bytes{{{SEL}}}", "{{replica}}/{{node}}")]),
    (
        "KV cache bytes, and the budget",
        "bytes",
        [
            (f"cluster:kv_cache_usage_bytes{{{SEL}}}", "{{replica}} used"),
            (f"cluster:kv_cache_booked_bytes{{{SEL}}}", "{{replica}} booked by admission"),
            (f"cluster:kv_cache_budget_bytes{{{SEL}}} or on() vector(0)", "{{replica}} budget"),
        ],
    ),
    (
        "KV preemptions (sequences sent back to wait for room)",
        "short",
        [
            (
                f"sum by (replica) (rate(cluster:kv_cache_preemptions_total{{{SEL}}}[{RATE}])) or on() vector(0)",
                "{{replica}}",
            ),
        ],
    ),
    (
        "Queue, prefill and decode time (p50)",
        "s",
        [
            (
                f"histogram_quantile(0.5, sum by (le) (rate(cluster:request_queue_time_seconds_bucket{{{SEL}}}[{RATE}])))",
                "queue",
            ),
            (
                f"histogram_quantile(0.5, sum by (le) (rate(cluster:request_prefill_time_seconds_bucket{{{SEL}}}[{RATE}])))",
                "prefill",
            ),
            (
                f"histogram_quantile(0.5, sum by (le) (rate(cluster:request_decode_time_seconds_bucket{{{SEL}}}[{RATE}])))",
                "decode",
            ),
        ],
    ),
]
CACHE = [
    (
        "Prefix cache hit rate (tokens)",
        "percentunit",
        [
            (
                f"sum by (replica) (rate(cluster:prefix_cache_hits_total{{{SEL}}}[{RATE}])) / sum by (replica) (rate(cluster:prefix_cache_queries_total{{{SEL}}}[{RATE}]))",
                "{{replica}}",
            ),
        ],
    ),
    (
        "Prefix cache queries and hits",
        "tok/s",
        [
            (f"sum(rate(cluster:prefix_cache_queries_total{{{SEL}}}[{RATE}]))", "queried"),
            (f"sum(rate(cluster:prefix_cache_hits_total{{{SEL}}}[{RATE}]))", "hit"),
        ],
    ),
    (
        "Prefix cache hits by tier",
        "tok/s",
        [
            (
                f"sum by (replica, tier) (rate(cluster:prefix_cache_tier_hits_total{{{SEL}}}[{RATE}])) or on() vector(0)",
                "{{replica}} {{tier}}",
            ),
        ],
    ),
    (
        "Prefix cache usage",
        "percentunit",
        [(f"cluster:prefix_cache_usage_perc{{{SEL}}}", "{{replica}}")],
    ),
    (
        "Routing decisions by reason",
        "reqps",
        [
            (
                f"sum by (replica, reason) (rate(cluster:routing_decisions_total{{{SEL}}}[{RATE}]))",
                "{{replica}} {{reason}}",
            ),
        ],
    ),
]
SPECULATION = [
    (
        "Speculation active (label reason says why not)",
        "short",
        [
            (f"cluster:spec_decode_active{{{SEL}}}", "{{replica}} {{method}} {{reason}}"),
        ],
    ),
    (
        "Draft length the governor keeps, by batch size",
        "short",
        [
            (
                f"cluster:spec_decode_draft_length{{{SEL}}} or on() vector(0)",
                "{{replica}} batch {{batch_size}}",
            ),
        ],
    ),
    (
        "Draft tokens accepted (share of proposed)",
        "percentunit",
        [
            (
                f"sum by (replica) (rate(cluster:spec_decode_num_accepted_tokens_total{{{SEL}}}[{RATE}])) / sum by (replica) (rate(cluster:spec_decode_num_draft_tokens_total{{{SEL}}}[{RATE}])) or on() vector(0)",
                "{{replica}}",
            ),
        ],
    ),
    (
        "Accepted per draft, by position (seed 004's table)",
        "percentunit",
        [
            (
                f"sum by (replica, position) (rate(cluster:spec_decode_num_accepted_tokens_per_pos_total{{{SEL}}}[{RATE}])) / ignoring(position) group_left sum by (replica) (rate(cluster:spec_decode_num_drafts_total{{{SEL}}}[{RATE}])) or on() vector(0)",
                "{{replica}} position {{position}}",
            ),
        ],
    ),
    (
        "Speculation fallbacks by reason",
        "short",
        [
            (
                f"sum by (replica, reason) (cluster:spec_decode_fallbacks_total{{{SEL}}}) or on() vector(0)",
                "{{replica}} {{reason}}",
            ),
        ],
    ),
]
DASHBOARDS = {
    "cluster-overview": ("Cluster: overview", OVERVIEW),
    "cluster-replicas": ("Cluster: replicas and nodes", REPLICAS),
    "cluster-prefix-cache": ("Cluster: prefix cache and routing", CACHE),
    "cluster-speculation": ("Cluster: speculative decoding", SPECULATION),
}


def _variables() -> list[dict]:
    ds = {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
          "current": {}, "hide": 0}  # fmt: skip
    model = {"type": "query", "name": "model_name", "label": "Model", "datasource": DS,
             "query": {"query": "label_values(cluster:replica_up, model_name)", "refId": "model"},
             "definition": "label_values(cluster:replica_up, model_name)", "refresh": 2}  # fmt: skip
    replica = {"type": "query", "name": "replica", "label": "Replica", "datasource": DS,
               "query": {"query": 'label_values(cluster:replica_up{model_name="$model_name"}, replica)', "refId": "replica"},
               "definition": 'label_values(cluster:replica_up{model_name="$model_name"}, replica)',
               "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*"}  # fmt: skip
    return [ds, model, replica]


def dashboard(uid: str, title: str, panels: list) -> dict:
    out = []
    for i, (name, unit, targets) in enumerate(panels):
        out.append({
            "id": i + 1, "type": "timeseries", "title": name, "datasource": DS,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + j)}
                for j, (expr, legend) in enumerate(targets)
            ],
        })  # fmt: skip
    return {
        "uid": uid, "title": title, "tags": ["cluster", "glm-5"], "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables()}, "panels": out,
    }  # fmt: skip


DATASOURCE_YAML = """apiVersion: 1
datasources:
  - name: Prometheus
    type: prometheus
    uid: prometheus
    access: proxy
    url: http://127.0.0.1:9090
    isDefault: true
    jsonData:
      timeInterval: 5s
"""
PROVIDER_YAML = """apiVersion: 1
providers:
  - name: cluster
    folder: Cluster
    type: file
    options:
      path: /var/lib/grafana/dashboards/cluster
"""


def render() -> dict[str, str]:
    files = {
        f"{uid}.json": json.dumps(dashboard(uid, t, p), indent=2) + "\n"
        for uid, (t, p) in DASHBOARDS.items()
    }
    files["provisioning/datasources/prometheus.yaml"] = DATASOURCE_YAML
    files["provisioning/dashboards/cluster.yaml"] = PROVIDER_YAML
    return files


def queried_metrics() -> set[str]:
    names = set()
    for _, panels in DASHBOARDS.values():
        for _, _, targets in panels:
            for expr, _ in targets:
                for name in re.findall(r"cluster:[a-z0-9_]+", expr):
                    names.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    return names


def defined_metrics() -> set[str]:
    from types import SimpleNamespace

    from .coordinator.metrics import ClusterCollector, Metrics

    metrics = Metrics("check")
    names = {m.name for m in metrics.registry.collect()}
    names |= {
        m.name for m in ClusterCollector(SimpleNamespace(model_name="x", replicas=[])).collect()
    }
    return names


def check() -> list[str]:
    problems = [
        f"{n} is queried but not defined" for n in sorted(queried_metrics() - defined_metrics())
    ]
    for name, text in render().items():
        path = OUT / name
        if not path.exists() or path.read_text() != text:
            problems.append(f"dashboards/{name} is stale; run python -m cluster.dashboards")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    if parser.parse_args().check:
        problems = check()
        print("\n".join(problems) or "dashboards OK")
        return 1 if problems else 0
    for name, text in render().items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
