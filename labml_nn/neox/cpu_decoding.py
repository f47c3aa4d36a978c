r"""
# Preparing a model for decoding on a CPU

`model.py` is written to be read and copied: its linear layers are plain `nn.Linear`s and nothing in it knows
which machine it runs on. This page is the one step a caller takes, after loading and before generating, to make
decoding on a CPU fast:

```python
model = prepare_for_cpu_decoding(model)
```

It changes **how** the fp32 weights are multiplied and where they sit in memory, never **what** is computed: the
same parameter names, the same shapes `[out, in]`, the same values (the state dict holds the same numbers, so a
prepared model can still be saved, fine-tuned or evaluated), and greedy tokens identical to the unprepared model's.
What changes: the linear layers multiply through our kernel (`cpu_gemv.py`), the FFN's GELU is applied by the
kernel as it writes the first product (`DecodingFFN`), attention for one new token is one call of the kernel
(`DecodingAttention`), a transformer layer whose parts all use the kernel is one call of it for one new token
(`DecodingLayer`), and the weights move onto huge pages (below). `generate` never does this by itself: a
function that silently changes how its caller's model runs is a side effect the caller cannot see.
`samples/generate.py` calls it when it runs on a CPU.

## Where a decoding step's time goes

Each decoding step multiplies one token's vector (or one per row of the batch) by every weight matrix of the
model. These are matrix-vector products: each weight is read once from memory and used for a handful of
multiply-adds, so a step can be no faster than reading all the weights, `weight bytes / read bandwidth`, the
*memory floor* that `benchmarks/generate.py` prints. On our 2-core test machine (AMD EPYC, AVX-512; random
Pythia-160M-shaped weights, 49 products of 504 MB per step, `benchmarks/RESULTS.md`) the products are ~86% of a
step with PyTorch's own products, and what limits them is not the arithmetic but how MKL, PyTorch's CPU BLAS, walks
the memory:

| the 49 products of one step, read speed (a quiet moment) | batch 1 | batch 8 |
|---|---|---|
| `nn.Linear` as loaded, weights `[out, in]` row by row, 2 threads | 13.5 GB/s | 8.8 GB/s |
| the same weights stored column by column, 2 threads | 18.5 GB/s | 8.0 GB/s |
| as loaded, the two halves of the rows as one `torch.bmm`, 2 threads | 24.6 GB/s | 12.8 GB/s |
| **our kernel** (`cpu_gemv.py`), as loaded, 2 threads | **27.7 GB/s** | **20.4 GB/s** |
| `nn.Linear` as loaded, 1 thread | 13.8 GB/s | 7.1 GB/s |
| column by column, 1 thread | 18.5 GB/s | 7.0 GB/s |
| **our kernel**, as loaded, 1 thread | **19.3 GB/s** | **12.0 GB/s** |
| (reading memory with `sum()`, the floor) | 27-33 GB/s (2 threads), 21-22 (1) | |

(The kernel's rows were measured on later days than the others; in its first run the two halves read 20.8 and
11.7 GB/s at two threads and column-major MKL 18.5 at one: the machine varies by 10-20% from hour to hour.)

MKL leaves two things on the table.

* **The second core.** MKL's fp32 matrix-vector product runs on one core whatever `torch.set_num_threads` says;
  at batch 1 the second core idles.
* **The layout.** `nn.Linear` computes $x W^\top$ with $W$ stored `[out, in]`, row after row, and MKL's
  matrix-vector product reads the transposed layout (each column of $W$ contiguous) about 1.35 times faster.

Our kernel (`cpu_gemv.py`, C++ compiled on the user's machine) takes both: it shares each weight's rows among the
threads, reads them as they were loaded, and at batch 8 reads each weight from memory once for all eight rows of
input, in tiles that keep the cores' multiply-add units busier than MKL's products of a few rows do on this AMD
machine (77-109 against 48-71 GFLOP/s at 16-32 rows). `prepare_for_cpu_decoding` uses it for up to
`MAX_KERNEL_ROWS` rows of input. Where it cannot be built (no C++ compiler, not Linux on x86-64), two ways around
MKL's limits built from PyTorch's own ops take its place:

* **The halves, with two threads or more.** `torch.bmm` over a batch of two matrices gives each core one of
  them. So we multiply by the two halves of each weight's rows, $W = [W_a; W_b]$, as one `bmm` of
  $x$ `[2, N, in]` (the same $x$ twice, an expanded view, no copy) by $[W_a^\top, W_b^\top]$ `[2, in, out/2]`,
  and lay the two results side by side: $x W^\top = [x W_a^\top, x W_b^\top]$. The halves are views of the
  weight as it was loaded (rows $0 \dots out/2 - 1$ and the rest), so nothing is copied.
* **Column by column, on one thread.** With one thread `bmm` does the halves one after the other, no faster than
  `nn.Linear`; what helps then is the layout, so we store each fp32 weight column by column: `W.t()` is
  contiguous, `W` keeps its shape and values, and `F.linear` computes the same thing.

With many tokens (the prompt) a matrix-matrix product is bound by arithmetic, not memory, and MKL's GEMM already
uses every core, so above `MAX_KERNEL_ROWS` (and `MAX_BMM_TOKENS`) rows a `DecodingLinear` calls `F.linear` on
its whole weight.

### Less around the products

Once the products read at memory speed, what is left of a step is everything around them. With the products
replaced by empty tensors, a batch-1 step of Pythia-160M took 2.3-2.6 ms on the test machine with the prepared
modules called one by one: some 100 small PyTorch ops a layer (the rotary embeddings alone 15, the views, the cache's
copies, the layer norms, the additions), module calls, and PyTorch's GELU, which inside a step costs 40-50 us a
layer because the weights streaming past have evicted its code (`cpu_gemv.py`). Against a 10-11 ms step at two
threads, that is a fifth of it. So the kernel does more of a step:

* `DecodingFFN`: the GELU is applied by the kernel as it writes the first product's outputs;
* `DecodingAttention`: everything between `query_key_value` and `dense` (rotary embeddings, writing the cache,
  attention) is one call;
* `DecodingLayer`: a whole layer is one call (`layer_step`), when all its parts are prepared.

What is left at batch 1 besides the products is Python's 0.36 ms a step, some 7-15 us a layer before the first layer
norm, and attention, 42-49 us a layer at two threads and 64-72 at one, bound by reading a cache that the weights
streaming past have pushed out of the caches (measured by timing the phases inside `layer_step`). In whole generations, same process, alternating:
the layer as one call gives 10% more tokens per second at batch 1 with two threads than the same modules called one
by one, and 2% with one. The three together, against the version before them (alternating processes, three rounds,
the same greedy tokens): batch 8 268-278 to 350-363 tokens/s (+30%), batch 1 with one thread +9-18% a round; batch
1 with two threads moved more with the machine than with the code (-18% to +20%).

### What did not hold up

* **oneDNN's linear** (`torch.ops.mkldnn._linear_pointwise` on a packed weight) reads 8.1 GB/s at batch 8 (vs 6.6
  for MKL on the usual layout) and the same ~19 GB/s as MKL at batch 1: behind `bmm` at both, and its packed weight
  is an opaque tensor that a state dict cannot hold, so it would break "same names, same values".
* **More than two pieces** (`bmm` over 4 or 8 slices of the rows) is no faster on two cores.
* **A compiled reduction**: `(W * x).sum(-1)` under `torch.compile`, which inductor turns into a vectorised
  OpenMP loop over the rows, reads 23.7 GB/s at batch 1 and 12.0 at batch 8, behind `bmm` and our kernel.
* **Other ready-made products.** numpy's (OpenBLAS, its own thread pool) reads 22-24 GB/s at batch 1 and 8 GB/s at
  batch 8, and its threads then compete with PyTorch's; MKL's matrix-matrix product with the input padded to two
  rows reads 23 GB/s at batch 1 and falls to 9.5 GB/s from 5 rows on.
* **Inside our kernel**, handing out rows to threads as they free up and AVX-512's wider registers were within
  noise; what did help (tiles of four weight rows by three input rows, prefetching by hand) is explained in
  `cpu_gemv.py`. Also within noise (0.98-1.04 times the tokens per second, paired rounds; `benchmarks/RESULTS.md`):
  one OpenMP region for a whole layer, with barriers in place of five fork-joins and the waiting thread prefetching
  its next weight; and, for attention, prefetching the cache or scoring one key row at a time.
* **fp16 and bf16 weights** are left alone: MKL's half-precision matrix-vector product is about 10 times slower on
  the transposed layout. On a GPU, cuBLAS reads both layouts at full speed, so GPU weights are left alone too.
* **A busy machine.** A product split over two cores waits for the slower of them. In whole generations with other
  jobs holding the cores (load average 5-8 on two cores), the halves lost to one-core column-major products with two
  threads (2.5 against 4.1 tokens/s) and tied with one thread (16.2 against 17.3). On a shared machine,
  `prepare_for_cpu_decoding(model, halves=False, kernel=False)` takes the one-thread choice, the column-major
  layout. (The kernel splits its work over the threads the same way; `torch.set_num_threads(1)` keeps it on one.)
* **torch's dynamic int8 quantization** decodes 2.6 times faster, but it changes the values; it is a different
  step (LLM.int8 has its own page), not a faster way to compute the same thing.

## Memory

A prepared model holds the memory it held before. The kernel and the halves read the weights as they are; what
is copied is copied one weight at a time, dropping the old storage (or, for a weight memory-mapped from a
checkpoint, unmapping it) before the next: the weights onto huge pages (below), and each weight stored
column by column (one thread without the kernel, or `halves=False, kernel=False`). So the extra memory while
preparing is the largest single weight (the readout, 154 MB in Pythia-160M fp32, 0.8 GB in the 20B model), not a
second copy of the model.
"""

