"""What agents and their clients send that once broke a request or another client's: tool
definitions GLM's call format cannot carry, calls to tools without arguments, nulls for
defaults, signed seeds, fields the server cannot honour. Through the official openai SDK and
raw HTTP against a real server on the trained built-in model."""

import json
import threading

import httpx
import openai
import pytest
from conftest import Server

from cluster.model_store import TRAINED

M = "glm-5-fixture"
USER = [{"role": "user", "content": "List the files, please."}]
NO_ARGS = {"type": "function", "function": {"name": "list_files", "description": "List files."}}
EMPTY = {"type": "function", "function": {"name": "list_dirs", "parameters": {
    "type": "object", "properties": {}}}}  # fmt: skip
OPEN = {"type": "function", "function": {"name": "run_query", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    home = tmp_path_factory.mktemp("inputs-home")
    args = ["--model", str(TRAINED), "--served-model-name", M]
    server = Server(args, env={"CLUSTER_HOME": str(home)})
    yield server
    server.stop()


def _client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=120)


def _post(srv, body: dict, path: str = "/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", json=body, timeout=120, **kw)


def _tool(name: str, props: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": props, "required": list(props)}}}  # fmt: skip


def test_a_tool_the_call_format_cannot_carry_is_refused_and_other_streams_go_on(srv):
    """A key holding `</arg_key>` once failed the engine step of every request in the batch;
    now it is a 400 that says why, and a stream running meanwhile ends normally."""
    client, finished = _client(srv), {}

    def stream():
        chunks = client.chat.completions.create(
            model=M, messages=USER, max_tokens=48, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        finished["reason"] = [c.choices[0].finish_reason for c in chunks if c.choices][-1]

    running = threading.Thread(target=stream)
    running.start()
    bad = {
        "key": _tool("get_city", {"city</arg_key>": {"type": "string"}}),
        "name": _tool("a<arg_key>b", {"x": {"type": "string"}}),
        "spaced key": _tool("get_city", {"city ": {"type": "string"}}),
        "properties": {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": "oops"}},
        },  # fmt: skip
        "enum": _tool("pick", {"a": {"type": "string", "enum": ["<think>", "x"]}}),
    }
    for what, tool in bad.items():
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=M, messages=USER, tools=[tool],
                                           tool_choice="required", max_tokens=20)  # fmt: skip
        message = e.value.body["message"]
        assert "tools.0" in message and ("GLM" in message or "Invalid schema" in message), what
    running.join(timeout=120)
    assert finished["reason"] == "length"


@pytest.mark.parametrize("tool", [NO_ARGS, EMPTY], ids=["no parameters", "no properties"])
def test_a_forced_call_without_arguments_ends_as_an_empty_object(srv, tool):
    """Sampled, the model once wrote newlines after the name until max_tokens (5 of 10 seeds),
    or text after the call: one newline at most between parts, so the call closes, and a
    forced call is followed by another call or the turn's end (with parallel calls off: the
    end; with them on, the model of this round goes on calling `list_files` to max_tokens)."""
    client = _client(srv)
    for seed in range(6):
        parallel = seed % 2 == 0
        reply = client.chat.completions.create(
            model=M, messages=USER, tools=[tool], tool_choice="required", max_tokens=40,
            temperature=1.0, seed=seed, parallel_tool_calls=parallel,
        )  # fmt: skip
        choice = reply.choices[0]
        calls = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls" or parallel, (seed, choice)
        assert choice.message.content is None  # a reply of calls: no text after them
        assert calls and (parallel or len(calls) == 1), (seed, choice)
        for call in calls:
            assert call.function.name == tool["function"]["name"]
            assert json.loads(call.function.arguments) == {}


def test_open_keys_keep_the_call_to_an_offered_name(srv):
    """A schema without properties leaves keys open: the grammar keeps the name (the
    model once named tools never offered) and frees only the keys."""
    client, offered = _client(srv), {"run_query", "list_files"}
    for seed in range(6):
        reply = client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "Run the query on the sales table."}],
            tools=[OPEN, NO_ARGS], tool_choice="required", max_tokens=60, temperature=1.0,
            seed=seed,
        )  # fmt: skip
        choice = reply.choices[0]
        for call in choice.message.tool_calls or []:
            assert call.function.name in offered, (seed, call)
            if choice.finish_reason == "tool_calls":
                assert isinstance(json.loads(call.function.arguments), dict)
        assert choice.finish_reason in ("tool_calls", "length")


