r"""
LLM.int8 (`llm_int8.py`): the quantization maths against float64, our plain-PyTorch layer against
bitsandbytes on the same weights, the decomposition against plain int8 when inputs carry outlier features, and a
whole int8 model, loaded through `LayerLoader`, against the same model in fp32.

Outlier features are planted the way they look in large models: a few hidden dimensions of the layer norms'
outputs (the inputs of `query_key_value` and `dense_h_to_4h`) are made 20 times larger in every token. We scale
the layer norms' gain and bias in those dimensions by 20 and divide the matching weight columns by 20, so the
model computes the same function as before; only the int8 arithmetic can tell the difference.
"""

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.model import TransformerLayer, build_layers  # noqa: E402
from labml_nn.neox import llm_int8  # noqa: E402
from labml_nn.neox.llm_int8 import (Int8Linear, absmax_quantize, int8_matmul, int8_matmul_exact_fp32,  # noqa: E402
                                          make_llm_int8_layer, make_llm_int8_linear, weight_bytes)

# Importing bitsandbytes 0.50 triggers torch's deprecation warning for `torch.jit.script_method`
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

IMPLEMENTATIONS = ["bitsandbytes", "reference"]
OUTLIER_DIMS = [5, 23, 41]
GAIN = 20.0


def _needs(implementation: str):
    if implementation == "bitsandbytes" and llm_int8.bitsandbytes_problem("cpu") is not None:
        pytest.skip(llm_int8.bitsandbytes_problem("cpu"))


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.double() - reference.double()).norm() / reference.double().norm()).item()


