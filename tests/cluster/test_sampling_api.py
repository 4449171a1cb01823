"""Logprobs and penalties through the OpenAI API of a real server."""

import httpx
from transformers import AutoTokenizer


def test_api_logprobs_and_penalties(server):
    client = server.client()
    r = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2, presence_penalty=0.5,
        frequency_penalty=0.5, extra_body={"ignore_eos": True, "repetition_penalty": 1.1},
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    assert all(bytes(c.bytes).decode("utf-8", "replace") == c.token for c in content)
    stream = client.chat.completions.create(  # the same request, streamed
        model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2, presence_penalty=0.5,
        frequency_penalty=0.5, stream=True,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.1},
    )  # fmt: skip
    streamed = [c for ch in stream if ch.choices and ch.choices[0].logprobs
                for c in ch.choices[0].logprobs.content]  # fmt: skip
    assert [c.logprob for c in streamed] == [c.logprob for c in content]
    done = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "def f(", "max_tokens": 5, "temperature": 0, "logprobs": 3,
              "ignore_eos": True},
        timeout=60,
    ).json()  # fmt: skip
    lp = done["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert lp["text_offset"][0] == 0 and all(len(t) == 3 for t in lp["top_logprobs"])
    assert "".join(lp["tokens"]) == done["choices"][0]["text"]
    # OpenAI's legacy shape: the sampled token is always among top_logprobs (logprobs + 1).
    zero = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
        "prompt": "def f(", "max_tokens": 5, "temperature": 1.5, "seed": 3, "logprobs": 0,
        "ignore_eos": True}).json()["choices"][0]["logprobs"]  # fmt: skip
    assert zero["top_logprobs"] == [
        {t: v} for t, v in zip(zero["tokens"], zero["token_logprobs"], strict=True)
    ]


def test_server_defaults_sampling_from_generation_config_and_a_thinking_budget(model_dir, tmp_path):
    """generation_config.json's temperature 0 makes requests that leave it out greedy, on
    every route; a request's own temperature still rules. `--thinking-budget` ends the
    reasoning of requests that set no budget. /v1/status shows both."""
    import json
    import shutil

    import anthropic
    from conftest import Server

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps(config | {"temperature": 0.0}))
    srv = Server(["--model", str(copy), "--thinking-budget", "3"],
                 env={"CLUSTER_HOME": str(tmp_path / "home")})  # fmt: skip
    try:
        status = httpx.get(f"{srv.url}/v1/status").json()
        assert status["settings"]["sampling_defaults"] == {"temperature": 0.0}
        assert status["settings"]["thinking_budget"] == 3
        tok = AutoTokenizer.from_pretrained(str(copy))
        thought = srv.client().chat.completions.create(
            model=srv.model, messages=[{"role": "user", "content": "hi"}], max_tokens=12,
            extra_body={"ignore_eos": True},
        ).choices[0].message  # fmt: skip
        assert len(tok.encode(thought.reasoning_content, add_special_tokens=False)) <= 4
        assert thought.content  # the answer follows the budget's </think>
        client = srv.client()
        off = {"enable_thinking": False}
        kw = dict(model=srv.model, messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                  extra_body={"ignore_eos": True, "chat_template_kwargs": off})  # fmt: skip
        greedy = client.chat.completions.create(temperature=0.0, **kw).choices[0].message
        left_out = [client.chat.completions.create(**kw).choices[0].message for _ in range(2)]
        assert greedy.content and all(m.content == greedy.content for m in left_out)
        sampled = {client.chat.completions.create(temperature=1.0, seed=s, **kw)
                   .choices[0].message.content for s in range(3)}  # fmt: skip
        assert len(sampled) > 1  # its own temperature: sampled
        claude = anthropic.Anthropic(base_url=srv.url, api_key="none", max_retries=0)
        a = [claude.messages.create(model=srv.model, max_tokens=8, thinking={"type": "disabled"},
                                    messages=[{"role": "user", "content": "hi"}])
             .content[0].text for _ in range(2)]  # fmt: skip
        assert a[0] and a[0] == a[1]
        r = [client.responses.create(model=srv.model, input="hi", max_output_tokens=8,
                                     reasoning={"effort": "none"}).output_text
             for _ in range(2)]  # fmt: skip
        assert r[0] and r[0] == r[1]
    finally:
        srv.stop()


def test_echo_with_logprobs_scores_the_prompt_as_evaluation_harnesses_ask(server, loaded):
    """lm-evaluation-harness's log-likelihood request (echo, logprobs 1, one token): the
    prompt's tokens come back first, the first without a log-probability, each other equal to
    a plain forward's; the generated token's equals an unechoed request's. Streamed alike."""
    import math

    from conftest import reference_prompt_logprobs

    model, tok = loaded[0], loaded[1]
    ids = tok.encode("def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")
    kw = dict(model=server.model, prompt=ids, max_tokens=1, temperature=0, logprobs=1,
              extra_body={"ignore_eos": True})  # fmt: skip
    client = server.client()
    echoed = client.completions.create(echo=True, **kw).choices[0]
    plain = client.completions.create(**kw).choices[0]
    lp = echoed.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = reference_prompt_logprobs(model, ids)
    assert all(
        math.isclose(g, w, abs_tol=1e-3) for g, w in zip(lp.token_logprobs[1:-1], want, strict=True)
    )
    assert math.isclose(lp.token_logprobs[-1], plain.logprobs.token_logprobs[0], abs_tol=1e-3)
    assert echoed.text == tok.decode(ids) + plain.text and "".join(lp.tokens) == echoed.text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    greedy = [
        t == max(top.values())
        for t, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True)
    ]
    assert greedy[-1]  # the generated token is the argmax (temperature 0)
    chunks = list(client.completions.create(echo=True, stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == echoed.text
    streamed = [
        x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == lp.token_logprobs
    # Echo alone: the text only, no logprobs computed.
    bare = client.completions.create(echo=True, **(kw | {"logprobs": None})).choices[0]
    assert bare.text == echoed.text and bare.logprobs is None
