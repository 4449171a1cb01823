"""Agents through the official openai and anthropic SDKs, against a real server on the trained
built-in model: held-out tool calls, tool loops with reasoning on and off, tool_choice, the
Anthropic Messages API, a cut-off call, and no markup in any content."""

import json
import random

import anthropic
import httpx
import openai
import pytest
from conftest import Server
from transformers import AutoTokenizer

from cluster.coordinator.tool_grammar import CALL_TAGS
from cluster.fixture.agent_data import AgentData
from cluster.model_store import TRAINED

MARKUP = ("<tool_call>", "</tool_call>", "<arg_key>", "<arg_value>", "<think>", "</think>")
GREEDY = {"temperature": 0.0}
ZERO = {"temperature": 0.0}  # Anthropic's SDK takes sampling fields as extra body fields now
seen_content: list[str] = []
"""Every content string any test read; the last test checks none holds markup."""


ALIASES = ("claude-sonnet-4-5", "claude-haiku-4-5")
DATED = "claude-*-2025*"  # a pattern alias: Claude Code's dated names
"""Names an agent asks for, served as aliases of the model (`--served-model-name A B C`)."""


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("agent-home")
    names = ["--served-model-name", "glm-5-fixture", *ALIASES, DATED]
    srv = Server(["--model", str(TRAINED), *names], env={"CLUSTER_HOME": str(home)})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def held_out():
    """Seeded held-out requests: tools and phrasings the model never trained on."""
    data, rng = AgentData(seed=0), random.Random(2026)
    return [data.conversation(held_out=True, rng=rng) for _ in range(4)]


def _openai_calls(message, complete_only=False) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def _stream_calls(
    stream, complete_only=False
) -> tuple[list[tuple[str, str]], str | None, str, str]:
    """Reassemble streamed tool-call deltas as an OpenAI client does."""
    calls: dict[int, dict] = {}
    finish, content, reasoning = None, "", ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for d in delta.tool_calls or []:
            if d.id:
                assert d.index not in calls and d.function.name and d.type == "function"
                calls[d.index] = {"name": d.function.name, "arguments": d.function.arguments or ""}
            else:
                calls[d.index]["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    seen_content.append(content)
    got = [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    return got, finish, content, reasoning


@pytest.mark.parametrize("thinking", [False, True])
def test_held_out_tool_requests_stream_and_parse_alike(agent_server, held_out, thinking):
    """Each held-out request, streamed and not: the deltas reassemble to the same calls and
    text. (Whether the model picks the right tool and values is its quality, not the API's:
    `fixture-eval` measures that, and the README reports it.)"""
    client = agent_server.client()
    for ex in held_out:
        kw = dict(
            model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools, max_tokens=64,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}}, **GREEDY,
        )  # fmt: skip
        r = client.chat.completions.create(**kw)
        message = r.choices[0].message
        seen_content.append(message.content or "")
        streamed, finish, content, reasoning = _stream_calls(
            client.chat.completions.create(stream=True, **kw), complete_only=True
        )
        assert streamed == _openai_calls(message, complete_only=True)
        assert finish == r.choices[0].finish_reason and content == (message.content or "")
        if thinking:
            assert reasoning == (message.reasoning_content or "") and reasoning
        if r.choices[0].finish_reason == "tool_calls":
            assert message.tool_calls and all(json.loads(c.function.arguments) is not None
                                              for c in message.tool_calls)  # fmt: skip


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:  # a call cut off mid-way
        return None


def test_held_out_requests_come_back_as_their_calls(agent_server, held_out):
    """The model's own choice, nothing forced: of the held-out requests (thinking off), those
    it gets right come back as exactly the request's tool and typed values, whole and
    streamed; it gets about a third right (`fixture-eval`), and at least one of these."""
    client = agent_server.client()
    right = 0
    for ex in held_out:
        kw = dict(
            model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools, max_tokens=96,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **GREEDY,
        )  # fmt: skip
        r = client.chat.completions.create(**kw).choices[0]
        got = [(c.function.name, c.function.arguments) for c in r.message.tool_calls or []]
        if [(n, _json_or_none(a)) for n, a in got] == ex.expected:
            right += 1
            assert r.finish_reason == "tool_calls" and not r.message.content
            stream = client.chat.completions.create(stream=True, **kw)
            streamed, finish, _, _ = _stream_calls(stream)
            assert streamed == got and finish == "tool_calls"
    assert right >= 1


def test_a_named_tool_call_on_a_held_out_request(agent_server, held_out):
    """tool_choice names the request's tool: the reply is that call, parsed, in both shapes."""
    client = agent_server.client()
    for ex in held_out:
        name = ex.expected[0][0]
        kw = dict(model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools,
                  max_tokens=64, tool_choice={"type": "function", "function": {"name": name}},
                  **GREEDY)  # fmt: skip
        r = client.chat.completions.create(**kw).choices[0]
        assert r.finish_reason in ("tool_calls", "length")
        assert r.message.tool_calls[0].function.name == name and r.message.tool_calls[0].id
        calls: dict[int, list] = {}
        for chunk in client.chat.completions.create(stream=True, **kw):
            for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                if d.id:
                    calls[d.index] = [d.function.name, ""]
                else:
                    calls[d.index][1] += d.function.arguments or ""
        assert [calls[i] for i in sorted(calls)] == [
            [c.function.name, c.function.arguments] for c in r.message.tool_calls
        ]
        seen_content.append(r.message.content or "")


@pytest.mark.parametrize("thinking", [False, True])
def test_a_tool_loop_call_result_answer(agent_server, held_out, thinking):
    """The agent's loop: a call, its result in a tool message, then the model's answer."""
    client = agent_server.client()
    ex = held_out[0]
    name, args = ex.expected[0]
    kw = dict(
        model=agent_server.model, tools=ex.tools, max_tokens=48,
        extra_body={"chat_template_kwargs": {"enable_thinking": thinking}}, **GREEDY,
    )  # fmt: skip
    messages = list(ex.messages[:-1])
    first = client.chat.completions.create(
        messages=messages, tool_choice={"type": "function", "function": {"name": name}}, **kw
    ).choices[0]
    call = first.message.tool_calls[0]
    assert call.function.name == name
    result = json.dumps({"ok": True, "id": "loop-417", **args})
    function = {"name": name, "arguments": json.dumps(args)}
    turn = {"role": "assistant", "content": "", "reasoning_content": "Calling it.",
            "tool_calls": [{"id": call.id, "type": "function", "function": function}]}  # fmt: skip
    messages += [turn, {"role": "tool", "tool_call_id": call.id, "content": result}]
    answer = client.chat.completions.create(messages=messages, **kw).choices[0]
    assert answer.finish_reason in ("stop", "length", "tool_calls")
    if thinking:
        assert answer.message.reasoning_content
    seen_content.append(answer.message.content or "")


def test_history_reaches_the_template(agent_server):
    """Assistant tool_calls, reasoning and tool results are rendered, not dropped: the prompt
    the server counts equals the template's rendering of the whole history."""
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "reasoning": "Call it.",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'},
    ]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    r = agent_server.client().chat.completions.create(
        model=agent_server.model, messages=messages, tools=tools, max_tokens=4, **GREEDY
    )
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    template = [
        messages[0],
        {"role": "assistant", "content": "", "reasoning_content": "Call it.",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        messages[2],
    ]  # fmt: skip
    text = tok.apply_chat_template(
        template, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value>" in text
    assert "<think>Call it.</think>" in text  # after the last user turn: reasoning kept
    assert "<|observation|><tool_response>" in text
    assert r.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False))


def test_tool_choice_required_named_and_none(agent_server, held_out):
    client = agent_server.client()
    ex = held_out[0]  # one the model calls right unforced: required only forces the opening
    kw = dict(model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools,
              max_tokens=160, **GREEDY)  # fmt: skip
    required = client.chat.completions.create(tool_choice="required", **kw).choices[0]
    assert required.finish_reason == "tool_calls" and required.message.tool_calls
    other = next(
        t["function"]["name"] for t in ex.tools if t["function"]["name"] != ex.expected[0][0]
    )
    named = client.chat.completions.create(
        tool_choice={"type": "function", "function": {"name": other}}, **kw
    ).choices[0]
    # a named function is exactly one call (OpenAI's "forced function")
    assert [c.function.name for c in named.message.tool_calls] == [other]
    none = client.chat.completions.create(tool_choice="none", **kw).choices[0]
    assert not none.message.tool_calls and none.finish_reason in ("stop", "length")
    seen_content.extend(c.message.content or "" for c in (required, named, none))
    with pytest.raises(Exception) as e:  # naming a tool that is not offered is a 400
        client.chat.completions.create(
            tool_choice={"type": "function", "function": {"name": "nope"}}, **kw
        )
    assert getattr(e.value, "status_code", None) == 400 and "nope" in str(e.value)


