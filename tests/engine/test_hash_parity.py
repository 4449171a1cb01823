"""The coordinator's block hashes equal the ones a real engine stores and publishes."""

import time

from cluster.hashing import block_hashes, hash_seed


def test_coordinator_hashes_equal_the_engines(model_dir):
    """The same prompt through the chat template: the engine stores exactly our hashes."""
    from cluster.config import EngineConfig
    from cluster.coordinator.tokenizer import PromptTokenizer
    from cluster.engine.service import EngineService
    from cluster.types import EngineRequest, RequestId, SamplingParams

    service = EngineService(model_dir, EngineConfig(block_size=16), "glm-5-fixture")
    service.start()
    try:
        stored = []
        service.subscribe_cache(lambda s, e, done: stored.extend(s), snapshot=False)
        tokenizer = PromptTokenizer(model_dir)
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "x " * 100},
        ]
        prompt = tokenizer.chat(messages)
        done = []
        request = EngineRequest(
            RequestId("h"), tuple(prompt), SamplingParams(max_tokens=1, temperature=0)
        )
        service.submit(request, lambda e: done.append(e) if e.finish_reason else None)
        deadline = time.time() + 30
        while not done and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        ours = block_hashes(prompt, 16, hash_seed("glm-5-fixture"))
        assert ours and set(ours) <= set(stored)
    finally:
        service.stop()
