r"""
# Matrix-vector products for decoding on a CPU

`prepare_for_cpu_decoding` (`cpu_decoding.py`, which says why MKL's products are slow here) sends the products
of decoding through this small C++ kernel of ours: those of the linear layers, up to `MAX_KERNEL_ROWS` rows of
input (with the FFN's GELU applied as the outputs are written), and the whole of attention for one new token
(rotary embeddings, the cache's new slot, its query times the cached keys, its softmax times the cached values). A
third op, `layer_step` (at the end of this page), runs a whole transformer layer for one new token with them. The
first two can be used alone:

```python
gemv = cpu_gemv_kernel()
y = gemv(x, weight, bias)    # x [N, I], weight [O, I], bias [O] or None -> [N, O], all fp32
h = gemv(x, weight, bias, ACTIVATIONS["gelu"])   # GELU(x W^T + b), in the same pass
step = attention_step_kernel()
# qkv [B, 1, 3C] from query_key_value; the cache's k and v buffers [B, H, T_max, D]; the rotary tables
out = step(qkv, k_cache, v_cache, slot, cos, sin, first)   # -> [B, 1, C]
```

It is compiled on the user's machine the first time it is needed (about 10 s; PyTorch keeps the build in
`~/.cache/torch_extensions`, or `$TORCH_EXTENSIONS_DIR`, and later processes load it in a fraction of a second).
It reads the weight as loaded, `[out, in]` row by row, so nothing is copied.

At batch 1 a product is bound by memory, and any sensible kernel reads at nearly memory speed; from batch 4 on it
is bound by how fast one core multiplies and adds, which is what the tiles below are about (at batch 8 they read
the weights about 1.7 times faster than one row at a time; the table is in `benchmarks/RESULTS.md`, "CPU decoding").

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

# The most rows of input the kernel takes (`kMaxRows` in the C++): decoding at batch 32 or less. On the test
# machine the kernel multiplies faster than MKL's matrix-matrix product up to about 48 rows (at 32 rows, 109 against
# 71 GFLOP/s; at 64, level); above 32 a product is left to MKL, which is the better choice on most machines there
MAX_KERNEL_ROWS = 32

# What the kernel can apply to the products as it writes them (`activation`, `Activation` in the C++), by the
# names of `NeoXConfig.activation`: nothing, the exact GELU, or its tanh approximation
ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2}

# The residual connections `layer_step` can compute (`Residual` in the C++): `TransformerLayer`'s sequential one,
# its parallel one, and the parallel one with tied layer norms
RESIDUALS = {"sequential": 0, "parallel": 1, "parallel_tied": 2}

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
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

constexpr int64_t kMaxRows = 32;  // rows of x at most: MAX_KERNEL_ROWS
enum Activation : int64_t { kNone = 0, kGelu = 1, kGeluTanh = 2 };  // as in ACTIVATIONS
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

# **Four rows of the weight times up to three rows of $x$.** This is the kernel's core, a *tile*: the `R` rows of
# `w` and the `NB` rows of $x$ are read together, 8 numbers at a time, and every chunk of a row of `w` is multiplied
# into every row of $x$ with a fused multiply-add into its own accumulator. $x$ has been interleaved by chunks of 8,
# `[I/8, NB, 8]`, so the `NB` vectors that a chunk of `w` meets are side by side.
#
# Why four by three. A core can start two multiply-adds per cycle, but it can load only about two vectors per
# cycle, and each multiply-add into an accumulator must wait for the previous one into the same accumulator (4
# cycles). With one row of `w` and four of $x$, each chunk of $x$ is loaded for a single multiply-add and only four
# are in flight: the first version of this kernel ran at one multiply-add per cycle, half the core. Four rows of `w`
# by three of $x$ load 7 vectors for 12 multiply-adds, and keep 12 in flight, in 12 accumulators plus the 4 chunks
# of `w`: all sixteen of AVX2's registers. With fewer rows (the last rows of $x$, or of a weight that is not a
# multiple of 8 rows) several accumulators per pair `U` take the chunks in turn, to keep about 8 in flight.
#
# **Prefetching.** Reading four rows at once is four streams through memory, and the processor's own prefetcher
# follows them badly: on the test machine, at batch 1 with two threads, these tiles read 24 GB/s from memory where
# one row at a time reads 36, and at batch 4 they gained little over the first version. So the tile asks for the
# memory it will need next itself: while it works on these rows it prefetches a slice of the rows eight ahead into
# the second-level cache (`_MM_HINT_T1`), one stream, in order, spread evenly over its steps so that memory stays
# busy all the time rather than in bursts. By the time the tile gets there, its rows are in the cache.
_KERNEL_TILE = r"""
// R <= 4 rows `w` of W (a row every I numbers) times NB <= 3 rows of x, interleaved [I/8, NB, 8]:
// out[n0 + n][r0 + r] gets 8 partial sums of the product of row n and row r. Meanwhile the `lines` cache
// lines from `ahead` on are prefetched, spread evenly over the steps.
template <int R, int NB>
static inline void tile(const float* __restrict w, int64_t I, const float* __restrict x, __m256 (*out)[8],
                        int r0, int n0, const char* ahead, int64_t lines) {
  constexpr int U = R * NB >= 8 ? 1 : (8 / (R * NB) > 4 ? 4 : 8 / (R * NB));  // accumulators per pair
  __m256 acc[R][NB][U];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int n = 0; n < NB; ++n)
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) acc[r][n][u] = _mm256_setzero_ps();
  const int64_t chunks = I / 8, steps = chunks / U;
  int64_t owed = 0;  // prefetches owed, in units of 1/steps: `lines` in all by the last step
  for (int64_t s = 0; s < steps; ++s) {
    for (owed += lines; owed >= steps; owed -= steps, ahead += 64) _mm_prefetch(ahead, _MM_HINT_T1);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const int64_t c = s * U + u;
      __m256 wv[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + r * I + c * 8);
#pragma GCC unroll 3
      for (int n = 0; n < NB; ++n) {
        const __m256 xv = _mm256_loadu_ps(x + (c * NB + n) * 8);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r][n][u] = _mm256_fmadd_ps(wv[r], xv, acc[r][n][u]);
      }
    }
  }
  for (int64_t c = steps * U; c < chunks; ++c) {  // the last chunks, fewer than U
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * I + c * 8);
#pragma GCC unroll 3
      for (int n = 0; n < NB; ++n)
        acc[r][n][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (c * NB + n) * 8), acc[r][n][0]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int n = 0; n < NB; ++n) {
      __m256 a = acc[r][n][0];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[r][n][u]);
      out[n0 + n][r0 + r] = a;
    }
}

