"""Replica registry, admission and routing; turns prompts into streams of text deltas."""

import asyncio
import fnmatch
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..hashing import block_hashes, hash_seed
from ..router.events import follow_all
from ..router.index import PrefixIndex
from ..router.policies import make_policy
from ..router.policy import SelectInfo
from ..router.policy import ready as routable
from ..rpc.client import RequestRefused
from ..types import EngineRequest, RequestId, SamplingParams, TokenEvent
from .errors import BadRequest, EngineFailure, ModelNotFound, Overloaded, Unavailable
from .metrics import Metrics
from .output import OutputProcessor
from .replicas import Replica, Replicas
from .tokenizer import PromptTokenizer

log = logging.getLogger(__name__)


@dataclass
class Output:
    """One streamed piece of a completion."""

    text: str
    num_tokens: int
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int
    draft_tokens: int = 0
    """Speculative decoding so far: draft tokens proposed for this request, and kept."""
    accepted_tokens: int = 0
    reasoning: str = ""
    """Chat: reasoning text of this piece, apart from `text`."""
    tool_calls: list = field(default_factory=list)
    """Chat: tool-call pieces of this piece (glm_output.ToolCallDelta)."""
    logprobs: tuple = ()
    """TokenLogprob of this piece's tokens, when the request asked for them."""
    speculation: str = ""
    """On the last piece: what speculation the request got (empty: none requested)."""
    prompt_logprobs: tuple = ()
    """On the first piece, when asked for: TokenLogprob of each prompt token after the first."""
    reasoning_tokens: int = 0
    """Chat: tokens of reasoning so far."""


FAILOVER_WAIT = 30.0
"""Seconds a request whose replica failed before its first token waits for one to be ready."""
MAX_MOVES = 2
"""A request that fails before its first token moves to another replica at most this often:
one that fails on every replica in turn (a fault of its own the engine did not name) ends."""
SHUTTING_DOWN = "The server is shutting down; retry later."
"""What a request refused or ended before its first token at shutdown is told."""


class Completion:
    """A routed request's output stream; holds its replica slot until closed or finished."""

    def __init__(self, replica: Replica, request: EngineRequest, stream_of):
        """stream_of(completion) makes the stream; it may move() the request elsewhere."""
        self.replica = replica
        self.events = replica.client.generate(request)
        """The engine events of the replica now serving the request: sent at once, so the
        engine prefills while the response's headers go out."""
        self._open = True
        replica.in_flight += 1
        self._stream = stream_of(self)

    def move(self, replica: Replica, request: EngineRequest) -> None:
        """Re-route (before any output): the slot and the request move to the new replica."""
        self.replica.in_flight -= 1
        self.replica = replica
        replica.in_flight += 1
        self.events = replica.client.generate(request)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Output:
        try:
            return await self._stream.__anext__()
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        await self._stream.aclose()
        await self.events.aclose()  # a stream never read still has its call open

    def _release(self) -> None:
        if self._open:
            self._open = False
            self.replica.in_flight -= 1
            self.replica.served += 1


