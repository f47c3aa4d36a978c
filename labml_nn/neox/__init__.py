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

from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.generation import generate, generate_stream
from labml_nn.neox.loader import LayerGenerator
from labml_nn.neox.tokenizer import load_tokenizer

__all__ = ["NeoXConfig", "LayerGenerator", "generate", "generate_stream", "load_tokenizer"]
