"""The longest prompt the model takes, arriving while 8 streams decode, delays their next
tokens by about one prefill chunk's compute (not the whole prompt's), measured through the
coordinator (its tokenization and hashing included)."""

import threading
import time

import pytest

CHUNK = 1024


def _corpus_ids(n: int):
    """The built-in model's tokenizer and more than n tokens of standard-library source."""
    from transformers import AutoTokenizer

    from cluster.fixture.tokenizer import corpus_files
    from cluster.model_store import TRAINED

    tok = AutoTokenizer.from_pretrained(str(TRAINED))
    ids: list[int] = []
    for path in corpus_files(2_000_000):
        ids += tok.encode(path.read_text(errors="replace"), add_special_tokens=False)
        if len(ids) > n:
            break
    return tok, ids


@pytest.mark.timeout(300)
def test_a_longest_prompt_delays_decoding_streams_by_one_chunk(tmp_path):
    from conftest import Server

    tok, ids = _corpus_ids(9000)
    srv = Server(["--prefill-step-size", str(CHUNK)], env={"CLUSTER_HOME": str(tmp_path)})
    try:
        context = srv.client().models.list().data[0].model_extra["max_model_len"]
        prompt = tok.decode(ids[: context - 8])
        stamps: list[list[float]] = [[] for _ in range(8)]
        started = threading.Barrier(9)

        def stream(i: int) -> None:
            out = srv.client().completions.create(
                model=srv.model, prompt=f"def f{i}(", max_tokens=400, temperature=0,
                stream=True, extra_body={"ignore_eos": True},
            )  # fmt: skip
            for n, _ in enumerate(out):
                stamps[i].append(time.perf_counter())
                if n == 10:
                    started.wait()

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        started.wait()
        sent = time.perf_counter()
        long = srv.client().completions.create(model=srv.model, prompt=prompt, max_tokens=1)
        done = time.perf_counter()
        for t in threads:
            t.join()
    finally:
        srv.stop()
    tokens = long.usage.prompt_tokens
    chunks = -(-tokens // CHUNK)
    per_chunk = (done - sent) / chunks  # a chunk and the decode step beside it
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:], strict=False) if sent <= a <= done]
    print(f"{tokens} tokens in {done - sent:.1f} s ({chunks} chunks, {per_chunk:.2f} s each); "
          f"longest gap of a decoding stream {max(gaps):.2f} s")  # fmt: skip
    assert tokens >= context - 16 and chunks >= 7
    # Later chunks attend to more keys than the average one; a prompt prefilled in one step
    # would stop the streams for all `chunks` of them.
    assert gaps and max(gaps) < 2.5 * per_chunk, (max(gaps), per_chunk)


@pytest.mark.slow  # 27 s; moved when `make test` read 19.6 minutes
def test_a_silent_prefill_streams_heartbeats_the_sdks_ignore(tmp_path):
    """While a long prompt prefills nothing else is sent, and proxies and clients cut streams
    that stay silent (then retry from zero): SSE comments (OpenAI's routes) and `ping` events
    (Anthropic's) go out whenever a stream has been silent `CLUSTER_SSE_HEARTBEAT` seconds, and
    both SDKs read the replies as before."""
    import anthropic
    import httpx
    from conftest import Server

    tok, ids = _corpus_ids(17_000)
    texts = [tok.decode(ids[i * 4000 : (i + 1) * 4000]) for i in range(4)]  # each new: cold
    env = {"CLUSTER_HOME": str(tmp_path), "CLUSTER_SSE_HEARTBEAT": "0.2"}
    srv = Server(["--prefill-step-size", "256"], env=env)
    try:
        body = {"model": srv.model, "max_tokens": 4, "stream": True,
                "messages": [{"role": "user", "content": texts[0]}]}  # fmt: skip
        lines = []
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=120) as r:
            lines = [line for line in r.iter_lines() if line]
        # The role chunk goes out at once; then the prefill's silence, kept alive.
        second = next(i for i, line in enumerate(lines) if line.startswith("data: ") and i)
        assert second >= 3 and set(lines[1:second]) == {": keep-alive"}, lines[:5]
        assert lines[-1] == "data: [DONE]"

        chunks = srv.client().chat.completions.create(
            model=srv.model, max_tokens=4, stream=True,
            messages=[{"role": "user", "content": texts[1]}],
        )  # fmt: skip
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) >= 1

        client = anthropic.Anthropic(base_url=srv.url, api_key="none", max_retries=0)
        with client.messages.stream(
            model=srv.model, max_tokens=4, messages=[{"role": "user", "content": texts[2]}]
        ) as stream:
            kinds = [event.type for event in stream]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert stream.get_final_message().usage.input_tokens > 3000
        body = {"model": srv.model, "max_tokens": 4, "stream": True,
                "messages": [{"role": "user", "content": texts[3]}]}  # fmt: skip
        with httpx.stream("POST", f"{srv.url}/v1/messages", json=body, timeout=120) as r:
            events = [line for line in r.iter_lines() if line.startswith("event: ")]
        assert events.count("event: ping") >= 3, events  # one after message_start, then more
    finally:
        srv.stop()
