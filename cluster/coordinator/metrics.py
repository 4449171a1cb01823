"""Prometheus metrics of the whole cluster, named after vLLM's with our own prefix.

Request metrics are observed as requests stream through the coordinator; replica, node and rank
gauges are read at scrape time from the status the supervisor polls.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

disable_created_metrics()  # no *_created series beside every counter and histogram
FINISH_REASONS = ("stop", "length", "abort", "error")

PREFIX = "cluster:"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
LABELS = ("model_name", "replica")


class Metrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.model_name = model_name
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def hist(name, doc, buckets):
            return Histogram(PREFIX + name, doc, LABELS, buckets=buckets, registry=r)

        def counter(name, doc, extra=()):
            return Counter(PREFIX + name, doc, LABELS + tuple(extra), registry=r)

        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between streamed tokens.", ITL_BUCKETS)
        self.e2e = hist(
            "e2e_request_latency_seconds", "Request latency end to end.", REQUEST_BUCKETS
        )
        self.queue = hist(
            "request_queue_time_seconds", "Time waiting in the engine.", REQUEST_BUCKETS
        )
        self.prefill = hist("request_prefill_time_seconds", "Prefill time.", REQUEST_BUCKETS)
        self.decode = hist("request_decode_time_seconds", "Decode time.", REQUEST_BUCKETS)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.success = counter("request_success", "Requests finished.", ["finished_reason"])
        self.cache_queries = counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.cache_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.routing = counter("routing_decisions", "Requests routed, by reason.", ["reason"])
        self.rejected = Counter(
            PREFIX + "requests_rejected", "Requests refused, by HTTP status (4xx and 503).",
            ("model_name", "status"), registry=r,
        )  # fmt: skip

    def start_replica(self, replica: str) -> None:
        """Create a replica's counters at zero, so rates exist before the first event."""
        labels = self.labels(replica)
        for reason in FINISH_REASONS:
            self.success.labels(**labels, finished_reason=reason)
        for counter in (
            self.prompt_tokens,
            self.generation_tokens,
            self.cache_queries,
            self.cache_hits,
        ):
            counter.labels(**labels)
        for status in ("429", "503"):
            self.rejected.labels(self.model_name, status)

    def labels(self, replica: str) -> dict:
        return {"model_name": self.model_name, "replica": replica}

    def track(self, replica: str) -> "RequestTracker":
        return RequestTracker(self, replica)


class RequestTracker:
    """Observes one request's timeline as its outputs stream by."""

    def __init__(self, metrics: Metrics, replica: str):
        self.m = metrics
        self.labels = metrics.labels(replica)
        self.start = time.monotonic()
        self.last: float | None = None
        self.tokens = 0

    def on_output(self, num_tokens: int) -> None:
        new = num_tokens - self.tokens
        if new <= 0:
            return
        now = time.monotonic()
        if self.last is None:
            self.m.ttft.labels(**self.labels).observe(now - self.start)
            new -= 1
        else:
            gap = (now - self.last) / new
            for _ in range(new):
                self.m.itl.labels(**self.labels).observe(gap)
        self.last, self.tokens = now, num_tokens

    def on_finish(self, reason: str, prompt_tokens: int, cached: int, event) -> None:
        l = self.labels  # noqa: E741
        self.m.e2e.labels(**l).observe(time.monotonic() - self.start)
        self.m.success.labels(**l, finished_reason=reason).inc()
        self.m.prompt_tokens.labels(**l).inc(prompt_tokens)
        self.m.generation_tokens.labels(**l).inc(self.tokens)
        self.m.cache_queries.labels(**l).inc(prompt_tokens)
        self.m.cache_hits.labels(**l).inc(cached)
        if event is not None:
            self.m.queue.labels(**l).observe(event.queue_seconds)
            self.m.prefill.labels(**l).observe(event.prefill_seconds)
            self.m.decode.labels(**l).observe(event.decode_seconds)


