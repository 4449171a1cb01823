"""Pure unit tests: hashing, detokenization, stop strings, config, request validation."""

import pytest

from cluster.config import EngineConfig
from cluster.coordinator.output import IncrementalDetokenizer, OutputProcessor, StopMatcher
from cluster.hashing import block_hashes, hash_seed


def test_block_hashes_are_chained_and_seeded():
    a = block_hashes(list(range(40)), 16)
    assert len(a) == 2  # the partial third block is not hashed
    b = block_hashes(list(range(16)) + [99] * 24, 16)
    assert a[0] == b[0] and a[1] != b[1]
    # Same second block after a different first block: a different hash (chained).
    c = block_hashes([7] * 16 + list(range(16, 32)), 16)
    assert c[1] != a[1]
    assert block_hashes(list(range(32)), 16, hash_seed("m1")) != block_hashes(
        list(range(32)), 16, hash_seed("m2")
    )


def test_block_hashes_keep_their_definition():
    """The bytes hashed are the documented ones (engines and coordinators of one cluster must
    agree), from a list, a tuple or a numpy array, at once or extended."""
    import hashlib
    import struct

    import numpy as np

    from cluster.hashing import extend_hashes

    def reference(tokens, size, seed):
        out, prev = [], 0
        for s in range(0, len(tokens) - size + 1, size):
            data = struct.pack(f"<Q{size}I", prev, *tokens[s : s + size])
            prev = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=seed).digest(), "little")
            out.append(prev)
        return out

    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 2**32, 1000, dtype=np.uint64)]
    want = reference(tokens, 16, b"seed")
    assert len(want) == 62 and want[-1] != want[-2]
    assert block_hashes(tokens, 16, b"seed") == want
    assert block_hashes(tuple(tokens), 16, b"seed") == want
    assert block_hashes(np.array(tokens, np.int64), 16, b"seed") == want
    assert extend_hashes(block_hashes(tokens[:100], 16, b"seed"), tokens, 16, b"seed") == want
    assert block_hashes(tokens[:15], 16, b"seed") == []
    assert block_hashes(tokens, 16) == reference(tokens, 16, b"")


def test_stop_matcher_holds_back_partial_stop():
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == ("abc ", False)
    assert m.feed("OP and more") == ("", True)
    m = StopMatcher(["xyz"])
    assert m.feed("abcx") == ("abc", False)
    assert m.feed("a") == ("xa", False)


def test_detokenizer_waits_for_whole_characters():
    text = "한국 ok"
    data = text.encode()

    # One "token" per byte: a decoder over bytes shows replacement characters mid-character.
    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    d = IncrementalDetokenizer(decode)
    out = "".join(d.add([b]) for b in data) + d.flush()
    assert out == text


def test_output_processor_stops_and_counts_tokens():
    def decode(ids):
        return "".join(chr(i) for i in ids)

    p = OutputProcessor(decode, ["cd"])
    first = p.process([ord("a"), ord("b"), ord("c")], None)
    assert first.text == "ab" and first.finish_reason is None
    second = p.process([ord("d"), ord("e")], None)
    assert second.text == "" and second.finish_reason == "stop"
    assert p.num_tokens == 5


def test_output_processor_flushes_held_text_at_the_end():
    p = OutputProcessor(lambda ids: "".join(chr(i) for i in ids), ["xyz"])
    assert p.process([ord("a"), ord("x")], None).text == "a"
    last = p.process([ord("y")], "length")
    assert last.text == "xy" and last.finish_reason == "length"


@pytest.mark.parametrize(
    "field,value",
    [("max_num_seqs", 0), ("block_size", 0), ("kv_bits", 3), ("max_model_len", 1)],
)
def test_engine_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):  # the flag's name
        EngineConfig(**{field: value})


