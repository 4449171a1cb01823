"""`cluster status`: the cluster at a glance, read from the coordinator's /v1/status."""

import json
import urllib.request

from .plan.render import table


def fetch_status(url: str, timeout: float = 5, api_key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url.rstrip("/") + "/v1/status", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def render_status(status: dict) -> str:
    lines = [
        f"model {status['model']}  context {status['max_model_len']}  up {status['uptime_s']}s  "
        f"in flight {status['queue']['in_flight']}",
        "",
    ]
    rows = []
    for r in status["replicas"]:
        engine = r.get("engine") or {}
        cache = engine.get("prefix_cache", {})
        queried = cache.get("query_tokens", 0)
        hit_rate = f"{cache.get('hit_tokens', 0) / queried:.0%}" if queried else "-"
        plan = r.get("plan") or {}
        nodes = ",".join(f"{k['node']}#{k['rank']}" for k in r.get("ranks", []))
        rows.append(
            [
                r["name"],
                r["state"]
                + (f" ({r['reason']})" if r.get("reason") and r["state"] != "ready" else "")
                + _loading(r),
                f"TP {plan.get('tensor_parallel', '?')} {plan.get('backend', '')}",
                nodes,
                f"{engine.get('num_running', 0)}/{engine.get('num_waiting', 0)}",
                hit_rate,
                f"{engine.get('step_ms_avg', 0):.1f}",
                r.get("restarts", 0),
                engine.get("speculation", {}).get("summary", "off"),
            ]
        )
    header = ["replica", "state", "layout", "nodes#rank", "run/wait", "cache hit", "step ms",
              "restarts", "speculation"]  # fmt: skip
    return "\n".join(lines + table(header, rows))


def _loading(replica: dict) -> str:
    """' loading 42%' (weights loaded over all ranks) while a replica starts."""
    ranks = [k for k in replica.get("ranks", []) if k.get("weights_bytes")]
    if replica["state"] != "starting" or not ranks:
        return ""
    done = sum(k["loaded_bytes"] for k in ranks) / sum(k["weights_bytes"] for k in ranks)
    return f" loading {done:.0%}"
