r"""
# The annotated GPT-NeoX

An annotated, working implementation of [GPT-NeoX](https://arxiv.org/abs/2204.06745), EleutherAI's 20-billion
parameter language model, and of the Pythia family, which shares its architecture. Every module is written to
be read top to bottom beside its code, and to run on the real checkpoints: the 20B "slim weights", any
gpt-neox checkpoint, or a Pythia model in Hugging Face format, by folder or by Hub name and revision
(`"EleutherAI/pythia-160m"` at any of its 154 training steps).

The package is built in layers, each page leaning only on the ones before it:

* `config.py` holds the model's numbers; `model.py` is the model itself: its modules, the key-value cache
  (`KVCache`) that attention reads while generating, and `NeoXModel`, the modules in order with the one loop
  that runs them. It depends on nothing else of ours, so the two files can be copied into other code.
* `checkpoint/` reads and merges the checkpoint files, one part of the model at a time (`checkpoint/parts.py`);
  `loader.py`'s `LayerLoader` turns them into `model.py`'s modules, one layer at a time.
* `tokenizer.py` and `generation.py` sample text from the model (`cpu_decoding.py` makes that fast on a CPU,
  with the kernel of `cpu_gemv.py`); `llm_int8.py` quantizes it to half the memory; `training/` (a dataset of
  text windows, the choice of what trains, the training loop) trains and fine-tunes it; `evaluation/` scores it
  on LAMBADA with lm-eval.
* `onnx_export.py` writes the model as an ONNX graph with its key-value cache as inputs and outputs, which
  runs in a browser (the site's live model) and in Hugging Face's tools.
* `cli.py` holds what every command line shares (the `--checkpoint`, `--device` and `--dtype` options, errors).

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
