r"""
# Preparing a model for decoding on a CPU

`model.py` is written to be read and copied: its linear layers are plain `nn.Linear`s and nothing in it knows
which machine it runs on. This page is the one step a caller takes, after loading and before generating, to make
decoding on a CPU fast:

```python
model = prepare_for_cpu_decoding(model)
```

It changes **how** the fp32 weights are multiplied, never **what** is computed: the same parameter names, the same
shapes `[out, in]`, the same values (the state dict holds the same numbers, so a prepared model can still be saved,
fine-tuned or evaluated), and greedy tokens identical to the unprepared model's. `generate` never does this by
itself: a function that silently changes how its caller's model runs is a side effect the caller cannot see.
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
| **our kernel** (below), as loaded, 2 threads | **27.7 GB/s** | **13.3 GB/s** |
| `nn.Linear` as loaded, 1 thread | 13.8 GB/s | 7.1 GB/s |
| column by column, 1 thread | 18.5 GB/s | 7.0 GB/s |
| **our kernel**, as loaded, 1 thread | **19.3 GB/s** | **8.7 GB/s** |
| (reading memory with `sum()`, the floor) | 27-33 GB/s (2 threads), 21-22 (1) | |

(The kernel's rows were measured a day after the others; in that run the two halves read 20.8 and 11.7 GB/s at
two threads and column-major MKL 18.5 at one: the machine varies by 10-20% from hour to hour.)

MKL leaves two things on the table.

* **The second core.** MKL's fp32 matrix-vector product runs on one core whatever `torch.set_num_threads` says;
  at batch 1 the second core idles.
* **The layout.** `nn.Linear` computes $x W^\top$ with $W$ stored `[out, in]`, row after row, and MKL's
  matrix-vector product reads the transposed layout (each column of $W$ contiguous) about 1.35 times faster.

Our kernel (the C++ below, compiled on the user's machine) takes both: it shares each weight's rows among the
threads, reads them as they were loaded, and at batch 8 reads each weight from memory once for all eight rows of
input. `prepare_for_cpu_decoding` uses it for up to `MAX_KERNEL_ROWS` rows of input. Where it cannot be built (no
C++ compiler, not Linux on x86-64), two ways around MKL's limits built from PyTorch's own ops take its place:

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
* **Inside our kernel**, reading two rows of the weight at once, more accumulators, prefetching the next rows by
  hand, handing out rows to threads as they free up, and AVX-512's wider registers were slower or within noise
  (the first is explained beside the code below).
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

The kernel and the halves copy nothing: a prepared model holds exactly the memory it held before. Storing a weight
column by column (one thread without the kernel, or `halves=False, kernel=False`) makes a copy of it; we re-lay
one weight at a time and drop the old storage before the next, so the extra memory is the largest single weight
(the readout, 154 MB in Pythia-160M fp32, 0.8 GB in the 20B model), not a second copy of the model.
"""

import functools
import os
import platform
import shutil
import sys
from pathlib import Path
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


# ## A matrix-vector product of our own
#
# For up to `MAX_KERNEL_ROWS` rows of input the products go through a small C++ kernel, compiled on the user's
# machine the first time it is needed (about 10 s; PyTorch keeps the build in `~/.cache/torch_extensions`, or
# `$TORCH_EXTENSIONS_DIR`, and later processes load it in a fraction of a second). It reads the weight as loaded,
# `[out, in]` row by row, so nothing is copied. On the 2-core test machine, over the 49 products of a step, it
# reads 27.7 GB/s at batch 1 with two threads (the `bmm` halves: 20.8 in the same run), 23.0 at batch 4 (13.8),
# 13.3 at batch 8 (11.7) and 10.5 at batch 12 (9.8); with one thread, 19.3 GB/s at batch 1 (column-major MKL: 18.5)
# and 8.7 at batch 8 (6.0). At 16 rows the two are level, and above that `F.linear` takes over.
#
# The kernel needs Linux on x86-64 with AVX2 (every x86 CPU since 2013-2015), a C++ compiler and `ninja` (a
# dependency of this package); without them `prepare_for_cpu_decoding` falls back to the halves and says why.
# Summing in a different order than MKL changes the results in the last bits only: the tests compare it with the
# float64 product and check that the prepared model's greedy tokens are the plain model's.
MAX_KERNEL_ROWS = 16

