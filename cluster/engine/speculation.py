"""Speculative decoding's state: requested, active or not, and why. Never silent.

The state is decided when a replica loads and changes at runtime; every decision is one
warning log line (changes that only follow the batch size at most one a minute, counted), and
every change shows at once in /v1/status, in Prometheus and in each response's
`x-speculation` header.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("cluster.speculation")
MTP_MODEL_TYPES = ("glm_moe_dsa", "deepseek_v32", "deepseek_v3")
EXPLAIN = {
    "not_requested": "speculation was not requested (--speculation none)",
    "no_mtp_weights": "the checkpoint has no MTP layer (model.layers.{L}.*) and no --mtp-weights",
    "unsupported_model": "this model type has no MTP layer the engine can run",
    "draft_vocab_mismatch": "the draft model's vocabulary differs from the target's",
    "no_draft_model": "--speculation draft needs --draft-model DIR",
    "pipeline_parallel": "the layout pipelines layers across nodes; speculation needs one stage",
    "not_implemented": "this engine build has no decoding loop for the requested method yet",
    "batch_size_above_limit": "more sequences are running than speculation serves",
    "auto_disabled_low_acceptance": "acceptance fell below the configured threshold",
    "auto_disabled_no_speedup": "decoding with speculation measured slower than without",
    "engine_error": "the speculative step failed; decoding continues without it",
}


ROUTED_LOG_SECONDS = 60.0
"""At most one log line this often for changes that only follow the batch size."""


class SpeculationRequired(RuntimeError):
    """--speculation-required and speculation cannot run."""


@dataclass
class SpeculationState:
    requested: str
    k: int
    active: bool = False
    reason: str | None = "not_requested"
    since: float = field(default_factory=time.time)
    fallbacks: dict[str, int] = field(default_factory=dict)
    """State changes to inactive, by reason."""
    k_now: int | None = None
    """The draft length the current batch size's governor uses (None: k)."""
    routed: bool = False
    """The last change came from the batch size moving (to a size whose governor holds
    another state, or past --speculation-max-batch), not from a decision."""
    unlogged: int = 0
    """Such changes since the last line that logged one."""
    routed_at: float = 0.0
    """When a line last logged such a change."""
    k_switches: int = 0
    """Draft-length changes a governor decided so far (followers log the leader's)."""

    def set(self, active: bool, reason: str | None, detail: str = "", routed: bool = False):
        """A change of state, logged. One that only follows the batch size (`routed`: a batch
        moving between sizes where speculation is on and off changes it at every request)
        within a minute of the last such line is counted, and `flush` logs where things
        stand a minute later, or when the replica goes idle."""
        if active == self.active and reason == self.reason:
            return
        self.active, self.reason, self.since = active, reason, time.time()
        if not active and self.requested != "none":
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        self.routed = routed
        if routed and self.since - self.routed_at < ROUTED_LOG_SECONDS:
            self.unlogged += 1
            return
        self._log(detail)

    def flush(self, idle: bool = False) -> None:
        """Log the state if changes went unlogged, a minute after the last line that logged
        one (at once when the replica goes idle)."""
        if self.unlogged and (idle or time.time() - self.routed_at >= ROUTED_LOG_SECONDS):
            self._log("")

    def _log(self, detail: str) -> None:
        note = ""
        if self.unlogged:
            changes = "change" if self.unlogged == 1 else "changes"
            note = (f" [the batch size moved: {self.unlogged} more {changes} since the last "
                    f"line, logged at most once a minute]")  # fmt: skip
        if self.routed:
            self.routed_at = time.time()
        self.unlogged = 0
        if self.active:
            self.announce(note)
            return
        suffix = f": {detail}" if detail else ""
        why = EXPLAIN.get(self.reason, self.reason)
        log.warning(
            "speculation %s k=%d is OFF: %s (%s)%s%s",
            self.requested,
            self.k_now or self.k,
            self.reason,
            why,
            suffix,
            note,
        )

    def announce(self, note: str = "") -> None:
        """Log the state once loading is done (ON only after the drafter loaded)."""
        if self.active:
            now = self.k_now or self.k
            most = f" (up to {self.k})" if now != self.k else ""
            log.warning("speculation %s k=%d is ON%s%s", self.requested, now, most, note)

    def route_k(self, k: int) -> None:
        """The draft length of the batch size decoding now (its governor's): a change moves
        `since`, unlogged (it follows requests joining and leaving)."""
        if k != (self.k_now or self.k):
            self.since = time.time()
        self.k_now = k

    def switch_k(self, k: int, line: str) -> None:
        """A draft length a governor decided: logged (`line`), counted, `since` moved."""
        self.k_switches += 1
        self.route_k(k)
        log.warning("%s", line)

    def shared(self) -> list:
        """What followers of a tensor-parallel group take on (`follow`)."""
        return [self.active, self.reason, self.k_now, self.routed, self.k_switches]

    def follow(self, shared: list) -> None:
        """The leader's state, as `shared` gave it: logged here too, as there."""
        active, reason, k_now, routed, switches = shared
        now = self.k_now or self.k
        if switches != self.k_switches and k_now not in (None, now):
            line = f"speculation {self.requested} k {now} -> {k_now}: as the leader decided"
            self.switch_k(k_now, line)
        elif k_now is not None:
            self.route_k(k_now)
        self.k_switches = switches
        self.set(active, reason, "as the leader decided", routed)

    def header(self) -> str:
        if self.active:
            return f"{self.requested};k={self.k_now or self.k}"
        return f"off;reason={self.reason}"

    def to_json(self) -> dict:
        return {
            "requested": self.requested,
            "k": self.k,
            "k_now": self.k_now or self.k,
            "active": self.active,
            "reason": self.reason,
            "explanation": None if self.active else EXPLAIN.get(self.reason, self.reason),
            "since": self.since,
            "fallbacks": dict(self.fallbacks),
            "summary": self.header(),
        }


