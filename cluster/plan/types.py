"""Frozen plan types: what runs where, with how much memory, at what predicted speed."""

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RankPlacement:
    rank: int
    host: str
    address: str


@dataclass(frozen=True)
class NodeMemory:
    host: str
    usable_gb: float
    weights_gb: float
    mtp_gb: float
    kv_budget_gb: float
    headroom_gb: float


@dataclass(frozen=True)
class ReplicaPlan:
    name: str
    ranks: tuple[RankPlacement, ...]
    backend: str
    tensor_parallel: int
    pipeline_stages: int = 1
    layer_ranges: tuple[tuple[int, int], ...] = ()
    """Per pipeline stage: [first, last) main-model layers; empty when not pipelined."""
    memory: tuple[NodeMemory, ...] = ()
    decode_tok_s_roofline: float = 0.0
    decode_tok_s_expected: float = 0.0
    decode_tok_s_at_context: dict = field(default_factory=dict, compare=False)
    """Expected decode tok/s with that many tokens of context (the KV a step reads added)."""
    context_tokens: int = 0
    """The longest sequence the replica serves: the model's context, or fewer tokens when its
    tightest node's KV budget holds fewer (0: not known)."""
    trained_context: int = 0
    """The model's own context (`max_position_embeddings`; 0: not given): `--max-model-len`
    may ask for more, positions the model never trained on."""
    speculation: dict = field(default_factory=dict, compare=False)
    """Per method ('mtp', 'draft'): 'supported' or the reason it is not."""
    mtp_forecast: tuple[dict, ...] = field(default=(), compare=False)
    """Per k: MTP's expected tokens per step, verify and draft cost in plain steps, speed-up
    (`spec_forecast.py`); empty when the layout or the model has no MTP to forecast."""
    hostfile: tuple[dict, ...] = ()
    index: int = 0
    """Position among the plan's replicas; fixed ports are offset by it."""

    @property
    def leader(self) -> RankPlacement:
        return self.ranks[0]


@dataclass(frozen=True)
class Plan:
    model_type: str
    quantization_bits: int
    params_total: int
    params_active: int
    replicas: tuple[ReplicaPlan, ...]
    refusals: tuple[str, ...] = ()
    assumptions: dict = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return not self.refusals

    def unservable(self) -> str | None:
        """Why `serve` cannot run this plan (refused, or pipelined), or None."""
        if self.refusals:
            return " ".join(self.refusals)
        if any(r.pipeline_stages > 1 for r in self.replicas):
            return (
                "this layout needs pipeline parallelism, which the planner reports but serve does "
                "not run yet; use a node count per replica that divides the model's heads and "
                "experts"
            )
        return None

    def to_json(self) -> dict:
        """ok: the plan fits; servable: serve can run it (a pipelined layout fits but cannot)."""
        why = self.unservable()
        return asdict(self) | {"ok": self.ok, "servable": why is None, "not_servable": why}
