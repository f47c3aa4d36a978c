r"""
# GPT-NeoX model

The whole model: an embedding, a stack of identical transformer layers, a final layer norm and a readout. It
computes what EleutherAI's [gpt-neox](https://github.com/EleutherAI/gpt-neox) computes for GPT-NeoX-20B and the
Pythia models, and what Hugging Face's `GPTNeoXForCausalLM` computes on the same weights.

Each piece is its own `nn.Module`; the model, `NeoXModel` at the end of this page, is the list of them,
`NeoXModel(embedding, *layers, norm, readout)`, an `nn.Sequential` that also passes a key-value cache to each
piece. Separate pieces let the loader read the 41 GB of the 20B model ([memory.py](memory.py)) one layer at a
time and place layers on different GPUs.

Shapes are written `[B, T, C]` (notation on the [overview](__init__.py)). Parameter names are the checkpoint's
(`query_key_value`, `dense_h_to_4h`, ...), so `load_state_dict` takes its tensors as they are. The file needs only
`torch` and `NeoXConfig` (`config.py`): copy both to use the model elsewhere (`tests/test_copy_out.py` does).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# `config.py` sits beside this file in the package; a reader who copied the two files into a folder of their own
# imports it from there
try:
    from labml_nn.neox.config import NeoXConfig
except ImportError:
    from config import NeoXConfig


# When the loader spreads the layers over several GPUs, the activations follow the layers: each module moves its
# input to the device of its own parameters. On one device this does nothing, and a module without parameters
# (say, a readout replaced by a quantized one) leaves its input where it is.
def _on_device_of(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    p = next(module.parameters(), None)
    return x if p is None or x.device == p.device else x.to(p.device)


class Embedding(nn.Module):
    r"""
    ## Token embedding

    Each token id picks a row of a $V \times C$ matrix. GPT-NeoX has no position embedding here: positions enter
    through the rotary embeddings inside attention.

    $V$ is padded: 50,277 tokens, 50,432 rows in the 20B model (a multiple of 256, to split evenly over GPUs).
    """

    def __init__(self, config: NeoXConfig):
        super().__init__()
        # The config travels with each module, so that code holding only the modules (generation, the
        # evaluation adapter) can read the context length and the vocabulary
        self.config = config
        # Created empty: `build_layers` initialises every weight, and the loader overwrites them (`nn.Embedding`'s
        # own initialisation is slow to import on the loader's `meta` device)
        self.word_embeddings = nn.Embedding(config.n_vocab, config.d_model,
                                            _weight=torch.empty(config.n_vocab, config.d_model))

    # `ids` `[B, T]` $\rightarrow$ `[B, T, C]`: one row of `word_embeddings.weight` per token. The cache is not
    # used; every module takes it so that a generation loop can treat them all alike.
    def forward(self, ids: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        return self.word_embeddings(_on_device_of(ids, self))


class RotaryEmbedding(nn.Module):
    r"""
    ## Rotary position embeddings

    [RoPE](https://arxiv.org/abs/2104.09864) encodes the position $m$ of a token by rotating pairs of its query
    and key features by angles proportional to $m$. The dot product of a query at $m$ and a key at $n$ then
    depends only on their distance $m - n$.

    GPT-NeoX pairs feature $i$ with feature $i + d/2$ (the "rotate half" layout) and rotates only the first
    $d$ = `d_rotary` features of each head, a quarter of them in the 20B model ($d = 24$ of $D = 96$):

    $$
    \begin{aligned}
    \operatorname{RoPE}(x, m)_i &= x_i \cos m\theta_i - x_{i + d/2} \sin m\theta_i \\
    \operatorname{RoPE}(x, m)_{i + d/2} &= x_{i + d/2} \cos m\theta_i + x_i \sin m\theta_i
    \end{aligned}
    $$

    for $0 \le i < d/2$, with $\theta_i = b^{-2i/d}$ and base $b = 10000$. The other $D - d$ features (72 of 96)
    pass through unchanged.

    *Linear scaling* (position interpolation, transformers' `rope_scaling`) divides $m$ by a factor $s$ =
    `scaling`, 1 for every published NeoX model.

    *Dynamic NTK scaling* (transformers' `rope_scaling` of type `dynamic`) leaves the angles alone up to the
    training context $n$ and, for a sequence of $N > n$ positions, raises the base instead,

    $$b' = b \left(\frac{s N}{n} - (s - 1)\right)^{d / (d - 2)}$$

    which stretches the slow (low-frequency) features most and the fast ones hardly at all. The angles then depend
    on the sequence's length $N$: they are recomputed for every forward pass that reaches past $n$ (`tables`),
    from $N$ = the last position + 1, in fp32 as transformers computes them. (transformers also keeps the largest
    $N$ seen between calls until a call fits in $n$ again; a call here depends only on its own positions.)
    """

    def __init__(self, d_rotary: int, base: float, scaling: float = 1.0, dynamic: bool = False,
                 n_ctx: int = 2048):
        super().__init__()
        self.d_rotary = d_rotary
        # For dynamic scaling: the base, the factor $s$ and the training context $n$; the angles up to $n$ are
        # the plain ones
        self.dynamic, self.base, self.factor, self.n_ctx = dynamic, base, scaling, n_ctx
        if dynamic:
            scaling = 1.0
        # $\theta_i / s$ for $i = 0 \dots d/2 - 1$ (the checkpoint's `rotary_emb.inv_freq`, which the loader
        # drops). A plain attribute, not a buffer, so that `model.half()` leaves it in fp32.
        self.theta = 1.0 / base ** (torch.arange(0, d_rotary, 2, device="cpu").float() / d_rotary) / scaling
        # $\cos m\theta$ and $\sin m\theta$ for positions $0 \dots$ `len - 1`, computed in fp32 and kept here
        # (not as buffers, so that `model.half()` does not round the angles before we use them)
        self._cos_sin: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    # $\cos m\theta$ and $\sin m\theta$ for positions up to at least `end`, `[positions, d]` (each angle twice,
    # once per feature of its pair); built for 2048 positions, doubled when a longer sequence arrives.
    # Built outside inference mode even when generation (under `torch.inference_mode`) asks first: tensors made
    # there cannot be saved for a backward pass, and the same model may train afterwards.
    def tables(self, end: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.dynamic and end > self.n_ctx:
            return self._dynamic_tables(end, device)
        cached = self._cos_sin
        if cached is None or cached[0].shape[0] < end or cached[0].device != device:
            length = max(end, 2048 if cached is None else 2 * cached[0].shape[0])
            with torch.inference_mode(False):
                positions = torch.arange(length, device=device, dtype=torch.float32)
                angles = torch.outer(positions, self.theta.to(device))
                angles = torch.cat((angles, angles), dim=-1)
                self._cos_sin = cached = (angles.cos(), angles.sin())
        return cached

    # With dynamic scaling and $N$ = `end` > $n$: $b'$, then $\theta_i = b'^{-2i/d}$, each step as transformers
    # takes it (fp32 tensors), and the tables for positions $0 \dots N - 1$, not kept (the next call's $N$ differs)
    def _dynamic_tables(self, end: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        d = self.d_rotary
        length = torch.tensor(end, dtype=torch.int64)
        base = self.base * ((self.factor * length / self.n_ctx) - (self.factor - 1)) ** (d / (d - 2))
        theta = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
        angles = torch.outer(torch.arange(end, device=device, dtype=torch.float32), theta.to(device))
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    # `x` is `[B, T, ..., D]` (heads, and queries and keys together, after `T`). Its first token sits in slot
    # `offset`, after the cached tokens. Row $b$ of a left-padded batch starts with $p_b$ = `padding[b]` padding
    # tokens, so slot $s$ is at position $m = s - p_b$ (padding slots get position 0; attention ignores them).
    def forward(self, x: torch.Tensor, offset: int, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        d = self.d_rotary
        if d == 0:
            return x
        n_tokens = x.shape[1]
        # The last position + 1 (with padding, of the least padded row), which dynamic scaling depends on
        end = offset + n_tokens - (int(padding.min()) if self.dynamic and padding is not None else 0)
        cos, sin = self.tables(end, x.device)
        if padding is None:
            # `[T, 1, ..., 1, d]` to broadcast over the dimensions after $T$, in the dtype of `x` (as gpt-neox and
            # transformers do)
            shape = (n_tokens,) + (1,) * (x.dim() - 3) + (d,)
            cos = cos[offset:offset + n_tokens].to(x.dtype).view(shape)
            sin = sin[offset:offset + n_tokens].to(x.dtype).view(shape)
        else:
            # Positions `[B, T]`, then the rows of the tables they pick, `[B, T, 1, ..., 1, d]`
            slots = torch.arange(offset, offset + n_tokens, device=x.device)
            positions = (slots[None, :] - padding[:, None]).clamp(min=0)
            shape = (x.shape[0], n_tokens) + (1,) * (x.dim() - 3) + (d,)
            cos = cos[positions].to(x.dtype).view(shape)
            sin = sin[positions].to(x.dtype).view(shape)
        return self.rotate(x, cos, sin)

    # The rotation itself, for `cos` and `sin` rows that broadcast against `x[..., :d]` (`static_decoding.py` picks
    # them with positions held in a tensor)
    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        d = self.d_rotary
        # Split off the features that rotate; the rest pass through
        x_rot, x_pass = x[..., :d], x[..., d:]
        # "Rotate half": $x' = [-x_{d/2:d}, x_{0:d/2}]$, so that feature $i$ meets its partner $i + d/2$
        x1, x2 = x_rot[..., :d // 2], x_rot[..., d // 2:]
        rotated = torch.cat((-x2, x1), dim=-1)
        # $x \odot \cos(m\theta) + x' \odot \sin(m\theta)$
        x_rot = x_rot * cos + rotated * sin
        return torch.cat((x_rot, x_pass), dim=-1)


class KVCache:
    r"""
    ## The key-value cache

    Generating one token at a time, the keys and values of earlier tokens never change (position $t$ reads only
    positions $\le t$). So we keep them, and each step runs only the new token through the model: $n$ tokens
    cost $O(n)$ token-passes instead of $O(n^2)$.

    **Its size.** Each layer keeps a key and a value of $C$ numbers per token: $2 \cdot L \cdot C$ numbers a
    token. For 20B in fp16 that is 2 × 44 × 6144 × 2 bytes = 1.08 MB a token, **2.21 GB** for one 2,048-token
    sequence (`memory.py`).

    **The caller holds it**: no module-level state, so two generations have two caches. `NeoXModel.forward`
    hands it to every module and calls `advance(T)` after the last one; `offset` counts the filled slots.

    **It is allocated once**: a buffer `[B, H, T_max, D]` per layer for keys and one for values, filled slot by
    slot (growing it by concatenation would copy the whole past at every step).

    **It knows where each row starts.** Prompts of different lengths are *left-padded*, so all rows' next
    tokens share a slot; `padding` `[B]` counts each row's padding. Attention uses it for the rotary positions
    and to hide padding keys, so each row computes what it computes alone.
    """

    def __init__(self, max_len: int, padding: Optional[torch.Tensor] = None):
        self.max_len = max_len
        self.offset = 0
        self.padding = padding
        # Layer index $\rightarrow$ (keys, values), each `[B, H, T_max, D]`
        self._buffers: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        # `padding` on each device that layers sit on (several GPUs with the loader's `devices=`)
        self._padding_on: Dict[torch.device, torch.Tensor] = {}

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        Store the keys and values `[B, H, T, D]` of `T` new slots for layer `layer_idx`, and return those of all
        slots so far, `[B, H, offset + T, D]` (views of the buffer, not copies).
        """
        end = self.offset + k.shape[2]
        k_buffer, v_buffer = self.buffers(layer_idx, k)
        k_buffer[:, :, self.offset:end] = k
        v_buffer[:, :, self.offset:end] = v
        return k_buffer[:, :, :end], v_buffer[:, :, :end]

    def buffers(self, layer_idx: int, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        The whole key and value buffers of layer `layer_idx`, `[B, H, T_max, D]`, made like the new keys `k`
        `[B, H, T, D]` (dtype, device) on first use, once it is checked that `T` more slots fit.
        """
        batch_size, n_heads, n_new, d_head = k.shape
        end = self.offset + n_new
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions but {end} were asked for; "
                             f"create the KVCache with a larger max_len")
        if layer_idx not in self._buffers:
            shape = (batch_size, n_heads, self.max_len, d_head)
            self._buffers[layer_idx] = (k.new_empty(shape), k.new_empty(shape))
        k_buffer, v_buffer = self._buffers[layer_idx]
        if k_buffer.shape[0] != batch_size:
            raise ValueError(f"the KV cache was filled with batch size {k_buffer.shape[0]}, not {batch_size}")
        return k_buffer, v_buffer

    # `padding` on the device of a layer, or `None` when no row is padded
    def padding_on(self, device: torch.device) -> Optional[torch.Tensor]:
        if self.padding is None:
            return None
        if device not in self._padding_on:
            self._padding_on[device] = self.padding.to(device)
        return self._padding_on[device]

    def advance(self, n_new: int):
        """Called (by `NeoXModel.forward`) after the whole model has seen `n_new` new tokens."""
        self.offset += n_new

    def reset(self, padding: Optional[torch.Tensor] = None):
        """
        Forget every token but keep the buffers, for another generation of the same batch size from slot 0 (with
        its own `padding`). `static_decoding.py` needs its buffers to stay where they are.
        """
        self.offset = 0
        self.padding = padding
        self._padding_on = {}


class Attention(nn.Module):
    r"""
    ## Multi-head attention

    One linear layer, `query_key_value` (weight `[3C, C]`), makes queries, keys and values for all heads at once:
    `[B, T, C]` $\rightarrow$ `[B, T, 3C]`, laid out **head by head**: viewed as `[B, T, H, 3, D]`, each head's
    slice holds its query, key and value. So `chunk(3)` of the output would be wrong: its first third is the
    $q, k, v$ of the first third of the heads, not all the queries. (Head by head is also what lets tensor
    parallel ranks each hold a block of whole heads.)

    Then, for each head,

    $$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\Big(\frac{Q K^\top}{\sqrt{D}} + M\Big) V$$

    where $Q$ and $K$ carry rotary embeddings and $M$ is the mask: $-\infty$ where a query may not see a key
    (above the diagonal, and on a row's left padding), 0 elsewhere. The heads are concatenated back to
    `[B, T, C]` and mixed by `dense`, a $C \times C$ linear layer.
    """

    def __init__(self, config: NeoXConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.d_head = config.d_head
        self.query_key_value = nn.Linear(config.d_model, 3 * config.d_model)
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.rotary_emb = RotaryEmbedding(config.d_rotary, config.rotary_base, config.rotary_scaling,
                                          dynamic=config.rotary_scaling_type == "dynamic", n_ctx=config.n_ctx)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        batch_size, n_tokens, _ = x.shape
        # `[B, T, 3C]` $\rightarrow$ `[B, T, H, 3, D]`: head by head, its query, key and value
        qkv = self.query_key_value(x).view(batch_size, n_tokens, self.n_heads, 3, self.d_head)

        # Rotary embeddings for queries and keys, `[B, T, H, 2, D]`, in one pass (values are not rotated).
        # Positions continue after the tokens already in the cache, and start at each row's first real token.
        offset = cache.offset if cache is not None else 0
        padding = cache.padding_on(x.device) if cache is not None else None
        qk = self.rotary_emb(qkv[:, :, :, :2], offset, padding)

        # `[B, H, T, D]` each, the layout attention kernels take
        q, k = qk[:, :, :, 0].transpose(1, 2), qk[:, :, :, 1].transpose(1, 2)
        v = qkv[:, :, :, 2].transpose(1, 2)

        # With a cache, attend to all stored keys and values too: `k` and `v` become `[B, H, offset + T, D]`
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)

        # Each query against the keys and values it may see, `[B, H, T, D]` (`attend`, below)
        out = self.attend(q, k, v, offset, padding)

        # `[B, H, T, D]` $\rightarrow$ `[B, T, H, D]` $\rightarrow$ `[B, T, C]`
        out = out.transpose(1, 2).reshape(batch_size, n_tokens, -1)
        return self.dense(out)

    # The formula above, for `T` queries in slots `offset ..`, all `[B, H, ., D]`, in one fused kernel
    # (`scaled_dot_product_attention`: scale $1/\sqrt{D}$; $QK^\top$ and the softmax in fp32 even for fp16).
    # (For one new token on a CPU, `cpu_decoding.py` does all of `forward` in one call of its kernel.)
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int,
               padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, **self._mask(offset, q.shape[2], q.device, padding))

    @staticmethod
    def _mask(offset: int, n_tokens: int, device: torch.device, padding: Optional[torch.Tensor] = None) -> dict:
        r"""
        The mask $M$, as `scaled_dot_product_attention`'s arguments. The `T` queries sit in slots
        `offset .. offset + T - 1` and the keys in slots `0 .. offset + T - 1`.

        * no cache: the lower triangle (`is_causal`);
        * one new token: no mask, it sees everything before it;
        * `offset` cached and several new: query $i$ sees keys $j \le$ `offset + i`, the triangle shifted right
          (`is_causal` is aligned top left, so we build it);
        * with `padding` `[B]`: per row, `[B, 1, T, offset + T]` (`True` = may attend), no key in the row's padding.
          Each query also sees its own slot, so a padding query is not a softmax over nothing (`NaN`, which would
          spread to later layers): padding rows compute finite garbage that no real token reads.
        """
        if padding is None and offset == 0:
            return {"is_causal": n_tokens > 1}
        if padding is None and n_tokens == 1:
            return {}
        query_slot = torch.arange(offset, offset + n_tokens, device=device)[:, None]
        key_slot = torch.arange(offset + n_tokens, device=device)[None, :]
        mask = key_slot <= query_slot
        if padding is not None:
            # With `S = offset + T` keys: `[T, S]` & `[B, 1, S]` $\rightarrow$ `[B, T, S]`, then `[B, 1, T, S]`
            mask = (mask & (key_slot >= padding[:, None, None])) | (key_slot == query_slot)
            mask = mask[:, None]
        return {"attn_mask": mask}


class FFN(nn.Module):
    r"""
    ## Feed-forward network

    $$\operatorname{FFN}(x) = \operatorname{GELU}(x W_1^\top + b_1) W_2^\top + b_2$$

    with $W_1$ = `dense_h_to_4h.weight` `[4C, C]` and $W_2$ = `dense_4h_to_h.weight` `[C, 4C]` (stored `[out, in]`,
    hence the transposes): `[B, T, C]` $\rightarrow$ `[B, T, 4C]` $\rightarrow$ `[B, T, C]`.

    The exact GELU is $x \Phi(x)$ ($\Phi$ the normal CDF). The 20B model was trained with gpt-neox's fused
    kernel (`bias_gelu_fusion: true`), which computes the tanh approximation

    $$\operatorname{GELU}(x) \approx \frac{x}{2}\Big(1 + \tanh\Big(\sqrt{2/\pi}\,\big(x + 0.044715\,x^3\big)\Big)\Big)$$

    They differ by up to $5 \times 10^{-4}$, enough over 44 layers to move the logits, so we follow the config.
    """

    def __init__(self, config: NeoXConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.d_model, config.d_ff)
        self.dense_4h_to_h = nn.Linear(config.d_ff, config.d_model)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    # $\operatorname{GELU}(x W_1^\top + b_1) W_2^\top + b_2$, with the exact or the tanh GELU
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=self.approximate))


class TransformerLayer(nn.Module):
    r"""
    ## Transformer layer

    Each layer normalises its input twice, once for attention and once for the FFN. The 20B model and the Pythia
    models use a **parallel residual** (`gpt_j_residual: true`, from GPT-J): attention and FFN both read the layer's
    input and their outputs are added to it together,

    $$x_{l+1} = x_l + \operatorname{Attn}(\operatorname{LN}_1(x_l)) + \operatorname{FFN}(\operatorname{LN}_2(x_l))$$

    A **sequential residual** (the classic transformer, gpt-neox's default) feeds the FFN the attention's result,

    $$
    \begin{aligned}
    h &= x_l + \operatorname{Attn}(\operatorname{LN}_1(x_l)) \\
    x_{l+1} &= h + \operatorname{FFN}(\operatorname{LN}_2(h))
    \end{aligned}
    $$

    gpt-neox's `gpt_j_tied: true` (`tied_layernorms`) ties the two norms of the parallel residual: both branches
    read $\operatorname{LN}_1(x_l)$, and `post_attention_layernorm` is kept but unused.
    """

    def __init__(self, config: NeoXConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.parallel_residual = config.parallel_residual
        self.tied_layernorms = config.tied_layernorms
        self.input_layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attention = Attention(config, layer_idx)
        self.mlp = FFN(config)

    # `x` is `[B, T, C]`, and so is the result. Attention reads and extends the cache; the FFN works on each
    # position alone and needs none.
    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        x = _on_device_of(x, self)
        ln1 = self.input_layernorm(x)
        attn = self.attention(ln1, cache)
        if self.parallel_residual:
            # $x + \operatorname{Attn}(\operatorname{LN}_1(x)) + \operatorname{FFN}(\operatorname{LN}_2(x))$, or
            # $\operatorname{LN}_1(x)$ in both places when the norms are tied (computed once)
            ffn_in = ln1 if self.tied_layernorms else self.post_attention_layernorm(x)
            return x + attn + self.mlp(ffn_in)
        # $h = x + \operatorname{Attn}(\operatorname{LN}_1(x))$, then $h + \operatorname{FFN}(\operatorname{LN}_2(h))$
        h = x + attn
        return h + self.mlp(self.post_attention_layernorm(h))


class FinalNorm(nn.Module):
    r"""
    ## Final layer norm

    One more layer norm after the last transformer layer; the checkpoint calls it `norm`.
    """

    def __init__(self, config: NeoXConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        return self.norm(_on_device_of(x, self))


class ReadoutLayer(nn.Module):
    r"""
    ## Readout

    A linear layer without bias, `final_linear`, maps each position's hidden state to a logit per vocabulary
    entry, `[B, T, C]` $\rightarrow$ `[B, T, V]`. Its weights are not tied to the embedding in GPT-NeoX; a model
    whose config ties them (`tie_word_embeddings`) gets the embedding's matrix here from the loader, the same
    tensor.
    The next-token distribution is $\operatorname{softmax}$ of the logits.
    """

    def __init__(self, config: NeoXConfig):
        super().__init__()
        self.config = config
        self.final_linear = nn.Linear(config.d_model, config.n_vocab, bias=False)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        return self.final_linear(_on_device_of(x, self))


class NeoXModel(nn.Sequential):
    r"""
    ## The model

    The modules in order, `NeoXModel(embedding, *layers, norm, readout)`: ids `[B, T]` to logits `[B, T, V]`. An
    `nn.Sequential` (index it, slice it, save its state dict) whose `forward` is the one loop that generation,
    evaluation and training use:

    * `cache`: a `KVCache`, passed to every module, moved forward by `T` at the end.
    * `last_only`: only the last position goes through the readout (`[B, 1, V]`), when only the next token
      matters; the readout's `[V, C]` matrix is two thirds of a 20B layer.
    * `activation_checkpointing`: while training, keep only each layer's input and recompute the layer in the
      backward pass, a third more compute for much less memory.

    Modules may be missing (`loader.py`'s `filter_layers`) or replaced (`llm_int8.py`) if each takes `(x, cache)`.
    """

    def __init__(self, *modules: nn.Module, activation_checkpointing: bool = False):
        super().__init__(*modules)
        self.activation_checkpointing = activation_checkpointing

    # The one loop. Each module takes `(x, cache)`: ids `[B, T]` into the embedding, `[B, T, C]` between the
    # layers, logits out of the readout. With `last_only`, the readout sees only `x[:, -1:]`. A transformer layer
    # is checkpointed only while gradients are being recorded, with PyTorch's non-reentrant implementation, which
    # replays the autocast state and works with DDP and FSDP. The cache moves forward once, after every layer has
    # written its keys and values for the `T` new positions.
    def forward(self, ids: torch.Tensor, cache: Optional[KVCache] = None, last_only: bool = False) -> torch.Tensor:
        x = ids
        for module in self:
            if last_only and isinstance(module, ReadoutLayer):
                x = x[:, -1:]
            if self.activation_checkpointing and isinstance(module, TransformerLayer) and torch.is_grad_enabled():
                x = checkpoint(module, x, cache, use_reentrant=False)
            else:
                x = module(x, cache)
        if cache is not None:
            cache.advance(ids.shape[1])
        return x

    # The cache a generation of `batch_size` rows and up to `max_len` positions fills (`generation.py` asks for
    # it): a new `KVCache`. A model that decodes otherwise (`static_decoding.py`) gives its own.
    def new_cache(self, batch_size: int, max_len: int, padding: Optional[torch.Tensor] = None) -> KVCache:
        return KVCache(max_len, padding=padding)


def build_layers(config: NeoXConfig) -> list:
    r"""
    ## The model, from a config

    All the modules in order, freshly initialised: `[Embedding, TransformerLayer × L, FinalNorm, ReadoutLayer]`;
    `NeoXModel(*build_layers(config))` maps ids `[B, T]` to logits `[B, T, V]`. (`LayerLoader`, in `loader.py`,
    gives them a checkpoint's weights.) Every weight starts normal with standard deviation $\sqrt{2 / (5C)}$
    (gpt-neox's `small_init`), biases at 0, norms at $\gamma = 1, \beta = 0$.
    """
    layers = [Embedding(config)]
    layers += [TransformerLayer(config, i) for i in range(config.n_layers)]
    layers += [FinalNorm(config), ReadoutLayer(config)]
    std = math.sqrt(2 / (5 * config.d_model))
    for layer in layers:
        for name, p in layer.named_parameters():
            if "norm" in name:
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std)
    return layers

