r"""
Preparing a model for CPU decoding (`cpu_decoding.py`) changes how weights are stored and multiplied, never what is
computed: the prepared model's logits equal the unprepared model's (within 1e-5 in fp32) and transformers' on the
same weights, greedy tokens are identical, the parameters keep their names, values and identity. And `generate`
itself leaves the caller's tensors exactly as they were.
"""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from labml_nn.neox import cpu_decoding, cpu_gemv  # noqa: E402
from labml_nn.neox.cpu_decoding import (HUGE_PAGE, MAX_BMM_TOKENS, DecodingAttention, DecodingFFN,  # noqa: E402
                                         DecodingLayer, DecodingLinear,
                                         prepare_for_cpu_decoding)
from labml_nn.neox.cpu_gemv import ACTIVATIONS, MAX_KERNEL_ROWS, KernelUnavailable, cpu_gemv_kernel  # noqa: E402
from labml_nn.neox.generation import generate, left_pad  # noqa: E402
from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.model import FFN, Attention, KVCache, TransformerLayer  # noqa: E402
from helpers import TOLERANCE, make_tiny_hf_model, our_model_from_hf, random_ids  # noqa: E402


# The kernel is built on this machine when a test first needs it (about 10 s). Where it cannot be built (no
# compiler, not x86-64) its tests skip, unless NEOX_REQUIRE_CPU_KERNEL=1 (CI sets it) makes that a failure.
def kernel_or_skip():
    try:
        return cpu_gemv_kernel()
    except KernelUnavailable as e:
        if os.environ.get("NEOX_REQUIRE_CPU_KERNEL") == "1":
            raise
        pytest.skip(str(e))


def _layout(model):
    return {name: (p.shape, p.stride(), p.data_ptr()) for name, p in model.named_parameters()}


def test_generate_leaves_the_callers_tensors_as_they_were():
    model = our_model_from_hf(make_tiny_hf_model(seed=21))
    ids = random_ids(96, batch=2, length=8)
    layout = _layout(model)
    values = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    generate(model, ids, 6, eos_token_id=None)
    assert _layout(model) == layout
    assert all(torch.equal(v, values[k]) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == types


@pytest.mark.parametrize("halves,kernel", [(True, False), (False, False), (True, True), (False, True)])
# The parallel and the sequential residual; the tanh GELU ("gelu_fast") and the exact one
@pytest.mark.parametrize("parallel_residual,hidden_act", [(True, "gelu_fast"), (False, "gelu_fast"), (True, "gelu")])
def test_prepared_model_computes_the_same_logits_and_greedy_tokens(halves, kernel, parallel_residual, hidden_act):
    if kernel:
        kernel_or_skip()
    hf = make_tiny_hf_model(seed=22, use_parallel_residual=parallel_residual, hidden_act=hidden_act)
    plain = our_model_from_hf(hf)
    prepared = prepare_for_cpu_decoding(copy.deepcopy(plain), halves=halves, kernel=kernel)
    linears = [m for m in prepared.modules() if isinstance(m, DecodingLinear)]
    assert bool(linears) == (halves or kernel)
    assert all((m._gemv is not None) == kernel and m._use_halves == halves for m in linears)
    # Where the FFN's first layer is a `DecodingLinear`, it applies the GELU
    assert all(type(m.mlp) is (DecodingFFN if (halves or kernel) else FFN) for m in prepared[1:-2])
    ids = random_ids(96, batch=3, length=10)
    with torch.no_grad():
        # A full pass (the prompt path) and a cached one token at a time (the decoding path)
        assert (prepared(ids) - plain(ids)).abs().max().item() < 1e-5
        cache = KVCache(10)
        steps = torch.cat([prepared(ids[:, t:t + 1], cache) for t in range(10)], dim=1)
        assert (steps - plain(ids)).abs().max().item() < 1e-5
        # And against the independent reference
        assert (steps - hf(ids).logits).abs().max().item() <= TOLERANCE
    for batch in (1, 3):
        prompt = random_ids(96, batch=batch, length=7, seed=5)
        assert torch.equal(generate(prepared, prompt, 20, eos_token_id=None),
                           generate(plain, prompt, 20, eos_token_id=None))


def test_preparing_keeps_names_values_and_parameter_objects():
    model = our_model_from_hf(make_tiny_hf_model(seed=23))
    params = dict(model.named_parameters())
    values = {k: v.clone() for k, v in model.state_dict().items()}
    layout_before = _layout(model)
    with torch.inference_mode():
        assert prepare_for_cpu_decoding(model, halves=True, kernel=False) is model
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[name] for name, p in model.named_parameters())
    state = model.state_dict()
    assert list(state) == list(values) and all(torch.equal(state[k], values[k]) for k in values)
    # The halves are views: no weight was copied or moved, and preparing twice changes nothing more
    assert _layout(model) == layout_before and isinstance(model[1].attention.query_key_value, DecodingLinear)
    prepare_for_cpu_decoding(model, halves=True, kernel=False)
    assert _layout(model) == layout_before
    # Still trainable: gradients reach the same parameters
    model(random_ids(96)).logsumexp(-1).mean().backward()
    assert params["1.mlp.dense_h_to_4h.weight"].grad is not None


