r"""
# A static decoding step, captured as a CUDA graph

On a CPU our decoding runs near the speed of memory (`cpu_decoding.py`). On a GPU it did not: on an H200,
Pythia-1.4B in fp16 decoded 86 tokens/s at batch 1 (`benchmarks/RESULTS.md`), while reading its weights (2.6 GB,
all but the embedding's unused rows) once per token at the 3.2 TB/s a plain `sum()` reads would allow about 1,200.
A step took about 11 ms where memory needs 0.8. This page is the one step a caller takes to close that gap:

```python
model = prepare_for_gpu_decoding(model)   # a StaticDecoder holding the same modules
generate(model, ids, 100)                 # as before
```

## Where a GPU's decoding step goes

A decoding step runs one token per row through every layer. In eager PyTorch each layer is some 35 small
operations (two layer norms, four products, the rotary embeddings alone about fifteen, views, the cache's copies,
attention, GELU, two additions), each a round trip through Python and PyTorch's dispatcher, most of them ending in a
kernel launch: about 10 us of CPU time each. Pythia-1.4B's 24 layers make several hundred of them, some 11 ms. The GPU
finishes most of these kernels in a few microseconds (a $2048 \times 6144$ fp16 product reads 25 MB in 8 us) and
then waits for the next launch: the step is bound by the CPU, and the GPU idles most of the time.

## What a CUDA graph removes

A CUDA graph records the kernels of one step, with their arguments, once, and replays the whole sequence with one
launch: no Python, no dispatcher, no per-kernel launch from the CPU, and the GPU runs the kernels back to back.
The price is that a replay does *exactly* what was recorded: the same kernels, on the same memory addresses, with the
same shapes. Today's step (`model.py`) changes every token:

* the keys and values it attends to are the cache's first `offset + 1` slots, a shape that grows by one each step;
* the rotary embeddings slice their tables at a Python integer `offset`, and the mask (`Attention._mask`) branches on
  it (`is_causal` at 0, no mask for one token without padding).

So the **static step** computes the same thing in a fixed shape. The cache is allocated once, at its full length
$T_{max}$, and kept across generations (`KVCache.reset`). The slot of the new token is a one-element tensor on the
GPU, written before each replay, and everything that depends on it is computed from it on the GPU: the new
keys and values go into slot `slot` with an indexed write, the rotary positions are `slot - padding`, and attention
reads *all* $T_{max}$ slots under a mask

$$M_{b, j} = 0 \text{ if } \texttt{padding}_b \le j \le \texttt{slot}, \quad -\infty \text{ otherwise,}$$

so that row $b$ sees exactly the keys it sees in today's step: its own, not its left padding, nothing after its
token. No Python `if` looks at a tensor's value, so one new token for the whole batch is one graph of fixed shapes.
The prompt goes through today's `NeoXModel.forward` (its length differs every time, and one pass over many tokens is
bound by arithmetic, not by launches).

## Compiled, then captured: `torch.compile(mode="reduce-overhead")`

We hand the static step to `torch.compile` with `mode="reduce-overhead"`, rather than capturing the eager step by
hand with `torch.cuda.graphs`, for two reasons.

* **Fewer kernels.** A graph removes the CPU's cost of each launch, not the GPU's: a kernel still takes a few
  microseconds to start and drain, and several hundred of them are longer than the 0.8 ms the memory allows.
  Inductor, `torch.compile`'s code generator, fuses the small elementwise operations (layer norms, rotary
  embeddings, the mask, GELU, the residual sums) into a few kernels around the products and attention.
* **The bookkeeping.** `reduce-overhead` captures the compiled step in CUDA graphs ("CUDA graph trees") and manages
  the graph's private memory pool, the warm-up run a capture needs, and the copying of inputs into the memory the
  graph reads. We mark the tensors that stay put (the cache, the slot, the padding, the rotary tables) with
  `torch._dynamo.mark_static_address`, so the only input copied per step is the new token ids; the weights, as
  parameters, are static already.

By hand, a graph needs no compiler and captures in a second, but keeps every kernel of the eager step.

## What it costs

* **Compile time**: for each new shape (batch size, cache length), once per process, before the generation's first
  token (`StaticDecoder.warm_up`). On a GPU machine it is still to be measured (`benchmarks/gpu.py` reports it); on
  our shared 2-core CPU, Pythia-160M's shapes took seven minutes.
* **Fixed shapes**: a new batch size or a longer cache means a new compile and capture. Cache lengths are rounded up
  to powers of two (at least `MIN_CACHE_LEN`) and only grow, so that a few graphs serve generations of every
  length.
* **Memory**: the cache at its full length from the first token, and the graph's pool for the step's intermediates
  (small at batch 1: activations of one token).
* **Reading slots not yet filled**: the masked attention reads all $T_{max}$ slots each step. For Pythia-1.4B in
  fp16 at 256 slots that is $2 \times 24 \times 256 \times 2048 \times 2$ B = 50 MB a step beside 2.6 GB of weights.
* **Outside the graph**: sampling, the finite-logits check and the end-of-text check still run eagerly, a few
  kernels and one flag read back per token (`generation.py`).

On a CPU a launch costs nothing like a GPU's idle time, and our kernel (`cpu_decoding.py`) already reads at memory
speed. Compiled for a CPU (inductor's default mode), the static step decoded Pythia-160M's shapes at 0.82-0.97 times
the kernel's speed in two runs on our shared 2-core machine, after seven minutes of compiling the first time
(`benchmarks/static_cpu.py`): its products are MKL's, which the kernel outreads. So on a CPU the kernel stays the
way to decode.
"""