// The tile for a block of NB = 1, 2 or 3 rows of x
template <int R>
static inline void tile_for(int NB, const float* w, int64_t I, const float* x, __m256 (*out)[8], int r0, int n0,
                            const char* ahead, int64_t lines) {
  switch (NB) {
    case 1: tile<R, 1>(w, I, x, out, r0, n0, ahead, lines); break;
    case 2: tile<R, 2>(w, I, x, out, r0, n0, ahead, lines); break;
    default: tile<R, 3>(w, I, x, out, r0, n0, ahead, lines); break;
  }
}
"""

# **Groups of eight rows of the weight, blocks of three rows of $x$.** The weight's rows are taken eight at a time,
# so that `sum8` turns each row of $x$'s eight results into one vector store. Each half of a group, four rows, is a
# tile for every block of $x$ in turn: the first block reads the four rows from memory (or rather from the cache,
# where the prefetches put them), the others read them again from the cache (four rows are 12 KB for $I = 768$, 48
# KB for $I = 3072$), so the weight still leaves memory once per product. Each block prefetches its share of the
# next rows, so that the prefetches are spread over all the blocks' work (prefetching the whole next tile during the
# first block was slower: memory was busy in bursts). With a single row of $x$ there is nothing to share a load of
# $x$ with, so the group's rows go one at a time instead, a single stream that the processor's prefetcher follows by
# itself (with one thread, 20 against 18 GB/s for the tiles). The last rows of a weight whose rows are not a
# multiple of 8 go one at a time too, summed with `sum1`, without prefetching.
_KERNEL_GROUPS = r"""
struct Block { int n0, nb; const float* x; };  // rows n0 .. n0 + nb - 1 of x, interleaved

