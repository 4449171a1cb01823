"""Starts every replica, watches its ranks and its leader, restarts a replica that broke."""

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import grpc

from ..model_store import cache_home
from ..progress import Progress, joining, last_loaded, this_run
from ..rpc.client import GrpcEngineClient
from ..types import EngineRequest, ReplicaRegistry, RequestId, SamplingParams
from .attach import PortLock, PortTaken, mismatch, port_in_use
from .command import rank_engine
from .local import Launcher, RunningReplica, process_state

log = logging.getLogger(__name__)


def resident_bytes(pid: int) -> int | None:
    """Resident memory of a local process (Linux /proc); None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _stopped(proc: RunningReplica) -> str:
    """Which ranks the OS shows stopped (the ones a hang points at), as a reason's suffix."""
    stopped = [i for i, p in enumerate(proc.procs) if process_state(p.pid) == "T"]
    return "".join(f"; rank {i} is stopped (SIGSTOP)" for i in stopped)


STALL_S = 5.0
"""A step running this long, and a quarter of the watchdog's bound, routes new requests to the
other replicas until it ends (they waited the whole bound, 20 s, for a hung replica)."""
STOP_S = 10.0
"""Seconds a replica's ranks get to end on SIGTERM before SIGKILL."""
HUNG = "hung:"
"""The watchdog's reason for a step or exchange that never ended (`engine/watchdog.py`)."""
HUNG_STOP_S = 2.0
"""The same for ranks the watchdog found hung: a rank inside a collective cannot run its
SIGTERM handler, and waiting the full STOP_S only delayed the restart (about 10 s)."""
JOIN_WARN_S = 30.0
"""Seconds a rank may wait for its group (MLX forms it in a second or two) before the log
says which rank waits and where to look."""


class ReplicaFailed(RuntimeError):
    pass


RESTART_BACKOFF = (1.0, 60.0)
"""First wait after a failed restart, and the cap it doubles up to."""