import importlib.util
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from labml_nn.neox.generation import as_model
from labml_nn.neox.model import (FFN, Attention, Embedding, FinalNorm, KVCache, NeoXModel, ReadoutLayer,
                                 TransformerLayer)

# The shortest static cache; longer ones are powers of two
MIN_CACHE_LEN = 256


def cache_length(n_positions: int) -> int:
    """The static cache's length for a generation of `n_positions`: a power of two, at least `MIN_CACHE_LEN`."""
    return max(MIN_CACHE_LEN, 1 << (n_positions - 1).bit_length())


class StaticDecodingUnavailable(RuntimeError):
    """The static step cannot run this model here; the message says why and what to do instead."""


class _StaticState:
    r"""
    Everything the static step reads besides the weights, for one batch size and cache length, allocated once and
    never moved: the cache (a `KVCache` whose buffers are made up front and zeroed: a masked slot has weight 0, but
    $0 \times \text{NaN}$ is NaN, and fresh memory may hold anything), the padding `[B]`, the slot `[1]`, the
    slots `0 .. T_max - 1` that the mask compares with, and each layer's rotary tables.
    """

    def __init__(self, decoder: "StaticDecoder", batch_size: int, length: int, dtype: torch.dtype,
                 device: torch.device):
        self.key = (batch_size, length, dtype, device)
        self.cache = KVCache(length)
        self.buffers: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.tables: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in decoder.transformer_layers():
            attention = layer.attention
            like = torch.empty(batch_size, attention.n_heads, 1, attention.d_head, dtype=dtype, device=device)
            k_buffer, v_buffer = self.cache.buffers(attention.layer_idx, like)
            k_buffer.zero_(), v_buffer.zero_()
            self.buffers[attention.layer_idx] = (k_buffer, v_buffer)
            self.tables[attention.layer_idx] = attention.rotary_emb.tables(length, device)
        self.padding = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.key_slots = torch.arange(length, device=device)
        for t in [self.padding, self.slot, self.key_slots, *(t for pair in self.buffers.values() for t in pair),
                  *(t for pair in self.tables.values() for t in pair)]:
            torch._dynamo.mark_static_address(t)


