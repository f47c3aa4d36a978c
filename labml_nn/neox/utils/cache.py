r"""
# The key-value cache

When a model generates text one token at a time, the keys and values of every earlier token are the same at
every step: attention at position $t$ only reads keys and values at positions $\le t$, and those do not change
when a later token arrives. So we compute them once and keep them. Each decoding step then feeds a single new
token through the model and its attention reads the kept keys and values: a step costs one token's work in
every linear layer instead of the whole sequence's, and generating $n$ tokens costs $O(n)$ token-passes
instead of $O(n^2)$.

This cache differs from the one in the annotated reference implementation in two ways that matter when the
module is copied into other code:

* **It is an object the caller holds.** There is no module-level state: two generations running side by side
  (or one after another) have two caches and cannot see each other's tokens. The caller creates a `KVCache`,
  passes it to every layer's `forward`, and calls `advance` once the whole model has seen the new tokens.
* **It is allocated once.** A buffer for `max_len` positions is made the first time a layer writes to it, and
  each step writes into the next free slots. Growing the cache by concatenation would copy the whole past at
  every step, which for long generations costs more than the attention itself.

Shapes: keys and values are stored as `[B, H, T_max, D]`, where `T_max` is the cache's `max_len`, the layout
`torch.nn.functional.scaled_dot_product_attention` takes. `model.py`'s `Attention` is the only reader and
writer; `generation.py` creates the cache and advances it.
"""

from typing import Dict, Tuple

import torch


class KVCache:
    r"""
    ## A pre-allocated cache for all layers

    `offset` is the number of positions already stored; it is the same for all layers, since every layer has
    seen the same tokens. A forward pass over `T` new tokens writes positions `offset .. offset + T - 1` in
    each layer, then the caller moves `offset` forward by `T` with `advance(T)`.
    """

    def __init__(self, max_len: int):
        # The largest number of positions the cache will ever hold (prompt plus new tokens)
        self.max_len = max_len
        # Number of positions already stored
        self.offset = 0
        # Layer index $\rightarrow$ (keys, values), each `[B, H, T_max, D]`, made on first use on the device and
        # with the dtype of that layer, so that layers spread over several GPUs keep their cache beside them
        self._buffers: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        Store the keys and values `[B, H, T, D]` of `T` new positions for layer `layer_idx`, and return the keys
        and values of all positions so far, `[B, H, offset + T, D]`. The returned tensors are views of the
        buffer, not copies.
        """
        batch_size, n_heads, n_new, d_head = k.shape
        end = self.offset + n_new
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions but {end} were asked for; "
                             f"create the KVCache with a larger max_len")
        if layer_idx not in self._buffers:
            shape = (batch_size, n_heads, self.max_len, d_head)
            self._buffers[layer_idx] = (k.new_empty(shape), v.new_empty(shape))
        k_buffer, v_buffer = self._buffers[layer_idx]
        if k_buffer.shape[0] != batch_size:
            raise ValueError(f"the KV cache was filled with batch size {k_buffer.shape[0]}, not {batch_size}")
        # Write the new positions in place
        k_buffer[:, :, self.offset:end] = k
        v_buffer[:, :, self.offset:end] = v
        return k_buffer[:, :, :end], v_buffer[:, :, :end]

    def advance(self, n_new: int):
        """Call after the whole model has seen `n_new` new tokens."""
        self.offset += n_new

    def reorder(self, index: torch.Tensor):
        """Keep the rows `index` of the batch (for beam search or dropping finished sequences)."""
        self._buffers = {i: (k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device)))
                         for i, (k, v) in self._buffers.items()}

    def nbytes(self) -> int:
        """Memory held by the buffers."""
        return sum(k.nbytes + v.nbytes for k, v in self._buffers.values())
