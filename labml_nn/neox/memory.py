r"""
# Memory: what the model needs, in bytes

How many parameters has GPT-NeoX-20B, how many bytes are they in fp16 or int8, how big is its key-value cache,
and which GPU holds it? The functions below compute it from a `NeoXConfig`'s shapes; every such number on this
site is theirs (pages of `docs/` take them at build time, and `tests/test_docs_core_path.py` holds the rest).

**Units.** GB means $10^9$ bytes everywhere on this site (a GiB, $2^{30}$ bytes, is 7% more: 20B's 41.1 GB of
fp16 weights are 38.3 GiB).

The published models, computed by this page's functions when the site is built (`python -m
labml_nn.neox.memory` prints the same):

<!--memory-table-->
"""

from __future__ import annotations

from typing import Union

try:
    from labml_nn.neox.config import NeoXConfig
except ImportError:
    from config import NeoXConfig

# Bytes per number. `int8` is LLM.int8 (`llm_int8.py`): int8 weights, fp16 everything else.
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
GB = 10 ** 9


def _bytes_per(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


# Activations and the cache of an LLM.int8 model are fp16: only its weights are int8.
def _activation_dtype(dtype: str) -> str:
    _bytes_per(dtype)
    return "fp16" if dtype == "int8" else dtype


def parameter_count(config: NeoXConfig) -> int:
    r"""
    ## Parameters

    Counted from the shapes of `model.py`'s modules, with $C$ = `d_model`, $F$ = `d_ff` ($4C$), $V$ = `n_vocab`:

    | module | parameters |
    |---|---|
    | embedding `[V, C]` | $VC$ |
    | each layer: two layer norms | $4C$ |
    | `query_key_value`, `dense` | $3C^2 + 3C$, $C^2 + C$ |
    | `dense_h_to_4h`, `dense_4h_to_h` | $CF + F$, $FC + C$ |
    | final norm | $2C$ |
    | readout `[V, C]`, no bias | $VC$ |

    With $F = 4C$ a layer is $12C^2 + 13C$: 453 million in the 20B model, 44 times.
    """
    c, f, v = config.d_model, config.d_ff, config.n_vocab
    if v <= 0:
        raise ValueError("the config's n_vocab is 0 (unknown until a checkpoint is read); set it first, "
                         "e.g. config.with_updates(n_vocab=50432)")
    layer = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (c * f + f) + (f * c + c)
    return v * c + config.n_layers * layer + 2 * c + v * c


# The four linear layers' weights (not biases) of one transformer layer: what LLM.int8 stores in int8.
def _linear_weights_per_layer(config: NeoXConfig) -> int:
    c, f = config.d_model, config.d_ff
    return 3 * c * c + c * c + 2 * c * f


def weight_bytes(config: NeoXConfig, dtype: str = "fp16") -> int:
    r"""
    ## Weights

    Parameters times bytes per parameter, for `fp32`, `fp16` and `bf16`.

    For `int8` the model is what `llm_int8.py` builds: the four linear weights of each layer in int8 (1 byte),
    plus one fp32 step per output feature ($3C + C + F + C$ of them a layer); their biases, the layer norms,
    the embedding and the readout stay fp16. So a little more than half of fp16.
    """
    n = parameter_count(config)
    if dtype != "int8":
        return n * _bytes_per(dtype)
    int8 = config.n_layers * _linear_weights_per_layer(config)
    steps = config.n_layers * (3 * config.d_model + config.d_model + config.d_ff + config.d_model)
    return int8 * 1 + steps * 4 + (n - int8) * 2


def kv_cache_bytes(config: NeoXConfig, batch: int = 1, tokens: int = 2048, dtype: str = "fp16") -> int:
    r"""
    ## The key-value cache

    Every layer keeps a key and a value of $C$ numbers for every token of every sequence (`KVCache` in
    `model.py`): $2 \cdot L \cdot C$ numbers a token. With `int8` weights the cache is fp16.
    """
    per_token = 2 * config.n_layers * config.d_model
    return batch * tokens * per_token * _bytes_per(_activation_dtype(dtype))


def activation_bytes(config: NeoXConfig, batch: int = 1, tokens: int = 2048, dtype: str = "fp16") -> int:
    r"""
    ## Activations

    The peak of one inference forward pass over `tokens` new tokens (no gradients). Layers run one after
    another and free what they made, so the peak is inside one layer or at the readout:

    * in a layer's feed-forward network, the residual $x$, attention's output, the FFN's input and its $F$-wide
      hidden state before and after GELU are alive together: $3C + 2F$ numbers a token ($11C$);
    * at the readout, $x$ and the logits: $C + V$ a token (logits for every position, as evaluation asks).

    Attention is assumed fused (`scaled_dot_product_attention` on a GPU never holds the `[T, T]` scores), and
    allocator slack and the CUDA context are not counted.
    """
    per_token = max(3 * config.d_model + 2 * config.d_ff, config.d_model + config.n_vocab)
    return batch * tokens * per_token * _bytes_per(_activation_dtype(dtype))


def inference_bytes(config: NeoXConfig, batch: int = 1, tokens: int = 2048, dtype: str = "fp16") -> int:
    """Weights, a full key-value cache of `tokens` and the activations of a forward pass over them."""
    return (weight_bytes(config, dtype) + kv_cache_bytes(config, batch, tokens, dtype)
            + activation_bytes(config, batch, tokens, dtype))


# ## The models and the cards
#
# The published models' configs (Pythia paper, table 1; `configs/20B.yml`). The 50,277 tokens are padded to a
# multiple of 128 times the tensor-parallel ranks the model was trained with: 50,304 for most Pythia models,
# 50,432 for 6.9B (2 ranks, like 20B), 50,688 for 12B (4 ranks).
def _pythia(n_layers: int, d_model: int, n_heads: int, n_vocab: int = 50304) -> NeoXConfig:
    return NeoXConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_vocab=n_vocab, n_ctx=2048,
                      rotary_pct=0.25, parallel_residual=True, activation="gelu")


