"""Whether MTP speculation will pay on a layout, and with which k: a pure forecast.

Per decode step of the replica (one node's share; all nodes of a TP group run in lockstep):
- plain step = weight bytes / bandwidth + collectives x latency + overhead, where the overhead
  is what measured decode loses against the roofline (the planner's EFFICIENCY);
- verifying k drafts runs k+1 tokens in one forward: the weights other than routed experts are
  read once, the routed experts for the union of the experts the k+1 tokens pick (n experts,
  top m each: n (1 - (1 - m/n)^(k+1)) distinct, GLM-5's 3 tokens touch ~23 of 256, 2.9x one
  token's), collectives and overhead once;
- one draft = the MTP layer (one decoder layer plus eh_proj) and the LM head read, its two
  collectives, and a layer's share of the overhead; k drafts run one after another.
Expected tokens per step = 1 + a_1 + ... + a_k, a_i the chance the first i drafts are all
accepted; speed-up = tokens per step / (verify + k x draft), in plain steps. A measured cost of
a 2-token verify (`verify_cost`) replaces the byte count's; longer verifies grow from it as the
byte count grows (each added token as much as the first where the count does not grow).
"""

from dataclasses import dataclass

GLM5_ACCEPTANCE = (0.938, 0.769, 0.572)
"""GLM-5 w4a8's MTP, k=3: the share of steps whose first 1, 2, 3 drafts were accepted
(vllm-ascend issue 9803; mean accepted length 3.28)."""


@dataclass(frozen=True)
class StepBytes:
    """One node's bytes and collectives per decode step of one token."""

    routed: float
    """Bytes of the routed experts one token reads (all MoE layers)."""
    other: float
    """Every other weight byte one token reads (attention, shared experts, dense MLPs, head)."""
    draft: float
    """Bytes one MTP draft reads (its layer with one token's experts, eh_proj, the LM head)."""
    collectives: int
    layers: int
    n_experts: int
    top_k: int


@dataclass(frozen=True)
class KForecast:
    k: int
    tokens_per_step: float
    verify_cost: float
    """A verify forward of k+1 tokens, in plain steps."""
    draft_cost: float
    """One draft, in plain steps."""
    speedup: float
    experts: float = 0.0
    """Distinct routed experts per MoE layer the k+1 tokens of a verify read (0: dense)."""
    expert_bytes: float = 0.0
    """Their routed-expert bytes against one token's."""


def expert_union(n: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts `tokens` tokens pick, each top_k of n at random."""
    if n <= 0 or top_k <= 0:
        return 0.0
    return n * (1 - (1 - top_k / n) ** tokens)


MAX_K = 8
"""The most drafts a step may take (--num-speculative-tokens' range): no k above is forecast."""


def forecast(
    step: StepBytes,
    bandwidth: float,
    latency: float,
    efficiency: float,
    acceptance: tuple[float, ...] = GLM5_ACCEPTANCE,
    verify_cost: float | None = None,
) -> list[KForecast]:
    """Speed-up for each k up to len(acceptance); bandwidth in bytes/s, latency in s;
    verify_cost: a measured 2-token verify forward, in plain steps."""
    roofline = (step.routed + step.other) / bandwidth + step.collectives * latency
    overhead = roofline * (1 / efficiency - 1)
    plain = roofline + overhead
    one_token = expert_union(step.n_experts, step.top_k, 1)
    draft = step.draft / bandwidth + 2 * latency * (step.collectives > 0)
    draft = (draft + overhead / max(step.layers, 1)) / plain

    def verify(k: int) -> float:
        union = expert_union(step.n_experts, step.top_k, k + 1) / one_token if one_token else 1
        seconds = (step.other + step.routed * union) / bandwidth
        return (seconds + step.collectives * latency + overhead) / plain

    def measured(k: int) -> float:
        """verify_cost for k = 1, growing with k as the byte count grows (else linearly)."""
        extra = verify(1) - 1
        growth = (verify(k) - 1) / extra if extra > 1e-9 else k
        return 1 + (verify_cost - 1) * growth

    out = []
    for k in range(1, min(len(acceptance), MAX_K) + 1):
        cost_k = measured(k) if verify_cost else verify(k)
        tokens = 1 + sum(acceptance[:k])
        experts = expert_union(step.n_experts, step.top_k, k + 1)
        out.append(KForecast(k, round(tokens, 3), round(cost_k, 3), round(draft, 4),
                             round(tokens / (cost_k + k * draft), 3), round(experts, 1),
                             round(experts / one_token, 2) if one_token else 0.0))  # fmt: skip
    return out


def best(rows) -> dict | None:
    """The row (as the plan carries it) with the largest speed-up, if any k pays at all."""
    top = max(rows, key=lambda r: r["speedup"], default=None)
    return top if top is not None and top["speedup"] > 1.0 else None
