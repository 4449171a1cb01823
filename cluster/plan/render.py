"""A plan as a terminal table."""

from .spec_forecast import best
from .types import Plan


def _row(cells, widths) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def table(header: list[str], rows: list[list]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    return [_row(header, widths), _row(["-" * w for w in widths], widths)] + [
        _row(r, widths) for r in rows
    ]


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def render_plan(plan: Plan, verdict: bool = True) -> str:
    """The plan as `plan` prints it; without its verdict (REFUSED, NOT SERVABLE, plan OK) when
    the caller says the verdict itself."""
    lines = [
        f"model {plan.model_type}: {_count(plan.params_total)} parameters, "
        f"{_count(plan.params_active)} active per token, {plan.quantization_bits}-bit",
        "",
    ]
    rows = []
    for r in plan.replicas:
        layout = f"TP {r.tensor_parallel}" + (
            f" x PP {r.pipeline_stages}" if r.pipeline_stages > 1 else ""
        )
        spec = ", ".join(f"{k}: {v}" for k, v in r.speculation.items())
        nodes = ",".join(p.host for p in r.ranks)
        speed = f"{r.decode_tok_s_expected:g} ({r.decode_tok_s_roofline:g})"
        rows.append([r.name, layout, r.backend, nodes, speed, spec])
    header = ["replica", "layout", "backend", "nodes", "decode tok/s (roofline)", "speculation"]
    lines += table(header, rows)
    mem_rows = [
        [r.name, m.host, m.usable_gb, m.weights_gb, m.mtp_gb, m.kv_budget_gb, m.headroom_gb]
        for r in plan.replicas
        for m in r.memory
    ]
    if mem_rows:
        lines += [""] + table(
            ["replica", "node", "usable GB", "weights GB", "MTP GB", "KV budget GB", "headroom"],
            mem_rows,
        )
    for r in plan.replicas:
        if r.context_tokens:
            lines.append(f"{r.name} serves up to {r.context_tokens:,} tokens of context per "
                         "request (--max-model-len or the model's context, or what the KV budget "
                         "holds if less)")  # fmt: skip
        if r.trained_context and r.context_tokens > r.trained_context:
            lines.append(f"{r.name}: that is past the model's own context "
                         f"({r.trained_context:,} tokens, max_position_embeddings): it never "
                         "trained on the positions beyond; replies there may degrade")  # fmt: skip
        if at := r.decode_tok_s_at_context:
            lengths = " / ".join(f"{int(n) // 1000}K" for n in at)
            speeds = " / ".join(f"{v:g}" for v in at.values())
            lines.append(f"{r.name} decode at {lengths} tokens of context: {speeds} tok/s "
                         "expected (each step also reads the context's KV)")  # fmt: skip
        budgets = sorted({m.kv_budget_gb for m in r.memory})
        if len(budgets) > 1:  # the ranks of a replica hold the same rows: the tightest decides
            lines.append(f"{r.name}: every rank keeps the KV of its tightest node, "
                         f"{budgets[0]:g} GB (the larger nodes' rest stays unused)")  # fmt: skip
        if r.layer_ranges:
            ranges = ", ".join(
                f"stage {i}: layers {a}-{b - 1}" for i, (a, b) in enumerate(r.layer_ranges)
            )
            lines.append(f"{r.name} pipelines: {ranges}")
    lines += _shared_addresses(plan)
    a = plan.assumptions
    for r in plan.replicas:
        if r.mtp_forecast:
            lines += ["", _forecast_line(r, a.get("mtp_acceptance", []), a.get("mtp_verify_cost"))]
        if note := _configured_note(r, a.get("speculation", "none"),
                                    a.get("num_speculative_tokens", 1)):  # fmt: skip
            lines += [note]
    lines += [
        "",
        f"assumes {a['allreduce_latency_us']:g} us per all_sum, {a['bytes_per_param']:g} bytes "
        f"per parameter, decode at {a['efficiency']:g} of the roofline",
    ]
    if a.get("checkpoint_split_tp"):
        lines.append(
            f"checkpoint split per rank for TP {a['checkpoint_split_tp']}: each node stores and "
            "reads only its own rank-N/ directory"
        )
    if not verdict:
        return "\n".join(lines)
    if plan.refusals:
        lines += ["", "REFUSED:"] + [f"  {r}" for r in plan.refusals]
    elif why := plan.unservable():  # it fits, but serve and deploy would refuse it
        lines += ["", f"NOT SERVABLE: {why}"]
    else:
        lines += ["", "plan OK"]
    return "\n".join(lines)


def _shared_addresses(plan: Plan) -> list[str]:
    """Hosts listed with one address (not loopback): one machine listed twice has its memory
    counted twice."""
    hosts: dict[str, list[str]] = {}
    for r in plan.replicas:
        for p in r.ranks:
            if not p.address.startswith("127.") and p.address != "localhost":
                hosts.setdefault(p.address, []).append(p.host)
    return [f"note: hosts {', '.join(names)} share the address {address}: if they are one "
            "machine, the plan counts its memory once per host"
            for address, names in hosts.items() if len(names) > 1]  # fmt: skip


def _forecast_line(replica, acceptance: list[float], measured: float | None = None) -> str:
    """measured: the --verify-cost the forecast used, if any (else it counts bytes)."""
    rows = replica.mtp_forecast
    ks = ", ".join(f"k={r['k']} {r['speedup']:.2f}x" for r in rows)
    top = best(rows)
    verdict = f"use k={top['k']}" if top else "it does not pay at any k: leave speculation off"
    shares = "/".join(f"{a:g}" for a in acceptance)
    status = replica.speculation.get("mtp")
    if status != "supported":  # a forecast of what it would give, not advice to use it
        why = {"needs_mtp_weights": "give the MTP layer's weights (--mtp-weights) to run it",
               "no_mtp_weights": "the checkpoint has no MTP layer: MTP cannot run; copy it "
               "from the original checkpoint (`extract-mtp`) and give --mtp-weights, or use "
               "--speculation ngram, which needs no weights"}.get(status, str(status))  # fmt: skip
        verdict = f"if it ran, {verdict} ({why})"
    tokens = "/".join(str(r["k"] + 1) for r in rows)
    costs = "/".join(f"{r['verify_cost']:.2f}" for r in rows)
    line = (f"{replica.name} MTP forecast (acceptance {shares} per position): {ks}; {verdict}. "
            f"A verify of {tokens} tokens costs {costs} plain steps")  # fmt: skip
    if rows[0].get("experts"):  # MoE: k+1 tokens read the union of the experts they pick
        union = "/".join(f"{r['experts']:g}" for r in rows)
        ratio = "/".join(f"{r['expert_bytes']:g}x" for r in rows)
        line += f" (their routed experts: {union} per layer, {ratio} one token's bytes)"
    line += f", a draft {rows[0]['draft_cost']:.3f}"
    if measured:
        return line + f" (from the measured 2-token verify, {measured:g} plain steps)"
    return line + (
        " (by weight bytes: a ceiling, since kernels cost more than bytes; with a measured "
        "2-token verify, `--verify-cost C` in plain steps, the forecast is the floor)"
    )


def _configured_note(replica, method: str, k: int) -> str | None:
    """What the inventory's own speculation setting will do, where it is not what it asks."""
    if method == "none":
        return None
    status = replica.speculation.get(method, "unknown")
    if status.startswith("needs_"):
        need = {
            "needs_mtp_weights": "the MTP layer's weights (--mtp-weights, or a checkpoint "
            "that has them)",
            "needs_draft_model": "a draft model (--draft-model)",
        }
        return (f"{replica.name}: the inventory asks for speculation {method}, which needs "
                f"{need.get(status, status)} ({status}): without, it will be off, and say "
                "so")  # fmt: skip
    if status != "supported":
        return (f"{replica.name}: the inventory asks for speculation {method}, which cannot run "
                f"as planned ({status}): it will be off, and say so")  # fmt: skip
    if method not in ("mtp", "mtp+ngram") or not replica.mtp_forecast:
        return None
    top = best(replica.mtp_forecast)
    if top is None:
        return (f"{replica.name}: the inventory asks for speculation {method} k={k}, which the "
                "forecast says does not pay: the governor turns it off where it measures no "
                "speed-up")  # fmt: skip
    if top["k"] > k:
        return (
            f"{replica.name}: the inventory asks for k={k}; the forecast favours k={top['k']} "
            f"(set num_speculative_tokens: {top['k']}; the governor tries lengths up to it)"
        )
    if top["k"] < k:
        return (f"{replica.name}: the inventory asks for k={k}; the forecast favours k={top['k']} "
                "(the governor, --speculation-adapt-k, tries shorter lengths and keeps the "
                "fastest)")  # fmt: skip
    return None