def test_array_and_object_arguments_pass_the_clients_own_validation(agent_server):
    """The openai SDK's `parse` validates a call's arguments against the pydantic model its
    tool came from; Claude Code's TodoWrite takes a list of objects. Both came back with a
    string or a number where a list or object was asked (`["write"]`, `[64]`), and the
    client refused the call; held to their schemas they pass, streamed or not."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, Field

    # Bounded lists and strings: the built-in model repeats its items and runs strings on.
    class Todo(BaseModel):
        content: str = Field(max_length=40)
        status: Literal["pending", "in_progress", "completed"]

    class TodoWrite(BaseModel):
        todos: list[Todo] = Field(max_length=2)
        tags: list[Annotated[str, Field(max_length=12)]] = Field(max_length=2)

    client = agent_server.client()
    tool = openai.pydantic_function_tool(TodoWrite)
    kw = dict(model=agent_server.model, max_tokens=300, tools=[tool],
              tool_choice={"type": "function", "function": {"name": "TodoWrite"}},
              messages=[{"role": "user", "content": "Tag items where tags is 64 and write "
                         "the todos: fix the parser, then test it."}], **GREEDY)  # fmt: skip
    reply = client.chat.completions.parse(**kw).choices[0]  # raises if it is cut or invalid
    assert isinstance(reply.message.tool_calls[0].function.parsed_arguments, TodoWrite)
    with client.chat.completions.stream(**kw) as stream:  # the helper that parses as it reads
        final = stream.get_final_completion().choices[0]
    assert final.message.tool_calls[0].function.arguments == (
        reply.message.tool_calls[0].function.arguments)  # fmt: skip
    schema = tool["function"]["parameters"]
    claude = _anthropic(agent_server).messages.create(
        model=agent_server.model, max_tokens=300, messages=kw["messages"],
        tools=[{"name": "TodoWrite", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "TodoWrite"}, extra_body=ZERO,
    )  # fmt: skip
    assert claude.stop_reason == "tool_use", claude
    TodoWrite.model_validate(claude.content[-1].input)
    status = httpx.get(f"{agent_server.url}/v1/status", timeout=30).json()  # and it says so
    assert status["replicas"][0]["engine"]["tool_json_values"] is True


def test_thinking_token_budget_on_chat_completions(agent_server):
    """vLLM's `thinking_token_budget`: the reasoning is cut there and the answer follows."""
    client = agent_server.client()
    kw = dict(model=agent_server.model, messages=[{"role": "user", "content": "def add(a, b):"}],
              max_tokens=48, **GREEDY)  # fmt: skip
    free = client.chat.completions.create(**kw).choices[0].message
    cut = client.chat.completions.create(extra_body={"thinking_token_budget": 5}, **kw)
    r = cut.choices[0].message
    assert free.reasoning_content.startswith(r.reasoning_content)
    assert len(r.reasoning_content) < len(free.reasoning_content)
    assert r.content or cut.choices[0].finish_reason == "stop"
    seen_content.append(r.content or "")


def test_parallel_tool_calls_false_stops_after_one(agent_server, held_out):
    ex = held_out[2]
    r = agent_server.client().chat.completions.create(
        model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools, max_tokens=160,
        parallel_tool_calls=False, tool_choice="required", **GREEDY,
    )  # fmt: skip
    assert len(r.choices[0].message.tool_calls) == 1


def test_a_tool_call_cut_off_by_max_tokens_ends_cleanly(agent_server, held_out):
    ex = held_out[0]
    name = ex.expected[0][0]
    kw = dict(
        model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools, max_tokens=3,
        tool_choice={"type": "function", "function": {"name": name}}, **GREEDY,
    )  # fmt: skip
    client = agent_server.client(timeout=60)
    r = client.chat.completions.create(**kw).choices[0]
    assert r.finish_reason == "length"
    [call] = r.message.tool_calls  # the partial call, where the client can see it
    assert call.function.name == name
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[-1].choices[0].finish_reason == "length"
    seen_content.append(r.message.content or "")


def test_tool_choice_none_writes_no_call_tags(agent_server, held_out):
    """Under tool_choice 'none' every call tag is banned, not only `<tool_call>`: a model that
    writes `<arg_key>`/`<arg_value>` anyway had them dropped as out of place and their text run
    together in content ('monitor_routeoriginLima...'). Checked on the tokens themselves."""
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    tags = {tok.convert_tokens_to_ids(t) for t in CALL_TAGS}
    client = agent_server.client()
    for ex in held_out:
        for thinking in (False, True):
            r = client.chat.completions.create(
                model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools,
                tool_choice="none", max_tokens=96, logprobs=True, **GREEDY,
                extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
            ).choices[0]  # fmt: skip
            ids = [tok.convert_tokens_to_ids(t.token) for t in r.logprobs.content]
            assert not tags & set(ids) and not r.message.tool_calls
            seen_content.append(r.message.content or "")


def _open_string(arguments: str) -> dict | None:
    """The arguments of a call cut inside a string value, its start sent, or None."""
    if _json_or_none(arguments) is not None or _json_or_none(arguments + "}") is not None:
        return None
    cut = _json_or_none(arguments + '"}')
    return cut if cut and list(cut.values())[-1] else None


def _first_cut_in_a_string(arguments_at) -> int:
    """The smallest max_tokens whose reply ends inside a string value."""
    for max_tokens in range(3, 48):
        if _open_string(arguments_at(max_tokens)):
            return max_tokens
    pytest.fail("no cut fell inside a string value")


def test_a_string_argument_streams_before_its_value_ends(agent_server, held_out):
    """A string value is sent as the model writes it (a file being written shows as it comes):
    cut by max_tokens inside one, the OpenAI call's arguments, streamed and whole alike, end
    with the value's start, and the call resent in the history is served; Anthropic's
    streamed `partial_json` carries it too, and its tool_use input, whole or from the SDK's
    stream, keeps the values completed before it."""
    ex = next(e for e in held_out if any(
        p.get("type") == "string"
        for p in e.tools[0]["function"]["parameters"]["properties"].values()))  # fmt: skip
    name = ex.expected[0][0]
    user = [{"role": "user", "content": ex.messages[-2]["content"]}]
    chat, client = agent_server.client(timeout=60), _anthropic(agent_server)
    kw = dict(model=agent_server.model, messages=user, tools=ex.tools, **GREEDY,
              tool_choice={"type": "function", "function": {"name": name}})  # fmt: skip

    def arguments_at(max_tokens: int) -> str:
        calls = chat.chat.completions.create(max_tokens=max_tokens, **kw).choices[0]
        return calls.message.tool_calls[0].function.arguments if calls.message.tool_calls else ""

    max_tokens = _first_cut_in_a_string(arguments_at)
    r = chat.chat.completions.create(max_tokens=max_tokens, **kw).choices[0]
    assert r.finish_reason == "length"
    arguments = r.message.tool_calls[0].function.arguments
    streamed, finish, _, _ = _stream_calls(
        chat.chat.completions.create(stream=True, max_tokens=max_tokens, **kw))  # fmt: skip
    assert streamed == [(name, arguments)] and finish == "length"
    # The agent resends the cut call with its history: the next turn is served (the call's
    # arguments read up to the cut), not refused, which would fail every turn after it.
    call = r.message.tool_calls[0]
    history = [*user, r.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "cut off; say so"}]  # fmt: skip
    again = chat.chat.completions.create(model=agent_server.model, messages=history,
                                         tools=ex.tools, max_tokens=4, **GREEDY)  # fmt: skip
    assert again.choices[0].finish_reason in ("length", "stop", "tool_calls")

    akw = dict(model=agent_server.model, extra_body=ZERO, messages=user,
               tools=_anthropic_tools(ex), tool_choice={"type": "tool", "name": name})  # fmt: skip

    def partial_json_at(max_tokens: int) -> str:
        return "".join(
            e.delta.partial_json
            for e in client.messages.create(stream=True, max_tokens=max_tokens, **akw)
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        )

    max_tokens = _first_cut_in_a_string(partial_json_at)
    cut = _open_string(partial_json_at(max_tokens))
    whole, from_stream = _whole_and_streamed(client, max_tokens=max_tokens, **akw)
    [use] = [b for b in whole.content if b.type == "tool_use"]
    assert use.input == dict(list(cut.items())[:-1]) and whole.stop_reason == "max_tokens"
    assert [b.input for b in from_stream.content if b.type == "tool_use"] == [use.input]


def _anthropic(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="none", max_retries=0)


def _anthropic_tools(ex) -> list[dict]:
    return [{"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": t["function"]["parameters"]} for t in ex.tools]  # fmt: skip