def test_request_schema_refuses_what_it_cannot_honour():
    from pydantic import ValidationError

    from cluster.api.schemas import ChatCompletionRequest, CompletionRequest

    msg = [{"role": "user", "content": "hi"}]
    ok = ChatCompletionRequest(messages=msg, stop="x", max_completion_tokens=5)
    assert ok.stop == ["x"] and ok.token_limit == (5, "max_completion_tokens")
    assert ChatCompletionRequest(messages=msg).stop == []
    bad_ones = ({"n": 2}, {"presence_penalty": 3.0}, {"top_logprobs": 2}, {"temperature": 3},
                {"repetition_penalty": 0}, {"logprobs": True, "top_logprobs": 21})  # fmt: skip
    for bad in bad_ones:
        with pytest.raises(ValidationError):
            ChatCompletionRequest(messages=msg, **bad)
    with pytest.raises(ValidationError, match="one prompt per request"):
        CompletionRequest(prompt=["a", "b"])
    assert CompletionRequest(prompt=["a"]).prompt == "a"


def test_progress_draws_a_bar_on_a_terminal_and_logs_lines_otherwise(caplog):
    import io
    import logging

    from cluster.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = Progress(4, "loading", stream=tty, width=8)
    for _ in range(4):
        bar.advance()
    assert "loading [########] 4/4" in tty.getvalue() and tty.getvalue().endswith("\n")
    with caplog.at_level(logging.INFO, "cluster.progress"):
        plain = Progress(100, "bench", stream=io.StringIO())
        for _ in range(100):
            plain.advance()
    assert len(caplog.records) == 5  # 0, 25, 50, 75 and 100 percent
    assert caplog.records[-1].getMessage().startswith("bench: 100/100")


def test_event_loop_choice(monkeypatch):
    import asyncio

    from cluster import aio

    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.delenv("CLUSTER_EVENT_LOOP", raising=False)
    assert aio.loop_name() == "uvloop"  # a dependency on Linux and macOS
    assert aio.run(loop_type()).startswith("uvloop")
    monkeypatch.setenv("CLUSTER_EVENT_LOOP", "asyncio")
    assert aio.run(loop_type()).startswith("asyncio")
    monkeypatch.setenv("CLUSTER_EVENT_LOOP", "tokio")
    with pytest.raises(ValueError, match="use one of auto, uvloop, asyncio"):
        aio.loop_name()


def test_byte_stream_detokenizer_equals_window_decoding():
    """Constant work per token (each token's bytes through an incremental UTF-8 decoder) gives
    the text window decoding gives, streamed one token at a time, special tokens skipped."""
    import random

    from cluster.coordinator.tokenizer import PromptTokenizer
    from cluster.model_store import TRAINED

    tok = PromptTokenizer(TRAINED)
    assert tok.stream_bytes is not None
    text = "한국의 수도는 서울 <think>def f(x):\n    return x</think> 日本 ok"
    ids = tok.encode(text)
    rng = random.Random(0)
    ids += [rng.randrange(tok.vocab_size) for _ in range(300)]  # any token order, split bytes
    fast = IncrementalDetokenizer(tok.decode, tok.stream_bytes)
    slow = IncrementalDetokenizer(tok.decode)
    a = "".join(fast.add([t]) for t in ids) + fast.flush()
    b = "".join(slow.add([t]) for t in ids) + slow.flush()
    assert a == b == tok.decode(ids)


def test_openblas_env_preloads_and_lets_idle_threads_sleep(monkeypatch):
    from cluster.launch import blas

    monkeypatch.setattr(blas, "openblas_path", lambda: "/lib/libopenblas.so.0")
    monkeypatch.setattr(blas.platform, "system", lambda: "Linux")
    env = blas.openblas_env({"LD_PRELOAD": "/lib/other.so"})
    assert env["LD_PRELOAD"] == "/lib/libopenblas.so.0:/lib/other.so"
    assert env["OPENBLAS_THREAD_TIMEOUT"] == blas.THREAD_TIMEOUT
    assert blas.openblas_env({"OPENBLAS_THREAD_TIMEOUT": "20"})["OPENBLAS_THREAD_TIMEOUT"] == "20"
    monkeypatch.setattr(blas, "openblas_path", lambda: None)  # not installed: nothing set
    assert "OPENBLAS_THREAD_TIMEOUT" not in blas.openblas_env({})