# By default the kernel is built (about 10 s, once per machine) only for a model whose fp32 weights that it would
# multiply take at least this much memory: there it pays for itself within the first hundred tokens or so. A smaller
# model (the demo) uses it when it has already been built.
BUILD_KERNEL_BYTES = 100 * 2 ** 20

# ### The kernel, piece by piece
#
# The source is one C++ file, kept here in pieces so that each sits beside its explanation. It includes only
# ATen's headers (tensors, `at::parallel_for`) and `torch/library.h`, which registers the op as
# `torch.ops.neox_cpu.gemv`: no Python headers are needed to build it.
_KERNEL_HEADERS = r"""
#include <immintrin.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <vector>
"""

# **Adding up the lanes.** A vector register holds 8 numbers (AVX2's `__m256`). The products below leave each
# output as 8 partial sums in one vector, and these must be added up. `sum8` does that for 8 outputs at once (three
# rounds of pairwise horizontal adds and one swap of 128-bit halves) and returns their 8 sums as one vector, ready
# to be stored; `sum1` adds up a single vector, for the last rows of a weight whose rows are not a multiple of 8.
_KERNEL_SUMS = r"""
// The lanes of 8 vectors summed: one vector of 8 sums
static inline __m256 sum8(const __m256* v) {
  __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  t0 = _mm256_hadd_ps(t0, t1);
  t2 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20),
                       _mm256_permute2f128_ps(t0, t2, 0x31));
}

static inline float sum1(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  return _mm_cvtss_f32(s);
}
"""

# **One row of the weight times up to four rows of $x$.** The row `w` is read once, from start to end, 8 numbers
# at a time, and each chunk is multiplied into every row of $x$ with a fused multiply-add. $x$ has been
# interleaved by chunks of 8, `[I/8, N, 8]`, so the $N$ vectors that a chunk of `w` meets are side by side.
#
# A multiply-add into an accumulator must wait for the previous one into the same accumulator (4 cycles), so
# several accumulators keep several in flight: with one row of $x$, four accumulators take the chunks in turn; with
# two rows, two each; with four, the rows themselves are enough. More than four rows would need more registers
# than AVX2's sixteen.
_KERNEL_ROW = r"""
// One row `w` of W times the N <= 4 rows of x, interleaved [I/8, N, 8]:
// out[n] holds 8 partial sums of row n's product
template <int N>
static inline void row_times_x(const float* __restrict w, const float* __restrict x,
                               int64_t I, __m256* out) {
  constexpr int U = N >= 4 ? 1 : 4 / N;  // accumulators per row of x
  __m256 acc[N][U];
#pragma GCC unroll 4
  for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) acc[n][u] = _mm256_setzero_ps();
  int64_t c = 0;  // chunk of 8 numbers
  const int64_t chunks = I / 8;
  for (; c + U <= chunks; c += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      __m256 wv = _mm256_loadu_ps(w + (c + u) * 8);
#pragma GCC unroll 4
      for (int n = 0; n < N; ++n) {
        __m256 xv = _mm256_loadu_ps(x + ((c + u) * N + n) * 8);
        acc[n][u] = _mm256_fmadd_ps(wv, xv, acc[n][u]);
      }
    }
  }
  for (; c < chunks; ++c) {  // the last chunks, fewer than U
    __m256 wv = _mm256_loadu_ps(w + c * 8);
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n)
      acc[n][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (c * N + n) * 8), acc[n][0]);
  }
#pragma GCC unroll 4
  for (int n = 0; n < N; ++n) {
    __m256 a = acc[n][0];
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[n][u]);
    out[n] = a;
  }
}
"""

