"""The official openai client against a real `cluster serve` subprocess."""

import concurrent.futures as cf
import json
import os
import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from cluster.launch.blas import THREAD_TIMEOUT, openblas_path

GREEDY = {"temperature": 0.0}
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


def chat_prompt_len(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [server.model]
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_chat_completion_with_usage_matching_the_tokenizer(server, hf_tokenizer):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    r = server.client().chat.completions.create(
        model=server.model, messages=messages, max_tokens=12, **GREEDY, extra_body=NO_EOS
    )
    assert r.object == "chat.completion" and r.model == server.model
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == chat_prompt_len(hf_tokenizer, messages)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    # Thinking is on by default: the reply opens inside <think>, so the text is reasoning.
    assert r.choices[0].message.reasoning_content and r.choices[0].message.content == ""
    details = r.usage.completion_tokens_details  # no speculation here: no draft tokens
    assert (details.accepted_prediction_tokens, details.rejected_prediction_tokens) == (0, 0)


def test_chat_streaming_matches_non_streaming(server):
    client = server.client()
    messages = [{"role": "user", "content": "Explain TCP vs UDP."}]
    kw = dict(model=server.model, messages=messages, max_tokens=20, **GREEDY, extra_body=NO_EOS)
    full = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_streaming_and_not(server, hf_tokenizer):
    client = server.client()
    prompt = "def fibonacci(n):"
    full = client.completions.create(
        model=server.model, prompt=prompt, max_tokens=10, **GREEDY, extra_body=NO_EOS
    )
    assert full.object == "text_completion"
    assert full.usage.prompt_tokens == len(hf_tokenizer.encode(prompt, add_special_tokens=False))
    assert full.usage.completion_tokens == 10
    stream = client.completions.create(
        model=server.model, prompt=prompt, max_tokens=10, stream=True, **GREEDY, extra_body=NO_EOS
    )
    assert "".join(c.choices[0].text for c in stream) == full.choices[0].text
    # Token ids are a prompt too.
    ids = hf_tokenizer.encode(prompt, add_special_tokens=False)
    by_ids = client.completions.create(
        model=server.model, prompt=ids, max_tokens=10, **GREEDY, extra_body=NO_EOS
    )
    assert by_ids.choices[0].text == full.choices[0].text


def test_continuous_usage_counts_every_chunk(server):
    # vLLM's continuous_usage_stats: each chunk carries the tokens so far, rising to the total.
    options = {"include_usage": True, "continuous_usage_stats": True}
    kw = dict(model=server.model, max_tokens=12, stream=True, **GREEDY, extra_body=NO_EOS)
    chunks = list(
        server.client().completions.create(prompt="import os\n", stream_options=options, **kw)
    )
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == 12
    assert all(c.usage.prompt_tokens == chunks[0].usage.prompt_tokens for c in chunks)
    assert len([c for c in chunks if c.choices]) >= 2  # usage on the text chunks, not only the last
    plain = list(server.client().completions.create(prompt="import os\n", **kw))
    assert all(c.usage is None for c in plain)  # nothing asked, nothing added


def test_stop_string_ends_the_completion(server):
    client = server.client()
    kw = dict(model=server.model, prompt="import os\n", max_tokens=24, **GREEDY, extra_body=NO_EOS)
    free = client.completions.create(**kw).choices[0].text
    stop = free[5:8]
    assert stop.strip(), free
    stopped = client.completions.create(stop=[stop], **kw)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == free[: free.index(stop)]


def _solo_and_concurrent(server, prompts, max_tokens=32):
    client = server.client()

    def ask(p):
        r = client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": p}],
            max_tokens=max_tokens,
            **GREEDY,
            extra_body=NO_EOS,
        )
        return r.choices[0].message.content, r.usage

    solo = [ask(p) for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    return solo, together


def test_greedy_alone_equals_among_eight_concurrent(server):
    prompts = [f"Question {i}: tell me about topic number {i * 7}." for i in range(8)]
    solo, together = _solo_and_concurrent(server, prompts)
    assert [t for t, _ in together] == [t for t, _ in solo]


def test_long_shared_prefix_hits_the_prefix_cache(server):
    client = server.client()
    prefix = "You are a careful assistant. Context: " + "the quick brown fox jumps. " * 40
    messages = [{"role": "user", "content": prefix + "Summarize."}]
    kw = dict(model=server.model, messages=messages, max_tokens=16, **GREEDY, extra_body=NO_EOS)
    first = client.chat.completions.create(**kw)
    second = client.chat.completions.create(**kw)
    assert second.choices[0].message.content == first.choices[0].message.content
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 16 and cached > 0
    other = [{"role": "user", "content": prefix + "Now list three facts."}]
    third = client.chat.completions.create(
        model=server.model, messages=other, max_tokens=4, **GREEDY
    )
    assert third.usage.prompt_tokens_details.cached_tokens >= 256
    status = httpx.get(f"{server.url}/v1/status").json()
    cache = status["replicas"][0]["engine"]["prefix_cache"]
    assert cache["hit_tokens"] >= cached and cache["blocks"] > 0
    assert status["settings"]["event_loop"] == "uvloop"


def _error(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"temperature": 9}, "temperature"),
        ({"n": 3}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"top_p": -0.1}, "top_p"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
    ],
)
def test_bad_parameters_get_400_in_openai_envelope(server, kw, param):
    args = {"model": server.model, "messages": [{"role": "user", "content": "hi"}]} | kw
    err = _error(lambda: server.client().chat.completions.create(**args))
    assert err.status_code == 400
    assert err.body["type"] == "invalid_request_error" and err.body["param"] == param
    assert err.body["message"]
    if param == "tool_choice":  # what it may be, not the union's branches
        assert "tool_choice is 'auto', 'none', 'required' or" in err.body["message"]