class ClusterCollector:
    """Replica, node and rank gauges, from the coordinator's registry at scrape time."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def collect(self):
        c = self.coordinator
        name = c.model_name

        def gauge(metric, doc, labels):
            return GaugeMetricFamily(PREFIX + metric, doc, labels=["model_name", *labels])

        up = gauge("replica_up", "1 when the replica is ready to serve.", ["replica", "state"])
        info = gauge(
            "replica_info",
            "Plan of each replica (value 1).",
            ["replica", "tensor_parallel", "backend"],
        )
        restarts = gauge("replica_restarts", "Times the replica was restarted.", ["replica"])
        running = gauge("num_requests_running", "Sequences decoding or prefilling.", ["replica"])
        waiting = gauge("num_requests_waiting", "Sequences waiting for a slot or KV room.",
                        ["replica"])  # fmt: skip
        prefilling = gauge("num_requests_prefilling", "Of the running, prompts being prefilled.",
                           ["replica"])  # fmt: skip
        prefill_left = gauge("prefill_tokens_left", "Prompt tokens still to prefill.", ["replica"])
        in_flight = gauge(
            "num_requests_in_flight", "Requests routed and not finished.", ["replica"]
        )
        kv = gauge(
            "kv_cache_usage_bytes",
            "KV bytes held: running batch, prompts being prefilled and prefix cache.",
            ["replica"],
        )
        kv_budget = gauge(
            "kv_cache_budget_bytes", "The replica's KV budget per rank (absent: none).", ["replica"]
        )
        kv_booked = gauge(
            "kv_cache_booked_bytes",
            "KV bytes the running and admitted sequences book (each batch row at the longest "
            "row's length, whole prompts): a request waits when its own would pass the budget.",
            ["replica"],
        )
        preemptions = CounterMetricFamily(
            PREFIX + "kv_cache_preemptions",
            "Running sequences sent back to wait for KV room (recomputed later).",
            labels=["model_name", "replica"],
        )
        cache_perc = gauge(
            "prefix_cache_usage_perc", "Prefix cache bytes over its bound.", ["replica"]
        )
        tier_hits = CounterMetricFamily(
            PREFIX + "prefix_cache_tier_hits",
            "Prompt tokens a replica's prefix cache served, by tier (memory, disk).",
            labels=["model_name", "replica", "tier"],
        )
        disk_bytes = gauge(
            "prefix_cache_disk_bytes", "Bytes of the prefix cache's disk tier.", ["replica"]
        )
        step = gauge("step_seconds_avg", "Mean engine step time.", ["replica"])
        exchange = gauge(
            "lockstep_seconds_avg", "Mean per-step leader-to-follower collective time.", ["replica"]
        )
        sleeping = gauge(
            "lockstep_sleeping_followers",
            "Followers of a TP replica that sleep while it idles (the others spin in MLX's ring).",
            ["replica"],
        )
        rank_up = gauge("rank_up", "1 while the rank process runs.", ["replica", "node", "rank"])
        rank_mem = gauge(
            "rank_memory_bytes", "Resident memory of the rank process.", ["replica", "node", "rank"]
        )
        model_bytes = gauge(
            "model_bytes", "Bytes of this rank's weights.", ["replica", "node", "rank"]
        )
        spec_active = gauge(
            "spec_decode_active",
            "1 while speculative decoding runs.",
            ["replica", "method", "reason"],
        )
        spec_k = gauge(
            "spec_decode_draft_length",
            "Draft tokens per step the governor uses now, by batch-size bucket.",
            ["replica", "batch_size"],
        )
        spec_counters = {
            key: CounterMetricFamily(PREFIX + name, doc, labels=["model_name", "replica"])
            for key, name, doc in (
                ("drafts", "spec_decode_num_drafts", "Draft proposals (k tokens each)."),
                ("draft_tokens", "spec_decode_num_draft_tokens", "Draft tokens proposed."),
                ("accepted_tokens", "spec_decode_num_accepted_tokens", "Draft tokens accepted."),
            )
        }
        trims = CounterMetricFamily(
            PREFIX + "heap_trims",
            "Times the leader rank gave freed heap pages back to the OS (glibc malloc_trim).",
            labels=["model_name", "replica"],
        )
        trim_seconds = CounterMetricFamily(
            PREFIX + "heap_trim_seconds",
            "Time the leader rank spent trimming.",
            labels=["model_name", "replica"],
        )
        per_pos = CounterMetricFamily(
            PREFIX + "spec_decode_num_accepted_tokens_per_pos",
            "Accepted draft tokens by position (unconditional, vLLM's definition).",
            labels=["model_name", "replica", "position"],
        )
        spec_fallbacks = CounterMetricFamily(
            PREFIX + "spec_decode_fallbacks",
            "Times speculation turned off, by reason.",
            labels=["model_name", "replica", "method", "reason"],
        )
        for r in c.replicas:
            up.add_metric([name, r.name, r.state], 1.0 if r.state == "ready" else 0.0)
            plan = r.plan or {}
            info.add_metric(
                [name, r.name, str(plan.get("tensor_parallel", "")), str(plan.get("backend", ""))],
                1.0,
            )
            restarts.add_metric([name, r.name], r.restarts)
            in_flight.add_metric([name, r.name], r.in_flight)
            s = r.stats or {}
            running.add_metric([name, r.name], s.get("num_running", 0))
            waiting.add_metric([name, r.name], s.get("num_waiting", 0))
            prefilling.add_metric([name, r.name], s.get("num_prefilling", 0))
            prefill_left.add_metric([name, r.name], s.get("prefill_tokens_left", 0))
            cache = s.get("prefix_cache", {})
            budget = s.get("kv") or {}
            used = budget.get("used_bytes", cache.get("bytes", 0) + s.get("batch_kv_bytes", 0))
            kv.add_metric([name, r.name], used)
            if budget.get("budget_bytes"):
                kv_budget.add_metric([name, r.name], budget["budget_bytes"])
            if "booked_bytes" in budget:
                kv_booked.add_metric([name, r.name], budget["booked_bytes"])
            if budget:
                preemptions.add_metric([name, r.name], budget.get("preemptions", 0))
            cap = cache.get("capacity_bytes") or 0
            cache_perc.add_metric([name, r.name], cache.get("bytes", 0) / cap if cap else 0.0)
            if "hit_tokens" in cache:
                disk = cache.get("disk") or {}
                on_disk = disk.get("hit_tokens", 0)
                tier_hits.add_metric([name, r.name, "memory"], cache["hit_tokens"] - on_disk)
                tier_hits.add_metric([name, r.name, "disk"], on_disk)
                if "bytes" in disk:
                    disk_bytes.add_metric([name, r.name], disk["bytes"])
            step.add_metric([name, r.name], s.get("step_ms_avg", 0.0) / 1000)
            if trim := s.get("heap_trim"):
                trims.add_metric([name, r.name], trim["trims"])
                trim_seconds.add_metric([name, r.name], trim["seconds"])
            exchange.add_metric([name, r.name], s.get("exchange_ms_avg", 0.0) / 1000)
            if "sleeping_followers" in s:
                sleeping.add_metric([name, r.name], s["sleeping_followers"])
            for rank in r.ranks:
                labels = [name, r.name, rank["node"], str(rank["rank"])]
                rank_up.add_metric(labels, 1.0 if rank.get("alive", r.state == "ready") else 0.0)
                if "memory_bytes" in rank:
                    rank_mem.add_metric(labels, rank["memory_bytes"])
            if spec := s.get("speculation"):
                labels = [name, r.name, spec["requested"]]
                spec_active.add_metric([*labels, spec["reason"] or ""], float(spec["active"]))
                for reason, count in spec["fallbacks"].items():
                    spec_fallbacks.add_metric([*labels, reason], count)
                for size, k in spec.get("k_by_batch_size", {}).items():
                    spec_k.add_metric([name, r.name, size.removeprefix("batch size ")], k)
                if "drafts" in spec:
                    for key, family in spec_counters.items():
                        family.add_metric([name, r.name], spec[key])
                    for pos, count in enumerate(spec["accepted_per_position"]):
                        per_pos.add_metric([name, r.name, str(pos)], count)
            if s.get("model_bytes") and r.ranks:
                leader = r.ranks[0]
                model_bytes.add_metric([name, r.name, leader["node"], "0"], s["model_bytes"])
        yield from (up, info, restarts, running, waiting, prefilling, prefill_left, in_flight,
                    kv, kv_budget, kv_booked, preemptions, cache_perc, tier_hits, disk_bytes,
                    step, exchange, sleeping, rank_up, rank_mem, model_bytes, trims,
                    trim_seconds, spec_active, spec_k, spec_fallbacks, per_pos,
                    *spec_counters.values())  # fmt: skip

    def describe(self):
        return []