# **Groups of eight rows of the weight, blocks of four rows of $x$.** The weight's rows are taken eight at a time,
# so that `sum8` turns each row of $x$'s eight results into one vector store. With more than four rows of $x$, $x$
# is cut into blocks of up to four, and each block makes a pass over the group: the first pass reads the group's
# rows from memory, the others read them again from the first- or second-level cache (8 rows are 24 KB for
# $I = 768$, 96 KB for $I = 3072$), so the weight still leaves memory once per product.
#
# Why one row of the weight at a time, when reading two rows at once would let each load of $x$ serve both? On
# the test machine that was much slower from memory (15.9 against 24.1 GB/s at batch 4): two streams instead of one
# for the prefetcher to follow. In the passes that read from the cache it made no difference.
_KERNEL_GROUPS = r"""
// The rows `w` (8 of them, or fewer at the end of W) times the NX rows of one block of x: into rows
// n0... of `part` (8 partial-sum vectors per output) or, for a short group, straight into y
template <int NX>
static void block_pass(const float* w, int rows, const float* x, int n0, int64_t I,
                       __m256 (*part)[8], float* y, int64_t O, int64_t o, const float* bias) {
  __m256 out[4];
  for (int r = 0; r < rows; ++r) {
    row_times_x<NX>(w + r * I, x, I, out);
    for (int n = 0; n < NX; ++n) {
      if (rows == 8) part[n0 + n][r] = out[n];
      else y[(n0 + n) * O + o + r] = sum1(out[n]) + (bias ? bias[o + r] : 0.f);
    }
  }
}

// Groups g0 <= g < g1 of 8 rows of W times the N rows of x, in blocks of up to 4 rows
static void groups(const float* W, const std::vector<const float*>& blocks, int64_t N,
                   const float* bias, float* y, int64_t O, int64_t I, int64_t g0, int64_t g1) {
  __m256 part[16][8];
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t o = g * 8;
    const int rows = static_cast<int>(std::min<int64_t>(8, O - o));
    for (size_t k = 0; k < blocks.size(); ++k) {
      const int n0 = static_cast<int>(4 * k);
      const float* w = W + o * I;
      switch (std::min<int64_t>(4, N - n0)) {
        case 1: block_pass<1>(w, rows, blocks[k], n0, I, part, y, O, o, bias); break;
        case 2: block_pass<2>(w, rows, blocks[k], n0, I, part, y, O, o, bias); break;
        case 3: block_pass<3>(w, rows, blocks[k], n0, I, part, y, O, o, bias); break;
        default: block_pass<4>(w, rows, blocks[k], n0, I, part, y, O, o, bias); break;
      }
    }
    if (rows == 8) {
      const __m256 b = bias ? _mm256_loadu_ps(bias + o) : _mm256_setzero_ps();
      for (int64_t n = 0; n < N; ++n)
        _mm256_storeu_ps(y + n * O + o, _mm256_add_ps(sum8(part[n]), b));
    }
  }
}
"""

# **The op.** `gemv(x, weight, bias)` checks its inputs (a wrong call is an error that starts with `gemv:`, not a
# crash), interleaves $x$ block by block, and shares the groups of rows among the threads with `at::parallel_for`:
# PyTorch's own OpenMP pool, so the kernel uses the cores `torch.set_num_threads` gives it and waits in the same pool
# as every other op. Each thread gets one contiguous range of rows, one stream through memory. (Handing out smaller
# ranges as threads free up made no difference on the test machine.)
_KERNEL_OP = r"""
// y = x W^T + b for x [N, I] with N <= 16, W [O, I] and b [O], all fp32, contiguous, on the CPU
at::Tensor gemv(const at::Tensor& x_in, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_in.dim() == 2 && weight.dim() == 2 && x_in.size(1) == weight.size(1),
              "gemv: x [N, I] and weight [O, I] expected");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "gemv: fp32 only");
  TORCH_CHECK(x_in.device().is_cpu() && weight.device().is_cpu() && weight.is_contiguous(),
              "gemv: CPU tensors and a contiguous weight expected");
  const int64_t N = x_in.size(0), I = x_in.size(1), O = weight.size(0);
  TORCH_CHECK(N >= 1 && N <= 16 && I % 8 == 0,
              "gemv: 1 to 16 rows of x and a multiple of 8 inputs expected");
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == O,
                "gemv: a contiguous fp32 bias [O] expected");
    b = bias->const_data_ptr<float>();
  }
  // Blocks of up to 4 rows of x, each interleaved by chunks of 8 numbers: [n, I] -> [I/8, n, 8]
  const auto x = x_in.contiguous();
  std::vector<at::Tensor> kept;
  std::vector<const float*> blocks;
  for (int64_t n0 = 0; n0 < N; n0 += 4) {
    const int64_t n = std::min<int64_t>(4, N - n0);
    kept.push_back(x.narrow(0, n0, n).view({n, I / 8, 8}).transpose(0, 1).contiguous());
    blocks.push_back(kept.back().const_data_ptr<float>());
  }
  auto y = at::empty({N, O}, x.options());
  const float* wp = weight.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, (O + 7) / 8, 16, [&](int64_t g0, int64_t g1) {
    groups(wp, blocks, N, b, yp, O, I, g0, g1);
  });
  return y;
}

TORCH_LIBRARY(neox_cpu, m) {
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias) -> Tensor", &gemv);
}
"""