def test_prompt_longer_than_the_context(server):
    status = httpx.get(f"{server.url}/v1/status").json()
    too_long = [20 + i % 3000 for i in range(status["max_model_len"] + 5)]
    err = _error(lambda: server.client().completions.create(model=server.model, prompt=too_long))
    assert err.status_code == 400 and err.body["code"] == "context_length_exceeded"
    assert "maximum context length" in err.body["message"]
    limit = status["max_model_len"]
    exact = [20 + i % 3000 for i in range(limit)]  # no room for one token: say the bound
    err = _error(lambda: server.client().completions.create(model=server.model, prompt=exact))
    assert f"Shorten the prompt to at most {limit - 1} tokens" in err.body["message"]
    # A cap past the room left: the room in the words agents parse to retry (Hermes's
    # `available_tokens N`), not only "context length" (which makes them compress history).
    short = [20 + i % 3000 for i in range(100)]
    err = _error(lambda: server.client().completions.create(model=server.model, prompt=short,
                                                            max_tokens=limit))  # fmt: skip
    said = err.body["message"]
    assert err.body["param"] == "max_tokens" and "output tokens" in said
    assert re.search(r"available_tokens[:\s]+(\d+)", said).group(1) == str(limit - 100), said


def test_unknown_model_is_404(server):
    err = _error(
        lambda: server.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    )
    assert err.status_code == 404 and err.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"messages": "hello"}', b'{"messages": [{"role": "user"}], "stop": 5}'],
)
def test_malformed_bodies_get_400_envelopes(server, body):
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def _status(server):
    return httpx.get(f"{server.url}/v1/status").json()


def _running(server):
    s = _status(server)
    r = s["replicas"][0]
    return r["engine"]["num_running"] + r["engine"]["num_waiting"], r["in_flight"]


def test_client_disconnect_mid_stream_frees_the_sequence(server):
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": 4000,
        "stream": True,
        "ignore_eos": True,
    }
    url = f"{server.url}/v1/chat/completions"
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body) as r:
        got, lines = [], r.iter_lines()  # held: a dropped iterator closes the stream
        for line in lines:
            if line.startswith("data: {"):
                got.append(json.loads(line[6:]))
            if len(got) >= 5:
                break
        assert _running(server)[0] == 1
    deadline = time.time() + 10
    while time.time() < deadline and _running(server) != (0, 0):
        time.sleep(0.1)
    assert _running(server) == (0, 0)


def test_a_client_that_leaves_a_whole_reply_aborts_it_in_one_log_line(model_dir, tmp_path):
    """A non-streamed request whose client gives up: its sequence is freed, and the log says
    so in a line (it was an ASGI error with a 50-line traceback per request)."""
    from conftest import Server

    srv = Server(["--model", str(model_dir)], env={"CLUSTER_HOME": str(tmp_path)})
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 4000,
            "ignore_eos": True}  # fmt: skip
    try:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=1.5)
        deadline = time.time() + 10
        while time.time() < deadline and _running(srv) != (0, 0):
            time.sleep(0.1)
        assert _running(srv) == (0, 0)
    finally:
        srv.stop()
    out = srv.proc.stdout.read()
    assert out.count("the client left before the reply was ready") == 2, out
    assert "Traceback" not in out and "Exception in ASGI" not in out, out


