"""The teacher-forced probe's grouping of a reply's tokens by where they sit in a call."""

from cluster.coordinator.glm_output import TAGS
from cluster.fixture.call_probe import KINDS, token_kinds

VOCAB = {tag: 1000 + i for i, tag in enumerate(TAGS)} | {"</think>": 999}


def ids(*parts) -> list[int]:
    """Tags as their ids; any other string is one plain token per character."""
    out = []
    for p in parts:
        out += [VOCAB[p]] if p in VOCAB else [ord(c) for c in p]
    return out


def test_first_tokens_of_name_key_and_value_are_told_from_the_rest():
    reply = ids("ab", "</think>", "<tool_call>", "get", "<arg_key>", "k", "</arg_key>",
                "<arg_value>", "xy", "</arg_value>", "</tool_call>")  # fmt: skip
    assert token_kinds(reply, VOCAB) == [
        "reasoning", "reasoning", "tags", "tags", "name1", "name+", "name+", "tags", "key1",
        "tags", "tags", "value1", "value+", "tags", "tags",
    ]  # fmt: skip
    assert set(token_kinds(reply, VOCAB)) <= set(KINDS)


def test_a_second_call_starts_its_name_afresh_and_text_after_a_call_is_not_a_value():
    reply = ids("<tool_call>", "ab", "</tool_call>", "<tool_call>", "cd", "</tool_call>")
    kinds = token_kinds(reply, VOCAB)
    assert kinds == ["tags", "name1", "name+", "tags", "tags", "name1", "name+", "tags"]
    after = token_kinds(ids("<arg_value>", "v", "</arg_value>", "zz"), VOCAB)
    assert after == ["tags", "value1", "tags", "tags", "tags"]