def test_nulls_mean_defaults_and_seeds_are_signed(srv):
    nulls = {k: None for k in ("temperature", "top_p", "n", "stream", "presence_penalty",
                               "frequency_penalty", "logprobs", "parallel_tool_calls", "top_k",
                               "stop", "user")}  # fmt: skip
    body = {"model": M, "messages": USER, "max_tokens": 8} | nulls
    assert _post(srv, body).status_code == 200
    signed = {"model": M, "messages": USER, "max_tokens": 8, "temperature": 1.0}
    minus_one = _post(srv, signed | {"seed": -1}).json()
    wrapped = _post(srv, signed | {"seed": 2**64 - 1}).json()
    assert minus_one["choices"][0]["message"] == wrapped["choices"][0]["message"]
    for field, value in (("top_k", 2**40), ("stop_token_ids", [2**40]),
                         ("thinking_token_budget", 2**40)):  # fmt: skip
        r = _post(srv, {"model": M, "messages": USER, "max_tokens": 4, field: value})
        assert r.status_code == 400 and field in r.json()["error"]["message"], (field, r.text)


def test_what_cannot_be_honoured_is_refused_and_reasoning_effort_is(srv):
    base = {"model": M, "messages": USER, "max_tokens": 4}
    for field, value, says in (
        ("logit_bias", {"219": -100}, "logit_bias"),
        ("min_p", 0.1, "min_p"),
        ("functions", [{"name": "f", "parameters": {}}], "tools"),
        ("function_call", "auto", "tool_choice"),
        ("prediction", {"type": "content", "content": "x"}, "prediction"),
        ("modalities", ["text", "audio"], "modality"),
        ("reasoning_effort", "bogus", "reasoning_effort"),
        ("web_search_options", {}, "web search"),  # {}: search with the defaults
        ("reasoning", {"exclude": True}, "reasoning.exclude"),
    ):
        r = _post(srv, base | {field: value})
        assert r.status_code == 400 and says in r.json()["error"]["message"], (field, r.text)
        assert r.json()["error"]["param"] == field, r.text  # the SDK's e.param names it
    for field, value in (("suffix", "x"), ("best_of", 2)):
        r = _post(srv, {"model": M, "prompt": "def f(", field: value}, "/v1/completions")
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert _post(srv, base | {"logit_bias": {}}).status_code == 200  # nothing asked
    greedy = base | {"max_tokens": 8, "temperature": 0}

    def reasoning(extra: dict) -> str | None:
        return _post(srv, greedy | extra).json()["choices"][0]["message"].get("reasoning_content")

    assert reasoning({}) and reasoning({"reasoning_effort": "high"})  # on: the server's default
    usage = _post(srv, greedy).json()["usage"]
    thought = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < thought <= usage["completion_tokens"]  # counted by the parser, tags aside
    assert reasoning({"chat_template_kwargs": {"enable_thinking": False}}) is None
    assert reasoning({"reasoning_effort": "none"}) is None
    assert reasoning({"reasoning_effort": "minimal"}) is None
    # Each client's own switch: Z.ai's thinking, OpenRouter's reasoning, a top-level flag.
    for off in ({"thinking": {"type": "disabled"}}, {"reasoning": {"enabled": False}},
                {"reasoning": {"effort": "none"}}, {"enable_thinking": False}):  # fmt: skip
        assert reasoning(off) is None, off
    assert reasoning({"thinking": {"type": "enabled"}, "reasoning_effort": "none"})
    assert reasoning({"thinking": {"type": "disabled"},
                      "chat_template_kwargs": {"enable_thinking": True}})  # fmt: skip
    assert reasoning({"reasoning": {"effort": "high", "summary": "auto"}})  # extra keys pass
    off = {"reasoning_effort": "none"}  # (chat_template_kwargs would rule over both)
    assert reasoning(off | {"reasoning": {"max_tokens": 8}})  # a budget asks for thinking
    budget = _post(srv, greedy | {"max_tokens": 24, "reasoning": {"max_tokens": 3}}).json()
    assert budget["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 3, budget
    history = [{"role": "user", "content": "Hi."},
               {"role": "assistant", "content": "Hello.", "reasoning_content": "greet " * 20},
               {"role": "user", "content": "Again."}]  # fmt: skip

    def prompt(extra: dict) -> int:
        body = greedy | {"messages": history, "max_tokens": 1} | extra
        return _post(srv, body).json()["usage"]["prompt_tokens"]

    kept = prompt({"chat_template_kwargs": {"clear_thinking": False}})
    assert prompt({"thinking": {"type": "enabled", "clear_thinking": False}}) == kept
    assert prompt({}) < kept  # past reasoning cleared by default
    # top_p 0 (OpenAI's and Anthropic's range starts there) keeps the likeliest token.
    sampled = base | {"max_tokens": 8, "temperature": 1.0, "seed": 5}
    top0 = _post(srv, sampled | {"top_p": 0}).json()["choices"][0]["message"]
    assert top0 == _post(srv, greedy).json()["choices"][0]["message"]


def test_images_are_read_as_a_note_and_said_in_a_header(srv):
    """A pasted screenshot (chat) or an input_image (Responses) is read as a note that it is
    not shown, counted in x-omitted-content: an agent resends its history every turn, so a
    400 would end the session. Other unknown parts are still a 400 that names them."""
    url = "data:image/png;base64,AAAA"
    image = {"model": M, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url}}]}]}  # fmt: skip
    r = _post(srv, image)
    assert r.status_code == 200 and r.headers["x-omitted-content"] == "image=1", r.text
    plain = _post(srv, image | {"messages": [{"role": "user", "content": "What is this?"}]})
    assert "x-omitted-content" not in plain.headers
    assert r.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"]
    streamed = _post(srv, image | {"stream": True})
    assert streamed.status_code == 200 and streamed.headers["x-omitted-content"] == "image=1"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                          {"type": "input_image", "image_url": url},
                                          {"type": "input_file", "file_id": "f1"}]}]  # fmt: skip
    r = _post(srv, {"model": M, "input": items, "max_output_tokens": 2}, "/v1/responses")
    assert r.status_code == 200 and r.headers["x-omitted-content"] == "file=1,image=1", r.text
    odd = image | {"messages": [{"role": "user", "content": [{"type": "video", "v": 1}]}]}
    r = _post(srv, odd)
    assert r.status_code == 400 and "'video'" in r.json()["error"]["message"]
    for content, says in (
        ([{"type": "text"}], "content part 0 of type 'text' needs a string"),
        (5, "content must be a string or a list of content parts"),
    ):
        r = _post(srv, image | {"messages": [{"role": "user", "content": content}]})
        error = r.json()["error"]
        assert r.status_code == 400 and says in error["message"], r.text
        assert error["param"] == "messages" and ".str" not in error["message"], r.text


