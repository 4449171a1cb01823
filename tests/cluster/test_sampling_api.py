"""Logprobs and penalties through the OpenAI API of a real server."""

import httpx


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
