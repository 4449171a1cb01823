"""The supervisor with a fake launcher and fake leaders: each replica watched on its own, a
second failure during a restart seen, errors logged without ending supervision, back-off."""

import asyncio
import time
from types import SimpleNamespace

from cluster.coordinator.replicas import Replicas
from cluster.launch.local import RunningReplica
from cluster.launch.supervisor import Supervisor


class FakeProc:
    pid = -1  # no /proc entry: memory unread

    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode

    def signal_group(self, sig):  # how stop() signals a rank it does not own as a process
        self.returncode = -sig

    def wait(self, timeout=None):
        return self.returncode


class FakeLauncher:
    name, model_id = "fake", "m"

    def __init__(self):
        self.started: list[str] = []
        self.slow: dict[str, float] = {}
        """Seconds a start of this replica takes."""
        self.fail: dict[str, int] = {}
        """Starts of this replica still to fail."""

    def start(self, plan, port=None) -> RunningReplica:
        time.sleep(self.slow.get(plan.name, 0))
        self.started.append(plan.name)
        if self.fail.get(plan.name, 0) > 0:
            self.fail[plan.name] -= 1
            raise OSError(f"cannot start {plan.name}")
        return RunningReplica(plan, f"{plan.name}-{len(self.started)}", [FakeProc()], [])


class FakeClient:
    hung: set[str] = set()
    """Addresses whose leader answers Status but never generates."""

    def __init__(self, address, token):
        self.address = address
        self.info = None

    async def connect(self, timeout=1):
        self.info = SimpleNamespace(model_id="m", max_model_len=64)
        return self.info

    async def status(self, timeout=2):
        return {}

    async def close(self):
        pass

    async def generate(self, request):
        if self.address in FakeClient.hung:
            await asyncio.sleep(3600)
        yield SimpleNamespace(error=None, finish_reason="length", token_ids=(1,))


def plan(name):
    rank = SimpleNamespace(rank=0, host="h", address="127.0.0.1")
    return SimpleNamespace(name=name, leader=rank, ranks=[rank], tensor_parallel=1, backend="ring")


async def until(cond, timeout=10.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def supervised(launcher, names=("r0", "r1"), probe_every=0.0):
    sup = Supervisor(launcher, Replicas(), "t", 4, client_factory=FakeClient, load_timeout=2,
                     backoff=(0.05, 0.2), probe_every=probe_every, probe_timeout=0.3)  # fmt: skip
    return sup, [plan(n) for n in names]


def test_a_second_failure_during_a_restart_is_seen_and_restarted_too():
    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher)
        await sup.start(plans)
        sup.watch(interval=0.02)
        launcher.slow["r0"] = 1.0  # r0's restart takes a while...
        sup.running["r0"].procs[0].returncode = 9
        await until(lambda: sup.registry["r0"].state == "down")
        sup.running["r1"].procs[0].returncode = 9  # ...and r1 dies meanwhile
        await until(lambda: sup.registry["r1"].state == "ready" and sup.registry["r1"].restarts)
        assert sup.registry["r0"].state == "down"  # r1 came back while r0 still restarted
        await until(lambda: sup.registry["r0"].state == "ready")
        assert [sup.registry[n].restarts for n in ("r0", "r1")] == [1, 1]
        assert "rank 0 exit 9" in sup.registry["r0"].reason
        await sup.stop()

    asyncio.run(main())


def test_failed_restarts_back_off_until_one_works():
    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher, ["r0"])
        await sup.start(plans)
        sup.watch(interval=0.02)
        launcher.fail["r0"] = 2
        sup.running["r0"].procs[0].returncode = 1
        await until(lambda: sup.registry["r0"].state == "failed")
        assert "cannot start r0" in sup.registry["r0"].reason
        await until(lambda: sup.registry["r0"].state == "ready")
        assert sup.registry["r0"].restarts == 3 and launcher.started.count("r0") == 4
        await sup.stop()

    asyncio.run(main())


def test_a_replica_that_fails_to_start_does_not_keep_the_others_from_serving():
    """One flaky node at start-up once ended `serve` (and stopped the healthy replica): now
    the others serve, it is reported failed, and it retries with back-off until it serves;
    only when every replica fails does start-up fail, with the reason."""

    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher)
        launcher.fail["r1"] = 2
        await sup.start(plans)
        assert sup.registry["r0"].state == "ready" and sup.registry["r1"].state == "failed"
        assert "cannot start r1" in sup.registry["r1"].reason
        sup.watch(interval=0.02)
        await until(lambda: sup.registry["r1"].state == "ready")
        assert launcher.started.count("r1") == 3 and sup.registry["r1"].restarts == 2
        await sup.stop()

        launcher = FakeLauncher()
        sup, plans = supervised(launcher)
        launcher.fail |= {"r0": 1, "r1": 1}
        try:
            await sup.start(plans)
            raise AssertionError("start-up with no replica serving must fail")
        except OSError as e:
            assert "cannot start r0" in str(e)
        await sup.stop()

    asyncio.run(main())


