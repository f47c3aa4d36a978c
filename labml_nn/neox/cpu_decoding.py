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

Each decoding step multiplies one token's vector (or one per row of the batch) by every weight matrix: matrix-vector
products, each weight read once from memory for a handful of multiply-adds. So a step can be no faster than
`weight bytes / read bandwidth`, the *memory floor* that `benchmarks/generate.py` prints (the products are ~86% of a
Pythia-160M step with PyTorch's own products). What holds PyTorch's products back is how MKL, its CPU BLAS, walks
the memory; it leaves two things on the table:

* **The second core.** MKL's fp32 matrix-vector product runs on one core whatever `torch.set_num_threads` says.
* **The layout.** `nn.Linear` stores $W$ `[out, in]`, row after row; MKL reads the transposed layout (each column
  contiguous) about 1.35 times faster.

Our kernel (`cpu_gemv.py`, C++ compiled on the user's machine) takes both: it shares each weight's rows among the
threads, reads them as loaded, and at batch 8 reads each weight once for all eight rows of input. At batch 1 on
two threads it reads about twice as fast as `nn.Linear`, near what a plain `sum()` over memory reads (the table,
and how it varies from hour to hour, are in `benchmarks/RESULTS.md`, "CPU decoding"). `prepare_for_cpu_decoding`
uses it for up to `MAX_KERNEL_ROWS` rows of input. Where it cannot be built (no C++ compiler, not Linux on
x86-64), two ways around MKL's limits built from PyTorch's own ops take its place:

* **The halves, with two threads or more.** `torch.bmm` over a batch of two matrices gives each core one of
  them: one `bmm` of $x$ `[2, N, in]` (the same $x$ twice, an expanded view) by the two halves of the rows,
  $[W_a^\top, W_b^\top]$ `[2, in, out/2]`, laid side by side: $x W^\top = [x W_a^\top, x W_b^\top]$. The
  halves are views of the loaded weight; nothing is copied.
* **Column by column, on one thread.** Each fp32 weight stored column by column: `W.t()` is contiguous, `W` keeps
  its shape and values, and `F.linear` computes the same thing.

With many tokens (the prompt) a product is bound by arithmetic, not memory, and MKL's GEMM already uses every
core, so above `MAX_KERNEL_ROWS` (and `MAX_BMM_TOKENS`) rows a `DecodingLinear` calls `F.linear`.

fp16 and bf16 weights, and weights on a GPU, are left alone (MKL's half-precision product is about 10 times
slower on the transposed layout; cuBLAS reads both layouts at full speed). On a machine whose cores are busy with
other work, a product split over two cores waits for the slower one:
`prepare_for_cpu_decoding(model, halves=False, kernel=False)` keeps to one thread's choice, the column-major layout.

### Less around the products

Once the products read at memory speed, what is left of a step is everything around them: some 100 small PyTorch
ops a layer (rotary embeddings, views, the cache's copies, layer norms, additions), module calls, and PyTorch's GELU,
whose code the weights streaming past evict from the caches. Together about a fifth of a step. So the kernel does
more of it:

* `DecodingFFN`: the GELU is applied by the kernel as it writes the first product's outputs;
* `DecodingAttention`: everything between `query_key_value` and `dense` (rotary embeddings, writing the cache,
  attention) is one call;
* `DecodingLayer`: a whole layer is one call (`layer_step`), when all its parts are prepared.

What is left besides the products is Python's share of a step and attention, bound by reading a cache that the
weights have pushed out of the caches. The phase timings, the gains of each step and the attempts that did not hold
up (oneDNN, more pieces, a compiled reduction, numpy, other kernel variants, dynamic int8) are recorded in
`benchmarks/RESULTS.md`.

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
# we copy the weights into memory that asks for them (`madvise(MADV_HUGEPAGE)`). On the test machine that read
# memory about 1.4 times faster, for `sum()` and for our kernel alike (`benchmarks/RESULTS.md`).
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