def inputs_with_outliers(seed: int, n: int = 24, k: int = 256, every_row: bool = True) -> torch.Tensor:
    r"""
    `[n, k]` standard normal features, with columns 5, 23 and 41 around $\pm 20$: in every row
    (`every_row`), or as $20 \cdot \mathcal{N}(0, 1)$, so that some of their entries fall below the threshold.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen)
    if every_row:
        x[:, OUTLIER_DIMS] = GAIN * x[:, OUTLIER_DIMS].sign() + x[:, OUTLIER_DIMS]
    else:
        x[:, OUTLIER_DIMS] *= GAIN
    return x


def random_linear(seed: int, k: int = 256, o: int = 96) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(k, o)
    nn.init.normal_(linear.bias, std=0.1)
    return linear


# ## The maths, against float64

def test_absmax_steps_are_row_absmax_over_127_and_levels_round_to_nearest():
    x = inputs_with_outliers(0, every_row=False).double()
    x[3] = 0.0  # a row of zeros stays zero
    x_q, step = absmax_quantize(x)
    absmax = x.abs().amax(dim=1)
    assert x_q.dtype == torch.int8 and step.dtype == torch.float32
    torch.testing.assert_close(step.double()[absmax > 0], absmax[absmax > 0] / 127, rtol=1e-7, atol=0)
    # Each row uses the full range: its largest entry maps to +-127
    assert (x_q.abs().amax(dim=1)[absmax > 0] == 127).all()
    assert (x_q[3] == 0).all()
    # Round to nearest: every level is within half a step of x / s (a hair more for fp32 rounding of the step)
    exact = x[absmax > 0] / (absmax[absmax > 0, None] / 127)
    assert (x_q[absmax > 0].double() - exact).abs().max().item() <= 0.5 + 1e-5


@pytest.mark.parametrize("k", [7, 1000, 5000])
def test_int8_products_accumulate_exactly_in_int32(k):
    # Full-range int8 values; with k = 5000 the sums reach far beyond 2^24, where fp32 sums would round
    gen = torch.Generator().manual_seed(k)
    a = torch.randint(-127, 128, (19, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-127, 128, (24, k), generator=gen, dtype=torch.int8)
    a[0] = 127
    b[0] = 127
    exact = a.long() @ b.long().t()
    for product in (int8_matmul(a, b), int8_matmul_exact_fp32(a, b)):
        assert product.dtype == torch.int32
        assert torch.equal(product.long(), exact)
    assert exact[0, 0] == 127 * 127 * k


def test_reference_layer_computes_the_decomposition_formula():
    r"""
    $Y = X_{:,O} \hat W_{:,O}^\top + (s_x s_w^\top) \odot (X^q_{:,\bar O} W^{q\top}_{:,\bar O}) + b$, written
    again here in float64 from the layer's stored $W^q$, $s_w$ and $b$.
    """
    linear = random_linear(1)
    layer = Int8Linear.from_linear(linear, threshold=6.0)
    x = inputs_with_outliers(1, every_row=False)
    w_q, s_w, b = layer.weight.double(), layer.weight_step.double(), layer.bias.double()
    # The stored weights are the absmax quantization of W, row by row
    torch.testing.assert_close(s_w, linear.weight.detach().double().abs().amax(dim=1) / 127, rtol=1e-7, atol=0)

    x64 = x.double()
    outlier = (x64.abs() >= 6.0).any(dim=0)
    assert outlier.sum() == len(OUTLIER_DIMS)
    regular = x64.masked_fill(outlier, 0.0)
    s_x = regular.abs().amax(dim=1) / 127
    x_q = torch.round(regular / s_x[:, None])
    w_hat = w_q * s_w[:, None]
    expected = x64[:, outlier] @ w_hat[:, outlier].t() + (s_x[:, None] * s_w[None, :]) * (x_q @ w_q.t()) + b

    y = layer(x)
    assert y.dtype == x.dtype and y.shape == (24, 96)
    assert relative_error(y, expected) < 1e-6


# The outlier rule itself, $|X_{ik}| \ge \alpha$ for some token $i$, on inputs that tell it from its plausible
# mistakes: a column negative in every row (missed without the absolute value), columns whose largest magnitude is
# just above, exactly at, or just below the threshold (misjudged by another threshold, or by `>` for `>=`). Which
# columns are outliers is written out here, not computed by a rule, and the layer's output must equal the
# decomposition with exactly those columns taken out.
NEAR_THRESHOLD = {  # column: (its entries, set below; whether it is an outlier at alpha = 6)
    7: ("-9 in every row", True),
    19: ("+6.5 in one row", True),
    33: ("-6.0 in one row, exactly the threshold", True),
    50: ("-5.9 in every row", False),
    61: ("+5.99 in one row", False),
}


def test_outlier_columns_are_those_with_an_entry_of_magnitude_at_least_the_threshold():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(24, 256, generator=gen).clamp(-3, 3)
    x[:, 7] = -9.0
    x[4, 19] = 6.5
    x[9, 33] = -6.0
    x[:, 50] = -5.9
    x[2, 61] = 5.99
    outlier = torch.zeros(256, dtype=torch.bool)
    outlier[[column for column, (_, is_outlier) in NEAR_THRESHOLD.items() if is_outlier]] = True

    layer = Int8Linear.from_linear(random_linear(5), threshold=6.0)
    expected = decomposition(layer, x, outlier)
    assert relative_error(layer(x), expected) < 1e-6
    # The inputs can tell: the same formula with any one of these columns judged the other way is far off
    for column, (what, is_outlier) in NEAR_THRESHOLD.items():
        wrong = outlier.clone()
        wrong[column] = not is_outlier
        assert relative_error(decomposition(layer, x, wrong), expected) > 1e-4, what


def decomposition(layer: Int8Linear, x: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    """The formula of `test_reference_layer_computes_the_decomposition_formula`, in float64, for given columns."""
    x64, w_q, s_w, b = x.double(), layer.weight.double(), layer.weight_step.double(), layer.bias.double()
    regular = x64.masked_fill(outlier, 0.0)
    s_x = regular.abs().amax(dim=1) / 127
    x_q = torch.round(regular / s_x[:, None])
    w_hat = w_q * s_w[:, None]
    return x64[:, outlier] @ w_hat[:, outlier].t() + (s_x[:, None] * s_w[None, :]) * (x_q @ w_q.t()) + b


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_one_signed_outlier_column_is_kept_in_floating_point(implementation):
    r"""
    Column 7 is $-20$ in every row. Taken out, it is exact and the rest quantize with steps set by entries of about
    3; left in, it would set every row's step at $20/127$ and the small entries would lose most of their bits.
    """
    _needs(implementation)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(24, 256, generator=gen).clamp(-3, 3)
    x[:, 7] = -20.0
    x = x.half().float()
    linear = random_linear(6)
    with torch.no_grad():
        linear.weight.copy_(linear.weight.half().float())
        exact = linear(x).double()
        plain = make_llm_int8_linear(linear, 0.0, implementation)(x)
    y = make_llm_int8_linear(linear, 6.0, implementation)(x)
    assert relative_error(y, exact) < relative_error(plain, exact) / 3


# ## Reference against bitsandbytes

def test_reference_matches_bitsandbytes_on_the_same_layer():
    r"""
    With fp16-representable weights and inputs (bitsandbytes quantizes from fp16) and outlier columns that are
    outliers in every row, the two compute the same numbers: same levels, same steps, and outputs equal to
    $10^{-4}$ relative L2. (bitsandbytes' CPU dequantization multiplies by 6.200124e-05 where $1/127^2$ is
    6.2000124e-05, a relative $1.8 \cdot 10^{-5}$.)
    """
    _needs("bitsandbytes")
    linear = random_linear(2)
    with torch.no_grad():
        linear.weight.copy_(linear.weight.half().float())
    x = inputs_with_outliers(2).half().float()
    ours = make_llm_int8_linear(linear, 6.0, "reference")
    theirs = make_llm_int8_linear(linear, 6.0, "bitsandbytes")
    y_theirs = theirs(x)
    assert torch.equal(ours.weight, theirs.weight.data)
    torch.testing.assert_close(ours.weight_step * 127, theirs.state.SCB, rtol=1e-6, atol=0)
    assert relative_error(ours(x), y_theirs) < 1e-4


def test_reference_is_no_less_accurate_than_bitsandbytes_when_outlier_columns_have_small_entries():
    r"""
    The one difference between the two: an outlier column's entries *below* the threshold. We leave the whole
    column out of the int8 part (the paper's $X_{:,\bar O}$); bitsandbytes zeroes only the entries above the
    threshold, so the others can still set a row's step before the column is dropped. Over 10 random layers
    our error is at most 1.05 times theirs (measured: about 0.9).
    """
    _needs("bitsandbytes")
    ours_total = theirs_total = 0.0
    for seed in range(10):
        linear = random_linear(seed)
        x = inputs_with_outliers(seed, every_row=False)
        exact = linear(x).detach()
        ours_total += relative_error(make_llm_int8_linear(linear, 6.0, "reference")(x), exact)
        theirs_total += relative_error(make_llm_int8_linear(linear, 6.0, "bitsandbytes")(x), exact)
    assert ours_total <= 1.05 * theirs_total


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_decomposition_beats_plain_int8_on_inputs_with_outliers(implementation):
    r"""
    Threshold 0 is plain vector-wise int8. With outlier features, one value of 20 sets each row's step, and the
    ordinary features round to a few levels. Measured error ratio about 0.15; asserted below 0.5.
    """
    _needs(implementation)
    linear = random_linear(3)
    x = inputs_with_outliers(3)
    exact = linear(x).detach()
    mixed = relative_error(make_llm_int8_linear(linear, 6.0, implementation)(x), exact)
    plain = relative_error(make_llm_int8_linear(linear, 0.0, implementation)(x), exact)
    assert mixed < 0.02
    assert mixed < 0.5 * plain


# ## Conversion

def tiny_config(**changes) -> NeoXConfig:
    values = dict(n_layers=2, d_model=64, n_heads=4, n_vocab=96, n_ctx=64, rotary_pct=0.25,
                  parallel_residual=True, activation="gelu_tanh")
    values.update(changes)
    return NeoXConfig(**values)


def random_transformer_layer(seed: int = 0) -> TransformerLayer:
    torch.manual_seed(seed)
    layer = build_layers(tiny_config())[1]
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return layer.eval()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_converted_layer_weights_take_at_most_055_of_fp16_bytes(implementation):
    _needs(implementation)
    layer = random_transformer_layer().half()
    fp16_bytes = weight_bytes(layer)
    int8_layer = make_llm_int8_layer(layer, 6.0, implementation)
    # Even at C = 64, where the per-row steps and the layer norms weigh most: 0.54
    assert weight_bytes(int8_layer) <= 0.55 * fp16_bytes
    assert int8_layer.attention.query_key_value.weight.dtype == torch.int8


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_conversion_keeps_biases(implementation):
    _needs(implementation)
    layer = random_transformer_layer()
    biases = {name: p.detach().clone() for name, p in layer.named_parameters() if name.endswith(".bias")}
    int8_layer = make_llm_int8_layer(layer, 6.0, implementation)
    after = dict(int8_layer.named_parameters())
    for name, bias in biases.items():
        assert torch.equal(after[name].data.float(), bias), name
    # A zero input quantizes to zero, so each linear layer gives back exactly its bias
    dense = int8_layer.mlp.dense_h_to_4h
    assert torch.equal(dense(torch.zeros(3, 64)), biases["mlp.dense_h_to_4h.bias"].expand(3, -1))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_converted_layer_runs_in_the_model(implementation):
    _needs(implementation)
    layer = random_transformer_layer()
    x = torch.randn(2, 5, 64)
    expected = layer(x).detach()
    int8_layer = make_llm_int8_layer(layer, 6.0, implementation)
    # The model finds a layer's device from its first parameter; the int8 layer still has parameters there
    assert next(int8_layer.parameters()).device == x.device
    assert not int8_layer.training and not int8_layer.mlp.dense_h_to_4h.training
    with torch.no_grad():
        assert relative_error(int8_layer(x), expected) < 0.02
    with pytest.raises(TypeError, match="converted already"):
        make_llm_int8_layer(int8_layer, 6.0, implementation)


def test_quantizing_leaves_the_process_logging_alone():
    # Silencing bitsandbytes' messages is the commands' choice (`cli.quiet_bitsandbytes`), not the library's
    _needs("bitsandbytes")
    import logging
    names = ["bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"]
    before = [(logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names]
    make_llm_int8_layer(random_transformer_layer(), 6.0, "bitsandbytes")
    assert [(logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names] == before


def test_unusable_bitsandbytes_falls_back_to_the_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(llm_int8, "bitsandbytes_problem", lambda device_type: "bitsandbytes is broken here")
    with pytest.warns(UserWarning, match="bitsandbytes is broken here.*plain PyTorch"):
        layer = make_llm_int8_linear(random_linear(0), 6.0, "bitsandbytes")
    assert isinstance(layer, Int8Linear)
    with pytest.raises(ValueError, match="not one of"):
        make_llm_int8_linear(random_linear(0), 6.0, "fast")


# ## A whole model, through the loader

def plant_outlier_features(layers, dims, gain: float):
    """Scale the layer norms in `dims` by `gain` and the weight columns that read them by `1 / gain`."""
    with torch.no_grad():
        for layer in layers:
            if not isinstance(layer, TransformerLayer):
                continue
            for norm, linear in ((layer.input_layernorm, layer.attention.query_key_value),
                                 (layer.post_attention_layernorm, layer.mlp.dense_h_to_4h)):
                norm.weight[dims] *= gain
                norm.bias[dims] *= gain
                linear.weight[:, dims] /= gain


@pytest.fixture(scope="module")
def planted_checkpoint(tmp_path_factory):
    r"""
    A random 3-layer model with outlier features, written as a gpt-neox checkpoint with 2 tensor-parallel ranks
    (the layout of the 20B slim weights), for `LayerLoader` to load.
    """
    from labml_nn.neox.checkpoint import all_parts, write_neox_checkpoint
    config = tiny_config(n_layers=3)
    torch.manual_seed(0)
    layers = build_layers(config)
    with torch.no_grad():
        for layer in layers:
            for name, p in layer.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    plant_outlier_features(layers, OUTLIER_DIMS, GAIN)
    parts = [(part, layer.state_dict()) for part, layer in zip(all_parts(config.n_layers), layers)]
    path = tmp_path_factory.mktemp("planted")
    write_neox_checkpoint(path, config, parts, tensor_parallel_size=2)
    return path


def _logits(path, ids, **kwargs) -> torch.Tensor:
    from labml_nn.neox.loader import LayerLoader
    model = nn.Sequential(*LayerLoader(path, progress=False, **kwargs).load())
    if kwargs.get("is_llm_int8"):
        assert model[1].mlp.dense_4h_to_h.weight.dtype == torch.int8
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_int8_model_logits_stay_close_to_fp32(planted_checkpoint, implementation):
    r"""
    Relative L2 of the logits against the same checkpoint loaded in fp32, measured: 0.038 for both
    implementations with the decomposition, 0.082 for plain int8 (0.018 for both before the outliers are
    planted). Asserted: below 0.05, and below 0.6 times plain int8's.
    """
    _needs(implementation)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    fp32 = _logits(planted_checkpoint, ids)
    int8 = _logits(planted_checkpoint, ids, is_llm_int8=True, llm_int8_implementation=implementation)
    plain = _logits(planted_checkpoint, ids, is_llm_int8=True, llm_int8_implementation=implementation,
                    llm_int8_threshold=0.0)
    assert relative_error(int8, fp32) < 0.05
    assert relative_error(int8, fp32) < 0.6 * relative_error(plain, fp32)