class Supervisor:
    def __init__(
        self,
        launcher: Launcher,
        registry: ReplicaRegistry,
        token: str,
        max_num_seqs: int,
        ports: dict[str, int] | None = None,
        client_factory=GrpcEngineClient,
        load_timeout: float = 600,
        backoff: tuple[float, float] = RESTART_BACKOFF,
        probe_every: float = 30.0,
        probe_timeout: float = 30.0,
    ):
        """probe_every: seconds an idle replica may go without an end-to-end generation before
        it gets a one-token probe (0: never); probe_timeout: how long the probe may take."""
        self.launcher = launcher
        self.registry = registry
        """Where what the supervisor sees is reported: the coordinator's replicas."""
        self.ports = ports or {}
        """Fixed leader gRPC ports by replica; replicas found running there are re-attached."""
        self.locks = PortLock(cache_home() / "run")
        """This coordinator's hold on those ports (one coordinator drives a leader)."""
        self.token = token
        self.max_num_seqs = max_num_seqs
        self.client_factory = client_factory
        self.load_timeout = load_timeout
        self.backoff = backoff
        self.running: dict[str, RunningReplica] = {}
        self.clients: dict[str, GrpcEngineClient] = {}
        self.plans: dict[str, object] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self.stopping = False
        """Set at shutdown: no replica starts or restarts after it."""
        self._retries: dict[str, asyncio.Task] = {}
        """Replicas that failed to start while others serve: their attempts to start again."""
        self.probe_every, self.probe_timeout = probe_every, probe_timeout
        self._last_seen: dict[str, tuple[int, float]] = {}
        """Per replica: (requests served, when that count last changed or a probe passed)."""
        self._loaded: set[str] = set()
        """Replicas whose ranks have all reported their weights loaded (since they started)."""
        self._warned: set[tuple] = set()
        """(replica, rank, start) of ranks whose long wait to join their group was logged."""
        self._stall: dict[str, str | None] = {}
        """Per replica: its leader's step in progress when it has run long, else None."""

    async def start(self, plans, timeout: float = 600) -> None:
        """Start (or re-attach to) every replica; each is reported up as soon as it serves."""
        progress = Progress(len(plans), "loading replicas")
        for plan in plans:
            self.plans[plan.name] = plan  # known before it loads: `watch` takes it on
            self.registry.declare(
                plan.name,
                max_num_seqs=self.max_num_seqs,
                plan={
                    "tensor_parallel": plan.tensor_parallel,
                    "backend": plan.backend,
                    "launcher": self.launcher.name,
                },
                ranks=[{"rank": r.rank, "node": r.host, "address": r.address} for r in plan.ranks],
            )

        async def launch(plan):
            await self._launch(plan, timeout)
            progress.advance()

        done = await asyncio.gather(*(launch(p) for p in plans), return_exceptions=True)
        failed = [(p, e) for p, e in zip(plans, done, strict=True) if isinstance(e, BaseException)]
        if len(failed) == len(plans):  # nothing to serve with: say why, as before
            raise failed[0][1]
        for plan, error in failed:  # serve with the others; this one retries with back-off
            if not isinstance(error, Exception) or self.stopping:
                raise error
            self.registry.down(plan.name, str(error).splitlines()[0], failed=True)
            log.error("replica %s failed to start: %s; serving without it, next try in %.0fs",
                      plan.name, error, self.backoff[0])  # fmt: skip
            self._retries[plan.name] = asyncio.create_task(
                self._retry(plan.name, wait_first=True), name=f"retry-{plan.name}"
            )

    async def _attach(self, plan) -> tuple[RunningReplica, GrpcEngineClient, dict] | None:
        """A leader of this model already serving at the replica's fixed port, if any (with
        the status it answered)."""
        port = self.ports.get(plan.name)
        if port is None:
            return None
        address = f"{plan.leader.address}:{port}"
        client = self.client_factory(address, self.token)
        try:
            info = await client.connect(timeout=2)
            stats = await client.status(timeout=5)
        except Exception:
            await client.close()
            return None
        what = f"replica {plan.name}: the leader at {address}"
        if info.model_id != self.launcher.model_id:
            await client.close()
            pid = stats.get("pid", "?")
            want = self.launcher.model_id
            raise ReplicaFailed(f"{what} (pid {pid}) serves {info.model_id}, not {want}: "
                                "stop it or serve that model")  # fmt: skip
        if why := mismatch(stats, rank_engine(plan, self.launcher.engine), what):
            if self.launcher.name != "service":  # it would run on, our flags ignored
                await client.close()
                raise ReplicaFailed(why)
            log.warning("%s (its service's flags, not this coordinator's, apply)", why)
        log.info("replica %s: re-attached to its running leader at %s (pid %s)", plan.name,
                 address, stats.get("pid", "?"))  # fmt: skip
        proc = RunningReplica(plan, address, [], [], attached=True, pid=stats.get("pid"))
        return proc, client, stats

    async def _launch(self, plan, timeout: float) -> None:
        if self.stopping:
            raise ReplicaFailed(f"replica {plan.name}: not started, the cluster is stopping")
        port = self.ports.get(plan.name)
        if port is not None:
            try:
                self.locks.take(port, f"replica {plan.name}")
            except PortTaken as e:
                raise ReplicaFailed(str(e)) from None
        found = await self._attach(plan)
        if found:
            proc, client, stats = found
            self.running[plan.name] = proc
        else:
            host = plan.leader.address
            local = self.launcher.name == "local"
            if port is not None and local and await asyncio.to_thread(port_in_use, host, port):
                raise ReplicaFailed(
                    f"replica {plan.name}: port {port} on {host} is in use, but not by a "
                    "leader this cluster can use (another program, a leader of another "
                    "CLUSTER_HOME with another cluster token, or one not answering): free it "
                    "or change grpc_base_port"
                )
            proc = await asyncio.to_thread(self.launcher.start, plan, port)
            self.running[plan.name] = proc
            try:
                client = await self._wait_ready(proc, timeout)
                stats = await client.status()
            except ReplicaFailed:
                self.running.pop(plan.name, None)
                raise
        old = self.clients.get(plan.name)
        self.clients[plan.name] = client
        self.registry.up(plan.name, client, stats=stats, attached=proc.attached)
        if old is not None:  # closed only once the coordinator holds the new one
            await old.close()
        log.info("replica %s ready at %s (TP %d)", plan.name, proc.address, plan.tensor_parallel)

    def _report_loading(self, proc: RunningReplica) -> None:
        """Each rank's weight bytes loaded so far, from the last progress line of its log (until
        every rank has loaded all: a follower may finish after the leader serves)."""
        if proc.plan.name in self._loaded:
            return
        ranks, done = [], bool(proc.logs)
        for i, path in enumerate(proc.logs):
            text = this_run(tail(path))
            found = last_loaded(text)
            rank = {"loaded_bytes": found[0], "weights_bytes": found[1]} if found else {}
            rank["joining_group"] = joining(text)
            ranks.append(rank)
            done = done and found is not None and found[0] == found[1]
            waited = time.time() - proc.started
            key = (proc.plan.name, i, proc.started)
            if rank["joining_group"] and waited > JOIN_WARN_S and key not in self._warned:
                self._warned.add(key)
                log.warning("replica %s: rank %d has waited %.0fs to join its %s group: is the "
                            "link between its nodes up? (%s)", proc.plan.name, i, waited,
                            proc.plan.backend, path)  # fmt: skip
        self.registry.loading(proc.plan.name, ranks)
        if done:
            self._loaded.add(proc.plan.name)

    async def _wait_ready(self, proc: RunningReplica, timeout: float) -> GrpcEngineClient:
        client = self.client_factory(proc.address, self.token)
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._report_loading(proc)
            if dead := proc.dead_ranks():
                await client.close()
                await asyncio.to_thread(proc.stop)  # the event loop serves HTTP meanwhile
                why = f" ({cause})" if (cause := proc.cause()) else ""
                raise ReplicaFailed(f"replica {proc.plan.name}: rank {dead[0]} exited while "
                                    f"starting{why}\n{proc.log_tail()}")  # fmt: skip
            try:
                await client.connect(timeout=1)
                return client
            except Exception:
                await asyncio.sleep(0.2)
        await client.close()
        await asyncio.to_thread(proc.stop)
        raise ReplicaFailed(f"replica {proc.plan.name} not ready after {timeout:.0f}s")

    def watch(self, names: list[str] | None = None, interval: float = 0.5) -> None:
        """Watch every replica (`names`, else those started) in a task of its own: one
        restarting never delays the others; one still loading is watched once it serves."""
        for name in names or list(self.plans):
            self._tasks[name] = asyncio.create_task(self._watch(name, interval), name=name)

    async def _watch(self, name: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                proc = self.running.get(name)
                if proc is None or self.registry.state(name) not in ("ready", "suspect"):
                    continue
                if reason := await self._check(name, proc):
                    await self._restart(name, reason)
                elif stall := self._stall.get(name):  # routed around until the step ends
                    self.registry.stalled(name, stall)
                else:  # a suspect replica (a request failed there) that answers well
                    self.registry.healthy(name)
            except asyncio.CancelledError:
                raise
            except Exception:  # supervision goes on whatever one check ran into
                log.exception("replica %s: unexpected error while supervising it", name)

    @staticmethod
    def _dead(proc: RunningReplica) -> str | None:
        if dead := proc.dead_ranks():
            codes = ", ".join(f"rank {i} exit {proc.procs[i].returncode}" for i in dead)
            return f"rank process died ({codes})"
        return None

    async def _check(self, name: str, proc: RunningReplica) -> str | None:
        if dead := self._dead(proc):
            return dead
        self._report_loading(proc)
        try:
            stats = await self.clients[name].status(timeout=2)
        except Exception as e:
            # A rank that died while we asked explains the silence better than the silence.
            await asyncio.sleep(0.2)
            why = e.code().name if isinstance(e, grpc.aio.AioRpcError) else type(e).__name__
            return self._dead(proc) or (f"leader not answering: no Status reply within 2 s "
                                        f"({why})" + _stopped(proc))  # fmt: skip
        ranks = []
        for p in proc.procs:
            seen = {"alive": p.poll() is None}
            if (rss := resident_bytes(p.pid)) is not None:
                seen["memory_bytes"] = rss
            ranks.append(seen)
        self.registry.observed(name, stats, ranks)
        step = stats.get("step") or {}
        self._stall[name] = None
        if step and step["running_s"] > max(STALL_S, step["bound_s"] / 4):
            self._stall[name] = (f"{step['phase']} running for {step['running_s']:.0f}s (the "
                                 f"watchdog's bound: {step['bound_s']:.0f}s)")  # fmt: skip
        if broken := stats.get("broken"):
            return broken + _stopped(proc)
        if stats.get("alive") is False:  # its engine thread ended with nothing said
            return "the leader's engine loop stopped" + _stopped(proc)
        return await self._probe_if_idle(name, proc)

    async def _probe_if_idle(self, name: str, proc: RunningReplica) -> str | None:
        """A replica can answer Status and still not generate (mlx-lm #1493): one that has
        served nothing for probe_every seconds generates one token, or is reported."""
        now = time.monotonic()
        served, in_flight = self.registry.activity(name)
        last, since = self._last_seen.get(name, (-1, now))
        if served != last or in_flight:
            self._last_seen[name] = (served, now)
            return None
        if not self.probe_every or now - since < self.probe_every:
            return None
        one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        request = EngineRequest(RequestId(f"probe-{name}-{int(now)}"), (0,), one)
        try:
            events = self.clients[name].generate(request)
            async with contextlib.aclosing(events), asyncio.timeout(self.probe_timeout):
                async for event in events:
                    if event.error:
                        return f"probe generation failed: {event.error}" + _stopped(proc)
                    if event.finish_reason:
                        break
        except TimeoutError:
            return f"probe generation did not finish in {self.probe_timeout:.0f}s" + _stopped(proc)
        self._last_seen[name] = (self.registry.activity(name)[0], time.monotonic())
        return None

    async def _restart(self, name: str, reason: str) -> None:
        """Stop what is left of the replica and start it again, retrying with back-off (doubling
        up to a cap) until it serves; each attempt counts as a restart."""
        proc = self.running.pop(name, None)
        self.registry.down(name, reason)
        self._loaded.discard(name)  # a restart loads the weights again
        log.warning("replica %s is down: %s; restarting it", name, reason)
        self.registry.restarting(name)  # counted when decided: stopping the rest can take a while
        if (client := self.clients.pop(name, None)) is not None:  # a stopped leader keeps its
            await client.close()  # socket open: its calls end with an error now, not at a timeout
        if proc is not None:  # ranks hung in a collective never handle SIGTERM: SIGKILL soon
            await asyncio.to_thread(proc.stop, HUNG_STOP_S if HUNG in reason else STOP_S)
        await self._retry(name)

    async def _retry(self, name: str, wait_first: bool = False) -> None:
        """Start the replica until it serves, waiting between attempts (doubling up to a cap);
        each attempt after the first counts as a restart."""
        delay, cap = self.backoff
        while True:
            if wait_first:
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
                self.registry.restarting(name)
            wait_first = True
            if self.stopping:
                return
            if (left := self.running.pop(name, None)) is not None:  # a half-started attempt
                await asyncio.to_thread(left.stop)
            try:
                await self._launch(self.plans[name], timeout=self.load_timeout)
                self._retries.pop(name, None)
                return
            except Exception as e:
                self.registry.down(name, str(e).splitlines()[0], failed=True)
                log.error("replica %s failed to restart: %s; next try in %.0fs", name, e, delay)

    async def end_calls(self) -> None:
        """Stop watching and close every leader's channel: calls in flight end with an error
        now (at shutdown, before the HTTP server waits for its open responses)."""
        tasks = [*self._tasks.values(), *self._retries.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self.clients:
            await self.clients.popitem()[1].close()

    async def stop(self) -> None:
        await self.end_calls()
        for name, proc in self.running.items():
            if proc.attached:
                log.info("replica %s was re-attached, not started here: left running (its "
                         "leader's pid: %s)", name, proc.pid or "?")  # fmt: skip
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in self.running.values()))
        self.locks.release()


def tail(path, size: int = 1 << 16) -> str:
    """The last `size` bytes of a log file ('' if it is not there yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