def test_full_admission_queue_gets_429_with_retry_after(model_dir, tmp_path):
    from conftest import Server

    srv = Server(
        ["--model", str(model_dir), "--max-num-seqs", "1", "--max-queue", "1"],
        env={"CLUSTER_HOME": str(tmp_path)},
    )
    body = {
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
    }
    try:
        with httpx.Client(timeout=30) as http:
            url = f"{srv.url}/v1/chat/completions"
            with http.stream("POST", url, json=body) as a, http.stream("POST", url, json=body) as b:
                assert a.status_code == 200 and b.status_code == 200
                third = http.post(url, json=body | {"stream": False})
                assert third.status_code == 429
                assert int(third.headers["retry-after"]) >= 1
                assert third.json()["error"]["type"] == "rate_limit_error"
        # Both streams were dropped: the slots come back and requests are admitted again.
        deadline = time.time() + 10
        while time.time() < deadline:
            r = httpx.post(url, json=body | {"stream": False, "max_tokens": 2})
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200
    finally:
        srv.stop()


def test_api_keys_are_required_and_grpc_runs_mutual_tls_when_configured(model_dir, tmp_path):
    from conftest import Server
    from test_rpc import make_ca_and_leaf

    pki = make_ca_and_leaf(tmp_path, "cluster")
    tls = {f"CLUSTER_TLS_{k.upper()}": str(v) for k, v in pki.items()}
    srv = Server(
        ["--model", str(model_dir), "--api-key", "k1"],
        env={"CLUSTER_HOME": str(tmp_path), "CLUSTER_API_KEY": "k2", **tls},
    )
    try:
        missing = httpx.get(f"{srv.base_url}/models")
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0)
        err = _error(wrong.models.list)
        assert err.status_code == 401 and err.body["code"] == "invalid_api_key"
        for key in ("k1", "k2"):
            client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0)
            assert client.models.list().data[0].id == srv.model
        assert httpx.get(f"{srv.url}/health").status_code == 200  # probes need no key
        # The coordinator reached its replica's leader over mutual TLS, and says so.
        status = httpx.get(f"{srv.base_url}/status", headers={"authorization": "Bearer k1"})
        assert status.json()["settings"]["grpc_tls"] is True
        reply = client.completions.create(model=srv.model, prompt="x", max_tokens=3)
        assert reply.usage.completion_tokens > 0
        assert "127.0.0.1" in srv.base_url  # binds loopback unless told otherwise
        import anthropic  # Anthropic's clients send x-api-key; errors come in their shape

        hi = {"model": srv.model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
        ok = anthropic.Anthropic(base_url=srv.url, api_key="k2", max_retries=0)
        assert ok.messages.create(**hi).usage.output_tokens > 0
        bad = anthropic.Anthropic(base_url=srv.url, api_key="nope", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as e:
            bad.messages.create(**hi)
        assert e.value.body["error"]["type"] == "authentication_error"
        # Either header may carry the key (Claude Code sends both), the scheme in any case.
        both = {"authorization": "Bearer wrong", "x-api-key": "k1"}
        lower = {"authorization": "bearer k2"}
        for headers in (both, lower):
            assert httpx.get(f"{srv.base_url}/models", headers=headers).status_code == 200
            r = httpx.post(f"{srv.url}/v1/messages", json=hi, headers=headers)
            assert r.status_code == 200 and r.json()["type"] == "message"
        neither = {"authorization": "Bearer wrong", "x-api-key": "nope"}
        r = httpx.get(f"{srv.base_url}/models", headers=neither)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{srv.url}/v1/messages", json=hi, headers=neither)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.json()["type"] == "error"
        # `cluster status` reads a keyed cluster with its key, and says what is missing without.
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k != "CLUSTER_API_KEY"}
        cmd = [sys.executable, "-m", "cluster", "status", "--url", srv.url]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 2 and "give --api-key" in out.stderr, out.stderr
        out = subprocess.run([*cmd, "--api-key", "k1"], capture_output=True, text=True,
                             env=env, timeout=60)  # fmt: skip
        assert out.returncode == 0 and "r0" in out.stdout, out.stderr
    finally:
        srv.stop()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_the_coordinator_process_never_loads_mlx(server):
    """The running coordinator (its ranks are other processes) has no MLX library mapped."""
    server.client().models.list()  # it has served a request
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "mlx" not in maps


@pytest.mark.skipif(not openblas_path(), reason="OpenBLAS is a Linux package")
def test_the_rank_runs_openblas_with_idle_threads_sleeping(server):
    """The served rank has OpenBLAS mapped and its workers' spin-wait cut short (spinning, they
    took a core from decoding; the measured effect is in cluster/launch/blas.py)."""
    from cluster.bench.cluster_process import rank_pids

    server.client().models.list()
    (pid,) = rank_pids(server.env["CLUSTER_HOME"]).values()
    assert "libopenblas" in Path(f"/proc/{pid}/maps").read_text()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"OPENBLAS_THREAD_TIMEOUT={THREAD_TIMEOUT}".encode() in environ


def test_a_huge_prompt_being_tokenized_does_not_stall_other_streams(server):
    """Templating and tokenizing a 200K-token transcript take about half a second here; done
    on the coordinator's event loop they would stop every other stream that long."""
    import threading

    from conftest import ROOT

    huge = (ROOT / "cluster" / "coordinator" / "coordinator.py").read_text() * 40
    stamps: list[float] = []
    took: dict = {}

    def big():
        took["start"] = started = time.perf_counter()
        messages = [{"role": "user", "content": huge}]
        err = _error(lambda: server.client().chat.completions.create(
            model=server.model, messages=messages, max_tokens=4))  # fmt: skip
        took["s"], took["code"], took["end"] = (
            time.perf_counter() - started,
            err.status_code,
            (time.perf_counter()),
        )

    stream = server.client().completions.create(
        model=server.model, prompt="def f(", max_tokens=400, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    sender = None
    for i, _ in enumerate(stream):
        stamps.append(time.perf_counter())
        if i == 20:
            sender = threading.Thread(target=big)
            sender.start()
    sender.join()
    assert took["code"] == 400  # longer than the context, found out after tokenizing
    during = [t for t in stamps if took["start"] <= t <= took["end"]] + [
        next(t for t in stamps if t > took["end"])
    ]  # the chunks while the big request was in the server, and the first after it
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert took["s"] > 0.2 and max(gaps) < took["s"] / 2, (max(gaps), took)


CLOSED_TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {
        "type": "object",
        "properties": {
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit", "kelvin"]},
            "detailed": {"type": "boolean"},
        },
        "required": ["unit"],
    }}}
    for name in ("get_weather", "get_weather_alerts", "set_thermostat")
]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_random_weights_still_write_only_calls_of_offered_tools(server, stream):
    """The tool-call grammar (on by default): a model with random weights, made to call a tool,
    writes an offered tool's name, its keys once each and only the values its schema lists,
    every time (without the grammar these weights write noise after `<tool_call>`)."""
    client = server.client()
    status = httpx.get(f"{server.url}/v1/status").json()
    assert status["settings"]["tool_call_grammar"] is True
    names = {t["function"]["name"] for t in CLOSED_TOOLS}
    for seed in range(4):
        kw = dict(model=server.model, messages=[{"role": "user", "content": f"weather {seed}"}],
                  tools=CLOSED_TOOLS, tool_choice="required", parallel_tool_calls=False,
                  max_tokens=40, temperature=1.0,
                  seed=seed)  # fmt: skip
        if stream:
            calls: dict[int, list] = {}
            finish = None
            for chunk in client.chat.completions.create(stream=True, **kw):
                choice = chunk.choices[0]
                finish = choice.finish_reason or finish
                assert not choice.delta.content or "<" not in choice.delta.content
                for d in choice.delta.tool_calls or []:
                    if d.id:
                        calls[d.index] = [d.function.name, ""]
                    else:
                        calls[d.index][1] += d.function.arguments or ""
            got = [tuple(calls[i]) for i in sorted(calls)]
        else:
            r = client.chat.completions.create(**kw).choices[0]
            finish = r.finish_reason
            got = [(c.function.name, c.function.arguments) for c in r.message.tool_calls]
        assert finish == "tool_calls" and got, (finish, got)
        for name, arguments in got:
            args = json.loads(arguments)
            assert name in names
            assert args["unit"] in ("celsius", "fahrenheit", "kelvin")
            assert set(args) <= {"unit", "detailed"}
            assert args.get("detailed", True) in (True, False)


