r"""
# GPT-NeoX checkpoints: reading, merging, writing

A trained GPT-NeoX model reaches us as files written by its training run, and the way it was trained shows in
them. The 20B model was trained on 96 GPUs: each layer's large matrices were cut into two *tensor-parallel*
slices, and the layers were spread over four *pipeline* stages. Its published "slim weights" keep that cut,
one file per layer and slice. Our model (`model.py`) holds every matrix whole, so before it can use the
weights they must be put back together, and that is what this package does, one part of the model (the
embedding, a transformer layer, the final norm, the readout) at a time. `loader.py` then turns each part into
a module of `model.py`.

| module | idea |
|---|---|
| [`files.py`](files.html) | reading `torch.save` files without running code from them; errors that say what to do |
| [`parts.py`](parts.html) | `Part`: the embedding, layer $i$, the final norm or the readout, and its name in every format |
| [`layouts.py`](layouts.html) | the three ways the weights lie on disk: found first, then opened whole, for a config |
| [`merge.py`](merge.html) | how each tensor was cut across ranks, so how to glue (and re-cut) it |
| [`reader.py`](reader.html) | `open_checkpoint`: layout, config, tokenizer, checks, one merged part at a time |
| [`write.py`](write.html) | writing the gpt-neox layout with any number of ranks, or a Hugging Face folder |
| [`atomic.py`](atomic.html) | writing a folder or a file all at once or not at all: never deleting what it did not create, never replacing what a command reads, cleaning up on TERM/HUP |
| [`convert.py`](convert.html) | the `merge` command: all or nothing, with a report of how far replicated tensors diverged |
| [`download.py`](download.html) | fetching the 20B slim weights, resumably, with their SHA-256 recorded (`download --verify`) |
| [`hub.py`](hub.html) | a Hugging Face Hub name and revision (Pythia's training steps) to a local folder |
| [`sources.py`](sources.html) | where a checkpoint's files are (folder or Hub name), and what kind of folder holds them |
| [`adapters.py`](adapters.html) | LoRA adapters in peft's format: read over their base model, written as peft writes them |
| [`__main__.py`](__main__.html) | the command line: `download` and `merge` |

## Using it

```python
from labml_nn.neox.checkpoint import Part, open_checkpoint, write_hf_checkpoint

ckpt = open_checkpoint("20B_checkpoints")          # pipeline, sequential or Hugging Face layout
pythia = open_checkpoint("EleutherAI/pythia-160m", revision="step3000")   # a Hub name and revision
print(ckpt.config, ckpt.config.tensor_parallel_size, ckpt.tokenizer_path)
layer_5 = ckpt.read(Part("layer", 5))              # {"input_layernorm.weight": tensor [C], ...}, merged
write_hf_checkpoint("neox-20b-hf", ckpt.config, ckpt.parts(), tokenizer_path=ckpt.tokenizer_path)
```

and from the shell:

```
python -m labml_nn.neox.checkpoint download ~/data/20B_checkpoints
python -m labml_nn.neox.checkpoint merge ~/data/20B_checkpoints neox-20b-hf \
    --format hf --report divergence.json
```

The tensors `read` returns carry the slim checkpoint's names without prefixes, the names `model.py`'s modules
use: `word_embeddings.weight` (the embedding, `[V, C]`); per layer `input_layernorm.*`,
`attention.query_key_value.*` (`[3C, C]`), `attention.dense.*`, `post_attention_layernorm.*`,
`mlp.dense_h_to_4h.*` (`[4C, C]`), `mlp.dense_4h_to_h.*` (which gpt-neox has called `mlp.linear1` and
`mlp.linear2` since September 2024; both are read); `norm.*` (the final norm); `final_linear.weight`
(the readout, `[V, C]`).
"""

# The names the rest of the project imports from `labml_nn.neox.checkpoint`, each defined in a module of the table
# above.
from .files import CheckpointError
from .merge import Divergence, merge_part, split_part
from .parts import Part, all_parts
from .reader import Checkpoint, open_checkpoint
from .write import write_hf_checkpoint, write_neox_checkpoint

__all__ = ["CheckpointError", "Checkpoint", "Divergence", "Part", "all_parts", "merge_part", "open_checkpoint",
           "split_part", "write_hf_checkpoint", "write_neox_checkpoint"]