KNOWN_MODELS = {
    "pythia-70m": _pythia(6, 512, 8),
    "pythia-160m": _pythia(12, 768, 12),
    "pythia-410m": _pythia(24, 1024, 16),
    "pythia-1b": _pythia(16, 2048, 8),
    "pythia-1.4b": _pythia(24, 2048, 16),
    "pythia-2.8b": _pythia(32, 2560, 32),
    "pythia-6.9b": _pythia(32, 4096, 32, n_vocab=50432),
    "pythia-12b": _pythia(36, 5120, 40, n_vocab=50688),
    "gpt-neox-20b": NeoXConfig(n_layers=44, d_model=6144, n_heads=64, n_vocab=50432, n_ctx=2048,
                               rotary_pct=0.25, parallel_residual=True, activation="gelu_tanh",
                               tensor_parallel_size=2),
}

# GPUs by memory. A card sold as "80 GB" holds 80 GiB; after the CUDA context and the allocator's slack, about
# 80 GB ($10^9$) is left, so that is what we count.
GPUS = {
    "T4 / V100 (16 GB)": 16 * GB,
    "RTX 4090 / A10 (24 GB)": 24 * GB,
    "A100 (40 GB)": 40 * GB,
    "A6000 / L40S (48 GB)": 48 * GB,
    "A100 / H100 (80 GB)": 80 * GB,
}


def fits(model: Union[str, NeoXConfig], gpu: Union[str, int], dtype: str = "fp16", batch: int = 1,
         tokens: int = 2048, n_gpus: int = 1) -> bool:
    r"""
    ## What fits

    Whether weights, cache and activations (`inference_bytes`) fit in `n_gpus` cards of a kind (a name of
    `GPUS`, or bytes), the layers split evenly between them (the loader's `devices=`).
    """
    config = KNOWN_MODELS[model] if isinstance(model, str) else model
    memory = GPUS[gpu] if isinstance(gpu, str) else int(gpu)
    return inference_bytes(config, batch, tokens, dtype) <= memory * n_gpus


# `python -m labml_nn.neox.memory`: the table above, for every model of `KNOWN_MODELS`
if __name__ == "__main__":
    print(f"{'model':<14} {'parameters':>15} {'fp16 GB':>8} {'int8 GB':>8} {'KV MB/token':>12} {'KV GB @2048':>12}")
    for _name, _config in KNOWN_MODELS.items():
        print(f"{_name:<14} {parameter_count(_config):>15,} {weight_bytes(_config, 'fp16') / GB:>8.2f} "
              f"{weight_bytes(_config, 'int8') / GB:>8.2f} {kv_cache_bytes(_config, 1, 1) / 1e6:>12.3f} "
              f"{kv_cache_bytes(_config, 1, 2048) / GB:>12.3f}")
