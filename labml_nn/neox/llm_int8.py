r"""
# LLM.int8: 8-bit matrix multiplication that keeps the outliers

GPT-NeoX-20B's weights are 41.1 GB in fp16, more than one 40 GB GPU holds. 97% of them sit in the four linear
layers of each transformer layer (`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`); stored as 8-bit
integers, the model is 21.2 GB ([memory.py](memory.py)). [LLM.int8()](https://arxiv.org/abs/2208.07339)
(Dettmers et al., 2022) does it with almost no loss: LAMBADA accuracy 0.7204 in fp16, 0.7155 in int8 (the
annotated implementation on nn.labml.ai). Embedding, readout, norms and biases stay in fp16.

## Absmax quantization

To store a vector $v$ in int8, divide it by the size of one step, $s = \max_j |v_j| / 127$, and round:

$$v^q = \operatorname{round}(v / s) \in \{-127, \dots, 127\}, \qquad v \approx s\, v^q$$

The error is at most $s/2$: small *relative to the largest entry*. One large entry wipes out the small ones.

## Vector-wise quantization

A linear layer computes $Y = X W^\top + b$, where $X$ is `[N, K]` (the $N = B \cdot T$ tokens, each with $K$
input features) and $W$ is `[O, K]`, stored as PyTorch stores it: one row per output feature. Giving each row
of $X$ its own step $s_{x,i}$ and each row of $W$ its own step $s_{w,o}$, every product in

$$Y_{io} = \sum_k X_{ik} W_{ok} \approx \sum_k s_{x,i} X^q_{ik}\, s_{w,o} W^q_{ok}
         = s_{x,i}\, s_{w,o} \sum_k X^q_{ik} W^q_{ok}$$

shares the two steps, so they come out of the sum. The sum is a matrix multiplication of two int8 matrices,
accumulated in int32 (it is exact: $|X^q_{ik} W^q_{ok}| \le 127^2$, and $K \cdot 127^2 < 2^{31}$ for any
$K < 133{,}000$). Dequantizing is one element-wise product with the outer product of the steps:

$$Y \approx \big(s_x\, s_w^\top\big) \odot \big(X^q\, W^{q\top}\big) + b$$

## Outlier features and the mixed-precision decomposition

This works for small models and fails for large ones. From about 6.7B parameters on, a handful of hidden
dimensions carry values up to 20 times larger than the rest, in nearly every token and layer
(`samples/llm_int8_outliers.py` shows them). One such value makes its row's step $s_{x,i}$ so large that the
row's ordinary features round to a few levels, or to zero.

LLM.int8 takes those dimensions out. With a threshold $\alpha$ (6.0), the outlier dimensions of this input are

$$O = \{k : \max_i |X_{ik}| \ge \alpha\}$$

(a few, out of thousands), and the product is split along $k$:

$$Y \approx X_{:,O}\, \hat W_{:,O}^\top
     + \big(s_x\, s_w^\top\big) \odot \big(X^q_{:,\bar O}\, W^{q\top}_{:,\bar O}\big) + b$$

The first term is a floating-point product over the few outlier columns; the second the int8 product over the
rest, with steps taken without the outliers. $\hat W = s_w \odot W^q$ are the dequantized weights: we keep only
int8 weights (the outlier columns are known only once the input arrives; bitsandbytes does the same).

## Two implementations

* `Int8Linear`, below: the formulas above in plain PyTorch, readable, for CPU and GPU.
* `bitsandbytes.nn.Linear8bitLt`, the authors' library, with fused kernels on CUDA. It is the default where it
  works; where it does not, `make_llm_int8_linear` says so and uses `Int8Linear`.

They store the same int8 weights and steps and agree to $10^{-4}$ (`tests/test_llm_int8.py`), but for one
detail: we leave a whole outlier column out of the int8 part, as $X_{:,\bar O}$ says; bitsandbytes zeroes only
its entries above the threshold (`benchmarks/RESULTS.md` compares the two). Both are for inference: rounding has
no useful gradient. This file needs `bitsandbytes` only when that implementation is asked for.
"""

import warnings
from functools import lru_cache
from typing import Optional, Tuple

import torch
from torch import nn

IMPLEMENTATIONS = ("bitsandbytes", "reference")

# The largest int8 level used; -128 is left out so that the range is symmetric
Q_MAX = 127