class Coordinator:
    def __init__(
        self,
        model_name: str,
        tokenizer: PromptTokenizer,
        max_queue: int,
        settings: dict | None = None,
        metrics: Metrics | None = None,
        policy: str = "prefix_affinity",
        block_size: int = 16,
        aliases: tuple[str, ...] = (),
        default_max_tokens: int | None = None,
    ):
        self.model_name = model_name
        self.aliases = tuple(a for a in aliases if a != model_name)
        """Other names requests may use for the served model (`--served-model-name A B ...`)."""
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.default_max_tokens = default_max_tokens
        """A reply's cap when its request sets none (`--default-max-tokens`; None: the room)."""
        self.settings = settings or {}
        self.metrics = metrics or Metrics(model_name)
        self.replicas = Replicas(on_new=self.metrics.start_replica)
        """Filled by the supervisor as replicas come up (its registry)."""
        self.index = PrefixIndex()
        self.policy = make_policy(policy, self.index)
        self.block_size = block_size
        self.hash_seed = hash_seed(model_name)
        self._followers: list = []
        self.started = time.time()
        self._request_ids = itertools.count()
        self.stopping = False
        """Set at shutdown: new requests get a 503 and failed ones are not moved."""

    @property
    def max_model_len(self) -> int:
        lens = [r.client.info.max_model_len for r in self.replicas if r.client and r.client.info]
        return min(lens, default=0)

    def check_model(self, model: str | None) -> None:
        """A name the cluster serves: its own, an alias, or one an alias with `*` matches
        (`claude-*` takes an agent's dated names)."""
        if model in (None, "", self.model_name, *self.aliases):
            return
        if any("*" in a and fnmatch.fnmatchcase(model, a) for a in self.aliases):
            return
        raise ModelNotFound(model, self.model_name, self.aliases)

    def reply_name(self, model: str | None) -> str:
        """The name a reply carries: the one its request asked for (the served name or an
        alias, as vLLM answers), else the served name."""
        return model or self.model_name

    @property
    def kv_capacity_tokens(self) -> int:
        """The longest sequence every replica's KV budget holds (0: none is bounded)."""
        caps = [r.client.info.kv_capacity_tokens for r in self.replicas
                if r.client and r.client.info and r.client.info.kv_capacity_tokens]  # fmt: skip
        return min(caps, default=0)

    def check_length(self, prompt_len: int, max_tokens: int | None, param: str,
                     prompt_param: str = "messages") -> int:  # fmt: skip
        """The max_tokens to use; refuses prompts that leave no room to generate (param and
        prompt_param: the request's fields for each)."""
        limit = self.max_model_len
        if not limit:  # no replica has served yet: its context length is not known
            raise self._unavailable()
        what = f"This model's maximum context length is {limit} tokens"
        if limit == self.kv_capacity_tokens:
            what = (
                f"The replicas' KV cache budget (--kv-cache-bytes) holds at most {limit} tokens "
                "per sequence"
            )
        if prompt_len >= limit:
            raise BadRequest(
                f"{what}, but the prompt has {prompt_len} tokens, leaving no room for a reply. "
                f"Shorten the prompt to at most {limit - 1} tokens.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        room = limit - prompt_len
        if max_tokens is None:
            return min(room, self.default_max_tokens or room)
        if max_tokens > room:
            # The figures in the words agents parse to retry with a smaller cap (Hermes reads
            # `available_tokens N`; "requested ... output tokens" says the cap is the problem).
            raise BadRequest(
                f"{what}; you requested {prompt_len + max_tokens} tokens ({prompt_len} in the "
                f"prompt, {max_tokens} output tokens): {param} {max_tokens} > available_tokens "
                f"{room}. Lower {param} to at most {room} or shorten the prompt.",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens

    def _admit(self) -> list[Replica]:
        """The ready replicas, if the cluster can take one more request."""
        ready = [] if self.stopping else routable(list(self.replicas))
        if not ready:
            raise self._unavailable()
        capacity = sum(r.max_num_seqs for r in ready) + self.max_queue
        if sum(r.in_flight for r in ready) >= capacity:
            self.metrics.rejected.labels(self.model_name, "429").inc()
            raise Overloaded(
                f"The cluster is at capacity ({capacity} requests running or queued); "
                "retry after the Retry-After interval."
            )
        return ready

    def _unavailable(self) -> Unavailable:
        """No replica can take a request now (counted), and why: shutting down, still
        loading (at start), or none ready."""
        self.metrics.rejected.labels(self.model_name, "503").inc()
        if self.stopping:
            return Unavailable(SHUTTING_DOWN)
        if all(r.state == "starting" for r in self.replicas):
            return Unavailable("No replica is ready yet: the model is loading (progress in "
                               "/v1/status); retry after the Retry-After interval.")  # fmt: skip
        return Unavailable("No replica is ready to serve; check /v1/status.")

    def prompt_hashes(self, prompt: list[int]) -> list[int]:
        """The prompt's routing block hashes (the API computes them off the event loop)."""
        return block_hashes(list(prompt), self.block_size, self.hash_seed)

    def route(
        self,
        prompt: list[int],
        session_id: str | None = None,
        hashes: list[int] | None = None,
        opening: bool = False,
    ) -> tuple[Replica, str]:
        return self._select(self._admit(), prompt, session_id, hashes=hashes, opening=opening)

    def _select(self, ready: list[Replica], prompt, session_id, reason: str | None = None,
                hashes: list[int] | None = None, opening: bool = False):  # fmt: skip
        """The policy's pick among ready replicas, counted under its reason (or `reason`)."""
        if hashes is None:
            hashes = self.prompt_hashes(prompt)
        info = SelectInfo(len(prompt), hashes, self.block_size, session_id, opening)
        replica, picked = self.policy.select(ready, info)
        reason = reason or picked
        self.metrics.routing.labels(**self.metrics.labels(replica.name), reason=reason).inc()
        return replica, reason

    def watch_caches(self) -> None:
        """Follow every replica's cache events into the prefix index."""
        if self.policy.name == "prefix_affinity" and not self._followers:
            self._followers = follow_all(list(self.replicas), self.index)

    def new_request_id(self, prefix: str) -> RequestId:
        return RequestId(f"{prefix}-{int(self.started)}-{next(self._request_ids)}")

    def start(
        self,
        request_id: RequestId,
        prompt: list[int],
        sampling: SamplingParams,
        processor: "OutputProcessor | None" = None,
        session_id: str | None = None,
        hashes: list[int] | None = None,
        opening: bool = False,
    ) -> Completion:
        """Admit and route now (so errors come before any byte is sent), stream later.

        processor turns token ids into text (and for chat, reasoning and tool calls); the
        default decodes plain text with no stop strings. opening: the request opens a
        conversation (routing may spread it)."""
        hashes = self.prompt_hashes(prompt) if hashes is None else hashes
        replica, _ = self.route(prompt, session_id, hashes, opening)
        # The engine reuses routing's hashes for its prefix cache: each block hashed once.
        request = EngineRequest(request_id, tuple(prompt), sampling, tuple(hashes))
        out = processor or OutputProcessor(self.tokenizer.decode, [], self.tokenizer.stream_bytes)
        return Completion(replica, request, lambda c: self._stream(c, request, out, session_id))

    async def _failover(self, completion: Completion, request: EngineRequest, session, error):
        """A request whose replica failed before its first token: mark that replica suspect
        (no new requests until the supervisor has looked) and move the request to a ready
        replica, waiting up to FAILOVER_WAIT for one. Raises when none becomes ready."""
        failed = completion.replica
        if self.stopping:  # its channel was closed by the shutdown, not a fault
            raise Unavailable(SHUTTING_DOWN)
        self.replicas.suspect(failed, f"a request failed: {error}")
        log.warning("replica %s failed request %s before its first token (%s); re-routing",
                    failed.name, request.request_id, error)  # fmt: skip
        deadline = time.monotonic() + FAILOVER_WAIT
        while True:
            ready = routable(list(self.replicas))
            if ready:
                target, _ = self._select(ready, request.prompt_token_ids, session, "failover")
                completion.move(target, request)
                return
            if time.monotonic() > deadline:  # no replica can take it now: 503, Retry-After
                raise Unavailable(
                    f"replica {failed.name} failed: {error}; no replica became ready within "
                    f"{FAILOVER_WAIT:.0f}s; retry later"
                )
            await asyncio.sleep(0.2)

    async def _stream(
        self, completion: Completion, request: EngineRequest, out: OutputProcessor, session=None
    ) -> AsyncIterator[Output]:
        replica = completion.replica
        tracker = self.metrics.track(replica.name)
        prompt_tokens, unfinished, cached = len(request.prompt_token_ids), "abort", 0
        try:
            async for event in self._events(completion, request, session, tracker):
                cached = event.cached_tokens or cached  # (a request cut short hit it too)
                if event.error:
                    unfinished = "error"
                    if self.stopping:  # its channel was closed by the shutdown, not a fault
                        raise Unavailable("the server is shutting down: the reply was cut; "
                                          "send the request again once it is back")  # fmt: skip
                    why = f"replica {completion.replica.name} failed: {event.error}"
                    log.warning("request %s ended with an error after %d tokens: %s",
                                request.request_id, out.num_tokens, why)  # fmt: skip
                    raise EngineFailure(why)
                if event.speculation:  # the state changes within steps, which make events
                    completion.replica.speculation = event.speculation
                deltas = out.pieces(event.token_ids, event.finish_reason)
                tracker.on_output(out.num_tokens)
                logprobs, prompt_logprobs = event.logprobs, event.prompt_logprobs
                for delta in deltas:
                    if delta.finish_reason is not None:
                        unfinished = None
                        last = event if event.finish_reason else None
                        tracker.on_finish(delta.finish_reason, prompt_tokens,
                                          event.cached_tokens, last)  # fmt: skip
                    n = len(delta.token_ids)  # the engine's logprobs are one per token
                    yield Output(
                        delta.text, out.num_tokens, delta.finish_reason, event.prompt_tokens,
                        event.cached_tokens, event.draft_tokens, event.accepted_tokens,
                        delta.reasoning, delta.tool_calls, logprobs[:n],
                        event.request_speculation, prompt_logprobs,
                        getattr(out, "reasoning_tokens", 0),
                    )  # fmt: skip
                    logprobs, prompt_logprobs = logprobs[n:], ()
                    if delta.finish_reason is not None:
                        return
        except Exception:
            unfinished = "error"  # (the failover found no replica; the output failed)
            raise
        finally:
            if unfinished:  # ended without a finish: the client left, or the replica failed
                tracker.on_finish(unfinished, prompt_tokens, cached, None)
                if unfinished == "abort" and not self.stopping:
                    where = completion.replica.name  # (where it ran last, if it moved)
                    log.info("request %s: the client left after %d tokens; aborted on %s",
                             request.request_id, out.num_tokens, where)  # fmt: skip

    async def _events(self, completion: Completion, request: EngineRequest, session, tracker):
        """The request's engine events; a failure before its first token re-routes it (at most
        MAX_MOVES times), unless the request itself was refused or at fault (no other replica
        would do better)."""
        started, moves = False, 0
        while True:
            events = completion.events
            try:
                async for event in events:
                    if event.error and not started and not event.request_fault:
                        if moves < MAX_MOVES:
                            break
                        log.error("request %s failed on %d replicas in turn; ending it",
                                  request.request_id, moves + 1)  # fmt: skip
                    started = started or bool(event.token_ids)
                    yield event
                    if event.finish_reason or event.error:
                        return
                else:
                    return
            except RequestRefused as e:
                log.warning("replica %s refused request %s: %s", completion.replica.name,
                            request.request_id, e)  # fmt: skip
                yield TokenEvent(request.request_id, (), "error", error=str(e))
                return
            finally:
                await events.aclose()
            await self._failover(completion, request, session, event.error)
            moves += 1
            tracker.labels = self.metrics.labels(completion.replica.name)

    async def status(self) -> dict:
        async def ask(r: Replica) -> dict:
            try:
                return await r.client.status() if r.client else {"error": "not started yet"}
            except Exception as e:  # a replica that cannot answer is shown as such
                return {"error": str(e)}

        # Asked together: a leader cut off took its timeout once per replica, one after another.
        engines = await asyncio.gather(*(ask(r) for r in self.replicas))
        replicas = [r.to_json(engine, self.index.counts.get(r.slot, 0))
                    for r, engine in zip(self.replicas, engines, strict=True)]  # fmt: skip
        return {
            "model": self.model_name,
            "max_model_len": self.max_model_len,
            "uptime_s": round(time.time() - self.started, 1),
            "settings": self.settings,
            "routing": {"policy": self.policy.name, "indexed_blocks": len(self.index.blocks)},
            "queue": {
                "in_flight": sum(r.in_flight for r in self.replicas),
                "max_queue": self.max_queue,
            },
            "replicas": replicas,
        }
