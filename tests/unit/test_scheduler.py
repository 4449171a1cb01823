"""Pure unit tests: the scheduler's token budget, slots and abort, and the mailbox's order and
wakeups. No model: the prefix cache is real but empty, sequences are made by hand."""

import asyncio

from cluster.config import EngineConfig
from cluster.engine.prefix_cache import PrefixCache
from cluster.engine.scheduler import Scheduler, split_budget
from cluster.engine.sequence import Sequence
from cluster.rpc.mailbox import Mailbox
from cluster.types import EngineRequest, RequestId, SamplingParams


def scheduler(**config) -> Scheduler:
    cfg = EngineConfig(**config)
    return Scheduler(cfg, PrefixCache(cfg.block_size, 0, b""), eos_ids={0}, max_model_len=64)


def seq(name: str, prompt_len: int, max_tokens: int = 4) -> Sequence:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Sequence.from_request(
        EngineRequest(RequestId(name), tuple(range(1, prompt_len + 1)), sampling)
    )


def test_prefill_chunks_fit_the_token_budget_and_the_slots():
    s = scheduler(prefill_step_size=10, max_num_seqs=2)
    a, b, c = seq("a", 7), seq("b", 7), seq("c", 3)
    for x in (a, b, c):
        s.add(x)
    first = s.schedule()
    # Budget 10: a takes all it needs, b the rest.
    assert [(x.request_id, n) for x, n in first.prefill] == [("a", 7), ("b", 3)]
    assert not first.decode
    s.postprocess(first, {a: [5]})
    second = s.schedule()
    assert [(x.request_id, n) for x, n in second.prefill] == [("b", 4)]
    assert [x.request_id for x in second.decode] == ["a"]
    s.postprocess(second, {a: [8], b: [6]})
    third = s.schedule()
    # a and b run now (decode); c waits: no slot is left.
    assert [x.request_id for x in third.decode] == ["a", "b"] and not third.prefill


def test_a_short_prompt_is_not_held_behind_a_long_ones_whole_prefill():
    """Arrival order gave a long prompt the whole budget every step: a short request behind
    it (another session's turn, an agent's title call) waited for all of it (74 s behind a
    33K-token prompt). Prompts that finish within half the budget go first; the rest goes in
    arrival order."""
    s = scheduler(prefill_step_size=10, max_num_seqs=4)
    s.max_model_len = 1000
    long, short = seq("long", 100), seq("short", 3)
    s.add(long)
    first = s.schedule()
    assert [(x.request_id, n) for x, n in first.prefill] == [("long", 10)]  # alone: all of it
    s.postprocess(first, {})
    s.add(short)
    second = s.schedule()
    assert [(x.request_id, n) for x, n in second.prefill] == [("long", 7), ("short", 3)]
    s.postprocess(second, {short: [9]})
    assert short in s.running and long.num_computed == 17
    # Behind two long prompts (each took half the budget: the third got none, 40 s here).
    other, late = seq("other", 100), seq("late", 2)
    s.add(other)
    s.add(late)
    third = s.schedule()
    assert [(x.request_id, n) for x, n in third.prefill] == [("long", 8), ("late", 2)]


def test_long_prompts_together_do_not_split_the_budget():
    """Two long fresh prompts that split every step's budget both got their first token as
    late as the second alone would (the first about twice as late as alone)."""
    s = scheduler(prefill_step_size=10, max_num_seqs=4)
    s.max_model_len = 1000
    a, b = seq("a", 25), seq("b", 25)
    s.add(a)
    s.add(b)
    steps = []
    while not (a.is_prefilled and b.is_prefilled):
        step = s.schedule()
        steps.append([(x.request_id, n) for x, n in step.prefill])
        s.postprocess(step, {x: [7] for x, n in step.prefill if x.num_computed + n >= 25})
    assert steps == [[("a", 10)], [("a", 10)], [("a", 5), ("b", 5)], [("b", 10)], [("b", 10)]]


def test_only_prompts_the_budget_reaches_are_admitted():
    """A prompt that gets no tokens this step is not admitted: it would book its KV (the
    prefix cache's room shrinking for nothing), count as running and end its queue time."""
    s = scheduler(prefill_step_size=10, max_num_seqs=8)
    s.max_model_len = 1000
    long, other, late = seq("long", 50), seq("other", 50), seq("late", 3)
    for x in (long, other, late):
        s.add(x)
    step = s.schedule()
    assert [(x.request_id, n) for x, n in step.prefill] == [("long", 7), ("late", 3)]
    assert long.admitted and late.admitted and not other.admitted
    assert other.scheduled_at is None


def test_split_budget_edges():
    assert split_budget(10, []) == []
    assert split_budget(10, [0]) == [0]
    assert split_budget(10, [30]) == [10]  # alone: all of it
    assert split_budget(10, [3, 30]) == [3, 7]
    assert split_budget(10, [30, 3, 30]) == [7, 3, 0]  # the short one first, wherever it is
    assert split_budget(10, [30, 6, 2]) == [8, 0, 2]  # the quick lane is half the budget
    assert split_budget(10, [4, 4, 4]) == [4, 4, 2]
    assert split_budget(1, [5, 5]) == [1, 0]