// Groups g0 <= g < g1 of 8 rows of W [O, I] times every block of x, into y [N, O], plus the bias, through the
// activation `act`
static void groups(const float* W, int64_t O, int64_t I, const std::vector<Block>& blocks, int64_t N,
                   const float* bias, int64_t act, float* y, int64_t g0, int64_t g1) {
  __m256 part[kMaxRows][8];
  const int64_t K = static_cast<int64_t>(blocks.size());
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t o = g * 8;
    if (O - o < 8) {  // the last few rows
      for (int64_t r = 0; o + r < O; ++r) {
        for (const Block& b : blocks) tile_for<1>(b.nb, W + (o + r) * I, I, b.x, part, 0, b.n0, nullptr, 0);
        for (int64_t n = 0; n < N; ++n)
          y[n * O + o + r] = activate1(sum1(part[n][0]) + (bias ? bias[o + r] : 0.f), act);
      }
      continue;
    }
    if (N == 1) {  // one row of x: the rows one after another, a single stream
      for (int r = 0; r < 8; ++r) tile<1, 1>(W + (o + r) * I, I, blocks[0].x, part, r, 0, nullptr, 0);
    } else {
      for (int half = 0; half < 2; ++half) {
        const float* w = W + (o + 4 * half) * I;
        // The same four rows of the next group (none after the last), 4 I numbers, one slice per block
        const int64_t next = o + 4 * half + 8;
        const int64_t lines = next < O ? std::min<int64_t>(4, O - next) * I * 4 / 64 : 0;
        const char* ahead = reinterpret_cast<const char*>(W + std::min(next, O) * I);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t first = lines * k / K, last = lines * (k + 1) / K;
          tile_for<4>(blocks[k].nb, w, I, blocks[k].x, part, 4 * half, blocks[k].n0, ahead + 64 * first,
                      last - first);
        }
      }
    }
    const __m256 b = bias ? _mm256_loadu_ps(bias + o) : _mm256_setzero_ps();
    for (int64_t n = 0; n < N; ++n) _mm256_storeu_ps(y + n * O + o, activate8(_mm256_add_ps(sum8(part[n]), b), act));
  }
}
"""

# **The op.** `gemv(x, weight, bias, activation)` checks its inputs (a wrong call is an error that starts with
# `gemv:`, not a crash; `activation` is one of `ACTIVATIONS`, GELU is below), interleaves $x$ block by block, and
# shares the groups of rows among the threads with `at::parallel_for`: PyTorch's own OpenMP pool, so the kernel
# uses the cores `torch.set_num_threads` gives it and waits in the same pool as every other op. Each thread gets one
# contiguous range of rows, one stream through memory. (Handing out smaller ranges as threads free up made no
# difference on the test machine.)
_KERNEL_OP = r"""
// y = act(x W^T + b) into y [N, O], for x [N, I] with N <= kMaxRows, W [O, I] and b [O] (or null)
static void product(const float* x, int64_t N, int64_t I, const float* W, int64_t O, const float* bias, int64_t act,
                    float* y) {
  // Blocks of up to 3 rows of x, each interleaved by chunks of 8 numbers: [nb, I] -> [I/8, nb, 8]
  std::vector<std::vector<float>> kept;
  std::vector<Block> blocks;
  kept.reserve((N + 2) / 3);
  for (int64_t n0 = 0; n0 < N; n0 += 3) {
    const int64_t nb = std::min<int64_t>(3, N - n0);
    if (nb == 1) {  // a single row is its own interleaving
      blocks.push_back({static_cast<int>(n0), 1, x + n0 * I});
      continue;
    }
    kept.emplace_back(nb * I);
    float* out = kept.back().data();
    for (int64_t c = 0; c < I / 8; ++c)
      for (int64_t n = 0; n < nb; ++n) std::memcpy(out + (c * nb + n) * 8, x + (n0 + n) * I + c * 8, 8 * sizeof(float));
    blocks.push_back({static_cast<int>(n0), static_cast<int>(nb), out});
  }
  at::parallel_for(0, (O + 7) / 8, 16, [&](int64_t g0, int64_t g1) {
    groups(W, O, I, blocks, N, bias, act, y, g0, g1);
  });
}

// The op: y = act(x W^T + b) for x [N, I], W [O, I] and b [O], all fp32, contiguous, on the CPU; act: kNone, kGelu
// or kGeluTanh
at::Tensor gemv(const at::Tensor& x_in, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, int64_t activation) {
  TORCH_CHECK(x_in.dim() == 2 && weight.dim() == 2 && x_in.size(1) == weight.size(1),
              "gemv: x [N, I] and weight [O, I] expected");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "gemv: fp32 only");
  TORCH_CHECK(x_in.device().is_cpu() && weight.device().is_cpu() && weight.is_contiguous(),
              "gemv: CPU tensors and a contiguous weight expected");
  const int64_t N = x_in.size(0), I = x_in.size(1), O = weight.size(0);
  TORCH_CHECK(N >= 1 && N <= kMaxRows && I % 8 == 0,
              "gemv: 1 to ", kMaxRows, " rows of x and a multiple of 8 inputs expected");
  TORCH_CHECK(activation >= kNone && activation <= kGeluTanh, "gemv: activation 0 (none), 1 (GELU) or 2 (tanh "
              "GELU) expected");
  const float* b = nullptr;
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == O,
                "gemv: a contiguous fp32 bias [O] expected");
    b = bias->const_data_ptr<float>();
  }
  const auto x = x_in.contiguous();
  auto y = at::empty({N, O}, x.options());
  product(x.const_data_ptr<float>(), N, I, weight.const_data_ptr<float>(), O, b, activation, y.data_ptr<float>());
  return y;
}