# The whole file, as the compiler sees it, and the name of its build (PyTorch's folder for it and the library file)
GEMV_SOURCE = _KERNEL_HEADERS + _KERNEL_SUMS + _KERNEL_ROW + _KERNEL_GROUPS + _KERNEL_OP
KERNEL_NAME = "neox_cpu_gemv"


class KernelUnavailable(RuntimeError):
    """The CPU matrix-vector kernel cannot be built or loaded on this machine; the message says why."""


# Built and loaded once per process; the op then lives in `torch.ops.neox_cpu`, which is process-wide by nature.
# Building needs `ninja` on the `PATH`: the `ninja` package's own copy is put there for the build, so that the
# kernel builds from a virtual environment that is not activated.
def _build_gemv():
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        raise KernelUnavailable(f"it is written for Linux on x86-64 (this is {sys.platform} on {platform.machine()})")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise KernelUnavailable("this CPU has no AVX2")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"there is no C++ compiler ({compiler!r} is not on the PATH; on Debian or Ubuntu: "
                                f"apt install g++)")
    from torch.utils import cpp_extension
    path = os.environ.get("PATH", "")
    try:
        import ninja
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    try:
        # The source goes into PyTorch's build folder for the kernel, rewritten only when it changed (PyTorch
        # rebuilds when the source does). `load`, not `load_inline`: the latter adds `torch/extension.h`, which
        # needs Python's C headers (`python3-dev`), which many machines lack.
        folder = Path(cpp_extension._get_build_directory(KERNEL_NAME, verbose=False))
        source = folder / f"{KERNEL_NAME}.cpp"
        if not (folder / f"{KERNEL_NAME}.so").exists():
            print("Compiling the CPU matrix-vector kernel (once on this machine, about 10 s)...", file=sys.stderr,
                  flush=True)
        if not source.exists() or source.read_text() != GEMV_SOURCE:
            partial = source.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(GEMV_SOURCE)
            partial.replace(source)
        cpp_extension.load(KERNEL_NAME, sources=[str(source)], is_python_module=False,
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as e:  # a missing ninja, a compiler error, a build folder that cannot be written
        raise KernelUnavailable(f"building it failed: {_first_error(str(e))}") from e
    finally:
        os.environ["PATH"] = path
    return torch.ops.neox_cpu.gemv


# The line of a build log that says what went wrong: the compiler's first error, or else the last line
def _first_error(log: str) -> str:
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()] or ["(no message)"]
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("Error building")]
    return (errors[0] if errors else lines[-1])[:300]


def _built_library() -> Optional[Path]:
    # Where PyTorch keeps the build (a private helper of `cpp_extension`, so anything may go wrong): whether it is
    # there decides whether a small model uses the kernel by default
    try:
        from torch.utils import cpp_extension
        return Path(cpp_extension._get_build_directory(KERNEL_NAME, verbose=False), f"{KERNEL_NAME}.so")
    except Exception:
        return None


def _is_built() -> bool:
    built = _built_library()
    return built is not None and built.exists()


# The outcome, the op or the reason it is missing, is kept for the process: a failed build is not retried
@functools.lru_cache(maxsize=None)
def _gemv_or_reason():
    try:
        return _build_gemv(), None
    except KernelUnavailable as e:
        return None, str(e)


def cpu_gemv_kernel():
    r"""
    The kernel, `gemv(x [N, I], weight [O, I], bias [O] or None) -> [N, O]`, built the first time it is asked for
    on this machine. Raises `KernelUnavailable` with the reason when it cannot be built here.
    """
    op, reason = _gemv_or_reason()
    if op is None:
        raise KernelUnavailable(f"the CPU matrix-vector kernel is not available: {reason}")
    return op


