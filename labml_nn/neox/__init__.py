r"""
# The annotated GPT-NeoX

An annotated, working implementation of [GPT-NeoX](https://arxiv.org/abs/2204.06745), EleutherAI's 20-billion
parameter language model, and of the Pythia family, which shares its architecture. Every module is written to
be read top to bottom beside its code, and to run on the real checkpoints.

Notation used on every page: `B` batch, `T` sequence length, `H` heads, `D` head dimension, `C = H * D` the
hidden size, `V` the vocabulary. Shapes are written `[B, T, H, D]`.

The public API:

```python
from labml_nn.neox import LayerGenerator, generate, load_tokenizer

layers = list(LayerGenerator("path/to/checkpoint", dtype=torch.float32, device="cpu").load())
model = torch.nn.Sequential(*layers)       # ids [B, T] -> logits [B, T, V]
```
"""

# The names above, imported when first used, so that `import labml_nn.neox.config` stays light
_EXPORTS = {
    "NeoXConfig": "labml_nn.neox.config",
    "LayerGenerator": "labml_nn.neox.loader",
    "generate": "labml_nn.neox.generation",
    "generate_stream": "labml_nn.neox.generation",
    "load_tokenizer": "labml_nn.neox.tokenizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'labml_nn.neox' has no attribute {name!r}")
