"""What agents send on chat completions, read as they mean it: OpenRouter's
`reasoning_details`, Anthropic-shaped thinking switches and the `max` effort from proxies,
text parts on lines of their own, opencode's session header, nulls in `stream_options`."""

from types import SimpleNamespace

import pytest

from cluster.api.chat import openai_messages, session_key
from cluster.api.schemas import ChatCompletionRequest

USER = {"role": "user", "content": "hi"}


def test_reasoning_details_reach_the_template_as_reasoning():
    reply = {"role": "assistant", "content": "done", "reasoning_details": [
        {"type": "reasoning.text", "text": "first"}, {"type": "reasoning.encrypted", "data": "x"},
        {"type": "reasoning.summary", "summary": "second"}]}  # fmt: skip
    req = ChatCompletionRequest(messages=[USER, reply, USER])
    assert openai_messages(req.messages)[1]["reasoning_content"] == "first\nsecond"
    named = {"role": "assistant", "content": "d", "reasoning_content": "own",
             "reasoning_details": [{"type": "reasoning.text", "text": "other"}]}  # fmt: skip
    req = ChatCompletionRequest(messages=[USER, named, USER])
    assert openai_messages(req.messages)[1]["reasoning_content"] == "own"


def test_thinking_switches_from_proxies():
    def kwargs(**body):
        return ChatCompletionRequest(messages=[USER], **body).template_kwargs()

    assert kwargs(thinking={"type": "adaptive"}) == {"enable_thinking": True}
    assert kwargs(thinking={"type": "between_tools"}) == {"enable_thinking": False}
    assert kwargs(reasoning_effort="max") == {}  # thinking stays as the server has it
    assert kwargs(reasoning={"effort": "max"}) == {"enable_thinking": True}
    # Ollama's switch, which Hermes sends to turn thinking off (it was ignored: 300 of 300
    # tokens went to reasoning); a level is on.
    assert kwargs(think=False) == {"enable_thinking": False}
    assert kwargs(think="high") == kwargs(think=True) == {"enable_thinking": True}


def test_text_parts_are_lines_of_their_own():
    parts = [{"type": "text", "text": "<task>fix it</task>"},
             {"type": "text", "text": "<environment_details>x</environment_details>"}]  # fmt: skip
    req = ChatCompletionRequest(messages=[{"role": "user", "content": parts}])
    assert openai_messages(req.messages)[0]["content"] == (
        "<task>fix it</task>\n<environment_details>x</environment_details>"
    )


def test_opencodes_session_header_names_the_session():
    request = SimpleNamespace(headers={"x-session-affinity": "ses_1"})
    assert session_key(request, ChatCompletionRequest(messages=[USER])) == "ses_1"


def test_nulls_in_stream_options_mean_the_defaults():
    req = ChatCompletionRequest(messages=[USER], stream=True,
                                stream_options={"include_usage": None,
                                                "continuous_usage_stats": None})  # fmt: skip
    opts = req.stream_options
    assert (opts.include_usage, opts.continuous_usage_stats) == (False, False)


def test_a_past_replys_legacy_function_call_is_refused_not_dropped():
    reply = {"role": "assistant", "content": None,
             "function_call": {"name": "f", "arguments": "{}"}}  # fmt: skip
    with pytest.raises(ValueError, match="tool_calls"):
        ChatCompletionRequest(messages=[USER, reply, USER])


def test_a_structured_reply_that_may_call_may_open_with_a_call_grammar_on_or_off():
    """Beside tools it may call, a structured reply may open with `<tool_call>` (whether or not
    the server's tool-call grammar is on); a reply forced to call is calls only."""
    from cluster.api.chat import ChatPrompt
    from cluster.api.structured import reply_limits
    from cluster.coordinator.tokenizer import PromptTokenizer
    from cluster.model_store import TRAINED

    tok = PromptTokenizer(TRAINED)
    call = tok.special_id("<tool_call>")
    for grammar in (None, "a tool-call grammar"):
        prompt = ChatPrompt([1, 2], [], reasoning=False, grammar=grammar, may_call=True)
        got = reply_limits({"type": "object"}, prompt, tok, "response_format")
        assert got["reply_call_id"] == call and got["reply_grammar"]
    alone = ChatPrompt([1, 2], [], reasoning=False, grammar=None, may_call=False)
    assert reply_limits({"type": "object"}, alone, tok, "response_format")["reply_call_id"] is None
    forced = ChatPrompt([1, 2, call], [call], reasoning=False, grammar=None, may_call=True)
    assert reply_limits({"type": "object"}, forced, tok, "response_format") == {}