def absmax_quantize(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    ## Absmax quantization of each row

    For `x` `[R, K]`, the step of each row $s_r = \max_k |x_{rk}| / 127$ (fp32, `[R]`) and
    $x^q = \operatorname{round}(x / s)$ (int8, `[R, K]`). A row of zeros gets a tiny step and stays zero.
    The arithmetic is in fp32 whatever the dtype of `x`.
    """
    x = x.float()
    absmax = x.abs().amax(dim=-1).clamp(min=torch.finfo(torch.float32).tiny)
    # $x \cdot (127 / \max_k |x_{rk}|)$, in the order bitsandbytes computes it, so that both round alike.
    # `torch.round` rounds halves to even.
    x_q = torch.round(x * (Q_MAX / absmax)[:, None]).to(torch.int8)
    return x_q, absmax / Q_MAX


# ## Int8 matrix multiplication with int32 accumulation
#
# `torch._int_mm` multiplies two int8 matrices and accumulates in int32. On CPU it takes any shape (from
# torch 2.6; earlier versions could overflow without AVX-512 VNNI). On CUDA it needs more than 16 rows and
# both other sizes multiples of 8, which single-token decoding (one row) does not meet.
_CPU_INT_MM = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6)

# An exact fallback for the other cases. fp32 has a 24-bit significand, so it represents every integer up to
# $2^{24}$ exactly. A sum of 1,024 products of int8 values is at most $1024 \cdot 127^2 < 2^{24}$, so an fp32
# matrix multiplication over 1,024 columns at a time makes no rounding error, in any order of summation (also
# with TF32, whose 10-bit significand holds an int8 value exactly). The chunks' sums are added in int32.
_EXACT_FP32_CHUNK = 1024


def int8_matmul(a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
    r"""
    $A^q B^{q\top}$ for int8 `a_q` `[N, K]` and `b_q` `[O, K]`, accumulated exactly in int32: `[N, O]`.
    """
    n, k = a_q.shape
    o = b_q.shape[0]
    if (a_q.device.type == "cpu" and _CPU_INT_MM) or (a_q.device.type == "cuda" and n > 16 and
                                                       k % 8 == 0 and o % 8 == 0):
        return torch._int_mm(a_q, b_q.t())
    return int8_matmul_exact_fp32(a_q, b_q)


def int8_matmul_exact_fp32(a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
    """The same product on any device, through fp32 matrix multiplications over 1,024 columns at a time."""
    n, k = a_q.shape
    o = b_q.shape[0]
    out = torch.zeros(n, o, dtype=torch.int32, device=a_q.device)
    for start in range(0, k, _EXACT_FP32_CHUNK):
        a = a_q[:, start:start + _EXACT_FP32_CHUNK].float()
        b = b_q[:, start:start + _EXACT_FP32_CHUNK].float()
        out += (a @ b.t()).round().to(torch.int32)
    return out


class Int8Linear(nn.Module):
    r"""
    ## The reference int8 linear layer

    It stores what the formulas need and nothing more:

    * `weight`: $W^q$, int8 `[O, K]` (a frozen `Parameter`, so that code asking a module for its parameters,
      such as the model's device lookup, finds it; `.half()` and `.to(dtype)` leave integer tensors alone);
    * `weight_step`: $s_w$, fp32 `[O]`, one step per output feature;
    * `bias`: $b$, in the layer's float dtype, as it was.

    That is $K + 4$ bytes per output feature plus the bias, against $2K$ in fp16: a little over half.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, threshold: float = 6.0,
                 dtype: torch.dtype = torch.float16, device: Optional[torch.device] = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = threshold  # alpha, the outlier threshold; 0 turns the decomposition off (plain int8)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.register_buffer("weight_step", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "Int8Linear":
        """Quantize an `nn.Linear`'s weight row by row ($W^q$, $s_w$), on the device it is on; keep its bias."""
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, threshold=threshold,
                    dtype=weight.dtype, device=torch.device("meta"))
        w_q, w_step = absmax_quantize(weight)
        layer.weight = nn.Parameter(w_q, requires_grad=False)
        layer.weight_step = w_step
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    # The formula, step by step. `x` is `[..., K]` (`[B, T, C]` in the model); its tokens are flattened to $X$,
    # `[N, K]`.
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)

        # The outlier columns $O$: any token's $|X_{ik}| \ge \alpha$. `[K]` booleans
        if self.threshold > 0:
            is_outlier = (x.abs() >= self.threshold).any(dim=0)
        else:
            is_outlier = torch.zeros(self.in_features, dtype=torch.bool, device=x.device)

        # $X_{:,\bar O}$: the outlier columns set to zero, so that they neither set the steps $s_{x,i}$ nor
        # enter the int8 product (a zero column adds nothing to $X^q W^{q\top}$)
        x_regular = x.masked_fill(is_outlier, 0)
        x_q, x_step = absmax_quantize(x_regular)

        # $X^q_{:,\bar O} W^{q\top}_{:,\bar O}$ in int32, `[N, O]`, then
        # $\big(s_x s_w^\top\big) \odot \dots$ in fp32
        y = int8_matmul(x_q, self.weight).float() * (x_step[:, None] * self.weight_step[None, :])

        # $X_{:,O} \hat W_{:,O}^\top$ in the input's dtype, with $\hat W_{:,O} = s_w \odot W^q_{:,O}$
        outliers = is_outlier.nonzero().squeeze(1)
        if outliers.numel() > 0:
            w_hat = (self.weight[:, outliers].float() * self.weight_step[:, None]).to(x.dtype)
            y = y + (x[:, outliers] @ w_hat.t()).float()

        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, threshold={self.threshold}")