def test_a_template_that_refuses_the_conversation_is_the_callers_error():
    """A checkpoint's own template may check the conversation (`raise_exception`, as many do
    for roles out of order): that is the request's fault, said as such, not a server error;
    and template variables never override the call's own arguments."""
    from cluster.coordinator.tokenizer import PromptTokenizer, TemplateArgsError
    from cluster.model_store import TRAINED

    tok = PromptTokenizer(TRAINED)
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateArgsError) as clash:
        tok.chat(user, None, False, tools=[], add_generation_prompt=False)
    assert clash.value.param == "chat_template_kwargs"
    assert "add_generation_prompt, tools" in str(clash.value)
    tok.hf.chat_template = (
        "{% if messages[0].role != 'system' %}{{ raise_exception('a system "
        "message first') }}{% endif %}{{ messages[0].content }}"
    )
    with pytest.raises(TemplateArgsError) as refused:
        tok.chat(user)
    assert refused.value.param == "messages" and "a system message first" in str(refused.value)


def test_a_checkpoint_missing_files_is_refused_before_any_rank_loads(tmp_path):
    """What users' downloads lack, said in one sentence naming the file before a load (a
    rank found each after reading the rest, in a log tail): a shard the index names, a
    truncated file, any weights, the tokenizer, a config that is not an object; and an
    --mtp-weights file that is missing, not safetensors, or holds no MTP layer."""
    import json
    import shutil

    from cluster.model_store import TRAINED
    from cluster.plan.model_config import missing_files, mtp_file_problem, read_config

    model = tmp_path / "m"
    shutil.copytree(TRAINED, model)
    config = read_config(model)
    assert missing_files(model) is None
    weights = sorted(model.glob("*.safetensors"))
    gone = "model-00002-of-00002.safetensors"
    index = {"weight_map": {"a": weights[0].name, "b": gone}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert f"{gone}, named in model.safetensors.index.json, is missing" in missing_files(model)
    (model / "model.safetensors.index.json").unlink()
    whole = weights[0].read_bytes()  # a download cut short: a traceback through a reader
    weights[0].write_bytes(whole[: len(whole) // 2])
    assert f"{weights[0]} is truncated ({len(whole) // 2:,} of {len(whole):,} bytes)" in (
        missing_files(model))  # fmt: skip
    weights[0].write_bytes(whole[:5])
    assert "is not a readable safetensors file" in missing_files(model)
    weights[0].write_bytes(whole)
    (model / "tokenizer.json").unlink()
    assert "has no tokenizer" in missing_files(model)
    for w in weights:
        w.unlink()
    assert "holds no weights" in missing_files(model)
    (model / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="config.json holds a JSON list"):
        read_config(model)
    (model / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        read_config(model)
    assert "does not exist" in mtp_file_problem(tmp_path / "none.safetensors", config)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "not a readable safetensors file" in mtp_file_problem(tmp_path / "junk.safetensors",
                                                                 config)  # fmt: skip
    import numpy as np
    from safetensors.numpy import save_file

    layers = config["num_hidden_layers"]
    save_file({"model.layers.0.w": np.zeros(2, np.float32)}, str(tmp_path / "main.safetensors"))
    why = mtp_file_problem(tmp_path / "main.safetensors", config)
    assert f"holds no model.layers.{layers}.* tensors" in why and "extract-mtp" in why
    mtp = tmp_path / "m.safetensors"
    save_file({f"model.layers.{layers}.w": np.zeros(2, np.float32)}, str(mtp))
    assert mtp_file_problem(mtp, config) is None


def test_a_model_given_as_dot_or_as_its_config_file(tmp_path, monkeypatch):
    """`--model .` served a model named '' (404 for its own name); a path to config.json was
    "model directory .../config.json has no config.json"."""
    from cluster.model_store import resolve_model

    model = tmp_path / "GLM-5-4bit"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(model)
    assert resolve_model(".")[1] == "GLM-5-4bit"
    assert resolve_model("../GLM-5-4bit/")[1] == "GLM-5-4bit"
    with pytest.raises(FileNotFoundError, match="is a file: pass the model directory"):
        resolve_model(str(model / "config.json"))
