"""Blocks Claude Code puts in a history that the model reads as text (a tool search's
`tool_reference`, a `search_result`), a system prompt without its billing line, and the
`thinking` types."""

import pytest

from cluster.api.anthropic_schemas import MessagesRequest
from cluster.coordinator.errors import BadRequest

USE = {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {"query": "notebook"}}
CALL = {"role": "assistant", "content": [USE]}


def result(*content) -> dict:
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": list(content)}]}  # fmt: skip


def turns(*content) -> list[dict]:
    req = MessagesRequest(max_tokens=4, messages=[
        {"role": "user", "content": "find it"}, CALL, result(*content)])  # fmt: skip
    return req.template_messages()[0]


def test_a_tool_reference_and_a_search_result_read_as_text():
    got = turns({"type": "tool_reference", "tool_name": "NotebookEdit"},
                {"type": "search_result", "source": "https://a.example/x", "title": "X",
                 "content": [{"type": "text", "text": "found"}]})  # fmt: skip
    tool = got[-1]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "t1"
    assert tool["content"] == "[tool NotebookEdit is available]\nX (https://a.example/x)\nfound"


def test_their_fields_are_checked_with_the_path():
    with pytest.raises(BadRequest, match=r"messages.2.content.0.content.0.tool_name"):
        turns({"type": "tool_reference"})
    with pytest.raises(BadRequest, match=r"content.0.content"):
        turns({"type": "search_result", "source": "s", "title": "t", "content": "x"})


def test_the_billing_line_leaves_the_system_prompt():
    line = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"
    blocks = MessagesRequest(max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                             system=[{"type": "text", "text": line},
                                     {"type": "text", "text": "You are an agent."}])  # fmt: skip
    assert blocks.system_text() == "You are an agent."
    one = MessagesRequest(max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                          system=line + "\nYou are an agent.")  # fmt: skip
    assert one.system_text() == "You are an agent."


def test_thinking_types_map_to_enable_thinking():
    def args(thinking):
        return MessagesRequest(max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                               thinking=thinking).template_args()  # fmt: skip

    assert args(None) == {"enable_thinking": False}
    assert args({"type": "enabled", "budget_tokens": 2}) == {"enable_thinking": True}
    assert args({"type": "adaptive"}) == {"enable_thinking": True}
    for off in ("disabled", "between_tools"):
        assert args({"type": off}) == {"enable_thinking": False}
    with pytest.raises(ValueError):
        args({"type": "sometimes"})
