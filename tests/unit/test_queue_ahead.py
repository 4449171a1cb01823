"""When the runner queues a speculative step ahead: `QueueAhead`, from measured step times."""

import pytest

from cluster.engine.queue_ahead import FLOOR, MIN_TIMED, STALE, QueueAhead


def _kept(q: QueueAhead, size: int, n: int = 60) -> None:
    for _ in range(n):
        q.observe(size, True, guessed=False)


def test_queueing_ahead_waits_for_measurements_then_weighs_saving_against_loss():
    """`QueueAhead.break_even`: nothing is queued before a batch size's steps were timed; then
    the graph building a queued step would hide is the saving, the rest of the step's
    compute the loss; once queued steps were timed, what they took off a step is the saving,
    and what a cancelled one added to the next the loss when more; a saving that does not
    show stops queueing at that size."""
    q = QueueAhead()
    _kept(q, 1)
    assert q.break_even(1) is None and not q.worth(1)
    for _ in range(MIN_TIMED):
        q.time(1, plain=0.020, build=0.005, compute=0.015)
    assert q.break_even(1) == pytest.approx(10 / 15)  # loss 15 - 5, saving 5
    assert q.worth(1) and q.break_even(4) is None  # each batch size on its own
    assert q.to_json() == {"mode": "auto", "break_even": {"1": 0.667}}  # what status shows
    for _ in range(MIN_TIMED):
        q.time(1, queued=0.019, after_cancel=0.029)
    assert q.break_even(1) == pytest.approx(14 / 15)  # saving 1 ms, loss 15 - 1 ms
    assert q.worth(1)
    for _ in range(60):
        q.time(1, after_cancel=0.045)  # a cancel seen to cost more: 25 ms
    assert q.break_even(1) == pytest.approx(25 / 26, abs=1e-3)
    assert not q.worth(1)
    q.times[1]["after_cancel"] = 0.029
    for _ in range(40):
        q.time(1, queued=0.021)  # queued steps that took longer than plain ones
    assert q.break_even(1) == 1.0 and not q.worth(1)
    q.mode = "always"
    assert q.worth(1) and q.to_json() == {"mode": "always", "break_even": {}}
    assert q.thresholds([1, 2, 3]) == {"*": 0.0}  # one entry in a step message, any size
    q.mode = "never"
    assert not q.worth(1)


def test_what_queued_steps_measured_is_forgotten_after_a_long_while_without_one():
    """A size where queued steps once measured no saving tries again later, from the graph
    building's estimate (short requests, then long ones: what a step costs changes)."""
    q = QueueAhead()
    _kept(q, 1)
    for _ in range(MIN_TIMED):
        q.time(1, plain=0.020, build=0.005, compute=0.015, queued=0.021)
    assert q.break_even(1) == 1.0
    _kept(q, 1, STALE + 1)
    assert q.break_even(1) == pytest.approx(10 / 15) and q.worth(1)


def test_guesses_that_did_not_hold_stop_queueing_until_steps_keep_their_drafts_again():
    """Queueing is judged by how its guesses did, not only by the share of steps keeping
    every draft (it guesses when that share is high, which held less often than it said),
    and each batch size by its own steps (two rows keep everything less often than one)."""
    q = QueueAhead(mode="always")
    q.mode = "auto"
    q.allowed = {"1": 0.7, "2": 0.7}  # the leader's thresholds for this step
    _kept(q, 1, 40)
    assert q.kept[1] > 0.85 and 1 not in q.held and q.worth(1)
    assert not q.worth(2)  # no step of two rows seen yet
    for every in (False, True, False, False):  # guesses made while kept was high, most wrong
        q.observe(1, every, guessed=True)
    assert q.held[1] < 0.7 < q.kept[1] and not q.worth(1)
    _kept(q, 1, 40)  # no guesses: steps that keep their drafts bring it back
    assert q.worth(1)
    for i in range(200):  # half the steps keep every draft: not worth a guess
        q.observe(2, i % 2 == 0, guessed=False)
    assert not q.worth(2)
    q.allowed = {"*": 0.0}
    assert q.worth(2) and q.worth(7)  # always: any size


def test_a_build_that_holds_the_compute_does_not_make_every_guess_free():
    """With eager layers the timed graph building holds most of a step's compute (the device
    computes each layer as it is built): loss measured as compute less building came out
    negative, the break-even 0, and a batch of 8 whose steps never kept every draft guessed
    at every step, every guess wrong. The break-even never falls below FLOOR."""
    q = QueueAhead()
    for _ in range(60):
        q.observe(8, False, guessed=False)  # no step of eight rows keeps every draft
    for _ in range(MIN_TIMED):
        q.time(8, plain=0.098, build=0.080, compute=0.015)  # measured so at batch 8
    assert q.break_even(8) == FLOOR and not q.worth(8)
    _kept(q, 8)
    assert q.worth(8)  # steps that keep every draft still queue