def test_a_response_format_of_another_type_is_refused_naming_the_supported_ones(server):
    """(json_object and json_schema are served: tests/cluster/test_agents.py.)"""
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "yaml"},
        )  # fmt: skip
    assert "'yaml'" in str(e.value) and "json_schema" in str(e.value)


def test_an_unknown_endpoint_names_the_served_ones(server):
    r = httpx.post(f"{server.url}/v1/chat/complete", json={"model": server.model})
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "/v1/chat/completions" in message and "/v1/responses" in message
    r = httpx.get(f"{server.url}/v1/nope")
    assert r.status_code == 404 and "/v1/messages" in r.json()["error"]["message"]


def test_a_tool_with_a_malformed_schema_is_a_400_not_a_500(server):
    """As OpenAI answers it: the schema is named and what is wrong with it."""
    import openai

    tools = [{"type": "function", "function": {"name": "odd", "parameters": {
        "type": "object", "properties": ["not", "a", "mapping"]}}}]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "hi"}], tools=tools,
            max_tokens=4, temperature=0.0,
        )  # fmt: skip
    assert "Invalid schema for tools.0 (odd): 'properties' must be an object" in str(e.value)
    assert e.value.body["param"] == "tools.0.function.parameters"
    # Two tools of one name (which would a call be?) and an enum no value satisfies.
    one = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    empty = {"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"v": {"enum": []}}}}}  # fmt: skip
    for tools, says in (([one, one], "'tools.1' name 'f' is also tools.0's"),
                        ([empty], "the enum of 'v' lists no value")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            server.client().chat.completions.create(
                model=server.model, messages=[{"role": "user", "content": "hi"}], tools=tools,
                max_tokens=4,
            )  # fmt: skip
        assert says in str(e.value), str(e.value)
    # A history's call with `arguments: null` is a call without arguments, not a 400.
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type":
                "function", "function": {"name": "f", "arguments": None}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "ok"}]  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": server.model, "messages": history, "tools": [one], "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200, r.text


