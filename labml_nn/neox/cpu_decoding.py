r"""
# Preparing a model for decoding on a CPU

`model.py` is written to be read and copied: its linear layers are plain `nn.Linear`s and nothing in it knows
which machine it runs on. This page is the one step a caller takes, after loading and before generating, to make
decoding on a CPU fast:

```python
model = prepare_for_cpu_decoding(model)
```

It changes **how** the fp32 weights are stored and multiplied, never **what** is computed: the same parameter
names, the same shapes `[out, in]`, the same values (the state dict holds the same numbers, so a prepared model
can still be saved, fine-tuned or evaluated), and greedy tokens identical to the unprepared model's. `generate`
never does this by itself: a function that silently re-lays its caller's tensors is a side effect the caller
cannot see. `samples/generate.py` calls it when it runs on a CPU.

## Where a decoding step's time goes

Each decoding step multiplies one token's vector (or one per row of the batch) by every weight matrix of the
model. These are matrix-vector products: each weight is read once from memory and used for a handful of
multiply-adds, so a step can be no faster than reading all the weights, `weight bytes / read bandwidth`, the
*memory floor* that `benchmarks/generate.py` prints. On our 2-core test machine (AMD EPYC, AVX-512; random
Pythia-160M-shaped weights, 49 products of 504 MB per step, `benchmarks/RESULTS.md`) the products are ~86% of a
step, and what limits them is not the arithmetic but how MKL, PyTorch's CPU BLAS, walks the memory:

| the 49 products of one step, 2 threads, read speed (a quiet moment) | batch 1 | batch 8 |
|---|---|---|
| `nn.Linear`, weights `[out, in]` row by row (as loaded) | 13.0 GB/s | 8.9 GB/s |
| the same weights stored column by column | 19.1 GB/s | 6.8 GB/s |
| column by column, the two halves of the rows as one `torch.bmm` | **25.1 GB/s** | **13.7 GB/s** |
| (reading memory with `sum()`, the floor) | ~31-36 GB/s | |

Two things happen here.

* **The layout.** `nn.Linear` computes $x W^\top$ with $W$ stored `[out, in]`, row after row. MKL's fp32
  matrix-vector product reads the transposed layout (each column of $W$, i.e. each row of $W^\top$, contiguous)
  about 1.4 times faster on this machine. So we store each fp32 weight column by column: `W.t()` is contiguous,
  `W` keeps its shape and values and `F.linear` computes the same thing. This is what `generate` used to do
  behind its caller's back.
* **The second core.** MKL's fp32 matrix-vector product runs on one core whatever `torch.set_num_threads` says;
  at batch 1 the second core idles. `torch.bmm` over a batch of two matrices, though, gives each core one of
  them. So we multiply by the two halves of each weight's rows, $W = [W_a; W_b]$, as one `bmm` of
  $x$ `[2, N, in]` (the same $x$ twice, an expanded view, no copy) by $[W_a^\top, W_b^\top]$ `[2, in, out/2]`,
  and lay the two results side by side: $x W^\top = [x W_a^\top, x W_b^\top]$. With the weight stored column by
  column, $W_a^\top$ and $W_b^\top$ are already views of its storage (columns $0 \dots out/2 - 1$ and the rest of
  `W.t()`), so nothing is copied. At batch 8 the same `bmm` is also the fastest of the layouts we measured: MKL
  turns the products of a small batch into a GEMM that reads column-major weights slowly on one core.

With one thread `bmm` does the two halves one after the other, which costs the same as one product; with many
tokens (the prompt) a matrix-matrix product is bound by arithmetic, not memory, and MKL's GEMM already uses every
core, so above `MAX_BMM_TOKENS` rows we call `F.linear` on the column-major weight as before.

### What did not hold up

* **oneDNN's linear** (`torch.ops.mkldnn._linear_pointwise` on a packed weight) reads 8.1 GB/s at batch 8 (vs 6.6
  for MKL on the usual layout) and the same ~19 GB/s as MKL at batch 1: behind `bmm` at both, and its packed weight
  is an opaque tensor that a state dict cannot hold, so it would break "same names, same values".
* **More than two pieces** (`bmm` over 4 or 8 slices of the rows) is no faster at batch 1 on two cores and much
  slower at batch 8.
* **fp16 and bf16 weights** are left alone: MKL's half-precision matrix-vector product is about 10 times slower on
  the transposed layout. On a GPU, cuBLAS reads both layouts at full speed, so GPU weights are left alone too.
* **A busy machine.** A product split over two cores waits for the slower of them. In whole generations with other
  jobs holding the cores (load average 5-8 on two cores), the halves lost to one-core column-major products with two
  threads (2.5 against 4.1 tokens/s) and tied with one thread (16.2 against 17.3). On a shared machine,
  `prepare_for_cpu_decoding(model, halves=False)` keeps only the layout.
* **torch's dynamic int8 quantization** decodes 2.6 times faster, but it changes the values; it is a different
  step (LLM.int8 has its own page), not a faster way to compute the same thing.

## Memory

Storing a weight column by column makes a copy of it. We re-lay one weight at a time and drop the old storage
before the next, so the extra memory is the largest single weight (the readout, 154 MB in Pythia-160M fp32,
0.8 GB in the 20B model), not a second copy of the model.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Above this many rows (tokens times batch) a product is a matrix-matrix product that MKL's GEMM already spreads
# over every core; the halves only help the memory-bound products of decoding.
MAX_BMM_TOKENS = 16


def column_major(weight: torch.Tensor) -> torch.Tensor:
    r"""
    The same `[out, in]` values stored column by column: `W.t()` is contiguous.
    """
    return weight.t().contiguous().t()


class HalvesLinear(nn.Linear):
    r"""
    ## A linear layer that multiplies by the two halves of its rows at once

    An `nn.Linear` (same `weight` `[out, in]` and `bias` `[out]`, same state dict, and `isinstance(m, nn.Linear)`
    still holds) whose weight is stored column by column and whose `forward` computes, for a few rows of input,

    $$x W^\top + b = \big[\, x W_a^\top + b_a,\; x W_b^\top + b_b \,\big]$$

    as one `torch.baddbmm` over the two halves, so that two cores each read one half of the weight.
    """

    # The two halves of `W.t()`'s columns, `[2, in, out/2]`, and of the bias, `[2, 1, out/2]`: views of the
    # parameters' storage. Without gradients (generation) they are made once and kept, for as long as the weight
    # keeps its storage; with gradients they are made at each call, so that they stay in the autograd graph.
    def _halves(self):
        if torch.is_grad_enabled():
            return self._make_halves()
        if getattr(self, "_halves_of", None) != self.weight.data_ptr():
            self._kept_halves, self._halves_of = self._make_halves(), self.weight.data_ptr()
        return self._kept_halves

    def _make_halves(self):
        n_out, n_in = self.weight.shape
        w = self.weight.t().view(n_in, 2, n_out // 2).transpose(0, 1)
        return w, None if self.bias is None else self.bias.view(2, 1, n_out // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_out, n_in = self.weight.shape
        rows = x.numel() // n_in
        if rows > MAX_BMM_TOKENS or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        w_halves, b_halves = self._halves()
        # `[..., in]` $\rightarrow$ `[2, N, in]`, the same rows for both halves (a view)
        x_rows = x.reshape(1, rows, n_in).expand(2, rows, n_in)
        y = torch.bmm(x_rows, w_halves) if b_halves is None else torch.baddbmm(b_halves, x_rows, w_halves)
        # `[2, N, out/2]` $\rightarrow$ `[N, 2, out/2]` $\rightarrow$ `[..., out]` (no copy for one row)
        return y.transpose(0, 1).reshape(*x.shape[:-1], n_out)


# Only fp32 weights on a CPU, with an even number of rows (so that the halves are equal) and more than one row
# and column (a `[1, n]` weight is a dot product, whatever its layout)
def _fits(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (type(layer) in (nn.Linear, HalvesLinear) and weight is not None and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2 and min(weight.shape) > 1)


def _halves_linear(linear: nn.Linear) -> HalvesLinear:
    # A `HalvesLinear` that holds the very same `Parameter` objects (an optimizer or a caller holding them still
    # sees the model's parameters), built without allocating weights of its own
    halves = HalvesLinear.__new__(HalvesLinear)
    halves.__dict__.update(linear.__dict__)
    halves._parameters = dict(linear._parameters)
    return halves


# Outside inference mode even when called inside it, so that the re-laid weights stay usable for training
@torch.inference_mode(False)
@torch.no_grad()
def prepare_for_cpu_decoding(model: nn.Module, halves: Optional[bool] = None) -> nn.Module:
    r"""
    ## The step

    Prepare `model` (a `NeoXModel`, or any module) for decoding on a CPU, in place,
    and return it: every fp32 `nn.Linear` on the CPU gets its weight stored column by column, and, with `halves`
    (by default when PyTorch uses more than one thread and the layer's output has an even size), becomes a
    `HalvesLinear`. Other layers (half precision, GPU, LLM.int8, quantized) are left as they are. Calling it twice
    does nothing more.

    The parameters stay the same `Parameter` objects with the same values: only their storage changes.
    """
    if halves is None:
        halves = torch.get_num_threads() > 1
    for parent in list(model.modules()):
        for name, layer in list(parent.named_children()):
            if not _fits(layer):
                continue
            weight = layer.weight
            if not weight.t().is_contiguous():
                # Assigning `.data` keeps the `Parameter` object; the old storage is freed (or, for a weight
                # memory-mapped from a checkpoint, unmapped) before the next weight is copied
                weight.data = column_major(weight.data)
            if halves and type(layer) is nn.Linear and weight.shape[0] % 2 == 0:
                setattr(parent, name, _halves_linear(layer))
    return model