def test_a_cluster_stopping_while_a_replica_loads_starts_nothing_more():
    """Shutdown during a load: a replica failing then (its ranks stopped by the shutdown) is
    not retried in the background, which relaunched it after `stop` and left it running."""

    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher)
        launcher.slow["r1"], launcher.fail["r1"] = 0.3, 1
        starting = asyncio.create_task(sup.start(plans))
        await asyncio.sleep(0)  # start() declares the replicas
        await until(lambda: sup.registry["r0"].state == "ready")
        sup.stopping = True  # what serve sets first at shutdown
        done = await asyncio.gather(starting, return_exceptions=True)
        assert isinstance(done[0], OSError) and not sup._retries
        await sup.stop()
        await asyncio.sleep(0.3)  # longer than the back-off
        assert launcher.started.count("r1") == 1

    asyncio.run(main())


def test_a_replica_down_shows_no_running_requests_or_live_ranks():
    """Between a rank's death and the restart, status and metrics once showed the dead
    engine's last figures (a request running, the rank alive)."""
    replicas = Replicas()
    replicas.declare("r0", max_num_seqs=4, plan={}, ranks=[{"rank": 0, "node": "h"}])
    replicas.up("r0", FakeClient("a", "t"), stats={"num_running": 1})
    replicas.observed("r0", {"num_running": 1}, [{"alive": True, "memory_bytes": 5}])
    replicas.down("r0", "rank process died")
    r = replicas["r0"]
    assert r.stats == {} and r.ranks == [{"rank": 0, "node": "h", "alive": False}]


def test_an_unexpected_error_is_logged_and_supervision_goes_on(caplog):
    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher, ["r0"])
        await sup.start(plans)
        proc = sup.running["r0"]
        calls = {"n": 0}
        real = proc.dead_ranks

        def flaky():
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            return real()

        proc.dead_ranks = flaky
        sup.watch(interval=0.02)
        await until(lambda: calls["n"] >= 2)
        proc.procs[0].returncode = 9
        await until(
            lambda: sup.registry["r0"].restarts == 1 and sup.registry["r0"].state == "ready"
        )
        await sup.stop()

    asyncio.run(main())
    assert any("replica r0: unexpected error" in r.getMessage() for r in caplog.records)


def test_step_watchdog_bound_follows_recent_steps_with_a_floor():
    from cluster.engine.watchdog import StepWatchdog

    now = [0.0]
    fired = []
    dog = StepWatchdog(floor=5.0, on_hang=fired.append, clock=lambda: now[0])
    for took in (0.1, 0.2, 0.1):
        dog.begin("engine step")
        now[0] += took
        dog.end()
    assert dog.bound == 5.0  # 8 x 0.2 s is under the floor
    dog.begin("lockstep exchange")
    now[0] += 4.9
    assert dog.check() is None
    now[0] += 0.2
    assert "hung: lockstep exchange running for 5.1s" in dog.check()
    assert len(fired) == 1 and dog.check() == fired[0]  # fires once
    slow = StepWatchdog(floor=5.0, on_hang=fired.append, clock=lambda: now[0])
    slow.begin("engine step")
    now[0] += 2.0
    slow.end()
    assert slow.bound == 16.0  # long steps raise the bound past the floor
    off = StepWatchdog(floor=0, on_hang=fired.append, clock=lambda: now[0])
    off.begin("engine step")
    now[0] += 1e6
    assert off.check() is None