class DecodingLinear(nn.Linear):
    r"""
    ## A linear layer for decoding

    An `nn.Linear` (same `weight` `[out, in]` and `bias` `[out]`, same storage, same state dict, and
    `isinstance(m, nn.Linear)` still holds) whose `forward` picks, by the number of rows of input $N$:

    * $N \le$ `MAX_KERNEL_ROWS`, without gradients: the kernel above, when `prepare_for_cpu_decoding` found it;
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_out, n_in = self.weight.shape
        rows = x.numel() // n_in
        if x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        # The kernel has no backward pass: it only runs without gradients (generation, evaluation)
        if (self._gemv is not None and 0 < rows <= MAX_KERNEL_ROWS and n_in % 8 == 0 and not torch.is_grad_enabled()
                and self.weight.is_contiguous() and (self.bias is None or self.bias.is_contiguous())):
            return self._gemv(x.reshape(rows, n_in), self.weight, self.bias).view(*x.shape[:-1], n_out)
        if not self._use_halves or rows > MAX_BMM_TOKENS:
            return F.linear(x, self.weight, self.bias)
        w_halves, b_halves = self._halves()
        # `[..., in]` $\rightarrow$ `[2, N, in]`, the same rows for both halves (a view)
        x_rows = x.reshape(1, rows, n_in).expand(2, rows, n_in)
        y = torch.bmm(x_rows, w_halves) if b_halves is None else torch.baddbmm(b_halves, x_rows, w_halves)
        # `[2, N, out/2]` $\rightarrow$ `[N, 2, out/2]` $\rightarrow$ `[..., out]` (no copy for one row)
        return y.transpose(0, 1).reshape(*x.shape[:-1], n_out)


# Only fp32 weights on a CPU with more than one row and column (a `[1, n]` weight is a dot product, whatever its
# layout)
def _fits(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (type(layer) in (nn.Linear, DecodingLinear) and weight is not None and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and weight.dim() == 2 and min(weight.shape) > 1)


def _as_class(linear: nn.Linear, cls: type) -> nn.Linear:
    # The same layer as an `nn.Linear` or a `DecodingLinear`, holding the very same `Parameter` objects (an
    # optimizer or a caller holding them still sees the model's parameters), built without allocating weights
    if type(linear) is cls:
        return linear
    layer = cls.__new__(cls)
    kept = ("_kept", "_halves", "_gemv", "_use_halves")
    layer.__dict__.update({k: v for k, v in linear.__dict__.items() if not k.startswith(kept)})
    layer._parameters = dict(linear._parameters)
    return layer


# Outside inference mode even when called inside it, so that re-laid weights stay usable for training
@torch.inference_mode(False)
@torch.no_grad()
def prepare_for_cpu_decoding(model: nn.Module, halves: Optional[bool] = None,
                             kernel: Optional[bool] = None) -> nn.Module:
    r"""
    ## The step

    Prepare `model` (a `NeoXModel`, or any module) for decoding on a CPU, in place, and return it. Each fp32
    `nn.Linear` on the CPU either

    * becomes a `DecodingLinear`, its weight left where it is, when the kernel is used or with `halves`; or
    * gets its weight stored column by column (neither: one thread, no kernel).

    `kernel`: use the matrix-vector kernel above for products of up to `MAX_KERNEL_ROWS` rows. By default it is
    used when it is already built on this machine, or when the weights it would multiply take at least
    `BUILD_KERNEL_BYTES` and it can be built here (about 10 s, once); when it cannot, a line on stderr says why and
    the rest works as without it. `kernel=True` builds it whatever the model's size and raises `KernelUnavailable`
    when it cannot; `kernel=False` never uses it.

    `halves`: multiply the products of up to `MAX_BMM_TOKENS` rows that the kernel does not take by the two halves
    of the weight at once; by default when PyTorch uses more than one thread. Layers with an odd number of rows
    never use the halves.

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
    if kernel or (kernel is None and (n_bytes >= BUILD_KERNEL_BYTES or _is_built())):
        gemv, reason = _gemv_or_reason()
        if gemv is None and kernel:
            raise KernelUnavailable(f"the CPU matrix-vector kernel is not available: {reason}")
        if gemv is None:
            print(f"prepare_for_cpu_decoding: decoding without the CPU matrix-vector kernel, since {reason}",
                  file=sys.stderr)
    for parent, name, layer in layers:
        weight = layer.weight
        use_halves = halves and weight.shape[0] % 2 == 0
        row_major = use_halves or gemv is not None
        # Assigning `.data` keeps the `Parameter` object; the old storage is freed (or, for a weight
        # memory-mapped from a checkpoint, unmapped) before the next weight is copied
        if row_major and not weight.is_contiguous():
            weight.data = weight.data.contiguous()
        if not row_major and not weight.t().is_contiguous():
            weight.data = column_major(weight.data)
        layer = _as_class(layer, DecodingLinear if row_major else nn.Linear)
        if row_major:
            layer._gemv, layer._use_halves = gemv, use_halves
        setattr(parent, name, layer)
    return model
