r"""
# The annotated GPT-NeoX

An annotated, working implementation of [GPT-NeoX](https://arxiv.org/abs/2204.06745), EleutherAI's 20-billion
parameter language model, and of the Pythia family, which shares its architecture. Every module is written to
be read top to bottom beside its code, and to run on the real checkpoints: the 20B "slim weights", any
gpt-neox checkpoint, or a Pythia model in Hugging Face format, by folder or by Hub name and revision
(`"EleutherAI/pythia-160m"` at any of its 154 training steps).

The site reads at two depths. **The core path**, read end to end, is the model and how it runs: `config.py`,
`model.py` (with its key-value cache), `memory.py` (what it all weighs), `tokenizer.py` and `generation.py`, how
20B is split over GPUs, `llm_int8.py`, evaluation with lm-eval and fine-tuning. **Engineering notes** follow:
the checkpoint files in detail (`checkpoint/`, `loader.py`), fast decoding on a CPU (`cpu_decoding.py`), the
training loop, the samples, the command lines and the ONNX export (`onnx_export.py`, the site's live model).

Notation used on every page: `B` batch, `T` sequence length, `H` heads, `D` head dimension, `C = H * D` the
hidden size, `V` the vocabulary. Shapes are written `[B, T, H, D]`.

The public API, here on the small demo model that ships inside the package (any checkpoint folder works the
same way):

```python
import torch
from importlib.resources import files
from labml_nn.neox import LayerLoader, NeoXModel, generate, load_tokenizer
from labml_nn.neox.tokenizer import encode

path = files("labml_nn.neox") / "demo"
# NeoXModel maps ids [B, T] to logits [B, T, V]; LayerLoader gives its modules with the checkpoint's weights
model = NeoXModel(*LayerLoader(path, dtype=torch.float32, device="cpu").load())

tokenizer = load_tokenizer(path)
ids = torch.tensor([encode(tokenizer, "ROMEO:")])
print(tokenizer.decode(generate(model, ids, 20)[0].tolist()))
```

A Pythia model at one of its 154 training steps is a Hub name and a revision:
`LayerLoader("EleutherAI/pythia-160m", revision="step3000")` (`checkpoint/hub.py`).
"""

# The names this package exports. Each is imported only when first used (PEP 562's module `__getattr__`), so that
# `import labml_nn.neox.config` does not pay for importing torch, the loader and the tokenizer.
_EXPORTS = {
    "NeoXConfig": "labml_nn.neox.config",
    "LayerLoader": "labml_nn.neox.loader",
    "NeoXModel": "labml_nn.neox.model",
    "generate": "labml_nn.neox.generation",
    "generate_stream": "labml_nn.neox.generation",
    "load_tokenizer": "labml_nn.neox.tokenizer",
    "EvalHarnessAdapter": "labml_nn.neox.evaluation",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'labml_nn.neox' has no attribute {name!r}")