"""

# ## GELU, as the outputs are written
#
# The FFN's first product is followed by its GELU (`FFN` on `model.py`'s page). As PyTorch's op, inside a decoding
# step, GELU took 40-50 us a layer on the test machine for 3,072 numbers, where the same op called twice in a row
# takes 8-12: between two calls the step streams some 40 MB of weights through the caches, which evicts the op's
# code and data. A quarter of a millisecond to half of one per step of Pythia-160M. So the kernel applies it itself,
# to each vector of 8 outputs as it stores them (`activation` 1 or 2), at no cost that we could measure.
#
# **The exponential.** GELU needs $e^x$, as does the softmax of attention below, and AVX2 has no instruction for it.
# `exp8` computes it for 8 numbers at once the classic way (Cephes' `expf`): $x = n \ln 2 + r$ with $n$ a whole
# number and $|r| \le \ln 2 / 2$ ($\ln 2$ split in two constants, so that $n \ln 2$ is exact), $e^r$ by a
# polynomial of degree 7, and $2^n$ written straight into the exponent bits. It is as accurate as `expf` (a float's
# last bit or so). It is only used for $x \le 0$, clamped at $-87$ where $e^x$ leaves the normal floats.
_KERNEL_EXP = r"""
// e^x for 8 numbers x <= 0
static inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);   // x - n ln 2, in two steps
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));  // e^r
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}
"""


# **GELU of 8 numbers.** The exact GELU is $x \Phi(x) = \frac{x}{2}\big(1 + \operatorname{erf}(x / \sqrt 2)\big)$.
# For $z = |x| / \sqrt 2$, formula 7.1.26 of Abramowitz and Stegun gives
# $1 - \operatorname{erf}(z) \approx c = (a_1 t + a_2 t^2 + a_3 t^3 + a_4 t^4 + a_5 t^5)\, e^{-z^2}$ with
# $t = 1 / (1 + p z)$, within $1.5 \times 10^{-7}$. So $\Phi(x) = 1 - c/2$ for $x \ge 0$ and $c/2$ for $x < 0$: a
# negative $x$, whose GELU is small, gets it from $c$ itself, without the cancellation in $1 + \operatorname{erf}$.
# The tanh approximation needs $\tanh u = \operatorname{sign}(u)\,(1 - e^{-2|u|}) / (1 + e^{-2|u|})$ for
# $u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$. Both call `exp8` on numbers $\le 0$ only. `activate1` is the same for
# one number, with the C library's `erf` and `tanh` (for the last rows of a weight).
_KERNEL_GELU = r"""
static inline __m256 gelu8(__m256 x) {
  const __m256 z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), x), _mm256_set1_ps(0.70710678118654752f));
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), z,
                                                                      _mm256_set1_ps(1.f)));
  __m256 poly = _mm256_set1_ps(1.061405429f);
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
  const __m256 half_c = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(poly, t), _mm256_set1_ps(0.5f)),
                                      exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z))));
  const __m256 phi = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), half_c), half_c,
                                      _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_mul_ps(x, phi);
}

static inline __m256 gelu_tanh8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.79788456080286536f),
                                 _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), _mm256_mul_ps(x, x), x));
  const __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.f), _mm256_andnot_ps(sign, u)));  // e^{-2|u|}
  const __m256 tanh_abs = _mm256_div_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), e), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  const __m256 tanh_u = _mm256_or_ps(tanh_abs, _mm256_and_ps(u, sign));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.f), tanh_u));
}

static inline __m256 activate8(__m256 x, int64_t act) {
  return act == kGelu ? gelu8(x) : act == kGeluTanh ? gelu_tanh8(x) : x;
}