def test_without_halves_or_kernel_weights_are_stored_column_by_column_and_the_choice_can_change():
    model = our_model_from_hf(make_tiny_hf_model(seed=26))
    params = dict(model.named_parameters())
    ids = random_ids(96, batch=2, length=6)
    with torch.no_grad():
        expected = model(ids)
        prepare_for_cpu_decoding(model, halves=False, kernel=False)
        qkv = model[1].attention.query_key_value
        assert type(qkv) is nn.Linear and qkv.weight.t().is_contiguous() and not qkv.weight.is_contiguous()
        layout = _layout(model)
        prepare_for_cpu_decoding(model, halves=False, kernel=False)
        assert _layout(model) == layout
        # Back to halves: the weights are laid row by row again, for the halves to be views of them
        prepare_for_cpu_decoding(model, halves=True, kernel=False)
        qkv = model[1].attention.query_key_value
        assert isinstance(qkv, DecodingLinear) and qkv.weight.is_contiguous()
        assert all(p is params[name] for name, p in model.named_parameters())
        assert (model(ids) - expected).abs().max().item() < 1e-5
        cache = KVCache(6)
        steps = torch.cat([model(ids[:, t:t + 1], cache) for t in range(6)], dim=1)
        assert (steps - expected).abs().max().item() < 1e-5


def test_weights_go_onto_huge_pages_once_with_the_same_values_and_parameters(monkeypatch, tmp_path):
    # Whether the system backs the copy with 2 MB pages is its business; the copy is made as if it offered them
    monkeypatch.setattr(cpu_decoding, "huge_pages_available", lambda: True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 8))  # a 4 MB weight and a 32 KB one
    params = list(model.parameters())
    values = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 1024)
    with torch.no_grad():
        expected = model(x)
        prepare_for_cpu_decoding(model, halves=True, kernel=False)
        big, small = model[0].weight, model[2].weight
        # One map, from a 2 MB boundary, cut into one storage per weight, each exactly the weight
        assert big.data_ptr() % HUGE_PAGE == 0 and small.data_ptr() == big.data_ptr() + big.numel() * 4
        assert [w.untyped_storage().nbytes() for w in (big, small)] == [w.numel() * 4 for w in (big, small)]
        assert all(p is q for p, q in zip(model.parameters(), params)) and len(list(model.parameters())) == 4
        assert all(torch.equal(v, values[k]) for k, v in model.state_dict().items())
        assert (model(x) - expected).abs().max().item() < 1e-5
        # So a state dict saves as it did before (safetensors refuses tensors that share memory)
        from safetensors.torch import load_file, save_file
        save_file(model.state_dict(), tmp_path / "model.safetensors")
        assert all(torch.equal(v, values[k]) for k, v in load_file(tmp_path / "model.safetensors").items())
        # Once: preparing again copies nothing
        at = big.data_ptr()
        prepare_for_cpu_decoding(model, halves=True, kernel=False)
        assert big.data_ptr() == at
        # Stored column by column, the transposed layout goes onto huge pages
        prepare_for_cpu_decoding(model, halves=False, kernel=False)
        assert big.t().is_contiguous() and big.data_ptr() % HUGE_PAGE == 0 and torch.equal(big, values["0.weight"])
    # Or not at all, when asked, or when the weights do not fill a huge page
    for model, huge_pages in ((nn.Sequential(nn.Linear(1024, 1024)), False),
                              (nn.Sequential(nn.Linear(512, 512)), True)):
        at = model[0].weight.data_ptr()
        prepare_for_cpu_decoding(model, halves=True, kernel=False, huge_pages=huge_pages)
        assert model[0].weight.data_ptr() == at
    # Still trainable
    model = prepare_for_cpu_decoding(nn.Sequential(nn.Linear(1024, 1024)), halves=True, kernel=False)
    model(x).square().mean().backward()
    assert model[0].weight.grad is not None


