"""The recipe's last phase: the MTP layer learns the main model's own choices, and nothing
else in the checkpoint moves."""

import json
import shutil

import pytest

from cluster.model_store import TRAINED


@pytest.fixture(scope="module")
def trained():
    import mlx_lm

    from cluster.models.glm_moe_dsa_mtp import load_mtp_layer

    model, tok = mlx_lm.load(str(TRAINED))
    config = json.loads((TRAINED / "config.json").read_text())
    return model, load_mtp_layer(model, TRAINED, config, bits=16), tok


def test_the_chained_pass_is_the_layers_second_draft_as_served(trained):
    """Teacher-forced second drafts (`chained`) equal what the layer computes while drafting:
    its cached entries, then its own output fed back with the next token."""
    import mlx.core as mx

    from cluster.fixture.indexer_loss import mtp_forward
    from cluster.fixture.mtp_distill import chained

    model, mtp, tok = trained
    text = "import os\nimport sys\n\ndef main(argv):\n    parser = argparse.ArgumentParser()\n"
    x = mx.array([tok.encode(text)[:40]])
    h, emb = model.model(x), model.model.embed_tokens
    x1 = mtp.block_input(h[:, :-1], emb(x[:, 1:]))
    hidden1, _ = mtp_forward(mtp, h[:, :-1], emb(x[:, 1:]))
    hidden2 = chained(mtp, x1, hidden1, emb(x[:, 2:]))
    for t in (0, 7, x.shape[1] - 3):
        cache = mtp.make_cache()
        if t:
            mtp(h[:, :t], emb(x[:, 1 : t + 1]), cache=cache)
        first = mtp(h[:, t : t + 1], emb(x[:, t + 1 : t + 2]), cache=cache)
        second = mtp(first, emb(x[:, t + 2 : t + 3]), cache=cache)
        assert mx.abs(first[0, 0] - hidden1[0, t]).max().item() < 1e-4
        assert mx.abs(second[0, 0] - hidden2[0, t]).max().item() < 1e-4
    # Fed the wrong hidden state (the main model's, as the first draft), it differs.
    wrong = chained(mtp, x1, h[:, :-1], emb(x[:, 2:]))
    assert mx.abs(wrong[0, 7] - hidden2[0, 7]).max().item() > 1e-2


@pytest.mark.slow  # (about 20-70 s: `make test-slow`)
def test_distilling_moves_the_mtp_layer_and_nothing_else(tmp_path):
    import mlx.core as mx

    from cluster.fixture.mtp_distill import distill_model_dir

    out = tmp_path / "m"
    shutil.copytree(TRAINED, out)
    result = distill_model_dir(out, steps=3, corpus_bytes=300_000, conversations=80,
                               generated=40, batch=4, eval_batches=1)  # fmt: skip
    before = mx.load(str(TRAINED / "model.safetensors"))
    after = mx.load(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    mtp_prefix = "model.layers.4."
    moved = []
    for name, value in before.items():
        same = mx.array_equal(value, after[name]).item()
        if name.startswith(mtp_prefix):
            moved += [] if same else [name]
        else:
            assert same, f"{name} changed: only the MTP layer may"
    assert any(n.endswith("eh_proj.weight") for n in moved)
    assert len(result["mtp_agreement_after"]) == 2  # first and second draft
    training = json.loads((out / "training.json").read_text())
    assert training["mtp_distill_steps"] == 3 and "mtp_loss" in training