def test_anthropic_text_thinking_and_streaming(agent_server):
    client = _anthropic(agent_server)
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    kw = dict(model=agent_server.model, max_tokens=48, extra_body=ZERO, system=system,
              messages=[{"role": "user", "content": "def add(a, b):"}])  # fmt: skip
    m = client.messages.create(thinking={"type": "disabled"}, metadata={"user_id": "u1"}, **kw)
    assert m.type == "message" and m.role == "assistant" and m.model == agent_server.model
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.output_tokens > 0
    assert [b.type for b in m.content] == ["text"]
    seen_content.append(m.content[0].text)
    on = client.messages.create(thinking={"type": "enabled", "budget_tokens": 40}, **kw)
    assert on.content[0].type == "thinking"
    seen_content.extend(b.text for b in on.content if b.type == "text")
    # budget_tokens is enforced: the reasoning ends there with </think>, the answer follows.
    short = client.messages.create(thinking={"type": "enabled", "budget_tokens": 6}, **kw)
    thought = short.content[0].thinking
    assert short.content[0].type == "thinking" and on.content[0].thinking.startswith(thought)
    assert len(thought) < len(on.content[0].thinking)
    assert len(short.content) > 1 or short.stop_reason == "end_turn"
    seen_content.extend(b.text for b in short.content if b.type == "text")
    with pytest.raises(anthropic.BadRequestError) as e:  # as Anthropic: budget < max_tokens
        client.messages.create(thinking={"type": "enabled", "budget_tokens": 48}, **kw)
    assert "budget_tokens" in str(e.value)
    with client.messages.stream(thinking={"type": "disabled"}, **kw) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "message_delta" in events
    assert final.content[0].text == m.content[0].text and final.stop_reason == m.stop_reason


def test_anthropic_stop_sequences(agent_server):
    client = _anthropic(agent_server)
    base = client.messages.create(
        model=agent_server.model, max_tokens=24, extra_body=ZERO, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "import os"}],
    )  # fmt: skip
    text = base.content[0].text
    stop = text.strip()[:2]
    cut = client.messages.create(
        model=agent_server.model, max_tokens=24, extra_body=ZERO, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "import os"}], stop_sequences=[stop],
    )  # fmt: skip
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert stop not in (cut.content[0].text if cut.content else "")