import mmap
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from labml_nn.neox import cpu_gemv
from labml_nn.neox.cpu_gemv import ACTIVATIONS, MAX_KERNEL_ROWS, RESIDUALS, KernelUnavailable
from labml_nn.neox.model import FFN, Attention, KVCache, TransformerLayer

# Above this many rows (tokens times batch) a product is a matrix-matrix product that MKL's GEMM already spreads
# over every core; the halves only help the memory-bound products of decoding.
MAX_BMM_TOKENS = 16


# ### Huge pages
#
# A product reads its weight from memory in order, and the processor translates every address it reads through its
# page tables. With the usual 4 KB pages, a 504 MB step crosses 123,000 pages, and the hardware prefetcher, which
# does not follow a stream across a page boundary, starts again at each. Linux's *transparent huge pages* map 2 MB
# at once; where the system offers them (`/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`),
# we copy the weights into memory that asks for them (`madvise(MADV_HUGEPAGE)`). On the test machine, reading 491
# MB from huge pages against small ones, alternating in one process (best of 7): a plain `sum()`, 54 against 39
# GB/s with two threads and 29 against 21 with one; our kernel at batch 1, 50 against 34 and 28 against 20. (The
# machine's speed also varies by 10-30% from hour to hour.)
#
# A 2 MB page can only back a whole 2 MB-aligned range of one memory map. So all the weights go into one map, cut
# into one tensor per weight (`torch.frombuffer` at successive offsets: each weight has a storage of its own, as
# before, which `torch.save` and safetensors save as they would any other), rather than a map per weight, whose
# ends would stay on small pages.
HUGE_PAGE = 2 ** 21