static inline float activate1(float x, int64_t act) {
  if (act == kGelu) return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f));
  if (act == kGeluTanh) return 0.5f * x * (1.f + std::tanh(0.79788456080286536f * (x + 0.044715f * x * x * x)));
  return x;
}
"""

# ## Attention for one new token
#
# A decoding step's attention is two more matrix-vector products per head: the new query times the cached keys,
# $s = K q / \sqrt{D}$, `[S, D]` by `[D]`, and the softmax of the scores times the cached values, $V^\top p$.
# Like the weights, the cache is read once per step and used for one multiply-add per number, so attention too is
# bound by memory: at batch 8 with 192 cached tokens, Pythia-160M's cache is 113 MB, a fifth of the weights.
# PyTorch's fused attention is written for many queries at a time; for a single one, reading a cache that the
# weights have just pushed out of the caches, it read 10-14 GB/s on the test machine, and took 5-9 ms of a 40 ms
# step at batch 8 (87 us a layer at batch 1, one thread, against the ~30 us that reading its 0.8 MB takes).

# **One head.** For a row $b$ and head $h$, over the keys `first .. S - 1` that the row may see (a row with left
# padding starts at its first real token), in three passes over a buffer of $S$ scores:
#
# 1. the scores, 8 keys at a time: 8 accumulators, one per key, take the $D/8$ chunks of the query against
#    the chunks of each key (the 8 keys are 8 consecutive rows of the cache, $8D$ numbers in one stream), and
#    `sum8` turns them into 8 scores in one vector;
# 2. the softmax's numerators $e^{s_j - \max s}$ and their sum, 8 at a time;
# 3. the output, $\sum_j e^{s_j - \max s} v_j$, one value row at a time into $D/8$ accumulators, divided by the sum
#    at the end.
_KERNEL_HEAD = r"""
// softmax(q k_j / sqrt(D)) over keys first <= j < S, times v: q [D], key and value rows every `row` numbers,
// out [D]; `p` has room for S scores
static void one_head(const float* q, const float* k, const float* v, int64_t row, int64_t first, int64_t S,
                     int64_t D, float scale, float* p, float* out) {
  const int64_t chunks = D / 8;
  int64_t j = first;
  for (; j + 8 <= S; j += 8) {
    __m256 acc[8];
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const __m256 qv = _mm256_loadu_ps(q + c * 8);
      for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + (j + r) * row + c * 8), acc[r]);
    }
    _mm256_storeu_ps(p + j, _mm256_mul_ps(sum8(acc), _mm256_set1_ps(scale)));
  }
  for (; j < S; ++j) {  // the last keys, fewer than 8
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c * 8), _mm256_loadu_ps(k + j * row + c * 8), acc);
    p[j] = sum1(acc) * scale;
  }
  float top = p[first];
  for (j = first + 1; j < S; ++j) top = std::max(top, p[j]);
  __m256 total = _mm256_setzero_ps();
  float tail = 0.f;
  for (j = first; j + 8 <= S; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), _mm256_set1_ps(top)));
    _mm256_storeu_ps(p + j, e);
    total = _mm256_add_ps(total, e);
  }
  for (; j < S; ++j) tail += (p[j] = std::exp(p[j] - top));
  const float norm = 1.f / (sum1(total) + tail);
  __m256 acc[32];  // D <= 256
  for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm256_setzero_ps();
  for (j = first; j < S; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * row + c * 8), acc[c]);
  }
  for (int64_t c = 0; c < chunks; ++c) _mm256_storeu_ps(out + c * 8, _mm256_mul_ps(acc[c], _mm256_set1_ps(norm)));
}
"""

# **Rotary embeddings.** The new token's query and key are rotated by the angles of its position $m$ (the formula
# is on `RotaryEmbedding`'s page): the first $d$ features in pairs $(i, i + d/2)$, the rest copied as they are.
# `c` and `s` are the rows of the tables of $\cos m\theta$ and $\sin m\theta$ for position $m$.
_KERNEL_ROTARY = r"""
static inline void rotate(const float* x, const float* c, const float* s, int64_t d, int64_t D, float* out) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * c[i] - x[i + half] * s[i];
    out[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
  }
  std::memcpy(out + d, x + d, (D - d) * sizeof(float));
}
"""

# **The op.** `attention_step(qkv, k_cache, v_cache, slot, cos, sin, first)` is all of a decoding step's attention
# between the two linear layers, for one new token per row, in one call: where `Attention.forward` takes some 30
# small PyTorch ops a layer (views, the rotary embeddings' slices and products, the cache's copies, the attention
# itself, each a few microseconds), it takes one. It reads `qkv` `[B, 1, 3C]` as `query_key_value` made it, head
# by head `[H, 3, D]`; rotates the query and the key of each head by the angles of the token's position, row $b$'s
# position being its slot minus its left padding `first[b]`; writes the key and the value into slot `slot` of the
# cache's buffers `[B, H, T_max, D]` (`KVCache.buffers`); and attends over the row's keys `first[b] .. slot`
# with `one_head`. The result is `[B, 1, C]`, the heads side by side, ready for `dense`. The heads are shared
# among the threads, a few each; each writes and reads only its own rows of the cache.
_KERNEL_ATTENTION_OP = r"""
// Checks the cache's buffers k_cache and v_cache [B, H, T_max, D], the slot, the rotary tables and `first` for
// `op`; returns each row's first key: start[b] .. slot
static std::vector<int64_t> check_step(const char* op, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                       int64_t slot, const at::Tensor& cos, const at::Tensor& sin,
                                       const std::optional<at::Tensor>& first) {
  for (const auto* t : {&k_cache, &v_cache, &cos, &sin})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(), op, ": fp32 CPU tensors expected");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() && k_cache.strides() == v_cache.strides() &&
              k_cache.stride(3) == 1, op, ": k_cache and v_cache [B, H, T_max, D] expected, laid out alike, rows "
              "of D contiguous");
  const int64_t B = k_cache.size(0), T_max = k_cache.size(2), D = k_cache.size(3);
  TORCH_CHECK(D % 8 == 0 && D <= 256, op, ": D a multiple of 8 up to 256 expected");
  TORCH_CHECK(slot >= 0 && slot < T_max, op, ": slot outside the cache");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) > slot && cos.size(1) % 2 == 0 &&
              cos.size(1) <= D && cos.is_contiguous() && sin.is_contiguous(),
              op, ": rotary tables cos and sin [L, d] expected, contiguous, L > slot, d even, d <= D");
  // Row b attends to the keys start[b] .. slot, from the position of its first real token; a row that is still
  // padding at `slot` sees only its own slot, at position 0, as in `Attention._mask`
  std::vector<int64_t> start(B, 0);
  if (first) {
    TORCH_CHECK(first->scalar_type() == at::kLong && first->dim() == 1 && first->size(0) == B,
                op, ": first [B] (int64) expected");
    const auto f = first->contiguous();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(f.const_data_ptr<int64_t>()[b] >= 0, op, ": first[b] must not be negative");
      start[b] = std::min(f.const_data_ptr<int64_t>()[b], slot);
    }
  }
  return start;
}