def _huge_page_kb(address: int) -> int:
    # The `AnonHugePages` of the memory map holding `address`, from /proc/self/smaps
    found = False
    for line in open("/proc/self/smaps"):
        if "-" in line.split()[0] and ":" not in line.split()[0]:
            start, end = (int(a, 16) for a in line.split()[0].split("-"))
            found = start <= address < end
        elif found and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not cpu_decoding.huge_pages_available(), reason="this system offers no transparent huge pages")
def test_on_a_system_that_offers_them_the_copy_is_backed_by_huge_pages():
    t = cpu_decoding.on_huge_pages(torch.randn(1024, 1024))
    assert t.data_ptr() % HUGE_PAGE == 0 and _huge_page_kb(t.data_ptr()) >= 2048


def test_half_precision_weights_are_left_alone():
    model = our_model_from_hf(make_tiny_hf_model(seed=24)).half()
    layout = _layout(model)
    prepare_for_cpu_decoding(model, halves=True, kernel=False)
    assert _layout(model) == layout
    assert not any(isinstance(m, DecodingLinear) for m in model.modules())


@pytest.mark.parametrize("rows", [1, 2, 8, MAX_BMM_TOKENS + 1])
@pytest.mark.parametrize("bias", [True, False])
def test_halves_linear_equals_the_float64_product(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(48, 34, bias=bias)
    prepared = prepare_for_cpu_decoding(nn.Sequential(linear), halves=True, kernel=False)[0]
    assert isinstance(prepared, DecodingLinear)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        expected = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
        assert (prepared(x).double() - expected).abs().max().item() < 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_readout_without_parameters_still_runs():
    # After torch's dynamic quantization the readout module holds no `nn.Parameter`; the model moves no input
    # for it (it used to raise StopIteration)
    quantization = pytest.importorskip("torch.ao.quantization")
    if "fbgemm" not in torch.backends.quantized.supported_engines and \
            "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this PyTorch build has no CPU quantization engine")
    model = our_model_from_hf(make_tiny_hf_model(seed=25))
    model[-1] = quantization.quantize_dynamic(model[-1], {nn.Linear}, dtype=torch.qint8)
    assert next(model[-1].parameters(), None) is None
    out = generate(model, random_ids(96, batch=1, length=5), 3, eos_token_id=None)
    assert out.shape == (1, 8)


# ## The kernel