def huge_pages_available() -> bool:
    """Whether this system backs memory with transparent huge pages on request (Linux, not turned off)."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and "[never]" not in mode


class HugePages:
    r"""
    `n_bytes` of memory that asks for huge pages, from which `copy(t)` cuts contiguous copies of tensors, in turn:
    a private anonymous memory map (shared memory has a setting of its own) advised `MADV_HUGEPAGE`, used from its
    first 2 MB boundary. Memory is only taken as the copies are written, and the map is freed with the last tensor
    cut from it (`torch.frombuffer` keeps a reference to it).
    """

    def __init__(self, n_bytes: int):
        self.memory = mmap.mmap(-1, n_bytes + 2 * HUGE_PAGE, flags=mmap.MAP_PRIVATE)
        try:
            self.memory.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel that refuses the advice gives small pages: the copies still work
            pass
        self.offset = -torch.frombuffer(self.memory, dtype=torch.uint8).data_ptr() % HUGE_PAGE

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        out = torch.frombuffer(self.memory, dtype=t.dtype, count=t.numel(), offset=self.offset)
        self.offset += self.size_of(t)
        return out.view(t.shape).copy_(t)

    # The bytes a copy of `t` takes here: its own, up to the next cache line, where the next copy starts
    @staticmethod
    def size_of(t: torch.Tensor) -> int:
        return -(-t.numel() * t.element_size() // 64) * 64


def on_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` on huge pages."""
    return HugePages(t.numel() * t.element_size()).copy(t)