def test_a_long_prompt_chunk_is_weighed_by_its_work_not_the_recent_decode_steps():
    """A session's next turn after 64 decode steps: its first chunk attends to the whole
    earlier transcript and ran past a bound set by fast decode steps and the floor: the
    replica was killed as hung and the session's cache lost. A few tokens' prefill gives no
    rate (its fixed cost over its tiny work made the bound hours long), and the bound the
    work grants is capped."""
    from types import SimpleNamespace

    from cluster.engine.watchdog import MAX_WORK_BOUND, StepWatchdog, step_work

    now, fired = [0.0], []
    dog = StepWatchdog(floor=20.0, on_hang=fired.append, clock=lambda: now[0])
    turn = SimpleNamespace(num_computed=20_000)
    dog.begin("engine step")  # a restarted replica's first step: a turn read back from disk
    dog.work, dog.tokens = step_work([(turn, 8192)])
    assert dog.bound == MAX_WORK_BOUND
    now[0] += 21.0
    assert dog.check() is None
    dog.end()
    dog.rates.clear()

    def step(seconds: float, chunks=()) -> None:
        dog.begin("engine step")
        dog.work, dog.tokens = step_work(chunks)
        now[0] += seconds
        dog.check()
        dog.end()

    tiny = SimpleNamespace(num_computed=0)
    step(0.5, [(tiny, 20)])  # a 20-token prompt: its step is its fixed cost
    assert not dog.rates
    for start in range(0, 8192, 2048):  # the first turn: 8K tokens, 2K a chunk, ~1 s each
        turn.num_computed = start
        step(1.0 + start / 8192, [(turn, 2048)])
    for _ in range(100):  # its reply
        step(0.05)
    assert dog.bound == 20.0  # the decode steps alone
    turn.num_computed = 40_000  # the next turn, after 40K tokens of transcript
    assert step_work([(turn, 2048)]) == (2048 * (42_048 + 4096), 2048)
    dog.begin("engine step")
    dog.work, dog.tokens = step_work([(turn, 2048)])
    assert 50 < dog.bound < MAX_WORK_BOUND  # 8 x ~7.5 s: the first chunk at 7.5x its work
    now[0] += 25.0
    assert dog.check() is None and not fired
    dog.end()


def test_an_idle_replica_that_answers_status_but_cannot_generate_leaves_ready():
    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher, ["r0"], probe_every=0.2)
        await sup.start(plans)
        FakeClient.hung.add(sup.running["r0"].address)
        sup.watch(interval=0.02)
        await until(lambda: sup.registry["r0"].restarts == 1)
        assert "probe generation did not finish" in sup.registry["r0"].reason
        await until(lambda: sup.registry["r0"].state == "ready")  # a new leader, generating
        await asyncio.sleep(0.6)  # probed again, and passing
        assert sup.registry["r0"].restarts == 1
        await sup.stop()

    asyncio.run(main())


def test_a_replica_whose_step_runs_long_takes_no_new_requests_until_it_ends():
    """A hung TP replica looked ready (and took requests that then waited) until the watchdog's
    bound, 20 s; a step running 5 s and a quarter of the bound routes new requests elsewhere,
    and the replica is ready again when the step ends."""

    async def main():
        launcher = FakeLauncher()
        sup, plans = supervised(launcher, ["r0", "r1"])
        await sup.start(plans)
        step = {"phase": "engine step", "running_s": 6.0, "bound_s": 20.0}
        slow = sup.running["r0"].address

        async def status(self, timeout=2):
            return {"step": step} if self.address == slow and step else {}

        FakeClient.status, original = status, FakeClient.status
        try:
            sup.watch(interval=0.02)
            await until(lambda: sup.registry["r0"].state == "suspect")
            assert "engine step running for 6s" in sup.registry["r0"].reason
            assert sup.registry["r1"].state == "ready"
            step.clear()  # the step ended
            await until(lambda: sup.registry["r0"].state == "ready")
            assert sup.registry["r0"].restarts == 0
            sup.registry.down("r1", "gone")  # alone, a long step keeps its requests
            step.update(phase="engine step", running_s=6.0, bound_s=20.0)
            await asyncio.sleep(0.2)
            assert sup.registry["r0"].state == "ready"
        finally:
            FakeClient.status = original
            await sup.stop()

    asyncio.run(main())


def test_a_leader_left_running_is_compared_with_the_settings_asked_for():
    from dataclasses import asdict

    from cluster.config import EngineConfig
    from cluster.launch.attach import mismatch

    wanted = EngineConfig(max_num_seqs=4)
    running = asdict(EngineConfig()) | {"prefix_cache_disk_dir": "/somewhere/r0/rank-0"}
    why = mismatch({"settings": running, "pid": 77}, wanted, "replica r0: the leader at a:1")
    assert "--max-num-seqs 16 (asked: 4)" in why and "kill 77" in why
    assert "prefix-cache-disk-dir" not in why  # a rank's own directory under the one given
    assert mismatch({"settings": asdict(wanted), "pid": 77}, wanted, "x") is None
    # A leader that reports no settings runs an older version: its wire form may differ.
    assert "older version" in mismatch({"pid": 5}, wanted, "replica r0: the leader at a:1")
