"""Typed, validated configuration; every field has a default and a one-line help."""

from dataclasses import dataclass, field

MiB = 1 << 20
QUEUE_AHEAD = ("auto", "always", "never")
"""--queue-ahead's choices (engine/queue_ahead.py)."""


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


SPECULATION_METHODS = ("none", "mtp", "draft", "ngram", "mtp+ngram")
UNBUDGETED_PREFIX_CACHE_BYTES = 512 * MiB
"""The prefix cache's bound when neither --prefix-cache-bytes nor a KV budget gives one."""


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = _help("most sequences decoded together (continuous batching)", 16)
    prefill_step_size: int = _help("most prompt tokens computed in one prefill chunk", 2048)
    block_size: int = _help("tokens per prefix-cache block (and per routing hash)", 16)
    prefix_cache_bytes: int | None = _help(
        "memory bound of the prefix cache in bytes, KV arrays and bookkeeping (default: what "
        "the KV budget leaves it; 512 MiB without a budget)",
        None,
    )
    kv_cache_bytes: int | None = _help(
        "KV memory of a replica per rank: running sequences, prompts being prefilled and the "
        "prefix cache together (default: the plan's KV budget; none without a plan)",
        None,
    )
    prefix_cache_disk_bytes: int = _help(
        "disk bound of the prefix cache's disk tier, which keeps evicted entries across "
        "restarts (0: no disk tier)",
        0,
    )
    prefix_cache_disk_dir: str | None = _help(
        "directory of the disk tier, REPLICA/rank-R under it (default: CLUSTER_HOME/prefix-cache)",
        None,
    )
    kv_bits: int | None = _help("quantize stored prefix-cache KV to this many bits (4 or 8)", None)
    max_model_len: int | None = _help(
        "context length (default: the model's, or what the KV budget holds if less)", None
    )
    max_queue: int = _help("requests waiting beyond max_num_seqs before 429", 64)
    seed: int = _help(
        "the engine's base seed: unseeded sampled requests draw keys from it in "
        "arrival order (a request's own seed repeats its reply)",
        0,
    )
    speculation: str = _help(
        "speculative decoding: none, mtp (the model's MTP layer), draft (a draft model) or "
        "ngram (prompt lookup: no model, any checkpoint) or mtp+ngram (per row, the lookup's "
        "draft when it agrees with MTP's first token, else MTP's)",
        "none",
    )
    num_speculative_tokens: int = _help("draft tokens proposed per step", 1)
    speculation_min_acceptance: float = _help(
        "turn speculation off below this share of accepted drafts (0: never)", 0.0
    )
    speculation_max_batch: int = _help(
        "speculate while at most this many sequences decode together (more: plain decoding, "
        "reported as batch_size_above_limit)",
        16,
    )
    speculation_probe_every: int = _help(
        "speculating steps (per batch-size bucket) between two governor probes", 64
    )
    speculation_probe_steps: int = _help("steps a governor probe decodes without drafts", 8)
    speculation_probe_losses: int = _help(
        "probes in a row that must measure drafts slower before the governor turns speculation "
        "off (one noisy probe does not)",
        2,
    )
    speculation_adapt_k: bool = _help(
        "each governor probe also tries a draft length one shorter or longer (within 1 to "
        "--num-speculative-tokens) and keeps one that measured more than 5 percent faster in two "
        "probes in a row, per batch size",
        True,
    )
    speculation_cooldown: int = _help(
        "steps speculation stays off after the governor turned it off, before it tries again", 512
    )
    speculation_required: bool = _help("refuse to serve rather than run without speculation", False)
    mtp_weights: str | None = _help(
        "safetensors with the MTP layer, if the checkpoint lacks it", None
    )
    mtp_bits: int | None = _help(
        "quantize the MTP layer at load to these bits (default: the main model's; 16: keep it)",
        None,
    )
    draft_model: str | None = _help("draft model directory for --speculation draft", None)
    queue_ahead: str = _help(
        "queue the next speculative step before reading the current one, on the guess that "
        "every draft is kept (MTP and draft models): auto (where the measured step times say "
        "it pays), always or never",
        "auto",
    )
    ngram_min: int = _help("--speculation ngram: shortest tail n-gram looked up", 2)
    ngram_max: int = _help("--speculation ngram: longest tail n-gram matched", 5)
    heap_trim_seconds: float = _help(
        "give freed heap pages back to the OS at most this often (glibc only; 0: never)", 10.0
    )
    sparse_prefill: bool = _help(
        "DSA models: past index_topk keys each prompt token attends to its top-k keys only "
        "(mlx-lm computes dense attention under a sparse mask)",
        True,
    )
    pipeline_decode: bool = _help(
        "queue each decode step before reading the previous one's tokens (host work overlaps "
        "the device)",
        True,
    )
    eager_layers: bool = _help(
        "hand each decoder layer to the device as soon as it is built, so the device computes "
        "one layer while the host builds the next (same results)",
        True,
    )
    fuse_cpu_ops: bool = _help(
        "MLX's CPU backend: norms compiled into fused kernels, RoPE from position tables, "
        "linear layers against a transposed view made once (same results, fewer ops per "
        "step; no effect on Metal)",
        True,
    )
    step_timeout: float = _help(
        "seconds an engine step or collective may take before the replica counts as hung, "
        "or 8x its slowest recent step if longer (0: no watchdog)",
        20.0,
    )

    def __post_init__(self):
        n = self.speculation
        checks = {
            "max_num_seqs": (self.max_num_seqs >= 1, ">= 1"),
            "prefill_step_size": (self.prefill_step_size >= 1, ">= 1"),
            "block_size": (self.block_size >= 1, ">= 1"),
            "prefix_cache_bytes": (self.prefix_cache_bytes is None
                                   or self.prefix_cache_bytes >= 0, ">= 0"),  # fmt: skip
            "prefix_cache_disk_bytes": (self.prefix_cache_disk_bytes >= 0, ">= 0"),
            "kv_bits": (self.kv_bits in (None, 4, 8), "4 or 8"),
            "mtp_bits": (self.mtp_bits in (None, 2, 3, 4, 5, 6, 8, 16), "2, 3, 4, 5, 6, 8 or 16"),
            "kv_cache_bytes": (self.kv_cache_bytes is None or self.kv_cache_bytes > 0, "> 0"),
            "max_model_len": (self.max_model_len is None or self.max_model_len >= 2, ">= 2"),
            "max_queue": (self.max_queue >= 0, ">= 0"),
            "seed": (self.seed >= 0, ">= 0"),
            "speculation": (n in SPECULATION_METHODS, ", ".join(SPECULATION_METHODS)),
            "ngram_min": (self.ngram_min >= 1, ">= 1"),
            "ngram_max": (self.ngram_min <= self.ngram_max <= 32,
                          f"from --ngram-min ({self.ngram_min}) to 32"),
            "queue_ahead": (self.queue_ahead in QUEUE_AHEAD, ", ".join(QUEUE_AHEAD)),
            "speculation_min_acceptance": (0 <= self.speculation_min_acceptance <= 1,
                                           "a share from 0 to 1"),
            "speculation_max_batch": (self.speculation_max_batch >= 1, ">= 1"),
            "speculation_probe_every": (self.speculation_probe_every >= 1, ">= 1"),
            "speculation_probe_steps": (self.speculation_probe_steps >= 1, ">= 1"),
            "speculation_cooldown": (self.speculation_cooldown >= 1, ">= 1"),
            "speculation_probe_losses": (self.speculation_probe_losses >= 1, ">= 1"),
            "num_speculative_tokens": (1 <= self.num_speculative_tokens <= 8, "from 1 to 8"),
            "heap_trim_seconds": (self.heap_trim_seconds >= 0, ">= 0"),
            "step_timeout": (self.step_timeout >= 0, ">= 0 (0: no watchdog)"),
        }  # fmt: skip
        for name, (ok, wanted) in checks.items():
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} {getattr(self, name)!r}: must be {wanted}")