def test_anthropic_tool_use_loop_and_count_tokens(agent_server, held_out):
    client = _anthropic(agent_server)
    ex = held_out[0]
    name = ex.expected[0][0]
    kw = dict(model=agent_server.model, max_tokens=64, extra_body=ZERO,
              tools=_anthropic_tools(ex), thinking={"type": "disabled"})  # fmt: skip
    user = ex.messages[-2]["content"]
    ask = [{"role": "user", "content": user}]
    m = client.messages.create(messages=ask, tool_choice={"type": "tool", "name": name}, **kw)
    assert m.stop_reason in ("tool_use", "max_tokens")
    use = next(b for b in m.content if b.type == "tool_use")
    assert use.name == name and use.id.startswith("toolu_") and isinstance(use.input, dict)
    with client.messages.stream(
        messages=ask, tool_choice={"type": "tool", "name": name}, **kw
    ) as st:
        events = [e.type for e in st]
        final = st.get_final_message()
    assert "content_block_start" in events and events[-1] == "message_stop"
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert (streamed.name, streamed.input) == (use.name, use.input)
    history = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": name,
                                           "input": ex.expected[0][1]}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": json.dumps({"ok": True, "id": "loop-55"})}]},
    ]  # fmt: skip
    answer = client.messages.create(messages=history, **kw)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    seen_content.extend(b.text for b in answer.content if b.type == "text")
    counted = client.messages.count_tokens(
        model=agent_server.model, messages=history, tools=_anthropic_tools(ex)
    )
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    template = [{"role": "user", "content": user},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": name, "arguments": ex.expected[0][1]}}]},
                {"role": "tool", "content": json.dumps({"ok": True, "id": "loop-55"})}]  # fmt: skip
    tools = [{"type": "function", "function": t["function"]} for t in ex.tools]
    text = tok.apply_chat_template(
        template, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert counted.input_tokens == len(tok.encode(text, add_special_tokens=False))


def test_anthropic_errors_in_anthropic_shape(agent_server):
    url = f"{agent_server.url}/v1/messages"
    r = httpx.post(url, json={"model": agent_server.model, "messages": []})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, json={"model": "nope", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_anthropic_what_claude_code_sends_that_a_text_model_cannot_read(agent_server):
    """An image (a Read of a .png, in a tool_result; a pasted screenshot) is read as a note
    that it is not shown, said in x-omitted-content: Claude Code resends it every turn, so a
    400 would end the session. A plain-text document is read as its text."""
    url = f"{agent_server.url}/v1/messages"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                          "data": "def f(): pass"}}  # fmt: skip
    messages = [
        {"role": "user", "content": "read the png"},
        {"role": "assistant", "content": [USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [image]}, image, doc]},
    ]  # fmt: skip
    body = {"model": agent_server.model, "max_tokens": 4, "messages": messages,
            "tools": [WEATHER], "temperature": 0}  # fmt: skip
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-omitted-content"] == "image=2"
    with httpx.stream("POST", url, json=body | {"stream": True}, timeout=60) as s:
        assert s.status_code == 200 and s.headers["x-omitted-content"] == "image=2"
        s.read()
    counted = httpx.post(url + "/count_tokens", json=body, timeout=60).json()["input_tokens"]
    plain = [m | {"content": "read the png"} if i == 0 else m for i, m in enumerate(messages)]
    assert counted > httpx.post(url + "/count_tokens", json=body | {
        "messages": plain[:2] + [{"role": "user", "content": [{
            "type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]},
        timeout=60).json()["input_tokens"]  # fmt: skip


def test_anthropic_documents_of_text_blocks_system_images_and_structured_outputs(agent_server):
    """A document whose source is content blocks of text is read as that text (as a plain-text
    one is); an image in `system` is a note counted in x-omitted-content; structured outputs
    (`output_format`, `output_config.format`) hold the reply's text to the schema, streamed
    and not, and a format that is not a JSON schema is a 400 naming the field."""
    url = f"{agent_server.url}/v1/messages"

    def doc(source: dict) -> dict:
        return {"model": agent_server.model, "max_tokens": 2, "temperature": 0, "messages": [
            {"role": "user", "content": [{"type": "document", "source": source}]}]}  # fmt: skip

    text = doc({"type": "text", "media_type": "text/plain", "data": "def f(): pass\nx = 1"})
    blocks = doc({"type": "content", "content": [{"type": "text", "text": "def f(): pass"},
                                                 {"type": "text", "text": "x = 1"}]})  # fmt: skip
    counts = [httpx.post(url + "/count_tokens", json=b, timeout=60).json()["input_tokens"]
              for b in (text, blocks)]  # fmt: skip
    assert counts[0] == counts[1], counts
    r = httpx.post(url, json=blocks, timeout=60)
    assert r.status_code == 200 and "x-omitted-content" not in r.headers, r.text
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}
    r = httpx.post(url, json=text | {"system": [{"type": "text", "text": "Hi."}, image]},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200 and r.headers["x-omitted-content"] == "image=1", r.text
    schema = {"type": "json_schema", "schema": VERDICT}
    ask = {"model": agent_server.model, "max_tokens": 100, "messages": [
        {"role": "user", "content": "Is the build green? Answer as JSON."}]}  # fmt: skip
    client = _anthropic(agent_server)
    for field in ({"output_format": schema}, {"output_config": {"format": schema}}):
        for thinking in ({"type": "disabled"}, {"type": "enabled", "budget_tokens": 24}):
            r = client.messages.create(**ask, thinking=thinking, extra_body=ZERO | field)
            assert r.stop_reason == "end_turn", r
            [block] = [b for b in r.content if b.type == "text"]
            whole = _verdict(block.text)
            with client.messages.stream(**ask, thinking=thinking, extra_body=ZERO | field) as s:
                assert _verdict(s.get_final_text()) == whole
        bad = {"output_format": {"type": "json"}} if "output_format" in field else {
            "output_config": {"format": {"type": "json_schema"}}}  # fmt: skip
        r = httpx.post(url, json=text | bad, timeout=60)
        error = r.json()["error"]
        assert r.status_code == 400 and error["type"] == "invalid_request_error", r.text
    assert httpx.post(url, json=text | {"output_config": {"effort": "low"}},
                      timeout=60).status_code == 200  # fmt: skip


def test_anthropic_takes_back_its_own_replies_and_words_limits_as_anthropic(agent_server):
    """A reply of thinking alone (the model ended its turn there) is history a client sends
    back; consecutive turns of one role are one turn, as Anthropic merges them; no `thinking`
    means none (Claude Code's background calls want text); a max_tokens past the context is
    worded as Anthropic words it, which Claude Code reads to retry with one that fits."""
    url = f"{agent_server.url}/v1/messages"
    history = [*HI, {"role": "assistant", "content": [THOUGHT]},
               {"role": "assistant", "content": "ok"}, *HI]  # fmt: skip
    body = {"model": agent_server.model, "max_tokens": 8, "messages": history, "temperature": 0}
    r = httpx.post(url, json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert [b["type"] for b in r.json()["content"]] == ["text"]  # no thinking asked: none
    on = httpx.post(url, json=body | {"thinking": {"type": "enabled", "budget_tokens": 4}},
                    timeout=60).json()  # fmt: skip
    assert on["content"][0]["type"] == "thinking"
    limit = httpx.get(f"{agent_server.url}/v1/models").json()["data"][0]["max_model_len"]
    big = httpx.post(url, json=body | {"max_tokens": 32000}, timeout=60)
    assert big.status_code == 400
    said = big.json()["error"]["message"]
    assert said.startswith("input length and `max_tokens` exceed context limit: ")
    prompt = int(said.split(": ")[1].split(" + ")[0])
    assert f"{prompt} + 32000 > {limit}, decrease input length or `max_tokens`" in said
    long = [{"role": "user", "content": "word " * limit}]
    r = httpx.post(url, json=body | {"messages": long}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("prompt is too long: ")
    assert r.json()["error"]["message"].endswith(f" tokens > {limit} maximum")


def test_model_aliases_answer_the_names_agents_ask_for(agent_server):
    """Claude Code asks for its own model names (a main and a small, fast one): aliases
    answer them on every API; other names are still a 404 that lists what is served."""
    assert agent_server.model == "glm-5-fixture"
    names = [m.id for m in agent_server.client().models.list().data]
    assert names == ["glm-5-fixture", *ALIASES]
    user = [{"role": "user", "content": "hi"}]
    r = _anthropic(agent_server).messages.create(
        model=ALIASES[1], max_tokens=4, messages=user, extra_body=ZERO
    )
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 4
    assert r.model == ALIASES[1]  # the name asked for, as vLLM answers
    chat = agent_server.client().chat.completions.create(
        model=ALIASES[0], messages=user, max_tokens=4, temperature=0
    )
    assert chat.usage.completion_tokens == 4 and chat.model == ALIASES[0]
    dated = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 2, "messages": user}
    r = httpx.post(f"{agent_server.url}/v1/messages", json=dated)
    assert r.status_code == 200 and r.json()["model"] == dated["model"]
    streamed = _anthropic(agent_server).messages.create(model=dated["model"], max_tokens=2,
                                                        messages=user, stream=True)  # fmt: skip
    assert next(iter(streamed)).message.model == dated["model"]
    resp = agent_server.client().responses.create(model=ALIASES[0], input="hi",
                                                  max_output_tokens=2)  # fmt: skip
    assert resp.model == ALIASES[0]
    card = httpx.get(f"{agent_server.url}/v1/models/claude-haiku-4-5-20251001").json()
    assert card["id"] == "claude-haiku-4-5-20251001" and card["type"] == "model"
    listed = _anthropic(agent_server).models.list()
    assert [m.id for m in listed.data] == names and listed.has_more is False
    other = {"model": "claude-opus-4-1", "max_tokens": 4, "messages": user}
    r = httpx.post(f"{agent_server.url}/v1/messages", json=other)
    assert r.status_code == 404 and all(n in r.json()["error"]["message"] for n in ALIASES)


def _block_list(content) -> list[tuple]:
    """Each block's type and what it carries, to compare two replies block by block."""
    fields = ("text", "thinking", "name", "input")
    return [(b.type, *(getattr(b, f, None) for f in fields)) for b in content]


def _whole_and_streamed(client, **kw):
    whole = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        streamed = stream.get_final_message()
    return whole, streamed


@pytest.mark.parametrize("thinking", ["disabled", "enabled"])
def test_anthropic_whole_replies_have_the_streams_blocks_in_order(agent_server, held_out,
                                                                  thinking):  # fmt: skip
    """A whole reply's content is the stream's final message's, block by block."""
    client = _anthropic(agent_server)
    budget = {"budget_tokens": 40} if thinking == "enabled" else {}
    for ex in held_out:
        for choice in ({"type": "auto"}, {"type": "any"}):
            whole, streamed = _whole_and_streamed(
                client, model=agent_server.model, max_tokens=96, extra_body=ZERO,
                tools=_anthropic_tools(ex), tool_choice=choice,
                thinking={"type": thinking, **budget},
                messages=[{"role": "user", "content": ex.messages[-2]["content"]}],
            )  # fmt: skip
            assert _block_list(whole.content) == _block_list(streamed.content)
            assert whole.stop_reason == streamed.stop_reason
            seen_content.extend(b.text for b in whole.content if b.type == "text")


CLOSED_TOOLS = [{"name": name, "input_schema": {
    "type": "object", "required": ["unit"],
    "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}
    for name in ("get_weather", "set_thermostat")]  # fmt: skip
"""Tools whose calls end soon (a listed value), so random weights write text after one."""


def test_anthropic_forced_calls_whole_and_streamed_alike(server):
    """Random weights made to call a tool write calls until max_tokens (a forced reply is
    calls only): the whole reply has the stream's blocks, in its order."""
    client = _anthropic(server)
    whole, streamed = _whole_and_streamed(
        client, model=server.model, max_tokens=40, extra_body=ZERO, tools=CLOSED_TOOLS,
        tool_choice={"type": "any"}, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "weather"}],
    )  # fmt: skip
    assert {b.type for b in whole.content} == {"tool_use"}
    assert _block_list(whole.content) == _block_list(streamed.content)
    # The Responses API's whole reply keeps its items in that order too.
    tools = [{"type": "function", "name": t["name"], "parameters": t["input_schema"]}
             for t in CLOSED_TOOLS]  # fmt: skip
    kw = dict(model=server.model, input="weather", tools=tools, tool_choice="required",
              max_output_tokens=40, temperature=0.0, reasoning={"effort": "none"})  # fmt: skip
    r = server.client().responses.create(**kw)
    final = list(server.client().responses.create(stream=True, **kw))[-1].response
    assert {o.type for o in r.output} == {"function_call"}
    assert [(o.type, getattr(o, "name", None)) for o in r.output] == [
        (o.type, getattr(o, "name", None)) for o in final.output
    ]
    assert r.output_text == final.output_text


def test_anthropic_message_start_does_not_wait_for_a_long_prefill(agent_server):
    """A long transcript on a cold cache prefills for seconds: message_start comes at once
    (the whole prompt as input_tokens), and message_delta gives the cache's split."""
    import time

    text = "Review: " + " ".join(f"line {i} of the log reads ok {i * 7}." for i in range(300))
    body = {"model": agent_server.model, "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": text}], "temperature": 0}  # fmt: skip
    times, events = {}, []
    started = time.monotonic()
    with httpx.stream("POST", f"{agent_server.url}/v1/messages", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                times.setdefault(data["type"], time.monotonic() - started)
                events.append(data)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    first_text = times["content_block_delta"]
    assert first_text > 1.5, "the prefill was too short to test this"
    assert times["message_start"] < 1.5 < first_text
    start = events[0]["message"]["usage"]
    end = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert start["input_tokens"] == end["input_tokens"] + end["cache_read_input_tokens"]


def test_anthropic_stream_usage_agrees_from_message_start(agent_server):
    """message_start's usage counts the prompt as message_delta's does: input_tokens without
    the cached tokens, cache_read_input_tokens and cache_creation_input_tokens beside them."""
    client = _anthropic(agent_server)
    text = "Summarise: " + " ".join(f"item {i} is ready." for i in range(60))
    kw = dict(model=agent_server.model, max_tokens=4, extra_body=ZERO,
              messages=[{"role": "user", "content": text}])  # fmt: skip
    counted = client.messages.count_tokens(model=agent_server.model, messages=kw["messages"])
    for _ in range(2):  # the second finds the prompt in the prefix cache
        with client.messages.stream(**kw) as stream:
            events = list(stream)
        start = events[0].message.usage.model_dump()
        end = next(e for e in events if e.type == "message_delta").usage.model_dump()
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            assert start[key] == end[key] and start[key] is not None, key
        assert start["input_tokens"] + start["cache_read_input_tokens"] == counted.input_tokens
    assert start["cache_read_input_tokens"] > 0


def test_claude_codes_billing_line_does_not_defeat_the_prefix_cache(agent_server):
    """Claude Code opens its system prompt with a billing line whose `cch` nonce changes on
    every request: a session's next turn still reuses the last one's prefix (the whole system
    prompt and the turns before), on the Messages API and on a proxy's chat completions."""
    client, chat = _anthropic(agent_server), agent_server.client()
    rules = "You are a coding agent. " + " ".join(
        f"Rule {i}: keep file {i} tidy." for i in range(40)
    )
    turns = [{"role": "user", "content": "List the rules."},
             {"role": "assistant", "content": "There are forty rules."},
             {"role": "user", "content": "Which rule is about file 7?"}]  # fmt: skip

    def billing(nonce: str) -> str:
        return (
            f"x-anthropic-billing-header: cc_version=2.1.120.cf9; cc_entrypoint=cli; cch={nonce};"
        )

    for i, nonce in enumerate(("543cf", "0aaa9")):
        system = [{"type": "text", "text": billing(nonce)}, {"type": "text", "text": rules}]
        m = client.messages.create(model=agent_server.model, max_tokens=2, extra_body=ZERO,
                                   system=system, messages=turns[: 1 + 2 * i])  # fmt: skip
    prompt = m.usage.input_tokens + m.usage.cache_read_input_tokens
    assert m.usage.cache_read_input_tokens > 0.6 * prompt, m.usage
    for i, nonce in enumerate(("71fea", "eb6c6")):
        system = {"role": "system", "content": billing(nonce) + "\n" + rules}
        r = chat.chat.completions.create(model=agent_server.model, max_tokens=2, **GREEDY,
                                         messages=[system, *turns[: 1 + 2 * i]])  # fmt: skip
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached > 0.6 * r.usage.prompt_tokens, r.usage
    # The line is gone from the prompt, not only from the cache's view of it.
    counted = client.messages.count_tokens(
        model=agent_server.model,
        messages=turns[:1],
        system=[{"type": "text", "text": billing("00000")}, {"type": "text", "text": rules}],
    )
    assert (
        counted.input_tokens
        == client.messages.count_tokens(
            model=agent_server.model, messages=turns[:1], system=rules
        ).input_tokens
    )


def test_a_call_cut_inside_its_name_is_left_out(agent_server, held_out):
    """max_tokens ends a forced call before its name is whole (every name here takes three or
    more tokens): no tool_use block or tool call names a tool nobody offered, streamed or not,
    on both APIs; the reply says it was cut."""
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    ex = held_out[0]
    names = [t["function"]["name"] for t in ex.tools]
    assert all(len(tok.encode(n, add_special_tokens=False)) > 2 for n in names)
    client, chat = _anthropic(agent_server), agent_server.client()
    user = [{"role": "user", "content": ex.messages[-2]["content"]}]
    for max_tokens in (1, 2):
        kw = dict(model=agent_server.model, max_tokens=max_tokens, extra_body=ZERO,
                  tools=_anthropic_tools(ex), tool_choice={"type": "any"},
                  messages=user)  # fmt: skip
        whole, streamed = _whole_and_streamed(client, **kw)
        for m in (whole, streamed):
            assert m.stop_reason == "max_tokens"
            assert [b for b in m.content if b.type == "tool_use"] == []
        kw = dict(model=agent_server.model, messages=user, tools=ex.tools, max_tokens=max_tokens,
                  tool_choice="required", **GREEDY)  # fmt: skip
        r = chat.chat.completions.create(**kw).choices[0]
        assert r.finish_reason == "length" and not r.message.tool_calls
        streamed_calls, finish, _, _ = _stream_calls(
            chat.chat.completions.create(stream=True, **kw)
        )
        assert finish == "length" and streamed_calls == []


HI = [{"role": "user", "content": "hi"}]
THOUGHT = {"type": "thinking", "thinking": "hmm", "signature": ""}
USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
BAD_REQUESTS = [  # (request fields, what the error message must say)
    ({"messages": [{"role": "user", "content": []}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [THOUGHT]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "redacted_thinking", "data": "x"}]}]},
     "messages.0.content"),
    ({"messages": [*HI, {"role": "assistant", "content": []}, *HI]}, "messages.1.content"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s"}]}]},
     "messages.0.content.0: block type 'search_result' is not supported"),
    ({"messages": [*HI, {"role": "assistant", "content": [USE | {"input": "Oslo"}]}]},
     "messages.1.content.0.input: must be an object"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content.0.text: must be a string"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content: must be a string"),
    ({"messages": HI, "system": [{"type": "tool_use", "text": "x"}]}, "system.0"),
    ({"messages": [{"role": "user", "content": [USE]}]}, "messages.0.content.0"),
    ({"messages": HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "web_search_20250305"),
    ({"messages": HI, "tools": [{"type": "bash_20250124", "name": "bash"}]}, "bash_20250124"),
    ({"messages": HI, "tools": [{"type": "text_editor_20250124", "name": "str_replace_editor"}]},
     "text_editor_20250124"),
    ({"messages": HI, "tools": [WEATHER | {"type": "computer_20250124"}]},
     "computer_20250124"),
    ({"messages": HI, "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
     "mcp_servers"),
    ({"messages": HI, "tools": [WEATHER], "tool_choice": {"type": "tool"}},
     "tool_choice of type 'tool' needs the tool's 'name'"),
]  # fmt: skip


@pytest.mark.parametrize("fields,says", BAD_REQUESTS)
def test_anthropic_bad_content_and_server_tools_are_400s_naming_the_field(agent_server, fields,
                                                                         says):  # fmt: skip
    """Each bad request is a 400 in Anthropic's shape naming what to fix, whole, streamed and
    counted (never a 500, never accepted)."""
    base = f"{agent_server.url}/v1/messages"
    body = {"model": agent_server.model, "max_tokens": 8} | fields
    for url, extra in ((base, {}), (base, {"stream": True}), (base + "/count_tokens", {})):
        r = httpx.post(url, json=body | extra, timeout=30)
        assert r.status_code == 400, (url, extra, r.text)
        error = r.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert says in error["error"]["message"], error["error"]["message"]
    if "tools" in fields and "tool_choice" not in fields:  # a server tool refused
        assert "client tools" in error["error"]["message"]


def test_anthropic_text_blocks_are_joined_by_newlines(agent_server):
    """System, user and tool_result text blocks reach the model joined by a newline: the prompt
    counts as the newline-joined string's (and not as the blocks run together)."""
    client = _anthropic(agent_server)

    def count(system, content, result) -> int:
        messages = [*HI, {"role": "assistant", "content": [USE]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": result},
                        *([{"type": "text", "text": t} for t in content]
                          if isinstance(content, list) else [{"type": "text", "text": content}]),
                    ]}]  # fmt: skip
        return client.messages.count_tokens(
            model=agent_server.model, system=system, messages=messages, tools=[WEATHER]
        ).input_tokens

    parts = ["The assistant is for Claude.", "You are terse."]
    texts = [{"type": "text", "text": t} for t in parts]
    blocks = count(texts, parts, texts)
    assert blocks == count("\n".join(parts), "\n".join(parts), "\n".join(parts))
    assert blocks != count("".join(parts), "".join(parts), "".join(parts))


@pytest.mark.parametrize("thinking", [False, True])
def test_anthropic_prefill_is_continued(agent_server, thinking):
    """A final assistant message is a prefill: the prompt ends with its text (after the closed
    reasoning, as GLM renders a past turn) with no new turn, and the reply is its greedy
    continuation, as /v1/completions gives for that prompt text."""
    prefill = "Sure, the function"
    ask = [{"role": "user", "content": "def add(a, b):"}]
    messages = [*ask, {"role": "assistant", "content": [{"type": "text", "text": prefill}]}]
    switch = {"type": "enabled", "budget_tokens": 8} if thinking else {"type": "disabled"}
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    template = [*ask, {"role": "assistant", "content": prefill}]
    text = tok.apply_chat_template(
        template,
        tokenize=False,
        add_generation_prompt=False,
        continue_final_message=True,
        enable_thinking=thinking,
    )
    assert text.endswith("<|assistant|></think>" + prefill)
    client = _anthropic(agent_server)
    counted = client.messages.count_tokens(model=agent_server.model, messages=messages,
                                           thinking=switch)  # fmt: skip
    assert counted.input_tokens == len(tok.encode(text, add_special_tokens=False))
    kw = dict(model=agent_server.model, max_tokens=16, extra_body=ZERO, thinking=switch,
              messages=messages)  # fmt: skip
    whole, streamed = _whole_and_streamed(client, **kw)
    plain = agent_server.client().completions.create(
        model=agent_server.model, prompt=text, max_tokens=16, temperature=0.0
    )
    assert [b.type for b in whole.content] == ["text"]
    assert whole.content[0].text == plain.choices[0].text and plain.choices[0].text
    assert _block_list(whole.content) == _block_list(streamed.content)
    seen_content.append(whole.content[0].text)
    # An empty final assistant message is no prefill: the prompt is the question's.
    empty = client.messages.count_tokens(
        model=agent_server.model,
        thinking=switch,
        messages=[*ask, {"role": "assistant", "content": []}],
    )
    alone = client.messages.count_tokens(model=agent_server.model, messages=ask, thinking=switch)
    assert empty.input_tokens == alone.input_tokens


@pytest.mark.parametrize("content,says", [
    ([{"type": "text", "text": "The answer is "}], "cannot end with whitespace"),
    ([USE], "messages.1.content.0: a tool_use block cannot end the conversation"),
])  # fmt: skip
def test_anthropic_prefills_it_cannot_continue_are_400s(agent_server, content, says):
    body = {"model": agent_server.model, "max_tokens": 8,
            "messages": [*HI, {"role": "assistant", "content": content}]}  # fmt: skip
    r = httpx.post(f"{agent_server.url}/v1/messages", json=body, timeout=30)
    assert r.status_code == 400 and says in r.json()["error"]["message"]


def test_no_markup_in_any_content():
    assert seen_content, "the tests above read no content"
    for text in seen_content:
        assert not any(tag in text for tag in MARKUP), text


def _flat_tools(ex) -> list[dict]:
    """The Responses API's function tools: name and schema at the top level."""
    return [{"type": "function", **t["function"]} for t in ex.tools]


def test_responses_api_text_reasoning_and_a_stream_that_matches(agent_server):
    client = agent_server.client()
    kw = dict(model=agent_server.model, input="def add(a, b):", max_output_tokens=24,
              temperature=0.0)  # fmt: skip
    raw = client.responses.with_raw_response.create(reasoning={"effort": "minimal"}, **kw)
    off = raw.parse()
    assert raw.headers["x-speculation"] and raw.headers["x-speculation-accepted"] == "0/0"
    assert [o.type for o in off.output] == ["message"] and off.output_text
    assert off.status in ("completed", "incomplete") and off.usage.output_tokens > 0
    on = client.responses.create(**kw)
    assert on.output[0].type == "reasoning" and on.output[0].content[0].text
    assert on.usage.output_tokens_details.reasoning_tokens > 0
    # the parser's count, as chat gives it (re-encoding the text once counted more)
    chat = client.chat.completions.create(
        model=agent_server.model, messages=[{"role": "user", "content": "def add(a, b):"}],
        max_tokens=24, temperature=0.0,
    )  # fmt: skip
    assert on.usage.output_tokens_details.reasoning_tokens == (
        chat.usage.completion_tokens_details.reasoning_tokens
    )
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == ("response.completed" if on.status == "completed"
                         else "response.incomplete")  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert [o.type for o in final.output] == [o.type for o in on.output]
    assert final.output[0].content[0].text == on.output[0].content[0].text
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == on.output_text
    seen_content.extend([off.output_text, on.output_text, final.output_text])
    # reasoning.summary (Codex asks for "auto" and shows the summary): the reasoning comes as
    # the summary, whole and streamed, in the SDK's own event types (it came back empty).
    thought = on.output[0].content[0].text
    summed = client.responses.create(reasoning={"summary": "auto"}, **kw)
    assert summed.output[0].summary[0].text == thought and not summed.output[0].content
    events = list(client.responses.create(stream=True, reasoning={"summary": "auto"}, **kw))
    kinds = [e.type for e in events]
    assert "response.reasoning_text.delta" not in kinds
    assert (
        kinds.index("response.reasoning_summary_part.added")
        < kinds.index("response.reasoning_summary_text.done")
        < kinds.index("response.reasoning_summary_part.done")
    )
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert deltas == thought == events[-1].response.output[0].summary[0].text


def test_responses_history_of_a_message_and_its_calls_is_one_assistant_turn(agent_server):
    """One response's items (reasoning, a message, a function_call) resent as history are one
    assistant turn, the prompt the chat route builds from the same turn (they were two
    turns, with a stray `<|assistant|></think>` the model never wrote)."""
    call = {"id": "c1", "type": "function",
            "function": {"name": "shell", "arguments": '{"cmd": "ls"}'}}  # fmt: skip
    tool = {"type": "function", "function": {"name": "shell", "parameters": {
        "type": "object", "properties": {"cmd": {"type": "string"}}}}}  # fmt: skip
    chat = httpx.post(f"{agent_server.url}/v1/chat/completions", json={
        "model": agent_server.model, "max_tokens": 1, "tools": [tool], "messages": [
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": "I'll list the files.",
             "reasoning_content": "I need ls.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "a.txt"}]}, timeout=60)  # fmt: skip
    responses = httpx.post(f"{agent_server.url}/v1/responses", json={
        "model": agent_server.model, "max_output_tokens": 1,
        "tools": [{"type": "function", "name": "shell", **tool["function"]}],
        "input": [
            {"role": "user", "content": "list files"},
            {"type": "reasoning", "summary": [],
             "content": [{"type": "reasoning_text", "text": "I need ls."}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "I'll list the files."}]},
            {"type": "function_call", "call_id": "c1", "name": "shell",
             "arguments": '{"cmd": "ls"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "a.txt"}]},
        timeout=60)  # fmt: skip
    assert chat.status_code == responses.status_code == 200, (chat.text, responses.text)
    prompt = chat.json()["usage"]["prompt_tokens"]
    assert responses.json()["usage"]["input_tokens"] == prompt


def test_responses_history_renders_as_chat_does_so_the_cache_holds_across_routes(agent_server):
    """The same conversation through chat, then Responses: the same prompt, so Responses reads
    all of it from the cache. A reply of reasoning alone (thinking cut by the limit) followed
    by a user message was dropped from the prompt, and its reasoning glued onto a later
    reply; tools were written in another key order (no shared tools block across routes)."""
    tool = {"type": "function", "function": {"name": "grep_logs", "description": "Search logs.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}  # fmt: skip
    chat = httpx.post(f"{agent_server.url}/v1/chat/completions", json={
        "model": agent_server.model, "max_tokens": 1, "tools": [tool], "messages": [
            {"role": "user", "content": "find the error"},
            {"role": "assistant", "content": "", "reasoning_content": "First I look at"},
            {"role": "user", "content": "go on"},
            {"role": "assistant", "content": "Done.", "reasoning_content": "It is fixed."},
            {"role": "user", "content": "thanks"}]}, timeout=60).json()  # fmt: skip

    def reasoning(text: str) -> dict:
        return {"type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip

    responses = httpx.post(f"{agent_server.url}/v1/responses", json={
        "model": agent_server.model, "max_output_tokens": 1,
        "tools": [{"type": "function", **tool["function"]}],
        "input": [
            {"role": "user", "content": "find the error"}, reasoning("First I look at"),
            {"role": "user", "content": "go on"}, reasoning("It is fixed."),
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Done."}]},
            {"role": "user", "content": "thanks"}]}, timeout=60).json()  # fmt: skip
    prompt = chat["usage"]["prompt_tokens"]
    assert responses["usage"]["input_tokens"] == prompt, responses
    assert responses["usage"]["input_tokens_details"]["cached_tokens"] >= prompt - 17, responses


def test_responses_api_function_call_loop_streamed_alike(agent_server, held_out):
    client = agent_server.client()
    ex = held_out[0]
    name, args = ex.expected[0]
    request = ex.messages[-2]["content"]
    kw = dict(model=agent_server.model, tools=_flat_tools(ex), max_output_tokens=64,
              temperature=0.0, tool_choice={"type": "function", "name": name})  # fmt: skip
    r = client.responses.create(input=request, **kw)
    [call] = [o for o in r.output if o.type == "function_call"]
    assert call.name == name and call.call_id and isinstance(json.loads(call.arguments), dict)
    with client.responses.stream(input=request, **kw) as stream:
        final = stream.get_final_response()
    [streamed] = [o for o in final.output if o.type == "function_call"]
    assert (streamed.name, streamed.arguments) == (call.name, call.arguments)
    # The loop: the call and its output go back as input items; the model answers.
    items = [{"role": "user", "content": request},
             {"type": "function_call", "call_id": call.call_id, "name": name,
              "arguments": json.dumps(args)},
             {"type": "function_call_output", "call_id": call.call_id,
              "output": json.dumps({"ok": True})}]  # fmt: skip
    answer = client.responses.create(input=items, tools=_flat_tools(ex), max_output_tokens=24,
                                     temperature=0.0, reasoning={"effort": "none"})  # fmt: skip
    assert answer.output and answer.status in ("completed", "incomplete")
    seen_content.append(answer.output_text)


APPLY_PATCH = {
    "type": "custom", "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool, so do "
                   "not wrap the patch in JSON.",
    "format": {"type": "grammar", "syntax": "lark", "definition":
               'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
               'end_patch: "*** End Patch" LF?\nhunk: add_hunk\n'
               'add_hunk: "*** Add File: " filename LF add_line+\nfilename: /(.+)/\n'
               'add_line: "+" /(.*)/ LF -> line\n%import common.LF'},
}  # fmt: skip
"""Codex's apply_patch as it offers it (a freeform tool; its grammar shortened)."""


def test_responses_api_custom_tools_as_codex_offers_apply_patch(agent_server):
    """Codex offers apply_patch as a custom (freeform) tool: the model sees a function of one
    string, the call comes back as a custom_tool_call item whose input is that text (streamed
    as custom_tool_call_input deltas that add up to it), and the call and its output go back
    as input items, the same prompt as the function's."""
    client = agent_server.client()
    kw = dict(model=agent_server.model, input="Add hello.txt saying hello.", tools=[APPLY_PATCH],
              tool_choice={"type": "custom", "name": "apply_patch"}, max_output_tokens=48,
              temperature=0.0, reasoning={"effort": "none"})  # fmt: skip
    r = client.responses.create(**kw)
    [call] = [o for o in r.output if o.type == "custom_tool_call"]
    assert call.name == "apply_patch" and call.call_id and isinstance(call.input, str), r
    # Its grammar holds the text: a patch's opening, whatever the model would have written.
    assert call.input.startswith("*** Begin Patch\n*** "), call.input
    events = list(client.responses.create(stream=True, **kw))
    deltas = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    [done] = [e for e in events if e.type == "response.custom_tool_call_input.done"]
    [streamed] = [o for o in events[-1].response.output if o.type == "custom_tool_call"]
    assert deltas == done.input == streamed.input == call.input
    # What the model sees: the function of one string (the same prompt; free text without the
    # custom tool's grammar).
    fn = {"type": "function", "name": "apply_patch", "description": APPLY_PATCH["description"],
          "parameters": {"type": "object", "properties": {"input": {"type": "string"}},
                         "required": ["input"]}}  # fmt: skip
    as_fn = client.responses.create(
        **{**kw, "tools": [fn], "tool_choice": {"type": "function", "name": "apply_patch"}}
    )
    [fc] = [o for o in as_fn.output if o.type == "function_call"]
    assert set(json.loads(fc.arguments)) == {"input"} and fc.arguments != call.input
    assert as_fn.usage.input_tokens == r.usage.input_tokens
    # The loop: the call and its output as custom items, rendered as the function's would be.
    said = "Success. Updated the following files:\nA hello.txt"
    items = [
        {"role": "user", "content": kw["input"]},
        {
            "type": "custom_tool_call",
            "call_id": call.call_id,
            "name": "apply_patch",
            "input": call.input,
        },
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": said},
    ]
    answer = client.responses.create(**{**kw, "input": items, "tool_choice": "auto"})
    as_functions = [
        items[0],
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": "apply_patch",
            "arguments": json.dumps({"input": call.input}),
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": said},
    ]
    same = client.responses.create(**{**kw, "input": as_functions, "tools": [fn],
                                      "tool_choice": "auto"})  # fmt: skip
    assert answer.usage.input_tokens == same.usage.input_tokens > r.usage.input_tokens
    assert [o.type for o in answer.output] == [o.type.replace("function_call", "custom_tool_call")
                                               for o in same.output]  # fmt: skip


def test_responses_api_namespaced_tools_as_codex_sends_mcp_servers(agent_server, held_out):
    """Codex sends each MCP server's tools as a `namespace` tool (a 400 before, so every turn
    of a session with an MCP server failed): the model sees them by qualified name, the call
    comes back naming its namespace and tool, and a resent call with its namespace renders as
    the qualified function would. `tool_search` (deferred tools) is left out and said."""
    ex = held_out[0]
    client = agent_server.client()
    ns = {"type": "namespace", "name": "mcp__files__", "description": "An MCP server.",
          "tools": _flat_tools(ex)}  # fmt: skip
    flat = [{**t, "name": "mcp__files__" + t["name"]} for t in _flat_tools(ex)]
    kw = dict(model=agent_server.model, input=ex.messages[-2]["content"], max_output_tokens=64,
              temperature=0.0, reasoning={"effort": "none"})  # fmt: skip
    raw = client.responses.with_raw_response.create(
        tools=[ns, {"type": "tool_search", "execution": "server"}], **kw)  # fmt: skip
    assert raw.headers["x-omitted-tools"] == "tool_search"
    r = raw.parse()
    as_flat = client.responses.create(tools=flat, **kw)
    assert r.usage.input_tokens == as_flat.usage.input_tokens
    [call] = [o for o in r.output if o.type == "function_call"]
    [flat_call] = [o for o in as_flat.output if o.type == "function_call"]
    # (The small model may pick another offered tool under the prefixed names: the same one
    # either way, the same prompt.)
    assert call.namespace == "mcp__files__" and call.name in {t["name"] for t in ns["tools"]}
    assert "mcp__files__" + call.name == flat_call.name
    named = {"type": "function", "namespace": "mcp__files__", "name": call.name}
    forced = client.responses.create(tools=[ns], tool_choice=named, **kw)
    assert (forced.output[0].namespace, forced.output[0].name) == ("mcp__files__", call.name)
    assert call.arguments == flat_call.arguments
    items = [
        {"role": "user", "content": kw["input"]},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "namespace": "mcp__files__",
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "done"},
    ]
    flat_items = [items[0], {**items[1], "name": flat_call.name}, items[2]]
    del flat_items[1]["namespace"]
    again = client.responses.create(**{**kw, "input": items, "tools": [ns]})
    flat_again = client.responses.create(**{**kw, "input": flat_items, "tools": flat})
    assert again.usage.input_tokens == flat_again.usage.input_tokens > r.usage.input_tokens


def test_responses_api_history_of_openais_own_tools_is_left_out_and_said(agent_server):
    """A session begun against OpenAI (or one that used its web search or remote compaction)
    resends items of OpenAI's own tools: left out of the prompt with the output that answers
    them, and counted in x-omitted-items (a 400 before, ending the session)."""
    url = f"{agent_server.url}/v1/responses"
    user = {"role": "user", "content": "list the files"}
    theirs = [
        {"type": "web_search_call", "id": "ws_1", "status": "completed",
         "action": {"type": "search", "query": "x"}},
        {"type": "local_shell_call", "call_id": "ls_1", "status": "completed",
         "action": {"type": "exec", "command": ["ls"], "env": {}}},
        {"type": "function_call_output", "call_id": "ls_1", "output": "a.py"},
        {"type": "compaction", "encrypted_content": "gAAAA"},
    ]  # fmt: skip
    body = {"model": agent_server.model, "max_output_tokens": 4, "temperature": 0}
    with_them = httpx.post(url, json=body | {"input": [user, *theirs, user]}, timeout=60)
    without = httpx.post(url, json=body | {"input": [user, user]}, timeout=60)
    assert with_them.status_code == 200, with_them.text
    assert with_them.headers["x-omitted-items"] == (
        "compaction=1,function_call_output=1,local_shell_call=1,web_search_call=1"
    )
    assert "x-omitted-items" not in without.headers
    assert with_them.json()["usage"]["input_tokens"] == without.json()["usage"]["input_tokens"]


def test_responses_api_streamed_context_overflow_is_response_failed(agent_server):
    """Codex streams every request and reads a context overflow only from a response.failed
    event (an HTTP 400 ended its turn instead of dropping its oldest turns): a streamed
    request too long for the context gets response.created, then response.failed with
    code context_length_exceeded; not streamed, it stays a 400."""
    url = f"{agent_server.url}/v1/responses"
    limit = httpx.get(f"{agent_server.url}/v1/status").json()["max_model_len"]
    body = {"model": agent_server.model, "input": "word " * limit}
    plain = httpx.post(url, json=body, timeout=60)
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "context_length_exceeded"
    events = [e for e in agent_server.client().responses.create(**body, stream=True)]
    assert [e.type for e in events] == ["response.created", "response.failed"]
    assert events[1].response.error.code == "context_length_exceeded"
    assert f"maximum context length is {limit} tokens" in events[1].response.error.message


def test_responses_api_refuses_what_it_cannot_do(agent_server):
    client = agent_server.client()
    for extra in ({"previous_response_id": "resp_1"}, {"tools": [{"type": "local_shell"}]},
                  {"text": {"format": {"type": "xml"}}}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=agent_server.model, input="hi", **extra)
        assert e.value.status_code == 400
    cut = client.responses.create(model=agent_server.model, input="def add(a, b):",
                                  max_output_tokens=2, temperature=0.0,
                                  reasoning={"effort": "none"})  # fmt: skip
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert [(o.type, o.status) for o in cut.output] == [("message", "incomplete")]


VERDICT = {"type": "object", "additionalProperties": False, "required": ["answer", "ok", "tags"],
           "properties": {"answer": {"enum": ["yes", "no"]}, "ok": {"type": "boolean"},
                          "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                   "maxItems": 2}}}  # fmt: skip


def _verdict(text: str) -> dict:
    got = json.loads(text)
    assert set(got) == {"answer", "ok", "tags"} and got["answer"] in ("yes", "no")
    assert isinstance(got["ok"], bool) and set(got["tags"]) <= {"a", "b"}, got
    return got


def test_structured_output_holds_the_reply_to_its_schema(agent_server):
    """response_format json_schema (and json_object) on chat, streamed and not, thinking on
    and off, and the Responses API's text.format: the reply's text is JSON of the schema (the
    built-in model alone writes no such thing); with thinking on the reasoning comes first."""
    chat, url = agent_server.client(), agent_server.url
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    user = [{"role": "user", "content": "Is the build green? Answer as JSON."}]
    for thinking in (False, True):
        kw = dict(model=agent_server.model, messages=user, max_tokens=120, response_format=fmt,
                  extra_body={"chat_template_kwargs": {"enable_thinking": thinking},
                              "thinking_budget": 24}, **GREEDY)  # fmt: skip
        r = chat.chat.completions.create(**kw).choices[0]
        assert r.finish_reason == "stop", r
        whole = _verdict(r.message.content)
        assert bool(getattr(r.message, "reasoning_content", None)) == thinking
        parts = [c.choices[0].delta.content or "" for c in
                 chat.chat.completions.create(stream=True, **kw) if c.choices]  # fmt: skip
        assert _verdict("".join(parts)) == whole
    r = chat.chat.completions.create(
        model=agent_server.model,
        messages=user,
        max_tokens=60,
        response_format={"type": "json_object"},
        **GREEDY,
    )
    # Any object: the small model's keys run on, so the reply is held to an object's start
    # (and parses whenever it ends by itself).
    r = r.choices[0]
    assert r.message.content.startswith('{"')
    assert r.finish_reason == "length" or isinstance(json.loads(r.message.content), dict)
    out = agent_server.client().responses.create(
        model=agent_server.model,
        input="Is the build green?",
        max_output_tokens=80,
        temperature=0.0,
        reasoning={"effort": "none"},
        text={"format": {"type": "json_schema", "name": "verdict", "schema": VERDICT}},
    )
    _verdict(out.output_text)
    # What cannot be held is a 400 that says so.
    for bad, param in (({"type": "json_schema", "json_schema": {"name": "x"}},
                        "response_format.json_schema.schema"),
                       ({"type": "xml"}, "response_format.type")):  # fmt: skip
        r = httpx.post(f"{url}/v1/chat/completions", json={
            "model": agent_server.model, "messages": user, "response_format": bad})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_structured_output_beside_tools_is_a_call_or_json(agent_server, held_out):
    """Codex's `exec --output-schema` sends the schema with its tools and tool_choice auto (a
    400 before): the reply opens with a call or is JSON of the schema. A held-out tool request
    comes back as its call on the Responses API and on chat; a request answered in text is
    JSON; a forced call is calls only (the schema is for a later reply)."""
    ex = held_out[0]
    client = agent_server.client()
    text_format = {"format": {"type": "json_schema", "name": "codex_output_schema",
                              "strict": True, "schema": VERDICT}}  # fmt: skip
    kw = dict(model=agent_server.model, tools=_flat_tools(ex), tool_choice="auto",
              max_output_tokens=96, temperature=0.0, reasoning={"effort": "none"},
              text=text_format)  # fmt: skip
    r = client.responses.create(input=ex.messages[-2]["content"], **kw)
    assert [o.type for o in r.output] == ["function_call"], r.output
    answered = client.responses.create(input="Is the build green? Answer as JSON.", **kw)
    for item in answered.output:
        assert item.type == "function_call" or _verdict(answered.output_text), answered.output
    forced = client.responses.create(input=ex.messages[-2]["content"], **{
        **kw, "tool_choice": {"type": "function", "name": ex.expected[0][0]}})  # fmt: skip
    assert forced.output[0].type == "function_call"
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    chat = client.chat.completions.create(
        model=agent_server.model, messages=ex.messages[:-1], tools=ex.tools, max_tokens=96,
        response_format=fmt, extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        **GREEDY)  # fmt: skip
    assert chat.choices[0].finish_reason == "tool_calls", chat


def test_responses_api_leaves_hosted_tools_out_and_says_so(agent_server, held_out):
    """Codex offers OpenAI's hosted `web_search` to every provider: it is left out of the
    prompt (none runs here) and named in `x-omitted-tools`, the function tools beside it
    served as without it, the same prompt token for token."""
    ex = held_out[0]
    client = agent_server.client()
    kw = dict(model=agent_server.model, input=ex.messages[-2]["content"], max_output_tokens=8,
              temperature=0.0, reasoning={"effort": "none"})  # fmt: skip
    alone = client.responses.with_raw_response.create(tools=_flat_tools(ex), **kw)
    hosted = [{"type": "web_search", "external_web_access": True},
              {"type": "web_search_preview_2025_03_11"}]  # fmt: skip
    both = client.responses.with_raw_response.create(tools=[*hosted, *_flat_tools(ex)], **kw)
    assert both.headers["x-omitted-tools"] == "web_search,web_search_preview_2025_03_11"
    assert "x-omitted-tools" not in alone.headers
    a, b = alone.parse(), both.parse()
    assert a.usage.input_tokens == b.usage.input_tokens
    assert [o.model_dump(exclude={"id", "call_id"}) for o in a.output] == [
        o.model_dump(exclude={"id", "call_id"}) for o in b.output
    ]
    assert [t.type for t in b.tools][:2] == ["web_search", "web_search_preview_2025_03_11"]


def test_responses_api_malformed_items_get_400s_that_name_the_field(agent_server):
    """What a Codex-style client can send wrong in `input` is a 400 naming the field, never a
    500 (a client retries those); history that answers a call no item made is refused."""
    url = f"{agent_server.url}/v1/responses"
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    cases = [
        ([{"role": "user", "content": 5}], "input[0].content"),
        ([{"role": "user", "content": [{"type": "input_text", "text": 5}]}],
         "input[0].content[0].text"),
        ([{"role": "user", "content": {"type": "input_text", "text": "hi"}}], "input[0].content"),
        ([call, {"type": "function_call_output", "call_id": "c1", "output": 5}],
         "input[1].output"),
        ([{**call, "arguments": 5}], "input[0].arguments"),
        ([{"type": "reasoning", "summary": "abc"}], "input[0].summary"),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        ([{"type": "function_call_output", "call_id": "zz", "output": "x"}], "input[0].call_id"),
        ([{**call, "name": ""}], "input[0].name"),
        ([{"type": "custom_tool_call", "call_id": "c1", "name": "f"}], "input[0].input"),
        ([{"type": "custom_tool_call_output", "call_id": "zz", "output": "x"}],
         "input[0].call_id"),
        ([{"role": "critic", "content": "hi"}], "input[0].role"),
        ([5], "input[0]"),
        ([], "input"),
        (5, "input"),
    ]  # fmt: skip
    for items, param in cases:
        r = httpx.post(url, json={"input": items, "max_output_tokens": 4}, timeout=60)
        assert r.status_code == 400, (items, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error", (items, err)
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    for extra, param in [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "top level"),
        ({"tools": [tool], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice"),
        ({"tools": [{"type": "custom", "description": "no name"}]}, "name"),
        ({"tools": [{"type": "custom", "name": "f", "format": {"type": "xml"}}]}, "format"),
        ({"reasoning": {"effort": "ultra"}}, "reasoning"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "bogus"}, "truncation"),
    ]:
        r = httpx.post(url, json={"input": "hi", **extra}, timeout=60)
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert param in (err["param"] or "") + err["message"], (extra, err)
        assert "JSON object" not in err["message"], err
    # A refusal part in an assistant's history is text the model said; it is read.
    ok = httpx.post(url, json={"input": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"role": "user", "content": "why?"}], "max_output_tokens": 2}, timeout=60)  # fmt: skip
    assert ok.status_code == 200, ok.text


def test_responses_api_echoes_its_request_and_honours_truncation_and_max_tool_calls(
    agent_server, held_out
):
    """The response object validates against the SDK's own types (tool_choice echoed as
    'auto', logprobs lists on text events); truncation 'auto' drops the oldest turns to fit;
    max_tool_calls caps the calls."""
    from openai.types.responses import Response, ResponseTextDeltaEvent

    url = f"{agent_server.url}/v1/responses"
    body = {"input": "def add(a, b):", "max_output_tokens": 8, "temperature": 0,
            "metadata": {"task": "t1"}, "user": "u1", "reasoning": {"effort": "none"}}  # fmt: skip
    r = httpx.post(url, json=body, timeout=60).json()
    resp = Response.model_validate(r)
    assert resp.tool_choice == "auto" and resp.metadata == {"task": "t1"} and r["user"] == "u1"
    assert r["truncation"] == "disabled" and r["text"] == {"format": {"type": "text"}}
    assert r["usage"]["input_tokens_details"]["cache_write_tokens"] == 0
    with httpx.stream("POST", url, json=body | {"stream": True}, timeout=60) as s:
        lines = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: ")]
    deltas = [e for e in lines if e["type"] == "response.output_text.delta"]
    assert deltas and all(ResponseTextDeltaEvent.model_validate(e) for e in deltas)
    Response.model_validate(lines[-1]["response"])
    # Truncation: forty long turns do not fit; 'auto' keeps the newest that do.
    limit = httpx.get(f"{agent_server.url}/v1/models").json()["data"][0]["max_model_len"]
    turn = "word " * (limit // 20)
    items = []
    for i in range(40):
        items += [{"role": "user", "content": f"turn {i}: {turn}"},
                  {"role": "assistant", "content": "ok"}]  # fmt: skip
    items.append({"role": "user", "content": "the last question"})
    long = {"input": items, "max_output_tokens": 4, "reasoning": {"effort": "none"}}
    refused = httpx.post(url, json=long, timeout=120)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    fitted = httpx.post(url, json=long | {"truncation": "auto"}, timeout=120)
    assert fitted.status_code == 200, fitted.text
    assert 0 < int(fitted.headers["x-truncated-turns"]) < 41  # said, not silent
    used = fitted.json()["usage"]["input_tokens"]
    assert limit // 2 < used <= limit - 4  # dropped only what it had to
    # max_tool_calls: 1 with two calls asked for.
    ex = held_out[0]
    name, _ = ex.expected[0]
    two = {"input": ex.messages[-2]["content"], "tools": _flat_tools(ex), "temperature": 0,
           "tool_choice": "required", "max_output_tokens": 96, "max_tool_calls": 1,
           "reasoning": {"effort": "none"}}  # fmt: skip
    r = httpx.post(url, json=two, timeout=60).json()
    assert len([o for o in r["output"] if o["type"] == "function_call"]) == 1
    assert r["max_tool_calls"] == 1