@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 13, 20, MAX_KERNEL_ROWS])
# Shapes with a tail of rows (13, 36, 1004: not a multiple of 8), an odd number of chunks of 8 inputs (40),
# long rows (3072) and enough groups of rows for both threads and for prefetching ahead (1004)
@pytest.mark.parametrize("n_out,n_in", [(8, 8), (13, 48), (36, 40), (40, 24), (96, 3072), (1004, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_equals_the_float64_product(rows, n_out, n_in, bias):
    gemv = kernel_or_skip()
    torch.manual_seed(rows * 1000 + n_out)
    x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in) / n_in ** 0.5
    b = torch.randn(n_out) if bias else None
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())
    # fp32 sums of up to 3072 products of size ~1/sqrt(n): errors of a few 1e-7 (F.linear's are the same size)
    assert (gemv(x, w, b).double() - expected).abs().max().item() < 1e-5
    assert (F.linear(x, w, b).double() - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("activation,approximate", [("gelu", "none"), ("gelu_tanh", "tanh")])
def test_the_kernels_gelu_equals_the_float64_gelu(activation, approximate):
    gemv = kernel_or_skip()
    # Outputs set through the bias alone (x and the weight are zero): a fine grid over [-20, 20], 400,001 numbers, so
    # the last row is one of the tail rows the kernel treats one at a time
    values = torch.linspace(-20, 20, 400_001)
    got = gemv(torch.zeros(1, 8), torch.zeros(len(values), 8), values, ACTIVATIONS[activation])[0]
    expected = F.gelu(values.double(), approximate=approximate)
    # PyTorch's own fp32 GELU is within 1.3e-6 of float64 here; the kernel's within 6e-7
    assert (got.double() - expected).abs().max().item() < 1e-6
    # And after a product, for several rows and a tail of rows
    torch.manual_seed(3)
    x, w, b = torch.randn(5, 64), torch.randn(37, 64) / 4, torch.randn(37)
    expected = F.gelu(F.linear(x.double(), w.double(), b.double()), approximate=approximate)
    assert (gemv(x, w, b, ACTIVATIONS[activation]).double() - expected).abs().max().item() < 1e-5


def test_the_kernels_row_limit_is_the_one_python_uses():
    assert f"constexpr int64_t kMaxRows = {MAX_KERNEL_ROWS};" in cpu_gemv.GEMV_SOURCE


@pytest.mark.parametrize("x,w,b", [
    (torch.randn(MAX_KERNEL_ROWS + 1, 16), torch.randn(8, 16), None),  # more rows than the kernel takes
    (torch.randn(1, 12), torch.randn(8, 12), None),          # inputs not a multiple of 8
    (torch.randn(1, 16).half(), torch.randn(8, 16).half(), None),
    (torch.randn(1, 16), torch.randn(16, 8).t(), None),      # a weight that is not row-major
    (torch.randn(1, 16), torch.randn(8, 16), torch.randn(7)),
    (torch.randn(1, 16), torch.randn(8, 24), None),
])
def test_kernel_refuses_what_it_cannot_compute(x, w, b):
    gemv = kernel_or_skip()
    with pytest.raises(RuntimeError, match="gemv:"):
        gemv(x, w, b)


def test_kernel_refuses_an_unknown_activation():
    gemv = kernel_or_skip()
    with pytest.raises(RuntimeError, match="gemv: activation"):
        gemv(torch.randn(1, 8), torch.randn(8, 8), None, 3)


def test_layers_use_the_kernel_for_few_rows_without_gradients_only():
    kernel_or_skip()
    torch.manual_seed(0)
    layer = prepare_for_cpu_decoding(nn.Sequential(nn.Linear(64, 32)), halves=True, kernel=True)[0]
    calls = []
    layer._gemv = lambda *args, real=layer._gemv: calls.append(args[0].shape[0]) or real(*args)
    with torch.no_grad():
        for rows in (1, 5, MAX_KERNEL_ROWS, MAX_KERNEL_ROWS + 1):
            layer(torch.randn(rows, 64))
        # No rows at all: the same empty result as nn.Linear's, without the kernel
        assert layer(torch.randn(0, 64)).shape == (0, 32)
    assert calls == [1, 5, MAX_KERNEL_ROWS]
    # With gradients the layer runs differentiable ops, and gradients reach the weight
    layer(torch.randn(1, 64)).sum().backward()
    assert calls == [1, 5, MAX_KERNEL_ROWS] and layer.weight.grad is not None


def test_without_the_kernel_preparing_says_why_or_raises_when_asked_for_it(monkeypatch, capsys):
    monkeypatch.setattr(cpu_gemv, "gemv_or_reason", lambda: (None, "there is no C++ compiler (test)"))
    # As for a large model, where the kernel is wanted by default
    monkeypatch.setattr(cpu_decoding, "BUILD_KERNEL_BYTES", 0)
    model = our_model_from_hf(make_tiny_hf_model(seed=27))
    ids = random_ids(96, batch=1, length=5)
    expected = generate(model, ids, 4, eos_token_id=None)
    with pytest.raises(KernelUnavailable, match="no C\\+\\+ compiler"):
        prepare_for_cpu_decoding(model, kernel=True)
    prepare_for_cpu_decoding(model, halves=True)
    assert "without the CPU matrix-vector kernel, since there is no C++ compiler" in capsys.readouterr().err
    assert torch.equal(generate(model, ids, 4, eos_token_id=None), expected)


# ## The attention of one new token

def _angles64(position, d_rotary, base=10000.0):
    # The angles of RoPE in float64, position * base^(-2i/d) for i < d/2
    return position[..., None].double() * base ** (-2 * torch.arange(d_rotary // 2, dtype=torch.float64) / d_rotary)


def _rotate64(x, position, d_rotary):
    # RoPE in float64 from its formula: features i and i + d/2 rotated together
    half, angle = d_rotary // 2, _angles64(position, d_rotary)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:d_rotary]
    return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin(), x[..., d_rotary:]), -1)


def _tables(length, d_rotary):
    # The op's tables `[L, d]` (each angle twice, as `RotaryEmbedding` lays them out), from float64 angles
    angles = _angles64(torch.arange(length), d_rotary)
    angles = torch.cat((angles, angles), -1)
    return angles.cos().float(), angles.sin().float()


# `slot` is where the new token goes, so there are `slot + 1` keys; `d_rotary` 0 (no rotary) to D (all of it)
@pytest.mark.parametrize("batch,heads,slot,d_head,d_rotary", [
    (1, 12, 0, 64, 16), (1, 12, 6, 64, 16), (3, 4, 8, 8, 2), (8, 12, 191, 64, 16), (2, 3, 32, 96, 24),
    (2, 2, 16, 256, 64), (2, 2, 5, 16, 0), (1, 2, 9, 32, 32)])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_step_equals_the_float64_attention(batch, heads, slot, d_head, d_rotary, padded):
    kernel_or_skip()
    step = cpu_gemv.attention_step_kernel()
    torch.manual_seed(batch * 100 + slot)
    qkv = 3 * torch.randn(batch, 1, heads * 3 * d_head)
    # The cache holds earlier keys and values in slots before `slot`, and room after it
    k_cache, v_cache = torch.randn(2, batch, heads, slot + 4, d_head).unbind(0)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    # Each row's first real slot: 0, or anywhere up to `slot`, or after it (a row still on its padding)
    first = torch.randint(0, slot + 1, (batch,)) if padded else None
    if padded and batch > 1:
        first[-1] = slot + 1
    cos, sin = _tables(slot + 3, d_rotary)
    out = step(qkv, k_cache, v_cache, slot, cos, sin, first)

    # Float64: each row's position, rotated query and key, the cache with the new slot, attention over its keys
    starts = torch.zeros(batch, dtype=torch.long) if first is None else first.clamp(max=slot)
    position = (slot - starts).double()
    q, k, v = qkv.double().view(batch, heads, 3, d_head).unbind(2)
    q, k = _rotate64(q, position, d_rotary), _rotate64(k, position, d_rotary)
    keys, values = before_k[:, :, :slot + 1].double().clone(), before_v[:, :, :slot + 1].double().clone()
    keys[:, :, slot], values[:, :, slot] = k, v
    mask = (torch.arange(slot + 1)[None, :] >= starts[:, None])[:, None, None, :]
    expected = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask)
    assert out.shape == (batch, 1, heads * d_head)
    assert (out.double() - expected.reshape(batch, 1, -1)).abs().max().item() < 1e-5
    # The new key and value are in the cache, and nothing else there changed
    assert (k_cache[:, :, slot].double() - k).abs().max().item() < 1e-5
    assert torch.equal(v_cache[:, :, slot], v.float())
    others = torch.arange(slot + 4) != slot
    assert torch.equal(k_cache[:, :, others], before_k[:, :, others])
    assert torch.equal(v_cache[:, :, others], before_v[:, :, others])


def _step_args(batch=1, heads=2, t_max=5, d_head=8, d_rotary=4):
    qkv = torch.randn(batch, 1, 3 * heads * d_head)
    cos, sin = _tables(t_max, d_rotary)
    return [qkv, torch.zeros(batch, heads, t_max, d_head), torch.zeros(batch, heads, t_max, d_head), 2, cos, sin, None]


def _changed(args, **changes):
    names = ["qkv", "k_cache", "v_cache", "slot", "cos", "sin", "first"]
    return [changes.get(name, arg) for name, arg in zip(names, args)]


@pytest.mark.parametrize("change", [
    lambda a: _changed(a, qkv=a[0][:, :, :-1]),                          # qkv not 3 H D wide
    lambda a: _changed(a, qkv=torch.randn(1, 2, 48)),                    # two new tokens
    lambda a: _changed(a, qkv=torch.randn(1, 1, 96)[:, :, ::2]),         # not contiguous
    lambda a: _changed(a, qkv=a[0].half()),
    lambda a: _changed(a, slot=5),                                        # past the cache's end
    lambda a: _changed(a, slot=-1),
    lambda a: _changed(a, v_cache=torch.zeros(1, 2, 6, 8)),              # caches differ
    lambda a: _changed(a, cos=a[4][:2], sin=a[5][:2]),                   # tables shorter than the slot
    lambda a: _changed(a, cos=a[4][:, :3], sin=a[5][:, :3]),             # d odd
    lambda a: _changed(a, first=torch.tensor([0, 0])),                   # one per row
    lambda a: _changed(a, first=torch.tensor([-1])),
    lambda a: _step_args(d_head=12, d_rotary=4),                         # D not a multiple of 8
])
def test_attention_step_refuses_what_it_cannot_compute(change):
    kernel_or_skip()
    with pytest.raises(RuntimeError, match="attention_step:"):
        cpu_gemv.attention_step_kernel()(*change(_step_args()))


def _layer_args(C=16, F=32, B=1, H=2):
    weights = [torch.randn(3 * C, C), torch.randn(C, C), torch.randn(F, C), torch.randn(C, F)]
    biases = [torch.randn(w.shape[0]) for w in weights]
    norms = [torch.ones(C), torch.zeros(C), torch.ones(C), torch.zeros(C)]
    cos, sin = _tables(8, 4)
    cache = [torch.zeros(B, H, 6, C // H) for _ in range(2)]
    return {"x": torch.randn(B, 1, C), "norms": norms, "weights": weights, "biases": biases, "eps": 1e-5,
            "residual": 1, "activation": 1, "k_cache": cache[0], "v_cache": cache[1], "slot": 2, "cos": cos,
            "sin": sin, "first": None}


@pytest.mark.parametrize("change", [
    lambda a: {**a, "x": torch.randn(1, 1, 24)},                               # x not C wide
    lambda a: {**a, "x": torch.randn(MAX_KERNEL_ROWS + 1, 1, 16)},             # more rows than the kernel takes
    lambda a: {**a, "weights": a["weights"][:3]},                              # a weight missing
    lambda a: {**a, "weights": [a["weights"][0].t(), *a["weights"][1:]]},      # a weight of the wrong shape
    lambda a: {**a, "biases": [torch.randn(5), *a["biases"][1:]]},             # a bias of the wrong size
    lambda a: {**a, "norms": [n.half() for n in a["norms"]]},
    lambda a: {**a, "residual": 3},
    lambda a: {**a, "activation": -1},
    lambda a: {**a, "slot": 6},                                                 # past the cache's end
])
def test_layer_step_refuses_what_it_cannot_compute(change):
    kernel_or_skip()
    assert torch.ops.neox_cpu.layer_step(**_layer_args()).shape == (1, 1, 16)  # the unchanged call runs
    with pytest.raises(RuntimeError, match="layer_step:"):
        torch.ops.neox_cpu.layer_step(**change(_layer_args()))


def test_prepared_layers_use_the_kernel_for_one_new_token_without_gradients_only():
    kernel_or_skip()
    model = prepare_for_cpu_decoding(our_model_from_hf(make_tiny_hf_model(seed=28)), kernel=True)
    layer = model[1]
    assert type(layer) is DecodingLayer and type(layer.attention) is DecodingAttention
    calls = []
    real_layer, real_attention = layer._layer_step, layer.attention._attention_step
    layer._layer_step = lambda x, *args: calls.append(("layer", x.shape[1])) or real_layer(x, *args)
    layer.attention._attention_step = lambda qkv, *args: calls.append(("attention", qkv.shape[1])) or \
        real_attention(qkv, *args)
    ids = random_ids(96, batch=2, length=6)
    with torch.no_grad():
        cache = KVCache(8)
        model(ids, cache)                  # the prompt: the modules, PyTorch's attention
        model(ids[:, :1], cache)           # one new token: the whole layer in the kernel
        assert calls == [("layer", 1)]
        layer._layer_step = None           # without it, the modules, attention in the kernel
        model(ids[:, :1], cache)
        assert calls == [("layer", 1), ("attention", 1)]
    model(ids[:, :1], KVCache(2)).sum().backward()  # with gradients: the modules, PyTorch's attention
    assert len(calls) == 2
    # Without the kernel, the plain modules again
    prepare_for_cpu_decoding(model, kernel=False)
    assert type(model[1]) is TransformerLayer and type(model[1].attention) is Attention
    assert "_attention_step" not in vars(model[1].attention) and "_layer_step" not in vars(model[1])


# `layer_step` computes each residual form as `TransformerLayer` does: against the plain layer in float64, with
# layer norms that are not the identity, batch 3, one row with left padding, over several steps
@pytest.mark.parametrize("parallel_residual,tied_layernorms,activation", [
    (True, False, "gelu"), (True, True, "gelu_tanh"), (False, False, "gelu")])
def test_layer_step_equals_the_float64_layer(parallel_residual, tied_layernorms, activation):
    kernel_or_skip()
    config = NeoXConfig(n_layers=1, d_model=64, n_heads=4, n_vocab=96, n_ctx=64, rotary_pct=0.25,
                        parallel_residual=parallel_residual, tied_layernorms=tied_layernorms, activation=activation)
    torch.manual_seed(7)
    plain = TransformerLayer(config, 0).eval()
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name and name.endswith("weight")
                    else 0.1 * torch.randn_like(p))
    reference = copy.deepcopy(plain).double()
    prepared = prepare_for_cpu_decoding(nn.Sequential(plain), kernel=True)[0]
    assert type(prepared) is DecodingLayer
    padding = torch.tensor([0, 3, 1])
    caches = [KVCache(12, padding=padding) for _ in range(2)]
    with torch.no_grad():
        prompt = torch.randn(3, 5, 64)
        for model, cache, dtype in ((prepared, caches[0], torch.float32), (reference, caches[1], torch.float64)):
            model(prompt.to(dtype), cache)
            cache.advance(5)
        for _ in range(4):
            x = torch.randn(3, 1, 64)
            got, expected = prepared(x, caches[0]), reference(x.double(), caches[1])
            for cache in caches:
                cache.advance(1)
            assert (got.double() - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_prepared_model_decodes_uneven_prompts_as_the_plain_model(parallel_residual):
    kernel_or_skip()
    plain = our_model_from_hf(make_tiny_hf_model(seed=29, use_parallel_residual=parallel_residual))
    prepared = prepare_for_cpu_decoding(copy.deepcopy(plain), kernel=True)
    ids, padding = left_pad([[5, 6, 7], list(range(10, 21)), [30, 31, 32, 33, 34, 35, 36]], pad_id=1)
    steps = {}
    with torch.no_grad():
        for name, model in (("plain", plain), ("prepared", prepared)):
            cache = KVCache(ids.shape[1] + 4, padding=padding)
            model(ids, cache)
            steps[name] = torch.cat([model(torch.full((3, 1), t), cache) for t in (40, 41, 42, 43)], dim=1)
    assert (steps["prepared"] - steps["plain"]).abs().max().item() < 1e-5
    assert torch.equal(generate(prepared, ids, 12, eos_token_id=None, padding=padding),
                       generate(plain, ids, 12, eos_token_id=None, padding=padding))


def test_a_prepared_model_pickles_and_finds_the_kernel_again(tmp_path):
    kernel_or_skip()
    model = prepare_for_cpu_decoding(our_model_from_hf(make_tiny_hf_model(seed=30)), kernel=True)
    ids = random_ids(96, batch=2, length=6)
    expected = generate(model, ids, 8, eos_token_id=None)
    torch.save(model, tmp_path / "model.pt")
    for copied in (torch.load(tmp_path / "model.pt", weights_only=False), copy.deepcopy(model)):
        assert isinstance(copied[1].attention, DecodingAttention) and copied[1].attention._attention_step is not None
        assert isinstance(copied[1], DecodingLayer) and copied[1]._layer_step is not None
        assert copied[1].mlp.dense_h_to_4h._gemv is not None
        assert torch.equal(generate(copied, ids, 8, eos_token_id=None), expected)


def test_a_prepared_model_moved_off_the_cpu_no_longer_calls_the_kernels():
    kernel_or_skip()
    model = prepare_for_cpu_decoding(our_model_from_hf(make_tiny_hf_model(seed=31)), kernel=True).to("meta")
    with torch.no_grad():
        cache = KVCache(4)
        model(random_ids(96, batch=2, length=3).to("meta"), cache)
        # One new token: on a GPU this is where the kernels would have been called with the wrong tensors
        assert model(random_ids(96, batch=2, length=1).to("meta"), cache).shape == (2, 1, 96)