# By default the kernel is used (and built, about 10 s, once per machine) only for a model whose fp32 weights that
# it would multiply take at least this much memory: there it pays for itself within the first hundred tokens or so.
# A smaller model (the demo) decodes in seconds without it and never waits for a compiler.
BUILD_KERNEL_BYTES = 100 * 2 ** 20


class _WithKernelOps:
    # Python cannot pickle the kernel's ops, so a prepared layer pickles (`torch.save(model)`, `copy.deepcopy`)
    # without them, with a mark where one was, and finds them again when unpickled (building the kernel if this
    # machine has not yet; where it cannot be built, the layer runs as if prepared with `kernel=False`)
    _ops = {"_gemv": "gemv", "_attention_step": "attention_step", "_layer_step": "layer_step"}

    def __getstate__(self):
        state = dict(super().__getstate__())
        for name in self._ops:
            if state.get(name) is not None:
                state[name] = True
        return state

    def __setstate__(self, state):
        for name, op in self._ops.items():
            if state.get(name) is True:
                state[name] = getattr(torch.ops.neox_cpu, op) if cpu_gemv.gemv_or_reason()[0] is not None else None
        super().__setstate__(state)


class DecodingLinear(_WithKernelOps, nn.Linear):
    r"""
    ## A linear layer for decoding

    An `nn.Linear` (same `weight` `[out, in]` and `bias` `[out]`, same storage, same state dict, and
    `isinstance(m, nn.Linear)` still holds) whose `forward` picks, by the number of rows of input $N$:

    * $N \le$ `MAX_KERNEL_ROWS`, without gradients: the kernel (`cpu_gemv.py`), when `prepare_for_cpu_decoding`
      found it;
    * $N \le$ `MAX_BMM_TOKENS`, with halves: the two halves of its rows at once,

    $$x W^\top + b = \big[\, x W_a^\top + b_a,\; x W_b^\top + b_b \,\big]$$

    as one `torch.baddbmm`, so that two cores each read one half of the weight;
    * otherwise `F.linear`, as `nn.Linear` does.
    """

    # Set by `prepare_for_cpu_decoding`: the kernel (or `None`) and whether to use the halves
    _gemv = None
    _use_halves = True

    # The two halves of the weight's rows, each transposed, `[2, in, out/2]`, and of the bias, `[2, 1, out/2]`:
    # views of the parameters' storage. Without gradients (generation) they are made once and kept, for as long
    # as the weight keeps its storage; with gradients they are made at each call, so that they stay in the
    # autograd graph.
    def _halves(self):
        if torch.is_grad_enabled():
            return self._make_halves()
        if getattr(self, "_halves_of", None) != self.weight.data_ptr():
            self._kept_halves, self._halves_of = self._make_halves(), self.weight.data_ptr()
        return self._kept_halves

    def _make_halves(self):
        n_out, n_in = self.weight.shape
        w = self.weight.view(2, n_out // 2, n_in).transpose(1, 2)
        return w, None if self.bias is None else self.bias.view(2, 1, n_out // 2)

    # `activation` ("none", or a GELU: "gelu", "gelu_tanh") is applied to the result: by the kernel as it writes
    # it, or else by `F.gelu`. (Each `self.weight` goes through `nn.Module.__getattr__`, about a microsecond on the
    # test machine, and a decoding step calls 49 of these layers: the parameters are looked up once.)
    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        weight, bias = self.weight, self.bias
        n_out, n_in = weight.shape
        rows = x.numel() // n_in
        # The kernel has no backward pass and works on the CPU: it only runs without gradients (generation,
        # evaluation), on CPU tensors (a prepared model may be moved to a GPU later)
        if (self._gemv is not None and 0 < rows <= MAX_KERNEL_ROWS and n_in % 8 == 0 and not torch.is_grad_enabled()
                and x.dtype == weight.dtype and weight.device.type == "cpu" and weight.is_contiguous()
                and (bias is None or bias.is_contiguous())):
            y = self._gemv(x.reshape(rows, n_in), weight, bias, ACTIVATIONS[activation])
            return y.view(*x.shape[:-1], n_out)
        if not self._use_halves or rows > MAX_BMM_TOKENS or x.dtype != weight.dtype:
            y = F.linear(x, weight, bias)
        else:
            w_halves, b_halves = self._halves()
            # `[..., in]` $\rightarrow$ `[2, N, in]`, the same rows for both halves (a view)
            x_rows = x.reshape(1, rows, n_in).expand(2, rows, n_in)
            y = torch.bmm(x_rows, w_halves) if b_halves is None else torch.baddbmm(b_halves, x_rows, w_halves)
            # `[2, N, out/2]` $\rightarrow$ `[N, 2, out/2]` $\rightarrow$ `[..., out]` (no copy for one row)
            y = y.transpose(0, 1).reshape(*x.shape[:-1], n_out)
        return y if activation == "none" else F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")


class DecodingAttention(_WithKernelOps, Attention):
    r"""
    ## Attention for decoding

    An `Attention` (the same modules, parameters and state dict) whose `forward`, for one new token per row with a
    cache, in fp32 on the CPU and without gradients, does everything between its two linear layers in one call of
    the kernel's `attention_step` (`cpu_gemv.py`): the rotary embeddings of the query and the key, writing the key
    and the value into the cache, and attention over the row's keys, read at memory speed. Everything else (the
    prompt, training, half precision) runs `Attention.forward` as before.

    That one call replaces some 30 small PyTorch ops a layer (the rotary embeddings alone were 15, 35-50 us a layer
    on the test machine).
    """

    # Set by `prepare_for_cpu_decoding`: the kernel's `attention_step`
    _attention_step = None

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        batch_size, n_tokens, _ = x.shape
        if (self._attention_step is None or cache is None or n_tokens != 1 or x.dtype != torch.float32
                or x.device.type != "cpu" or self.d_head % 8 != 0 or self.d_head > 256 or torch.is_grad_enabled()):
            return super().forward(x, cache)
        # `[B, 1, 3C]`, head by head its query, key and value
        qkv = self.query_key_value(x).contiguous()
        return self.dense(self._attention_step(qkv, *self.step_inputs(x, cache)))

    # What the kernel's `attention_step` (and `layer_step`) take besides the new token: the cache's buffers
    # `[B, H, T_max, D]` (made on the first step, like the new keys `[B, H, 1, D]` would be), the new slot, the
    # rotary tables, and each row's first real slot (or `None`)
    def step_inputs(self, x: torch.Tensor, cache: KVCache) -> tuple:
        keys = x.view(x.shape[0], 1, self.n_heads, self.d_head).transpose(1, 2)
        k_buffer, v_buffer = cache.buffers(self.layer_idx, keys)
        cos, sin = self.rotary_emb.tables(cache.offset + 1, x.device)
        padding = cache.padding_on(x.device)
        return k_buffer, v_buffer, cache.offset, cos, sin, None if padding is None else padding.long()


class DecodingFFN(FFN):
    r"""
    ## The FFN for decoding

    An `FFN` (the same modules, parameters and state dict) whose first linear layer, a `DecodingLinear`, applies
    the GELU itself: with the kernel, as it writes its outputs. Inside a decoding step PyTorch's GELU costs 40-50 us a
    layer on the test machine (`cpu_gemv.py` says why); in the kernel, nothing measurable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.dense_h_to_4h(x, self.activation))

    # The GELU by the kernel's name for it (`ACTIVATIONS`)
    @property
    def activation(self) -> str:
        return "gelu_tanh" if self.approximate == "tanh" else "gelu"


class DecodingLayer(_WithKernelOps, TransformerLayer):
    r"""
    ## A transformer layer for decoding

    A `TransformerLayer` (the same modules, parameters and state dict) whose `forward`, for one new token per row
    with a cache, in fp32 on the CPU and without gradients, is one call of the kernel's `layer_step`: the layer norms,
    the four products, attention and the residual sum (`cpu_gemv.py`). `prepare_for_cpu_decoding` makes one where all
    the layer's parts were prepared for the kernel: its linear layers `DecodingLinear`s with the kernel, its attention
    a `DecodingAttention`, its FFN a `DecodingFFN`. Everything else (the prompt, training, half precision) runs
    `TransformerLayer.forward`, whose prepared modules still use the kernel one by one.
    """

    # Set by `prepare_for_cpu_decoding`: the kernel's `layer_step`
    _layer_step = None

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        batch_size, n_tokens, _ = x.shape
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        if (self._layer_step is None or cache is None or n_tokens != 1 or batch_size > MAX_KERNEL_ROWS
                or x.dtype != torch.float32 or x.device.type != "cpu" or norm1.weight.device.type != "cpu"
                or torch.is_grad_enabled()):
            return super().forward(x, cache)
        attention, mlp = self.attention, self.mlp
        linears = _linears(self)
        residual = "sequential" if not self.parallel_residual else "parallel_tied" if self.tied_layernorms \
            else "parallel"
        return self._layer_step(x.contiguous(), [norm1.weight, norm1.bias, norm2.weight, norm2.bias],
                                [layer.weight for layer in linears], [layer.bias for layer in linears], norm1.eps,
                                RESIDUALS[residual], ACTIVATIONS[mlp.activation], *attention.step_inputs(x, cache))


# Only fp32 weights on a CPU with more than one row and column (a `[1, n]` weight is a dot product, whatever its
# layout)
def _fits(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (type(layer) in (nn.Linear, DecodingLinear) and weight is not None and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2 and min(weight.shape) > 1)


# A transformer layer's four linear layers, in the order `layer_step` takes their weights
def _linears(layer: TransformerLayer) -> tuple:
    attention, mlp = layer.attention, layer.mlp
    return attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h


# Whether `layer_step` can compute this layer: every part prepared for the kernel, fp32 layer norms with the same
# epsilon, and sizes the kernel takes
def _whole_layer_fits(layer: TransformerLayer) -> bool:
    attention, mlp = layer.attention, layer.mlp
    linears = _linears(layer)
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    return (type(attention) is DecodingAttention and attention._attention_step is not None
            and type(mlp) is DecodingFFN and all(type(m) is DecodingLinear and m._gemv is not None for m in linears)
            and all(type(m) is nn.LayerNorm and m.weight is not None and m.bias is not None
                    and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu" for m in norms)
            and norms[0].eps == norms[1].eps and attention.d_head % 8 == 0 and attention.d_head <= 256
            and mlp.dense_h_to_4h.weight.shape[0] % 8 == 0)


def _as_class(linear: nn.Module, cls: type) -> nn.Module:
    # The same layer as an `nn.Linear` or a `DecodingLinear` (an `Attention` or a `DecodingAttention`, an `FFN` or a
    # `DecodingFFN`), holding the very same `Parameter` objects and submodules (an optimizer or a caller holding them
    # still sees the model's parameters), built without allocating weights
    if type(linear) is cls:
        return linear
    layer = cls.__new__(cls)
    kept = ("_kept", "_halves", "_gemv", "_use_halves", "_attention_step", "_layer_step")
    layer.__dict__.update({k: v for k, v in linear.__dict__.items() if not k.startswith(kept)})
    layer._parameters = dict(linear._parameters)
    return layer


# Outside inference mode even when called inside it, so that re-laid weights stay usable for training
@torch.inference_mode(False)
@torch.no_grad()
def prepare_for_cpu_decoding(model: nn.Module, halves: Optional[bool] = None, kernel: Optional[bool] = None,
                             huge_pages: bool = True) -> nn.Module:
    r"""
    ## The step

    Prepare `model` (a `NeoXModel`, or any module) for decoding on a CPU, in place, and return it. Each fp32
    `nn.Linear` on the CPU either

    * becomes a `DecodingLinear`, its weight row by row as loaded, when the kernel is used or with `halves`; or
    * gets its weight stored column by column (neither: one thread, no kernel);

    and, where the kernel is used, each fp32 `Attention` on the CPU becomes a `DecodingAttention`, each `FFN` whose
    first layer is a `DecodingLinear` a `DecodingFFN`, and each `TransformerLayer` whose parts are all prepared for
    the kernel a `DecodingLayer`.

    `kernel`: use the matrix-vector kernel of `cpu_gemv.py` for products of up to `MAX_KERNEL_ROWS` rows. By
    default it is used when the weights it would multiply take at least `BUILD_KERNEL_BYTES` and it can be built
    here (about 10 s, once); when it cannot, a line on stderr says why and the rest works as without it.
    `kernel=True` builds it whatever the model's size and raises `KernelUnavailable` when it cannot; `kernel=False`
    never uses it.

    `halves`: multiply the products of up to `MAX_BMM_TOKENS` rows that the kernel does not take by the two halves
    of the weight at once; by default when PyTorch uses more than one thread. Layers with an odd number of rows
    never use the halves.

    `huge_pages`: copy the weights onto huge pages, one weight at a time, where the system offers them
    (`huge_pages_available()`) and they take at least one (2 MB). `False` leaves the weights where they are (except
    for the column-major copies).

    Other layers (half precision, GPU, LLM.int8, quantized) are left as they are. Calling it twice with the same
    choices does nothing more; calling it with other choices changes every layer to them.

    The parameters stay the same `Parameter` objects with the same values: at most their storage changes.
    """
    if halves is None:
        halves = torch.get_num_threads() > 1
    layers = [(parent, name, layer) for parent in list(model.modules())
              for name, layer in list(parent.named_children()) if _fits(layer)]
    gemv = None
    n_bytes = sum(layer.weight.numel() * layer.weight.element_size() for *_, layer in layers)
    if kernel or (kernel is None and n_bytes >= BUILD_KERNEL_BYTES):
        gemv, reason = cpu_gemv.gemv_or_reason()
        if gemv is None and kernel:
            raise KernelUnavailable(f"the CPU matrix-vector kernel is not available: {reason}")
        if gemv is None:
            print(f"prepare_for_cpu_decoding: decoding without the CPU matrix-vector kernel, since {reason}",
                  file=sys.stderr)
    # Each weight in the layout its products read, `[out, in]` (kernel, halves) or `[in, out]` (column by column),
    # and whether it goes onto huge pages (unless it is there already, in that layout)
    plans = []
    for parent, name, layer in layers:
        use_halves = halves and layer.weight.shape[0] % 2 == 0
        row_major = use_halves or gemv is not None
        move = huge_pages and getattr(layer, "_huge_pages_at", None) != (layer.weight.data_ptr(), row_major)
        plans.append((parent, name, layer, use_halves, row_major, move))
    # One map for all the weights that move, if they fill at least one huge page
    n_moving = sum(HugePages.size_of(layer.weight) for _, _, layer, _, _, move in plans if move)
    pages = HugePages(n_moving) if n_moving >= HUGE_PAGE and huge_pages_available() else None
    for parent, name, layer, use_halves, row_major, move in plans:
        weight = layer.weight
        layout = weight.data if row_major else weight.data.t()
        move = move and pages is not None
        copy = pages.copy(layout) if move else None if layout.is_contiguous() else layout.contiguous()
        # Assigning `.data` keeps the `Parameter` object; the old storage is freed (or, for a weight
        # memory-mapped from a checkpoint, unmapped) before the next weight is copied
        if copy is not None:
            weight.data = copy if row_major else copy.t()
            layer._huge_pages_at = (weight.data_ptr(), row_major) if move else None
        layer = _as_class(layer, DecodingLinear if row_major else nn.Linear)
        if row_major:
            layer._gemv, layer._use_halves = gemv, use_halves
        setattr(parent, name, layer)
    # Attention decodes with the kernel's `attention_step` where the kernel is used and the layer is fp32 on the
    # CPU (its `query_key_value` was prepared above); an FFN whose first layer is a `DecodingLinear` has it apply
    # the GELU
    for parent in list(model.modules()):
        for name, layer in list(parent.named_children()):
            if isinstance(layer, Attention):
                use = gemv is not None and _fits(layer.query_key_value)
                layer = _as_class(layer, DecodingAttention if use else Attention)
                if use:
                    layer._attention_step = torch.ops.neox_cpu.attention_step
                setattr(parent, name, layer)
            elif type(layer) in (FFN, DecodingFFN):
                use = type(layer.dense_h_to_4h) is DecodingLinear
                setattr(parent, name, _as_class(layer, DecodingFFN if use else FFN))
    # And a transformer layer whose parts all use the kernel is one call of its `layer_step`
    for parent in list(model.modules()):
        for name, layer in list(parent.named_children()):
            if type(layer) in (TransformerLayer, DecodingLayer):
                use = gemv is not None and _whole_layer_fits(layer)
                layer = _as_class(layer, DecodingLayer if use else TransformerLayer)
                if use:
                    layer._layer_step = torch.ops.neox_cpu.layer_step
                setattr(parent, name, layer)
    return model