def test_finish_by_eos_by_length_and_abort_free_the_slot():
    s = scheduler(prefill_step_size=100, max_num_seqs=1)
    a, b = seq("a", 2, max_tokens=2), seq("b", 2)
    s.add(a)
    s.add(b)
    step = s.schedule()
    assert [x for x, _ in step.prefill] == [a]  # one slot
    events, done = s.postprocess(step, {a: [7]})
    assert not done and events[0].token_ids == (7,)
    events, done = s.postprocess(s.schedule(), {a: [8]})  # max_tokens reached
    assert done == [a] and events[0].finish_reason == "length"
    step = s.schedule()
    assert [x for x, _ in step.prefill] == [b]
    events, done = s.postprocess(step, {b: [0]})  # eos
    assert done == [b] and events[0].finish_reason == "stop"
    c = seq("c", 2)
    s.add(c)
    assert s.abort(RequestId("c")) is c and c.finish_reason == "abort"
    assert s.abort(RequestId("nope")) is None and not s.has_work()


def test_speculative_tokens_after_a_stop_are_dropped():
    s = scheduler(prefill_step_size=100)
    a = seq("a", 2, max_tokens=10)
    s.add(a)
    s.postprocess(s.schedule(), {a: [3]})
    events, done = s.postprocess(s.schedule(), {a: [4, 0, 9]})  # drafts past the eos
    assert done == [a] and events[0].token_ids == (4, 0) and events[0].finish_reason == "stop"


def test_mailbox_keeps_order_and_wakes_the_loop_once_per_burst():
    async def main():
        loop = asyncio.get_running_loop()
        box = Mailbox(loop)
        queue: asyncio.Queue = asyncio.Queue()
        wakeups = 0
        real = box._drain

        def counted():
            nonlocal wakeups
            wakeups += 1
            real()

        box._drain = counted
        for i in range(100):  # one burst: the loop does not run in between
            box.post(queue, i)
        got = [await queue.get() for _ in range(100)]
        assert got == list(range(100)) and wakeups == 1
        box.post(queue, "later")  # the next burst wakes it again
        assert await queue.get() == "later" and wakeups == 2

    asyncio.run(main())


def test_cache_events_resync_replaces_what_a_replica_held():
    """A broken stream or the periodic resync re-subscribes; its snapshot replaces the
    replica's blocks in the index, so lost events cannot leave stale blocks behind."""
    from types import SimpleNamespace

    from cluster.router.events import follow_replica
    from cluster.router.index import PrefixIndex

    snapshots = [[1, 2, 3], [3, 4], [5]]
    opened = []

    class Client:
        async def cache_events(self, snapshot=True):
            n = len(opened)
            opened.append(n)
            blocks = snapshots[min(n, len(snapshots) - 1)]
            yield SimpleNamespace(snapshot_done=True, stored=blocks, evicted=[])
            if n == 0:
                yield SimpleNamespace(snapshot_done=False, stored=[9], evicted=[1])
                raise ConnectionError("stream lost")  # a reconnect follows
            await asyncio.sleep(3600)  # quiet: only the periodic resync re-opens it

    async def main():
        index = PrefixIndex()
        replica = SimpleNamespace(name="r0", slot=0, client=Client())
        task = asyncio.create_task(follow_replica(replica, index, resync_seconds=0.3))
        while len(opened) < 3:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        task.cancel()
        return index

    index = asyncio.run(main())
    assert set(index.blocks) == {5} and index.counts[0] == 1


def test_a_row_whose_limits_fail_ends_alone_with_an_error(caplog):
    """A request's own tool-call grammar failing (it once raised StopIteration inside the
    engine step) ends that request with an error; the batch's other rows go on."""
    from cluster.engine.grammar import FREE, Limiter

    class Broken(Limiter):
        def follow(self, output):
            raise StopIteration  # what the grammar raised on a key holding </arg_key>

    s = scheduler(prefill_step_size=100)
    a, b = seq("a", 2, max_tokens=10), seq("b", 2, max_tokens=10)
    a.limiter = Broken(None, None)
    for x in (a, b):
        s.add(x)
    s.postprocess(s.schedule(), {a: [3], b: [3]})
    step = s.schedule()
    with caplog.at_level("ERROR", "cluster.engine"):
        assert a.limit() is FREE and b.limit() is FREE  # what the runner asks before sampling
    events, done = s.postprocess(step, {a: [4], b: [4]})
    assert done == [a] and a.finish_reason == "error"
    (ended,) = [e for e in events if e.request_id == "a"]
    assert "tool-call grammar" in ended.error and "StopIteration" in ended.error
    assert [x.request_id for x in s.schedule().decode] == ["b"] and b.tokens[-1] == 4
    assert "request a: its token limits failed" in caplog.text