def test_an_anthropic_base_url_ending_in_v1_is_named(server):
    """`ANTHROPIC_BASE_URL=http://host:port/v1` makes the SDK call /v1/v1/messages: the 404
    came in OpenAI's shape with no hint."""
    r = httpx.post(f"{server.url}/v1/v1/messages", json={})
    body = r.json()
    assert r.status_code == 404 and body["type"] == "error", body
    assert body["error"]["type"] == "not_found_error" and "/v1 is doubled" in body["error"][
        "message"]  # fmt: skip
    r = httpx.get(f"{server.url}/v1/messages")  # a client's error, not the server's
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    # Every client error is counted by status (only 429 and 503 were: the rest was nowhere).
    counts = {line.split('status="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in httpx.get(f"{server.url}/metrics").text.splitlines()
              if line.startswith("cluster:requests_rejected_total{")}  # fmt: skip
    assert counts.get("404", 0) >= 1 and counts.get("405", 0) >= 1, counts


def test_a_default_cap_holds_replies_whose_requests_set_none(model_dir, tmp_path):
    """--default-max-tokens caps a reply whose request sets no max_tokens (Codex's never do:
    a looping reply ran to the context's end); a request's own cap still wins; /v1/status
    shows the setting."""
    from conftest import Server

    srv = Server(["--model", str(model_dir), "--default-max-tokens", "5"],
                 env={"CLUSTER_HOME": str(tmp_path)})  # fmt: skip
    try:
        client = srv.client()
        user = [{"role": "user", "content": "Write a long story."}]
        capped = client.chat.completions.create(model=srv.model, messages=user, **GREEDY,
                                                extra_body={"ignore_eos": True})  # fmt: skip
        assert capped.usage.completion_tokens == 5 and capped.choices[0].finish_reason == "length"
        own = client.chat.completions.create(model=srv.model, messages=user, max_tokens=9,
                                             extra_body={"ignore_eos": True}, **GREEDY)  # fmt: skip
        assert own.usage.completion_tokens == 9
        r = client.responses.create(model=srv.model, input="Write a long story.", **GREEDY)
        assert r.usage.output_tokens <= 5
        status = httpx.get(f"{srv.url}/v1/status").json()
        assert status["settings"]["default_max_tokens"] == 5
    finally:
        srv.stop()