class StaticDecoder(NeoXModel):
    r"""
    ## The decoder

    A `NeoXModel` over the same modules as the model it was made from (the caller's model is left as it is), whose
    `forward` runs a one-token step with its own cache through the static step, compiled with `torch.compile(mode=
    compile)` (`None`: not compiled, the same maths in eager PyTorch). Everything else (the prompt, a cache of
    another's, gradients) runs `NeoXModel.forward`. `generate` gets its cache from `new_cache`, so
    `generate(decoder, ...)` decodes through the static step with nothing else to change.

    It takes the modules of `model.py` as they are (an embedding, transformer layers, the final norm and readout, on
    one device); anything else (LLM.int8 layers, layers prepared for the CPU kernel, layers on several GPUs) is a
    `StaticDecodingUnavailable` that names it.
    """

    def __init__(self, *modules: nn.Module, compile: Optional[str] = "reduce-overhead"):
        super().__init__(*modules)
        _check_modules(self)
        self.compile_mode = compile
        self._static: Optional[_StaticState] = None
        self._step = self.static_step if compile is None else \
            torch.compile(self.static_step, mode=compile, fullgraph=True, dynamic=False)
        # Why the compiled step was given up, if it was (the decoder then runs `NeoXModel.forward`)
        self.compile_error: Optional[str] = None
        # Seconds each shape's warm-up took (compiling and capturing), by (batch size, cache length)
        self.warm_up_seconds: Dict[Tuple[int, int], float] = {}

    def transformer_layers(self) -> List[TransformerLayer]:
        return [m for m in self if isinstance(m, TransformerLayer)]

    # ### The cache a generation fills
    #
    # Asked for by `generate_stream` with the batch size and the positions it needs: the static cache of that batch
    # size and of at least `cache_length(max_len)` slots, emptied, with this generation's padding. A cache only grows:
    # a shorter generation reuses a longer cache (reading more slots, but with no new compile); a new batch size or a
    # longer generation replaces the cache (its memory is freed) and warms the step up for it, before the prompt runs.
    def new_cache(self, batch_size: int, max_len: int, padding: Optional[torch.Tensor] = None) -> KVCache:
        self.warm_up(batch_size, max_len)
        static = self._static
        if static is None:  # the compiled step failed
            return super().new_cache(batch_size, max_len, padding)
        static.cache.reset(padding)
        static.padding.copy_(padding if padding is not None else torch.zeros_like(static.padding))
        return static.cache

    def warm_up(self, batch_size: int, max_len: int) -> float:
        r"""
        Make the static cache for `batch_size` rows and `cache_length(max_len)` slots, and run the step on it three
        times (compile; the warm-up run a capture needs; the capture), so that a generation's steps all replay.
        Returns the seconds it took (0 when this shape is ready). If the compiled step fails, a line on stderr says
        why and this decoder runs `NeoXModel.forward` from then on.
        """
        weight = self.transformer_layers()[0].attention.query_key_value.weight
        key = (batch_size, cache_length(max_len), weight.dtype, weight.device)
        old = self._static
        if self.compile_error is not None or (old is not None and old.key[0] == batch_size and old.key[2:] == key[2:]
                                              and old.key[1] >= key[1]):
            return 0.0
        self._static = None
        start = time.perf_counter()
        self._static = _StaticState(self, *key)
        ids = torch.zeros(batch_size, 1, dtype=torch.long, device=weight.device)
        try:
            with torch.inference_mode():
                for _ in range(3 if self.compile_mode is not None else 0):
                    self._run_step(ids)
            _synchronize(weight.device)
        except Exception as e:
            self.give_up(e)
            return 0.0
        seconds = time.perf_counter() - start
        self.warm_up_seconds[key[:2]] = seconds
        return seconds

    def give_up(self, error: Exception):
        """Stop using the compiled step, with one line on stderr saying why."""
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        self.compile_error = f"{type(error).__name__}: {first_line}"
        self._static = None
        print(f"StaticDecoder: decoding without the compiled step, since it failed ({self.compile_error})",
              file=sys.stderr)

    # ### The forward pass
    #
    # A one-token step with our own cache goes through the static step (a replay of the graph); the slot moves
    # forward on the Python side, as `NeoXModel.forward` moves it. Logits are `[B, 1, V]`, in memory that the next
    # replay overwrites: clone them to keep them.
    def forward(self, ids: torch.Tensor, cache: Optional[KVCache] = None, last_only: bool = False) -> torch.Tensor:
        static = self._static
        if static is None or cache is not static.cache or ids.shape[1] != 1 or torch.is_grad_enabled():
            return super().forward(ids, cache, last_only)
        if cache.offset >= cache.max_len:
            raise ValueError(f"the KV cache holds {cache.max_len} positions but {cache.offset + 1} were asked for; "
                             f"ask new_cache for a larger max_len")
        static.slot.fill_(cache.offset)
        logits = self._run_step(ids.to(static.slot.device))
        cache.advance(1)
        return logits

    def _run_step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.compile_mode is not None and ids.device.type == "cuda":
            # Tells the graph trees that the outputs of the previous replay have been read
            torch.compiler.cudagraph_mark_step_begin()
        return self._step(ids)

    # ### The static step
    #
    # Ids `[B, 1]` $\rightarrow$ logits `[B, 1, V]`, reading the slot, padding and cache from `self._static`. The
    # positions `[B]` and the mask `[B, 1, 1, T_max]` (`True` = may attend; the ones broadcast over heads and the one
    # query) are computed once for all layers.
    def static_step(self, ids: torch.Tensor) -> torch.Tensor:
        static = self._static
        positions = (static.slot - static.padding).clamp(min=0)
        mask = (static.key_slots <= static.slot) & (static.key_slots >= static.padding[:, None])
        mask = mask[:, None, None, :]
        x = ids
        for module in self:
            if isinstance(module, TransformerLayer):
                x = self.layer_step(module, x, positions, mask)
            else:
                x = module(x)
        return x

    # One transformer layer: the sum of `TransformerLayer.forward`, with attention's static step in place of
    # `Attention.forward`
    def layer_step(self, layer: TransformerLayer, x: torch.Tensor, positions: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
        ln1 = layer.input_layernorm(x)
        attn = self.attention_step(layer.attention, ln1, positions, mask)
        if layer.parallel_residual:
            ffn_in = ln1 if layer.tied_layernorms else layer.post_attention_layernorm(x)
            return x + attn + layer.mlp(ffn_in)
        h = x + attn
        return h + layer.mlp(layer.post_attention_layernorm(h))

    # Attention for one new token per row, `[B, 1, C]` $\rightarrow$ `[B, 1, C]`: what `Attention.forward` computes,
    # with the position, the cache's slot and the mask held in tensors
    def attention_step(self, attention: Attention, x: torch.Tensor, positions: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        batch_size = x.shape[0]
        k_buffer, v_buffer = self._static.buffers[attention.layer_idx]
        # `[B, 1, 3C]` $\rightarrow$ `[B, 1, H, 3, D]`: head by head, its query, key and value
        qkv = attention.query_key_value(x).view(batch_size, 1, attention.n_heads, 3, attention.d_head)
        # Queries and keys rotated by each row's position: the tables' rows `[B, d]`, as `[B, 1, 1, 1, d]`
        qk = qkv[:, :, :, :2]
        rotary = attention.rotary_emb
        if rotary.d_rotary > 0:
            cos, sin = self._static.tables[attention.layer_idx]
            shape = (batch_size, 1, 1, 1, rotary.d_rotary)
            qk = rotary.rotate(qk, cos[positions].to(x.dtype).view(shape), sin[positions].to(x.dtype).view(shape))
        # `[B, H, 1, D]` each
        q, k = qk[:, :, :, 0].transpose(1, 2), qk[:, :, :, 1].transpose(1, 2)
        v = qkv[:, :, :, 2].transpose(1, 2)
        # Into slot `slot` of the cache, an indexed write whose index is a tensor
        slot = self._static.slot
        k_buffer[:, :, slot] = k
        v_buffer[:, :, slot] = v
        # Against all `T_max` slots, the mask choosing this row's
        out = F.scaled_dot_product_attention(q, k_buffer, v_buffer, attn_mask=mask)
        return attention.dense(out.transpose(1, 2).reshape(batch_size, 1, -1))


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# What the static step knows how to run: `model.py`'s own modules, in order, on one device
def _check_modules(model: NeoXModel):
    known = (Embedding, TransformerLayer, FinalNorm, ReadoutLayer)
    for i, module in enumerate(model):
        if type(module) not in known:
            raise StaticDecodingUnavailable(f"module {i} is a {type(module).__name__}, not one of model.py's "
                                            f"{', '.join(k.__name__ for k in known)}; decode with the model as it is")
        if isinstance(module, TransformerLayer):
            attention, mlp = module.attention, module.mlp
            parts = [("attention", attention, Attention), ("mlp", mlp, FFN)]
            if type(attention) is Attention and type(mlp) is FFN:
                parts += [(name, getattr(attention, name), nn.Linear) for name in ("query_key_value", "dense")]
                parts += [(name, getattr(mlp, name), nn.Linear) for name in ("dense_h_to_4h", "dense_4h_to_h")]
            for name, part, cls in parts:
                if type(part) is not cls:
                    raise StaticDecodingUnavailable(
                        f"layer {module.layer_idx}'s {name} is a {type(part).__name__}, not {cls.__name__} (LLM.int8, "
                        f"or prepared for the CPU); decode with the model as it is")
    if not isinstance(model[0], Embedding) or not isinstance(model[-1], ReadoutLayer):
        raise StaticDecodingUnavailable("the model must run from the embedding to the readout (all its modules)")
    # Dynamic RoPE scaling recomputes the angles at every step past the context; the static step reads them
    # from tables made once
    if any(isinstance(m, TransformerLayer) and m.attention.rotary_emb.dynamic for m in model):
        raise StaticDecodingUnavailable("the model uses dynamic RoPE scaling, whose angles change with the sequence "
                                        "length; decode with the model as it is")
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise StaticDecodingUnavailable(f"the model's parameters are on {len(devices)} devices; the static step runs "
                                        f"on one")


def prepare_for_gpu_decoding(model, compile: str = "reduce-overhead") -> StaticDecoder:
    r"""
    ## The step

    A `StaticDecoder` over `model`'s modules (a `NeoXModel`, or its modules in a list), compiled with
    `torch.compile(mode=compile)`, for a model on a CUDA GPU. Raises `StaticDecodingUnavailable`, saying why, where
    it cannot run: the model is not on a CUDA device, Triton (which `torch.compile` needs on a GPU) is missing, or a
    module is not one of `model.py`'s. Compile failures show up on the first generation, which then falls back to
    `NeoXModel.forward` with a line on stderr.
    """
    model = as_model(model)
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cuda":
        where = "nowhere" if parameter is None else parameter.device
        raise StaticDecodingUnavailable(f"the model is on {where}, not a CUDA GPU (on a CPU, "
                                        f"prepare_for_cpu_decoding is the fast path)")
    if not torch.cuda.is_available():
        raise StaticDecodingUnavailable("PyTorch sees no CUDA device")
    if importlib.util.find_spec("triton") is None:
        raise StaticDecodingUnavailable("Triton is not installed, and torch.compile needs it on a GPU "
                                        "(pip install triton)")
    return StaticDecoder(*model, compile=compile)
