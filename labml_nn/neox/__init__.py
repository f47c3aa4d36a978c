r"""
# The annotated GPT-NeoX

An annotated, working implementation of [GPT-NeoX](https://arxiv.org/abs/2204.06745), EleutherAI's 20-billion
parameter language model, and of the Pythia family, which shares its architecture. Every module is written to
be read top to bottom beside its code, and to run on the real checkpoints: the 20B "slim weights", any
gpt-neox checkpoint, or a Pythia model in Hugging Face format, by folder or by Hub name and revision
(`"EleutherAI/pythia-160m"` at any of its 154 training steps).

The package is built in layers, each page leaning only on the ones before it:

* `config.py` holds the model's numbers; `model.py` is the model itself (`NeoXModel`, the modules in order), and
  depends on nothing else of ours, so it can be copied into other code, with the key/value cache (`KVCache`) it
  reads while generating.
* `checkpoint/` reads and merges the checkpoint files; `loader.py` turns them into `model.py`'s modules, one
  layer at a time.
* `tokenizer.py` and `generation.py` turn the model into a text generator; `llm_int8.py` quantizes it to
  half the memory; `training/finetune.py`, `training/text_dataset.py` and `training/trainer.py` fine-tune it;
  `evaluation/` scores it on LAMBADA with lm-eval.

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
model = NeoXModel(*LayerLoader(path, dtype=torch.float32, device="cpu").load())  # ids [B, T] -> logits [B, T, V]

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
