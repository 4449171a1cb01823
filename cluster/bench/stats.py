"""Per-request measurements and their aggregates (avg, p50, p95, p99)."""

from dataclasses import asdict, dataclass


@dataclass
class Result:
    label: str
    target: str
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    decode_s: float = 0.0
    """Time from the first token to the last."""

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ok and self.ttft_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = self.completion_tokens - 1
        return n / self.decode_s if self.ok and n > 0 and self.decode_s > 0 else 0.0

    @property
    def overall_tok_s(self) -> float:
        return self.completion_tokens / self.total_s if self.ok and self.total_s > 0 else 0.0

    def to_json(self) -> dict:
        derived = {
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "overall_tok_s": self.overall_tok_s,
        }
        return asdict(self) | derived


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float | None]:
    """avg and percentiles; None for each when there is no value (every request failed: a 0
    would read as infinitely fast)."""
    if not values:
        return {"avg": None, "p50": None, "p95": None, "p99": None}
    avg = sum(values) / len(values)
    return {
        "avg": avg,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }


@dataclass
class PhaseResult:
    name: str
    target: str
    concurrency: int
    wall_s: float
    results: list[Result]
    server: dict | None = None
    """What the server's own metrics said over the phase (our coordinator only)."""

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]

    def metric_summary(self) -> dict[str, dict[str, float]]:
        ok = self.ok
        return {
            "TTFT (ms)": summarize([1000 * r.ttft_s for r in ok]),
            "Tok/s (overall)": summarize([r.overall_tok_s for r in ok]),
            "Prefill (tok/s)": summarize([r.prefill_tok_s for r in ok]),
            "Decode (tok/s)": summarize([r.decode_tok_s for r in ok if r.completion_tokens > 1]),
        }

    @property
    def throughput(self) -> float:
        return sum(r.completion_tokens for r in self.ok) / self.wall_s if self.wall_s else 0.0

    @property
    def rps(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s else 0.0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "target": self.target,
            "concurrency": self.concurrency,
            "wall_s": self.wall_s,
            "throughput_tok_s": self.throughput,
            "rps": self.rps,
            "failed": len(self.results) - len(self.ok),
            "summary": self.metric_summary(),
            "server": self.server,
            "requests": [r.to_json() for r in self.results],
        }
