"""
`memory.py`'s formulas against independent counts: the parameters of a model built from `model.py` (on the meta
device, shapes only), the bytes of an LLM.int8 model built by `llm_int8.py`, the buffers a `KVCache` allocates,
and the published sizes of Pythia and GPT-NeoX-20B.
"""

import pytest
import torch

from labml_nn.neox import memory
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.llm_int8 import make_llm_int8_layer, weight_bytes as measured_weight_bytes
from labml_nn.neox.model import KVCache, NeoXModel, TransformerLayer, build_layers

ODD = NeoXConfig(n_layers=3, d_model=96, n_heads=4, n_vocab=1000, d_ff=200, rotary_pct=0.5, parallel_residual=False)
SMALL = NeoXConfig(n_layers=2, d_model=64, n_heads=4, n_vocab=512, rotary_pct=0.25, parallel_residual=True)


def _built_numel(config: NeoXConfig) -> int:
    with torch.device("meta"):
        model = NeoXModel(*build_layers(config))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["pythia-70m", "pythia-160m", "pythia-1b", "pythia-12b", "gpt-neox-20b"])
def test_parameter_count_equals_the_parameters_of_the_built_model(name):
    config = memory.KNOWN_MODELS[name]
    assert memory.parameter_count(config) == _built_numel(config)


def test_parameter_count_follows_an_ffn_width_other_than_4c():
    assert memory.parameter_count(ODD) == _built_numel(ODD)


def test_published_sizes():
    # Pythia's README (total parameters), and 20B's ~20.55e9 (GPT-NeoX-20B paper)
    assert memory.parameter_count(memory.KNOWN_MODELS["pythia-70m"]) == 70_426_624
    assert memory.parameter_count(memory.KNOWN_MODELS["pythia-6.9b"]) == 6_857_302_016
    assert memory.parameter_count(memory.KNOWN_MODELS["pythia-12b"]) == 11_846_072_320
    neox = memory.KNOWN_MODELS["gpt-neox-20b"]
    assert abs(memory.parameter_count(neox) - 20.55e9) < 0.01e9
    assert round(memory.weight_bytes(neox, "fp16") / 1e9) == 41
    assert round(memory.weight_bytes(neox, "int8") / 1e9) == 21
    # 2 (k, v) x 44 layers x 6144 x 2 bytes a token: 1.08 MB, and 2.2 GB at 2,048 tokens
    assert memory.kv_cache_bytes(neox, 1, 1, "fp16") == 2 * 44 * 6144 * 2
    assert round(memory.kv_cache_bytes(neox, 1, 2048, "fp16") / 1e8) == 22


def test_known_models_are_the_published_shapes():
    expected = {"pythia-70m": (6, 512, 8), "pythia-160m": (12, 768, 12), "pythia-410m": (24, 1024, 16),
                "pythia-1b": (16, 2048, 8), "pythia-1.4b": (24, 2048, 16), "pythia-2.8b": (32, 2560, 32),
                "pythia-6.9b": (32, 4096, 32), "pythia-12b": (36, 5120, 40), "gpt-neox-20b": (44, 6144, 64)}
    for name, (layers, width, heads) in expected.items():
        c = memory.KNOWN_MODELS[name]
        assert (c.n_layers, c.d_model, c.n_heads, c.d_ff, c.rotary_pct) == (layers, width, heads, 4 * width, 0.25)
    assert memory.KNOWN_MODELS["gpt-neox-20b"].n_vocab == 50432
    assert memory.KNOWN_MODELS["pythia-12b"].n_vocab == 50688


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("fp16", torch.float16),
                                                ("bf16", torch.bfloat16)])
def test_weight_bytes_equals_the_bytes_of_the_built_model(dtype, torch_dtype):
    model = NeoXModel(*build_layers(ODD)).to(torch_dtype)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory.weight_bytes(ODD, dtype) == parameters


def test_int8_weight_bytes_equals_the_bytes_of_an_llm_int8_model():
    # `llm_int8.py`'s own measure (parameters, buffers, steps) of a model converted layer by layer, less the
    # rotary buffers, which are no weights
    model = NeoXModel(*build_layers(SMALL)).half()
    for module in model:
        if isinstance(module, TransformerLayer):
            make_llm_int8_layer(module, implementation="reference")
    rotary = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if "rotary" in name)
    assert memory.weight_bytes(SMALL, "int8") == measured_weight_bytes(model) - rotary


def test_kv_cache_bytes_equals_what_the_cache_allocates():
    model = NeoXModel(*build_layers(SMALL)).half()
    batch, tokens = 3, 10
    cache = KVCache(max_len=tokens)
    with torch.no_grad():
        model(torch.randint(0, SMALL.n_vocab, (batch, tokens)), cache)
    allocated = sum(t.numel() * t.element_size() for kv in cache._buffers.values() for t in kv)
    assert memory.kv_cache_bytes(SMALL, batch, tokens, "fp16") == allocated
    # an LLM.int8 model's cache is fp16
    assert memory.kv_cache_bytes(SMALL, batch, tokens, "int8") == allocated


def test_activation_bytes_holds_the_largest_tensors_alive_together():
    # the FFN's hidden state before and after GELU, and the logits, as the model makes them
    model = NeoXModel(*build_layers(SMALL)).half()
    seen = {}
    layer = next(m for m in model if isinstance(m, TransformerLayer))
    def record(module, inputs, output):
        seen["hidden"] = output.numel() * output.element_size()

    layer.mlp.dense_h_to_4h.register_forward_hook(record)
    batch, tokens = 2, 7
    with torch.no_grad():
        logits = model(torch.randint(0, SMALL.n_vocab, (batch, tokens)))
    at_least = max(2 * seen["hidden"], logits.numel() * logits.element_size())
    assert at_least <= memory.activation_bytes(SMALL, batch, tokens, "fp16") <= 3 * at_least


def test_what_fits():
    assert not memory.fits("gpt-neox-20b", "A100 (40 GB)", "fp16")
    assert memory.fits("gpt-neox-20b", "A100 (40 GB)", "fp16", n_gpus=2)
    assert memory.fits("gpt-neox-20b", "A100 / H100 (80 GB)", "fp16")
    assert memory.fits("gpt-neox-20b", "A6000 / L40S (48 GB)", "int8")
    assert memory.fits("pythia-12b", 40 * 10 ** 9, "fp32") is False
    assert memory.fits("pythia-160m", min(memory.GPUS.values()), "fp32")


def test_unknown_dtypes_and_missing_vocabulary_say_what_to_do():
    with pytest.raises(ValueError, match="fp8.*not one of fp32, fp16, bf16, int8"):
        memory.weight_bytes(SMALL, "fp8")
    with pytest.raises(ValueError, match="n_vocab is 0"):
        memory.parameter_count(SMALL.with_updates(n_vocab=0))
