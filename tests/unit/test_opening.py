"""Which requests open a conversation (routing may spread those): every API's shape."""

from cluster.api.anthropic_schemas import MessagesRequest
from cluster.api.chat import opens_conversation
from cluster.api.responses_schemas import ResponsesRequest
from cluster.api.schemas import ChatCompletionRequest, CompletionRequest

USER = {"role": "user", "content": "hi"}
REPLY = {"role": "assistant", "content": "hello"}


def test_first_requests_open_and_later_turns_do_not():
    chat = ChatCompletionRequest(messages=[{"role": "system", "content": "s"}, USER])
    assert opens_conversation(chat)
    assert not opens_conversation(ChatCompletionRequest(messages=[USER, REPLY, USER]))
    tool = {"role": "tool", "tool_call_id": "c", "content": "out"}
    assert not opens_conversation(ChatCompletionRequest(messages=[USER, tool]))
    assert opens_conversation(MessagesRequest(max_tokens=4, messages=[USER]))
    assert not opens_conversation(MessagesRequest(max_tokens=4, messages=[USER, REPLY, USER]))
    assert opens_conversation(ResponsesRequest(input="hi"))
    assert opens_conversation(ResponsesRequest(input=[USER]))
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c", "output": "x"}
    for items in ([{"type": "reasoning", "summary": []}], [call], [call, output], [REPLY]):
        assert not opens_conversation(ResponsesRequest(input=[USER, *items])), items
    assert not opens_conversation(CompletionRequest(prompt="def f("))  # a raw prompt: unknown