def has_mtp_weights(model_dir: str | Path, config: dict) -> bool:
    """Whether the checkpoint's safetensors hold the MTP layer `model.layers.{L}.*`."""
    prefix = f"model.layers.{config['num_hidden_layers']}."
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        return any(k.startswith(prefix) for k in json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            if any(k.startswith(prefix) for k in f.keys()):  # noqa: SIM118
                return True
    return False


def vocab_of(model_dir: str | Path) -> dict[str, int]:
    data = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    vocab |= {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    return vocab


def unavailable(config, model_dir, model_config: dict) -> tuple[str, str] | None:
    """(reason, detail) when the requested speculation cannot run on this replica, else None."""
    method = config.speculation
    if method in ("mtp", "mtp+ngram"):
        if model_config.get("model_type") not in MTP_MODEL_TYPES:
            return "unsupported_model", str(model_config.get("model_type"))
        if not config.mtp_weights and not has_mtp_weights(model_dir, model_config):
            return "no_mtp_weights", str(model_dir)
        return None
    if method == "draft":
        if not config.draft_model:
            return "no_draft_model", ""
        target, draft = vocab_of(model_dir), vocab_of(config.draft_model)
        if target != draft:
            # Tokens (strings) the two map to different ids, or only one of them has.
            differ = sum(target.get(t) != draft.get(t) for t in target.keys() | draft.keys())
            return "draft_vocab_mismatch", (
                f"target has {len(target)} tokens, draft {len(draft)}; {differ} tokens differ"
            )
        return None
    return None


def resolve(config, model_dir, model_config: dict) -> SpeculationState:
    """The state speculation starts in for this replica (logged when it is off; on, it is
    logged by `announce` once the drafter has loaded)."""
    state = SpeculationState(config.speculation, config.num_speculative_tokens)
    if config.speculation == "none":
        return state
    if why := unavailable(config, model_dir, model_config):
        reason, detail = why
        if config.speculation_required:
            raise SpeculationRequired(
                f"--speculation-required: speculation {config.speculation} cannot run: "
                f"{reason} ({EXPLAIN.get(reason, reason)}){': ' + detail if detail else ''}"
            )
        state.set(False, reason, detail)
        return state
    state.active, state.reason = True, None  # logged ON once its drafter has loaded
    return state
