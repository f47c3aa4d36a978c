r"""
The model in `model.py` computes what transformers' `GPTNeoXForCausalLM` computes on the same weights.

These tests build a tiny random transformers model, copy its weights into `build_layers(config)` by hand (the
name mapping below is the whole difference between the two layouts), and compare logits in fp32. The loader's
own tests (`test_loader.py`) do the same through checkpoint files.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.model import build_layers  # noqa: E402

# fp32 logits of the two implementations agree to this; the two GELUs differ by far more (checked below)
TOLERANCE = 2e-4


def tiny_hf_model(seed: int = 0, **overrides):
    r"""
    A random `GPTNeoXForCausalLM`, small enough to run in milliseconds, with every parameter (layer norms
    included) drawn at random so that a swapped or missing tensor changes the logits.
    """
    settings = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=256, rotary_pct=0.25, max_position_embeddings=64,
                    hidden_act="gelu_fast", use_parallel_residual=True, eos_token_id=0, bos_token_id=0,
                    tie_word_embeddings=False)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**settings)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def hf_to_parts(hf_model) -> list:
    r"""
    The transformers state dict split into our parts, `[(part, layer, state_dict)]`: the transformer layers'
    names are the checkpoint's names after `gpt_neox.layers.N.`; the embedding, final norm and readout are
    renamed.
    """
    state = hf_model.state_dict()
    n_layers = hf_model.config.num_hidden_layers
    parts = [("embedding", None, {"word_embeddings.weight": state["gpt_neox.embed_in.weight"]})]
    for i in range(n_layers):
        prefix = f"gpt_neox.layers.{i}."
        parts.append(("layer", i, {k[len(prefix):]: v for k, v in state.items()
                                   if k.startswith(prefix) and "rotary_emb" not in k
                                   and not k.endswith(("attention.bias", "masked_bias"))}))
    parts.append(("norm", None, {"norm.weight": state["gpt_neox.final_layer_norm.weight"],
                                 "norm.bias": state["gpt_neox.final_layer_norm.bias"]}))
    # transformers 5.x calls the readout `lm_head`, older versions `embed_out` (the name in Pythia's files)
    readout = state["lm_head.weight"] if "lm_head.weight" in state else state["embed_out.weight"]
    parts.append(("readout", None, {"final_linear.weight": readout}))
    return parts


def our_model_from_hf(hf_model, **config_changes) -> torch.nn.Sequential:
    """`nn.Sequential(*build_layers(config))` holding the transformers model's weights."""
    config = NeoXConfig.from_hf_config(hf_model.config.to_dict()).with_updates(**config_changes)
    layers = build_layers(config)
    for layer, (_, _, state) in zip(layers, hf_to_parts(hf_model)):
        layer.load_state_dict(state, strict=True)
    return torch.nn.Sequential(*layers).eval()


def random_ids(vocab: int, batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("parallel_residual", [True, False])
@pytest.mark.parametrize("hidden_act", ["gelu_fast", "gelu"])
def test_logits_match_transformers(hidden_act, parallel_residual):
    hf = tiny_hf_model(hidden_act=hidden_act, use_parallel_residual=parallel_residual)
    ours = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("rotary_pct", [1.0, 0.5])
def test_logits_match_transformers_with_other_rotary_fractions(rotary_pct):
    hf = tiny_hf_model(rotary_pct=rotary_pct, rope_theta=500.0)
    ours = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, length=20)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= TOLERANCE


def test_the_two_gelus_give_visibly_different_logits():
    # If this failed, the activation tests above could not tell the two GELUs apart. (The two
    # implementations agree to about 1e-6; the GELUs differ by several times the tolerance.)
    hf = tiny_hf_model(hidden_act="gelu_fast")
    ids = random_ids(hf.config.vocab_size)
    with torch.no_grad():
        right = our_model_from_hf(hf)(ids)
        wrong = our_model_from_hf(hf, activation="gelu")(ids)
    assert (right - wrong).abs().max().item() > 2 * TOLERANCE


def test_sequential_and_parallel_residual_differ():
    hf = tiny_hf_model(use_parallel_residual=True)
    ids = random_ids(hf.config.vocab_size)
    with torch.no_grad():
        right = our_model_from_hf(hf)(ids)
        wrong = our_model_from_hf(hf, parallel_residual=False)(ids)
    assert (right - wrong).abs().max().item() > 10 * TOLERANCE


def test_a_position_sees_only_earlier_tokens():
    # Changing the last token must leave every earlier position's logits unchanged (the causal mask)
    hf = tiny_hf_model()
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
    hf = tiny_hf_model()
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