def test_errors_say_what_to_fix(srv):
    body = json.dumps({"model": M, "messages": USER})
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=body, timeout=60,
                   headers={"content-type": "text/plain"})  # fmt: skip
    assert r.status_code == 400 and "Content-Type: application/json" in r.text
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=b"", timeout=60,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    long = {"model": M, "max_tokens": 4, "messages": [{"role": "user", "content": "word " * 9000}]}
    r = _post(srv, long)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = _post(srv, {"model": M, "input": []}, "/v1/responses")
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]


def test_continue_final_message_continues_the_assistant_text(srv):
    """vLLM's chat field: the final assistant message stays open and the reply is its greedy
    continuation, as /v1/completions gives for the same prompt text."""
    from transformers import AutoTokenizer

    prefill = "Sure, the function"
    messages = [{"role": "user", "content": "def add(a, b):"},
                {"role": "assistant", "content": prefill}]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                   continue_final_message=True)  # fmt: skip
    assert text.endswith(prefill)
    body = {"model": M, "messages": messages, "max_tokens": 12, "temperature": 0,
            "continue_final_message": True}  # fmt: skip
    got = _post(srv, body).json()
    plain = _post(srv, {"model": M, "prompt": text, "max_tokens": 12, "temperature": 0},
                  "/v1/completions").json()  # fmt: skip
    assert got["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert got["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    user_last = body | {"messages": messages[:1]}
    r = _post(srv, user_last)
    assert r.status_code == 400 and "final assistant message" in r.text


def test_template_arguments_that_name_the_call_itself_are_a_400(srv):
    """`chat_template_kwargs` naming an argument of the template call (tools, messages,
    documents, ...) once failed with a 500 and a dropped connection; now a 400 that names it,
    and the same connection serves the next request."""
    base = {"model": M, "messages": USER, "max_tokens": 2}
    with httpx.Client(base_url=srv.url, timeout=120) as http:
        for key, value in (("tools", 5), ("documents", 5), ("add_generation_prompt", False),
                           ("messages", []), ("continue_final", True)):  # fmt: skip
            asked = base | {"chat_template_kwargs": {key: value}}
            r = http.post("/v1/chat/completions", json=asked)
            error = r.json()["error"]
            assert r.status_code == 400 and error["param"] == "chat_template_kwargs", r.text
            assert key in error["message"] and "enable_thinking" in error["message"]
        fine = {"chat_template_kwargs": {"enable_thinking": False, "clear_thinking": True}}
        assert http.post("/v1/chat/completions", json=base | fine).status_code == 200


def test_optional_fields_in_strict_mode_keep_their_types(srv):
    """OpenAI's strict mode writes an optional field as [T, "null"] or anyOf with null, and
    pydantic's shared types are `$ref`s: the values still keep T (or are null), where they
    were once free text ("lines" for an integer)."""
    tool = {"type": "function", "function": {"name": "head", "strict": True, "parameters": {
        "type": "object", "additionalProperties": False, "$defs": {"Unit": {"enum": ["kb", "mb"]}},
        "properties": {"n": {"type": ["integer", "null"]},
                       "unit": {"anyOf": [{"$ref": "#/$defs/Unit"}, {"type": "null"}]},
                       "follow": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
        "required": ["n", "unit", "follow"]}}}  # fmt: skip
    client = _client(srv)
    for seed in range(4):
        reply = client.chat.completions.create(
            model=M, messages=[{"role": "user", "content": "Show the first lines of the log."}],
            tools=[tool], tool_choice={"type": "function", "function": {"name": "head"}},
            max_tokens=48, temperature=1.0, seed=seed,
        )  # fmt: skip
        call = reply.choices[0].message.tool_calls[0]
        args = json.loads(call.function.arguments)
        assert args.keys() == {"n", "unit", "follow"}, args
        assert args["n"] is None or type(args["n"]) is int, args
        assert args["unit"] in ("kb", "mb", None) and args["follow"] in (True, False, None), args


def test_a_refusal_part_in_history_is_read_as_the_assistants_text(srv):
    """The SDK's assistant content may hold a refusal part; an agent resends its history
    every turn, so it is read as what the assistant said (it was a 400)."""

    def history(content) -> dict:
        return {"model": M, "max_tokens": 2, "messages": [
            {"role": "user", "content": "Delete everything."},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "Why not?"}]}  # fmt: skip

    refused = _post(srv, history([{"type": "refusal", "refusal": "I will not delete it all."}]))
    assert refused.status_code == 200, refused.text
    said = _post(srv, history("I will not delete it all.")).json()["usage"]["prompt_tokens"]
    assert refused.json()["usage"]["prompt_tokens"] == said


def test_agents_own_session_names_stick_a_conversation_to_its_replica(srv):
    """Codex sends `session_id` (header) and `prompt_cache_key`, Claude Code names its session
    in `metadata.user_id`: each sticks the conversation as `x-session-id` does (the second
    turn is routed by `session`), where only `x-session-id` did before."""

    def sessions() -> float:
        text = httpx.get(f"{srv.url}/metrics", timeout=10).text
        lines = [x for x in text.splitlines() if x.startswith("cluster:routing_decisions_total")
                 and 'reason="session"' in x]  # fmt: skip
        return sum(float(x.rsplit(" ", 1)[1]) for x in lines)

    chat = {"model": M, "messages": USER, "max_tokens": 2}
    turns = [
        ("/v1/chat/completions", chat, {"session_id": "codex-1"}),
        ("/v1/chat/completions", chat | {"prompt_cache_key": "key-1"}, {}),
        ("/v1/responses", {"model": M, "input": "hi", "max_output_tokens": 2,
                           "prompt_cache_key": "key-2"}, {}),
        ("/v1/messages", {"model": M, "max_tokens": 2, "messages": USER,
                          "metadata": {"user_id": "user_ab_account_cd_session_1"}}, {}),
    ]  # fmt: skip
    for path, body, headers in turns:
        before = sessions()
        for _ in range(2):
            r = _post(srv, body, path, headers=headers)
            assert r.status_code == 200, (path, r.text)
        assert sessions() == before + 1, (path, body, headers)
    plain = {"model": M, "max_tokens": 2, "messages": USER, "metadata": {"user_id": "acct-1"}}
    before = sessions()
    for _ in range(2):  # a user id alone is not a session: a gateway's one account would pin
        assert _post(srv, plain, "/v1/messages").status_code == 200
    assert sessions() == before


def test_interleaved_sessions_sharing_a_system_prompt_keep_their_own_transcripts(srv):
    """Agents share one large system prompt and tools block; a session's own turns are a
    small share of each prompt. Three sessions taking turns once evicted each other's
    entries (each new turn's entry superseded the others'), so every turn hit only the
    shared block."""
    system = {"role": "system", "content": "You are a careful coding agent. " * 90}
    client = _client(srv)
    ask = "Session {}: list the {} files, with their sizes, owners and the tests of each. "
    sessions = [[system, {"role": "user", "content": ask.format(i, w) * 4}]
                for i, w in enumerate(("python", "rust", "shell"))]  # fmt: skip
    last = [0, 0, 0]
    for turn in range(2):
        for i, messages in enumerate(sessions):
            r = client.chat.completions.create(model=M, messages=messages, max_tokens=6,
                                               temperature=0)  # fmt: skip
            if turn:  # this session's whole last prompt, but its last block and the reply
                assert r.usage.prompt_tokens_details.cached_tokens >= last[i] - 32, (i, r.usage)
            last[i] = r.usage.prompt_tokens
            messages += [{"role": "assistant", "content": r.choices[0].message.content or "ok"},
                         {"role": "user", "content": f"Now the {turn} tests, please."}]  # fmt: skip
