"""The built-in model: GLM-5's config fields, the MTP layer's tensors, determinism, loading."""

import hashlib
import json

import pytest
from safetensors import safe_open

from cluster.fixture.model import write_fixture
from cluster.models.glm_moe_dsa_mtp import MTPLayer, mtp_weights_from_checkpoint

GLM5_FIELDS = {
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "n_shared_experts", "n_routed_experts",
    "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim",
    "qk_nope_head_dim", "n_group", "topk_group", "num_experts_per_tok", "norm_topk_prob",
    "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
    "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "rope_parameters",
    "attention_bias", "attention_dropout", "index_topk", "index_head_dim", "index_n_heads",
    "mlp_bias", "head_dim", "first_k_dense_replace", "num_nextn_predict_layers", "model_type",
}  # fmt: skip


def test_config_has_every_glm5_field(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config.keys() >= GLM5_FIELDS
    assert config["model_type"] == "glm_moe_dsa" and config["num_nextn_predict_layers"] == 1
    assert config["first_k_dense_replace"] >= 1 and config["n_shared_experts"] >= 1


def test_checkpoint_carries_the_mtp_layer_in_hf_names(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    mtp = f"model.layers.{config['num_hidden_layers']}."
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "self_attn.kv_b_proj.weight", "self_attn.indexer.wq_b.weight",
                 "mlp.experts.0.gate_proj.weight", "mlp.shared_experts.up_proj.weight"):  # fmt: skip
        assert mtp + name in keys
    assert "model.layers.0.mlp.gate_proj.weight" in keys  # a dense first layer


@pytest.mark.slow  # (about 20-70 s: `make test-slow`)
def test_same_seed_same_bytes(tmp_path):
    def digest(d):
        return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    a = write_fixture(tmp_path / "a", seed=3)
    b = write_fixture(tmp_path / "b", seed=3)
    c = write_fixture(tmp_path / "c", seed=4)
    assert digest(a) == digest(b) != digest(c)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_mlx_lm_loads_it_and_the_mtp_layer_loads_from_it(loaded, model_dir):
    import mlx.core as mx

    model, tokenizer, config = loaded
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "[gMASK]<sop><|user|>hi<|assistant|><think>"
    weights = mx.load(str(model_dir / "model.safetensors"))
    mtp = MTPLayer(model.args)
    mtp.load_weights(
        list(mtp_weights_from_checkpoint(weights, model, config["num_hidden_layers"]).items())
    )
    h = mx.zeros((1, 3, config["hidden_size"]))
    out = mtp(h, model.model.embed_tokens(mx.array([[5, 6, 7]])), cache=mtp.make_cache())
    assert out.shape == (1, 3, config["hidden_size"])


def test_with_spaces_isolated_a_word_is_the_same_tokens_wherever_it_stands():
    """A request's " kitchen" and a tool call's "kitchen" share the word's tokens, so a copy of
    one is the other (the induction recipe's tokenizer: runs of spaces are tokens of their own)."""
    from cluster.fixture.tokenizer import build_tokenizer

    tok = build_tokenizer(4096, isolate_spaces=True)
    for word in ("kitchen", "thermostat", "Lima"):
        alone = tok.encode(word, add_special_tokens=False).ids
        spaced = tok.encode(f"set the room to {word}", add_special_tokens=False).ids
        tagged = tok.encode(f"<arg_value>{word}</arg_value>", add_special_tokens=False).ids
        assert spaced[-len(alone) :] == alone and tagged[1 : 1 + len(alone)] == alone


@pytest.mark.parametrize("sparse", [False, True])
def test_training_attention_is_the_served_attention(loaded, sparse):
    """Training scores causal attention in blocks of queries (each against the keys up to its
    last query); its output must be mlx-lm's, dense and with the indexer's sparse selection,
    and its indexer target each strided query's distribution over the keys it may see."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.base import create_attention_mask

    from cluster.fixture import indexer_loss

    model, _, _ = loaded
    attn = model.model.layers[1].self_attn
    n = 2 * indexer_loss.BLOCK + 45  # not a whole number of blocks
    topk = attn.indexer.index_topk
    try:
        if not sparse:
            attn.indexer.index_topk = n
        x = mx.random.normal((2, n, model.args.hidden_size), key=mx.random.key(3))
        mask = create_attention_mask(x, None, return_array=True)
        out, target = indexer_loss.attention(attn, x, mask)
        served = attn(x, mask=mask)
    finally:
        attn.indexer.index_topk = topk
    assert np.allclose(np.array(out), np.array(served), atol=1e-5)
    queries = np.arange(0, n, indexer_loss.QUERY_STRIDE)
    t = np.array(target)
    assert t.shape == (2, len(queries), n)
    assert np.allclose(t.sum(-1), 1.0, atol=1e-5)
    assert not (t * (np.arange(n)[None, None] > queries[None, :, None])).any()  # causal
    seen = (t > 0).sum(-1)
    assert (seen <= topk).all() if sparse else (seen == queries + 1).all()


def _copy_accuracy(model, tokenizer_json, seed: int = 5) -> float:
    """Teacher-forced accuracy on the second copy of spans of random words."""
    import mlx.core as mx
    import numpy as np
    from tokenizers import Tokenizer

    from cluster.fixture.indexer_loss import model_forward
    from cluster.fixture.train import copy_windows, copy_words

    words = copy_words(Tokenizer.from_file(str(tokenizer_json)).get_vocab())
    x, w = copy_windows(words, np.random.default_rng(seed), 4, 256)
    hidden, _ = model_forward(model, mx.array(x[:, :-1]))
    right = np.array(model.lm_head(hidden).argmax(-1)) == x[:, 1:]
    return float((right * w[:, 1:]).sum() / w[:, 1:].sum())


def test_the_planted_induction_circuit_copies_before_any_training(tmp_path):
    import mlx_lm

    from cluster.fixture.indexer_loss import set_index_topk
    from cluster.fixture.induction import plant
    from cluster.fixture.train import INDUCTION_SIZE

    out = write_fixture(tmp_path / "m", seed=0, size=INDUCTION_SIZE, isolate_spaces=True)
    model, _ = mlx_lm.load(str(out))
    set_index_topk(model.model.layers, 1 << 20)  # dense: the untrained indexers pick at random
    assert _copy_accuracy(model, out / "tokenizer.json") < 0.05  # random weights do not copy
    plant(model)
    assert _copy_accuracy(model, out / "tokenizer.json") > 0.95
