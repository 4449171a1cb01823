"""A prompt tokenized piece by piece (the text between added tokens, pieces seen before not
tokenized again) gives the tokenizer's own ids for the whole text."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer

from cluster.coordinator.segments import SegmentTokens
from cluster.coordinator.tokenizer import PromptTokenizer
from cluster.fixture.agent_data import AgentData
from cluster.model_store import TRAINED


@pytest.fixture(scope="module")
def tok() -> PromptTokenizer:
    return PromptTokenizer(TRAINED)


def _whole(backend, text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=False).ids


FRAGMENTS = ["<|user|>", "<|assistant|>", "<think>", "</think>", "<tool_call>", "<arg_key>",
             "</arg_value>", "<|observation|>", "[gMASK]", "<sop>", " ", "  ", "\n", "\n\n",
             "\t", "é", "日本語", "🙂", "def f(x):", "return", "<", "|", ">", "user", "1.5",
             '{"k": "v"}', "<tool", "_call>"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
def test_pieces_give_the_whole_texts_ids(tok, fragments):
    text = "".join(fragments)
    assert tok.pieces.enabled
    assert tok.encode(text) == _whole(tok._backend, text)


def test_a_resent_transcript_tokenizes_only_its_new_messages(tok):
    data, rng = AgentData(seed=3), random.Random(3)
    ex = data.conversation(rng=rng)
    messages = [*ex.messages, {"role": "user", "content": "Now the same for " + "x " * 400}]
    first = tok.chat(messages, ex.tools)
    before = tok.pieces.tokenized_chars
    new = "the directory listing:\n" + "\n".join(f"file_{i}.py" for i in range(200))
    turn = [*messages, {"role": "assistant", "content": "Done."}, {"role": "user", "content": new}]
    second = tok.chat(turn, ex.tools)
    text = tok.hf.apply_chat_template(turn, tools=ex.tools, add_generation_prompt=True,
                                      tokenize=False)  # fmt: skip
    assert second == _whole(tok._backend, text)
    assert second[: len(first) - 2] == first[:-2]  # all but the generation prompt resent
    # Only the two new messages' text (and the newlines around them) went through the tokenizer.
    assert tok.pieces.tokenized_chars - before <= len(new) + len("Done.") + 8


def test_a_small_budget_evicts_and_stays_right(tok):
    pieces = SegmentTokens(tok._backend, max_chars=200)
    texts = [f"<|user|>\nask {i} {'word ' * (i % 7)}<|assistant|>\nreply {i}" for i in range(60)]
    for text in texts * 2:
        assert pieces.encode(text) == _whole(tok._backend, text)
    assert pieces._chars <= 200


def test_a_token_that_takes_in_spaces_turns_pieces_off():
    backend = Tokenizer.from_file(str(TRAINED / "tokenizer.json"))
    backend.add_special_tokens([AddedToken("<x>", lstrip=True, rstrip=True, special=True)])
    pieces = SegmentTokens(backend)
    assert not pieces.enabled
    text = "a <x> b<|user|> <x>\n"
    assert pieces.encode(text) == _whole(backend, text)
    assert _whole(backend, " <x> ") == [backend.token_to_id("<x>")]  # why: it took the spaces
