r"""
The model in `model.py` computes what transformers' `GPTNeoXForCausalLM` computes on the same weights.

These tests build a tiny random transformers model, copy its weights into `build_layers(config)` by hand (the
name mapping of `helpers.hf_to_parts` is the whole difference between the two layouts), and compare logits in
fp32. The loader's own tests (`test_loader.py`) do the same through checkpoint files.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import TOLERANCE, make_tiny_hf_model, our_model_from_hf, random_ids  # noqa: E402


@pytest.mark.parametrize("parallel_residual", [True, False])
@pytest.mark.parametrize("hidden_act", ["gelu_fast", "gelu"])
def test_logits_match_transformers(hidden_act, parallel_residual):
    hf = make_tiny_hf_model(hidden_act=hidden_act, use_parallel_residual=parallel_residual)
    ours = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("rotary_pct", [1.0, 0.5])
def test_logits_match_transformers_with_other_rotary_fractions(rotary_pct):
    hf = make_tiny_hf_model(rotary_pct=rotary_pct, rope_theta=500.0)
    ours = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, length=20)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= TOLERANCE


def test_the_two_gelus_give_visibly_different_logits():
    # If this failed, the activation tests above could not tell the two GELUs apart. (The two
    # implementations agree to about 1e-6; the GELUs differ by several times the tolerance.)
    hf = make_tiny_hf_model(hidden_act="gelu_fast")
    ids = random_ids(hf.config.vocab_size)
    with torch.no_grad():
        right = our_model_from_hf(hf)(ids)
        wrong = our_model_from_hf(hf, activation="gelu")(ids)
    assert (right - wrong).abs().max().item() > 2 * TOLERANCE


def test_sequential_and_parallel_residual_differ():
    hf = make_tiny_hf_model(use_parallel_residual=True)
    ids = random_ids(hf.config.vocab_size)
    with torch.no_grad():
        right = our_model_from_hf(hf)(ids)
        wrong = our_model_from_hf(hf, parallel_residual=False)(ids)
    assert (right - wrong).abs().max().item() > 10 * TOLERANCE


def test_a_position_sees_only_earlier_tokens():
    # Changing the last token must leave every earlier position's logits unchanged (the causal mask)
    hf = make_tiny_hf_model()
    ours = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, batch=1)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % hf.config.vocab_size
    with torch.no_grad():
        a, b = ours(ids), ours(changed)
    assert torch.equal(a[:, :-1], b[:, :-1])
    assert not torch.equal(a[:, -1], b[:, -1])


def test_half_precision_model_keeps_rotary_tables_in_fp32():
    # `model.half()` must not round the rotary angles: fp16 logits stay close to the fp32 ones
    hf = make_tiny_hf_model()
    ours = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, length=40)
    with torch.no_grad():
        full = ours(ids)
        half = our_model_from_hf(hf).to(torch.bfloat16)(ids).float()
    for layer in ours:
        rotary = getattr(getattr(layer, "attention", None), "rotary_emb", None)
        if rotary is not None:
            assert rotary.theta.dtype == torch.float32
    assert (full - half).abs().max().item() < 0.1