# ## The bitsandbytes implementation
#
# `Linear8bitLt` with `has_fp16_weights=False` keeps int8 weights (an `Int8Params`) and their steps (`SCB`, each
# row's absmax, $127\, s_w$). We quantize the weight where it is with bitsandbytes' `int8_vectorwise_quant`.
#
# On CPU it does the int8 product **only in eval mode** (in train mode it dequantizes). It rounds its inputs to
# fp16 first (harmless: fp16 keeps 11 bits, int8 8) and warns at every call in fp32; silencing that is the
# caller's choice (our commands do, `cli.quiet_bitsandbytes`).
def _bitsandbytes_linear(linear: nn.Linear, threshold: float) -> nn.Module:
    import bitsandbytes as bnb

    weight = linear.weight.detach()
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=threshold, device="meta")
    w_q, absmax, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
    layer.weight = bnb.nn.Int8Params(w_q, requires_grad=False, has_fp16_weights=False, CB=w_q, SCB=absmax)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.eval()


@lru_cache(maxsize=None)
def bitsandbytes_problem(device_type: str) -> Optional[str]:
    r"""
    Why bitsandbytes cannot run LLM.int8 on this kind of device, or `None` if it can. We import it and
    multiply a small matrix with outliers; any failure (not installed, no binary for this platform or CUDA
    version, no kernels for this device) is reported, not raised. The answer is remembered per device type.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ModuleNotFoundError:
        return 'bitsandbytes is not installed (the int8 extra: pip install -e ".[int8]")'
    except Exception as e:  # a broken native library
        return (f"bitsandbytes could not be imported ({type(e).__name__}: {e}); reinstall the int8 extra, "
                f"pip install -e \".[int8]\"")
    try:
        linear = nn.Linear(32, 32).to(device_type)
        x = torch.randn(20, 32, device=device_type)
        x[:, 3] = 10.0
        with torch.no_grad():
            y = _bitsandbytes_linear(linear, 6.0)(x)
            expected = linear(x)
        if not torch.allclose(y.float(), expected, rtol=0.1, atol=0.1):
            return "bitsandbytes gave a wrong result for a test matrix on this device"
    except Exception as e:
        return f"bitsandbytes failed on {device_type} ({type(e).__name__}: {e})"
    return None


def make_llm_int8_linear(linear: nn.Linear, threshold: float = 6.0,
                         implementation: str = "bitsandbytes") -> nn.Module:
    r"""
    ## Converting one linear layer

    Returns an int8 layer computing what `linear` computes, on `linear`'s device, in eval mode, with its bias.
    `implementation` is `"bitsandbytes"` (falls back to `"reference"` with a warning where bitsandbytes does not
    work) or `"reference"` (`Int8Linear`). `threshold` is $\alpha$; 0 turns off the decomposition.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    if implementation == "bitsandbytes":
        problem = bitsandbytes_problem(linear.weight.device.type)
        if problem is None:
            return _bitsandbytes_linear(linear, threshold)
        warnings.warn(f"LLM.int8: {problem}. Using the plain PyTorch implementation (`Int8Linear`) instead; "
                      f"pass implementation='reference' to choose it without this warning.", stacklevel=2)
    return Int8Linear.from_linear(linear, threshold).eval()


# The four linear layers of a `TransformerLayer`, by their names in the checkpoint
LINEAR_LAYERS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def make_llm_int8_layer(layer: nn.Module, threshold: float = 6.0, implementation: str = "bitsandbytes") -> nn.Module:
    r"""
    ## Converting a transformer layer

    Replaces the four linear layers of `layer` (a `TransformerLayer` from `model.py`) with int8 layers, in
    place, and returns it. Each fp weight is freed as soon as its int8 copy exists, so converting a layer on the
    GPU right after loading it needs room for one extra int8 weight, not a second layer.
    """
    for name in LINEAR_LAYERS:
        parent_name, child_name = name.split(".")
        parent = getattr(layer, parent_name)
        linear = getattr(parent, child_name)
        # (bitsandbytes' `Linear8bitLt` is an `nn.Linear` too, with int8 weights)
        if not isinstance(linear, nn.Linear) or linear.weight.dtype == torch.int8:
            raise TypeError(f"{name} of {type(layer).__name__} is a {type(linear).__name__}, not an nn.Linear; "
                            f"is this layer converted already?")
        setattr(parent, child_name, make_llm_int8_linear(linear, threshold, implementation))
        del linear
    return layer


def weight_bytes(module: nn.Module) -> int:
    r"""
    ## Memory of the weights

    Bytes of all parameters and buffers of `module`, including the steps bitsandbytes keeps outside them
    (`state.SCB`), each tensor counted once.
    """
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    for m in module.modules():
        state = getattr(m, "state", None)
        scb = getattr(state, "SCB", None) if state is not None else None
        if scb is None:
            scb = getattr(getattr(m, "weight", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            tensors[id(scb)] = scb
    return sum(t.numel() * t.element_size() for t in tensors.values())
