r"""
# A matrix-vector product for decoding on a CPU

`prepare_for_cpu_decoding` (`cpu_decoding.py`, which says why MKL's products are slow here) sends the products
of decoding, up to `MAX_KERNEL_ROWS` rows of input, through this small C++ kernel of ours. It can be used alone:

```python
gemv = cpu_gemv_kernel()
y = gemv(x, weight, bias)    # x [N, I], weight [O, I], bias [O] or None -> [N, O], all fp32
```

It is compiled on the user's machine the first time it is needed (about 10 s; PyTorch keeps the build in
`~/.cache/torch_extensions`, or `$TORCH_EXTENSIONS_DIR`, and later processes load it in a fraction of a second).
It reads the weight as loaded, `[out, in]` row by row, so nothing is copied. On the 2-core test machine, over the
49 products of a step, it reads 27.7 GB/s at batch 1 with two threads (the `bmm` halves: 20.8 in the same run),
23.0 at batch 4 (13.8), 13.3 at batch 8 (11.7) and 10.5 at batch 12 (9.8); with one thread, 19.3 GB/s at batch 1
(column-major MKL: 18.5) and 8.7 at batch 8 (6.0). At 16 rows the two are level, and above that `F.linear` takes
over.

The kernel needs Linux on x86-64 with AVX2 (every x86 CPU since 2013-2015), a C++ compiler and `ninja` (a
dependency of this package); without them `prepare_for_cpu_decoding` falls back to the halves and says why.
Summing in a different order than MKL changes the results in the last bits only: the tests compare it with the
float64 product and check that the prepared model's greedy tokens are the plain model's.
"""

import functools
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

# The most rows of input the kernel takes (decoding at batch 16 or less); above that a product is a
# matrix-matrix product, MKL's GEMM is bound by arithmetic and already uses every core
MAX_KERNEL_ROWS = 16

# ## The kernel, piece by piece
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


# The outcome, the op or the reason it is missing, is kept for the process: a failed build is not retried
@functools.lru_cache(maxsize=None)
def gemv_or_reason():
    """The kernel and `None`, or `None` and why it cannot be built here."""
    try:
        return _build_gemv(), None
    except KernelUnavailable as e:
        return None, str(e)


def cpu_gemv_kernel():
    r"""
    The kernel, `gemv(x [N, I], weight [O, I], bias [O] or None) -> [N, O]`, built the first time it is asked for
    on this machine. Raises `KernelUnavailable` with the reason when it cannot be built here.
    """
    op, reason = gemv_or_reason()
    if op is None:
        raise KernelUnavailable(f"the CPU matrix-vector kernel is not available: {reason}")
    return op
