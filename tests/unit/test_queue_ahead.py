"""When the runner queues a speculative step ahead: `QueueAhead`, from measured step times."""

import pytest

from cluster.engine.spec_step import MIN_TIMED, QueueAhead


def test_queueing_ahead_waits_for_measurements_then_weighs_saving_against_loss():
    """`QueueAhead.break_even`: nothing is queued before a batch size's steps were timed; then
    the graph building a queued step would hide is the saving, the rest of the step's
    compute the loss; once queued steps were timed, what they took off a step is the saving,
    and what a cancelled one added to the next the loss when more; a saving that never showed
    stops queueing at that size."""
    q = QueueAhead(kept=0.95)
    assert q.break_even(1) is None and not q.worth(1)
    for _ in range(MIN_TIMED):
        q.time(1, plain=0.020, build=0.005, compute=0.015)
    assert q.break_even(1) == pytest.approx(10 / 15)  # loss 15 - 5, saving 5
    assert q.worth(1) and q.break_even(4) is None  # each batch size on its own
    assert q.to_json() == {"1": 0.667}  # what /v1/status shows
    for _ in range(MIN_TIMED):
        q.time(1, queued=0.019, after_cancel=0.029)
    assert q.break_even(1) == pytest.approx(14 / 15)  # saving 1 ms, loss 15 - 1 ms
    assert q.worth(1)
    for _ in range(60):
        q.time(1, after_cancel=0.045)  # a cancel seen to cost more: 25 ms
    assert q.break_even(1) == pytest.approx(25 / 26, abs=1e-3)
    assert not q.worth(1)
    q.times[1]["after_cancel"] = 0.029
    q.kept = 0.85
    assert not q.worth(1)
    for _ in range(40):
        q.time(1, queued=0.021)  # queued steps that took longer than plain ones
    assert q.break_even(1) == 1.0 and not q.worth(1)
    q.kept, q.fixed = 1.0, 0.0
    assert q.worth(1) and QueueAhead(fixed=2.0, kept=1.0).worth(1) is False


def test_guesses_that_did_not_hold_stop_queueing_until_steps_keep_their_drafts_again():
    """Queueing is judged by how its guesses did, not only by the share of steps keeping
    every draft (it guesses when that share is high, which held less often than it said)."""
    q = QueueAhead(fixed=0.7)
    for _ in range(40):
        q.observe(True, guessed=False)
    assert q.kept > 0.85 and q.held is None and q.worth(1)
    for every in (False, True, False, False):  # guesses made while kept was high, most wrong
        q.observe(every, guessed=True)
    assert q.held < 0.7 < q.kept and not q.worth(1)
    for _ in range(40):  # no guesses: steps that keep their drafts bring it back
        q.observe(True, guessed=False)
    assert q.worth(1)
    q = QueueAhead(fixed=0.7)
    for i in range(200):  # half the steps keep every draft: not worth a guess
        q.observe(i % 2 == 0, guessed=False)
    assert not q.worth(1)