// The attention of one new token per row into out [B, HD], from qkv [B, 3HD] (checked by `check_step`)
static void attend_step(const float* qkv, at::Tensor& k_cache, at::Tensor& v_cache, int64_t slot,
                        const at::Tensor& cos, const at::Tensor& sin, const std::vector<int64_t>& start, float* out) {
  const int64_t B = k_cache.size(0), H = k_cache.size(1), D = k_cache.size(3), d = cos.size(1);
  const int64_t row = k_cache.stride(2);
  const float *c = cos.const_data_ptr<float>(), *s = sin.const_data_ptr<float>();
  float *kp = k_cache.data_ptr<float>(), *vp = v_cache.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> p(slot + 1);
    float q[256];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, h = i % H, m = slot - start[b];
      const float* head = qkv + (b * H + h) * 3 * D;
      float* k = kp + b * k_cache.stride(0) + h * k_cache.stride(1);
      float* v = vp + b * v_cache.stride(0) + h * v_cache.stride(1);
      rotate(head, c + m * d, s + m * d, d, D, q);
      rotate(head + D, c + m * d, s + m * d, d, D, k + slot * row);
      std::memcpy(v + slot * row, head + 2 * D, D * sizeof(float));
      one_head(q, k, v, row, start[b], slot + 1, D, scale, p.data(), out + i * D);
    }
  });
}

// The op: qkv [B, 1, 3HD] (head by head: query, key, value), the cache's buffers k_cache and v_cache
// [B, H, T_max, D], the token's slot, the rotary tables cos and sin [L, d], and first [B] (int64) or none: row b's
// first real slot. -> [B, 1, HD]
at::Tensor attention_step(const at::Tensor& qkv, at::Tensor& k_cache, at::Tensor& v_cache, int64_t slot,
                          const at::Tensor& cos, const at::Tensor& sin, const std::optional<at::Tensor>& first) {
  const auto start = check_step("attention_step", k_cache, v_cache, slot, cos, sin, first);
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.device().is_cpu(), "attention_step: fp32 CPU tensors expected");
  const int64_t B = k_cache.size(0), H = k_cache.size(1), D = k_cache.size(3);
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(0) == B && qkv.size(1) == 1 && qkv.size(2) == 3 * H * D &&
              qkv.is_contiguous(), "attention_step: qkv [B, 1, 3HD] contiguous expected, B, H, D as in the cache");
  auto out = at::empty({B, 1, H * D}, qkv.options());
  attend_step(qkv.const_data_ptr<float>(), k_cache, v_cache, slot, cos, sin, start, out.data_ptr<float>());
  return out;
}
"""

# ## A whole layer in one call
#
# With its products, its GELU and its attention in the kernel, what is left of a decoding layer in Python is the
# glue around them: a dozen module calls, `DecodingLinear`'s checks, the views, two layer norms and the residual
# additions, each a few microseconds. `layer_step` runs a whole `TransformerLayer` (`model.py`) for one new token
# per row in one call: the layer norms, the four products, attention, and the residual sum, in the order
# `TransformerLayer.forward` writes them, for the parallel residual (with tied norms or not) and the sequential one.
# It is the same arithmetic as the prepared modules' (its layer norm sums in another order than PyTorch's, which
# changes the last bits; the tests compare it with the layer in float64).
#
# **Layer norm**, $\frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\, w + b$ for each row $x$ of $C$ numbers, with its mean
# $\mu$ and variance $\sigma^2$: two passes over the row, then one to write it.
_KERNEL_LAYER = r"""
static void layer_norm(const float* x, int64_t N, int64_t C, const float* w, const float* b, float eps, float* y) {
  for (int64_t n = 0; n < N; ++n, x += C, y += C) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + c));
    const __m256 mean = _mm256_set1_ps(sum1(acc) / C);
    acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + c), mean);
      acc = _mm256_fmadd_ps(d, d, acc);
    }
    const __m256 rstd = _mm256_set1_ps(1.f / std::sqrt(sum1(acc) / C + eps));
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), mean), rstd);
      _mm256_storeu_ps(y + c, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + c), _mm256_loadu_ps(b + c)));
    }
  }
}
"""

# **The op.** `layer_step` checks everything it is given (a wrong call is an error that starts with `layer_step:`)
# and then runs the layer as `TransformerLayer.forward` does, `residual` choosing the form: attention on
# $\operatorname{LN}_1(x)$, its product `dense`, then the FFN on $\operatorname{LN}_1(x)$ (tied norms),
# $\operatorname{LN}_2(x)$ (parallel) or $\operatorname{LN}_2(x + \text{attention})$ (sequential), and the sum. On the
# test machine, against the same prepared modules called one by one, in one process, alternating: 10% more tokens
# per second at batch 1 with two threads (7 rounds, 7-15% each) and 2% with one; the same greedy tokens.
_KERNEL_LAYER_OP = r"""
enum Residual : int64_t { kSequential = 0, kParallel = 1, kParallelTied = 2 };  // as in RESIDUALS

