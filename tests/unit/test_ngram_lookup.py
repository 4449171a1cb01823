"""N-gram lookup: which earlier match proposes, and how much of it."""

from cluster.engine.ngram import NgramIndex, lookup


def propose(tokens, n_min=2, n_max=4, k=3):
    return lookup(list(tokens), NgramIndex(n_min), n_max, k)


def test_no_earlier_match_proposes_nothing():
    assert propose([1, 2, 3, 4, 5]) == []
    assert propose([7]) == []


def test_the_tail_never_matches_itself():
    assert propose([1, 2]) == []  # the only occurrence of (1, 2) is the tail


def test_the_continuation_of_the_match_is_proposed_up_to_k():
    assert propose([1, 2, 3, 4, 5, 6, 1, 2]) == [3, 4, 5]
    assert propose([1, 2, 3, 4, 5, 6, 1, 2], k=1) == [3]


def test_a_match_near_the_end_repeats_its_period():
    assert propose([9, 1, 2, 8, 1, 2]) == [8, 1, 2]
    assert propose([5, 1, 2, 1, 2]) == [1, 2, 1]  # period 2: the loop goes on
    assert propose([9, 1, 2, 8, 1, 2], k=5) == [8, 1, 2, 8, 1]  # period 3
    assert propose([4, 4, 4], k=4) == [4, 4, 4, 4]  # period 1


def test_the_longer_match_wins_over_the_later_one():
    # (3, 1, 2) ends the sequence: its earlier full match is at the start, a later
    # occurrence of just (1, 2) would propose 7.
    tokens = [3, 1, 2, 5, 6, 0, 1, 2, 7, 3, 1, 2]
    assert propose(tokens) == [5, 6, 0]


def test_among_equally_long_matches_the_latest_wins():
    assert propose([1, 2, 5, 1, 2, 6, 1, 2]) == [6, 1, 2]


def test_n_max_caps_the_match_length_considered():
    # Only n up to 2: both earlier (1, 2) match equally, the latest proposes.
    tokens = [4, 1, 2, 5, 0, 1, 2, 6, 4, 1, 2]
    assert propose(tokens, n_max=2) == [6, 4, 1]
    assert propose(tokens, n_max=3) == [5, 0, 1]


def test_the_index_grows_with_the_sequence():
    index, tokens = NgramIndex(2), [1, 2, 3]
    assert lookup(tokens, index, 4, 2) == []
    tokens += [9, 1, 2]
    assert lookup(tokens, index, 4, 2) == [3, 9]
    tokens += [3]
    assert lookup(tokens, index, 4, 2) == [9, 1]
    assert index.indexed == len(tokens) - 2