// One TransformerLayer for one new token per row: x [B, 1, C]; norms: the weights and biases of
// input_layernorm and post_attention_layernorm [C]; weights: query_key_value [3C, C], dense [C, C],
// dense_h_to_4h [F, C], dense_4h_to_h [C, F], and their biases (or none); the cache and the rest as for
// attention_step. -> [B, 1, C]
at::Tensor layer_step(const at::Tensor& x, at::TensorList norms, at::TensorList weights,
                      const c10::List<std::optional<at::Tensor>>& biases, double eps, int64_t residual,
                      int64_t activation, at::Tensor& k_cache, at::Tensor& v_cache, int64_t slot,
                      const at::Tensor& cos, const at::Tensor& sin, const std::optional<at::Tensor>& first) {
  const auto start = check_step("layer_step", k_cache, v_cache, slot, cos, sin, first);
  const int64_t B = k_cache.size(0), C = k_cache.size(1) * k_cache.size(3);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.dim() == 3 && x.size(0) == B &&
              x.size(1) == 1 && x.size(2) == C && x.is_contiguous(),
              "layer_step: x [B, 1, C] expected, fp32, contiguous, on the CPU, B and C = HD as in the cache");
  TORCH_CHECK(B <= kMaxRows, "layer_step: at most ", kMaxRows, " rows expected");
  TORCH_CHECK(norms.size() == 4 && weights.size() == 4 && biases.size() == 4,
              "layer_step: 4 norm tensors, 4 weights and 4 biases expected");
  TORCH_CHECK(residual >= kSequential && residual <= kParallelTied && activation >= kNone &&
              activation <= kGeluTanh, "layer_step: residual 0-2 and activation 0-2 expected");
  const int64_t F = weights[2].dim() == 2 ? weights[2].size(0) : 0;
  const int64_t shapes[4][2] = {{3 * C, C}, {C, C}, {F, C}, {C, F}};
  const float* w[4];
  const float* bias[4];
  for (int i = 0; i < 4; ++i) {
    const auto& t = weights[i];
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() && t.dim() == 2 &&
                t.size(0) == shapes[i][0] && t.size(1) == shapes[i][1] && F % 8 == 0,
                "layer_step: weights [3C, C], [C, C], [F, C], [C, F] expected (F a multiple of 8), fp32, "
                "contiguous, on the CPU");
    w[i] = t.const_data_ptr<float>();
    const std::optional<at::Tensor> b = biases.get(i);
    TORCH_CHECK(!b || (b->scalar_type() == at::kFloat && b->device().is_cpu() && b->is_contiguous() &&
                       b->numel() == shapes[i][0]), "layer_step: each bias fp32, contiguous, on the CPU, one per "
                "output");
    bias[i] = b ? b->const_data_ptr<float>() : nullptr;
  }
  for (const auto& t : norms)
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() && t.numel() == C,
                "layer_step: layer norm weights and biases [C] expected, fp32, contiguous, on the CPU");
  const float *xp = x.const_data_ptr<float>(), *n1w = norms[0].const_data_ptr<float>(),
              *n1b = norms[1].const_data_ptr<float>(), *n2w = norms[2].const_data_ptr<float>(),
              *n2b = norms[3].const_data_ptr<float>();
  const float e = static_cast<float>(eps);
  std::vector<float> ln1(B * C), ln2(B * C), qkv(B * 3 * C), att(B * C), a(B * C), h(B * F), f(B * C);
  auto out = at::empty({B, 1, C}, x.options());
  float* o = out.data_ptr<float>();
  // Attention, on LN_1(x)
  layer_norm(xp, B, C, n1w, n1b, e, ln1.data());
  product(ln1.data(), B, C, w[0], 3 * C, bias[0], kNone, qkv.data());
  attend_step(qkv.data(), k_cache, v_cache, slot, cos, sin, start, att.data());
  product(att.data(), B, C, w[1], C, bias[1], kNone, a.data());
  // The FFN, on LN_1(x) (tied), LN_2(x) (parallel) or LN_2(x + attention) (sequential); o holds x + attention
  for (int64_t i = 0; i < B * C; ++i) o[i] = xp[i] + a[i];
  const float* ffn_in = ln1.data();
  if (residual != kParallelTied) {
    layer_norm(residual == kParallel ? xp : o, B, C, n2w, n2b, e, ln2.data());
    ffn_in = ln2.data();
  }
  product(ffn_in, B, C, w[2], F, bias[2], activation, h.data());
  product(h.data(), B, F, w[3], C, bias[3], kNone, f.data());
  for (int64_t i = 0; i < B * C; ++i) o[i] += f[i];
  return out;
}
"""

# The three ops are registered under `torch.ops.neox_cpu`.
_KERNEL_REGISTER = r"""
TORCH_LIBRARY(neox_cpu, m) {
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias, int activation=0) -> Tensor", &gemv);
  m.def("attention_step(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, int slot, Tensor cos, Tensor sin, "
        "Tensor? first) -> Tensor", &attention_step);
  m.def("layer_step(Tensor x, Tensor[] norms, Tensor[] weights, Tensor?[] biases, float eps, int residual, "
        "int activation, Tensor(a!) k_cache, Tensor(b!) v_cache, int slot, Tensor cos, Tensor sin, Tensor? first) "
        "-> Tensor", &layer_step);
}
"""

# The whole file, as the compiler sees it, and the name of its build (PyTorch's folder for it and the library file)
GEMV_SOURCE = (_KERNEL_HEADERS + _KERNEL_SUMS + _KERNEL_TILE + _KERNEL_EXP + _KERNEL_GELU + _KERNEL_GROUPS
               + _KERNEL_OP + _KERNEL_HEAD + _KERNEL_ROTARY + _KERNEL_ATTENTION_OP + _KERNEL_LAYER
               + _KERNEL_LAYER_OP + _KERNEL_REGISTER)
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
    folder = None
    try:
        # The source goes into PyTorch's build folder for the kernel, rewritten only when it changed (PyTorch
        # rebuilds when the source does). `load`, not `load_inline`: the latter adds `torch/extension.h`, which
        # needs Python's C headers (`python3-dev`), which many machines lack.
        folder = Path(cpp_extension._get_build_directory(KERNEL_NAME, verbose=False))
        source = folder / f"{KERNEL_NAME}.cpp"
        library = folder / f"{KERNEL_NAME}.so"
        # A build folder we may not write (a cache shared read-only, a container's image): PyTorch's `load` would
        # fail taking its lock there, so a build of this very source is loaded as it is, and without one we say
        # which folder and which variable
        if not os.access(folder, os.W_OK):
            if library.exists() and source.exists() and source.read_text() == GEMV_SOURCE:
                torch.ops.load_library(str(library))
                return torch.ops.neox_cpu.gemv
            raise KernelUnavailable(f"its build folder {folder} is read-only and holds no build of this kernel; "
                                    f"set TORCH_EXTENSIONS_DIR to a folder you can write")
        if not library.exists():
            print("Compiling our CPU kernels for decoding (once on this machine, about 10 s)...", file=sys.stderr,
                  flush=True)
        if not source.exists() or source.read_text() != GEMV_SOURCE:
            partial = source.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(GEMV_SOURCE)
            partial.replace(source)
        cpp_extension.load(KERNEL_NAME, sources=[str(source)], is_python_module=False,
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except KernelUnavailable:
        raise
    except Exception as e:  # a missing ninja, a compiler error, a build folder that cannot be written
        where = f"in {folder}" if folder is not None else "in PyTorch's build folder"
        raise KernelUnavailable(f"building it {where} failed: {_first_error(str(e))} (TORCH_EXTENSIONS_DIR "
                                f"chooses the build folder)") from e
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
    The kernel, `gemv(x [N, I], weight [O, I], bias [O] or None, activation=0) -> [N, O]` (`activation` from
    `ACTIVATIONS`), built the first time it is asked for on this machine. Raises `KernelUnavailable` with the reason
    when it cannot be built here.
    """
    op, reason = gemv_or_reason()
    if op is None:
        raise KernelUnavailable(f"the CPU matrix-vector kernel is not available: {reason}")
    return op


def attention_step_kernel():
    r"""
    A decoding step's attention for one new token per row, `attention_step(qkv [B, 1, 3C], k_cache [B, H, T_max, D],
    v_cache [B, H, T_max, D], slot, cos [L, d], sin [L, d], first [B] or None) -> [B, 1, C]`, fp32, from the same
    build as `cpu_gemv_kernel()`; it writes the new key and value into the cache. Raises `KernelUnavailable` with
    the reason when it cannot be built here.
    """
    cpu_gemv_kernel()
    return torch.ops.neox_cpu.attention_step
