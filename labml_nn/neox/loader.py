r"""
# Loading a checkpoint, one layer at a time

`LayerLoader` turns a checkpoint folder into the modules of `model.py`, with the checkpoint's weights:

```python
model = NeoXModel(*LayerLoader("path/to/checkpoint", dtype=torch.float16, device="cuda").load())
logits = model(ids)                        # ids [B, T] int64 -> logits [B, T, V]
```

The folder may be the GPT-NeoX-20B slim weights (or any gpt-neox checkpoint, in either of its layouts and
with any tensor-parallel degree) or a Hugging Face `GPTNeoXForCausalLM` folder such as a Pythia model; the
config is read from the folder. `checkpoint/` reads and merges the files, one part of the model at a time
(a `Part`, `checkpoint/parts.py`); this module builds the layers, and is the one place that knows which of
`model.py`'s classes builds each part.

## Why one layer at a time

The 20B model is 41 GB in fp16 ([memory.py](memory.py)). Building the whole model first and then loading a state dict would need
room for two copies. Instead, `load()` yields the modules one by one: for each part it builds the empty module
(on PyTorch's `meta` device, which allocates nothing), reads just that part's tensors from disk, moves them to
the target device and dtype, and yields the finished module before reading the next. Peak memory stays near
the size of the final model: 1.13 times it in fp32 and 1.26 times in fp16 for a 2-rank checkpoint of
Pythia-160M's shape (`benchmarks/RESULTS.md`). The fp16 excess is the merge of the largest part, the
readout, held as two rank files and a merged copy at once: a quarter of this small model, 1.6% of the 20B.

The same loop is where other work per layer fits in: converting a layer to LLM.int8 right after it is loaded
(so the fp16 model never has to fit whole on the GPU), and placing layers on several GPUs.
"""

import sys
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Union

import torch
from torch import nn

from labml import monit

from labml_nn.neox.checkpoint import Part, all_parts, open_checkpoint
from labml_nn.neox.checkpoint.parts import parts_from_hf_state
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.model import Embedding, FinalNorm, ReadoutLayer, TransformerLayer


# ## Parts and modules
#
# Each kind of part is built by one class of `model.py`; only a transformer layer needs its number, which it
# keeps as `layer_idx`. `part_of` is the inverse, for whoever holds modules and must say what they are (the
# fine-tuner writing a checkpoint, the trainer gathering shards). It asks `isinstance` rather than comparing
# classes because FSDP's `fully_shard` turns a module's class into a subclass of it.
MODULES = {"embedding": Embedding, "layer": TransformerLayer, "norm": FinalNorm, "readout": ReadoutLayer}


def build_module(part: Part, config: NeoXConfig) -> nn.Module:
    if part.kind == "layer":
        return TransformerLayer(config, part.check(config.n_layers).layer)
    return MODULES[part.kind](config)


def part_of(module: nn.Module) -> Part:
    for kind, cls in MODULES.items():
        if isinstance(module, cls):
            return Part(kind, module.layer_idx if kind == "layer" else None)
    raise TypeError(f"{type(module).__name__} is not a module of model.py; it is no part of a GPT-NeoX model")


# A transformers `GPTNeoXForCausalLM` already in memory (the benchmarks compare against one) gives its weights to
# our modules part by part, through the same names as a Hugging Face folder (`parts.parts_from_hf_state`).
def load_hf_state_dict(modules: Sequence[nn.Module], state: Dict[str, torch.Tensor]):
    """Copy a transformers state dict into `modules`, `model.py`'s sequence (`build_layers(config)`), strictly."""
    n_layers = len(modules) - 3
    for part, tensors in parts_from_hf_state(state).items():
        modules[part.module_index(n_layers)].load_state_dict(tensors)


class LayerLoader:
    r"""
    ## The layer loader

    Opens the checkpoint (and reads its config) when it is made, so that a missing file or a wrong config
    fails at once; `load()` then yields the modules. Its arguments:

    * `path`: a checkpoint folder (see above), or a Hugging Face Hub name such as `EleutherAI/pythia-160m`,
      with `revision` one of its training steps (`"step3000"`); see `checkpoint/hub.py`.
    * `dtype`: the dtype of the parameters; fp16 on a GPU, fp32 (or bf16) on a CPU.
    * `device`: where to put the layers, or `devices`: a list of devices to spread them over, balanced by
      parameter bytes, for models that do not fit one GPU. The activations follow the layers from one device to
      the next.
    * `filter_layers`: load only these modules, for experiments with a few layers of a large model. Indices
      follow the order of the model: `0` is the embedding, `1 ... L` the transformer layers, `L + 1` the final
      norm and `L + 2` the readout.
    * `is_llm_int8`: convert each transformer layer's linear layers to LLM.int8 right after loading it
      (see `llm_int8.py`), with `llm_int8_threshold` for outlier features and `llm_int8_implementation`
      `"bitsandbytes"` or `"reference"` (plain PyTorch).
    * `replicated`: how to merge tensors that every tensor-parallel rank holds a copy of (layer norms):
      `"average"` or `"first"`. Their disagreement is recorded in `self.checkpoint.divergence`.
    * `trust_pickle`: allow loading DeepSpeed files that pickle arbitrary Python objects. Only for files you
      trust.
    * `progress`: show labml's progress bar; by default only when standard output is a terminal, since labml
      draws it there with escape codes that would litter a piped output.
    * `base`, `adapter`: when `path` is a LoRA adapter in peft's format (`checkpoint/adapters.py`), `base` is the
      base model to put it on instead of the one the adapter names, and `adapter` says how: `"merge"`
      ($W + \frac{\alpha}{r} B A$ merged into each weight as it is read; no cost per token) or `"apply"` (each
      adapted linear layer becomes a `LoRALinear` holding $A$ and $B$, `training/lora.py`).
      `self.checkpoint.source_note` says which adapter and which base were used.
    """

    def __init__(self, path: Union[str, Path], *, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu",
                 devices: Optional[Sequence[Union[str, torch.device]]] = None,
                 filter_layers: Optional[Set[int]] = None,
                 is_llm_int8: bool = False, llm_int8_threshold: float = 6.0,
                 llm_int8_implementation: str = "bitsandbytes",
                 replicated: str = "average", trust_pickle: bool = False,
                 progress: Optional[bool] = None, revision: Optional[str] = None,
                 base: Union[str, Path, None] = None, adapter: str = "merge"):
        if adapter not in ("merge", "apply"):
            raise ValueError(f"adapter={adapter!r}: choose 'merge' or 'apply'")
        if adapter == "apply" and is_llm_int8:
            raise ValueError("LLM.int8 converts every linear layer, adapters included: load a LoRA adapter with "
                             "adapter='merge' (the default) to quantize the merged weights")
        self.checkpoint = open_checkpoint(path, replicated=replicated, trust_pickle=trust_pickle, revision=revision,
                                          base=base)
        self.checkpoint.merge_adapter = adapter == "merge"
        self.config: NeoXConfig = self.checkpoint.config
        self.dtype = dtype
        self.devices = [torch.device(d) for d in (devices if devices else [device])]
        self.filter_layers = filter_layers
        self.is_llm_int8 = is_llm_int8
        self.llm_int8_threshold = llm_int8_threshold
        self.llm_int8_implementation = llm_int8_implementation
        self.progress = sys.stdout.isatty() if progress is None else progress

        n_parts = self.config.n_layers + 3
        if filter_layers is not None:
            bad = sorted(i for i in filter_layers if not 0 <= i < n_parts)
            if bad:
                raise ValueError(f"filter_layers {bad} are outside 0 ... {n_parts - 1}: 0 is the embedding, "
                                 f"1 ... {self.config.n_layers} the transformer layers, {n_parts - 2} the final "
                                 f"norm and {n_parts - 1} the readout")

    # ### The parts of the model, in order
    #
    # `filter_layers` selects by a part's place in the model's sequence of modules, `Part.module_index`.
    def _parts(self) -> List[Part]:
        n = self.config.n_layers
        return [p for p in all_parts(n) if self.filter_layers is None or p.module_index(n) in self.filter_layers]

    # ### Spreading layers over devices
    def _placement(self, parts: List[Part]) -> List[torch.device]:
        r"""
        Give each device a contiguous run of parts holding about the same number of parameter bytes. The embedding
        and the readout each hold $VC$ numbers, two thirds of a transformer layer's $12C^2$ in the 20B model and several
        layers' worth in small models, so counting bytes balances better than counting layers. A part goes to the
        device in whose share of the total its middle falls.
        """
        if len(self.devices) == 1:
            return [self.devices[0]] * len(parts)
        weights = [part.n_parameters(self.config) for part in parts]
        total, start, placement = sum(weights), 0, []
        for w in weights:
            middle = (start + w / 2) / total
            placement.append(self.devices[min(int(middle * len(self.devices)), len(self.devices) - 1)])
            start += w
        return placement

    # ### Loading
    def load(self) -> Iterator[nn.Module]:
        """Yield the modules in order, each with its weights, on its device, in eval mode."""
        parts = self._parts()
        placement = self._placement(parts)
        iterator = zip(parts, placement)
        if self.progress:
            iterator = monit.iterate("Load layers", list(iterator))
        embedding = None
        for part, device in iterator:
            module = self._load_part(part, device)
            # Tied embeddings: the readout's weight is the embedding's parameter itself, as in transformers, so
            # that training updates both as one
            if part.kind == "embedding":
                embedding = module
            elif (part.kind == "readout" and embedding is not None and self.checkpoint.readout_is_embedding
                  and embedding.word_embeddings.weight.device == module.final_linear.weight.device):
                module.final_linear.weight = embedding.word_embeddings.weight
            yield module
        self._warn_about_divergence()

    # Tensors every tensor-parallel rank holds a copy of (the layer norms) should agree, but in large trained
    # models they drift apart by about $10^{-3}$, and whether we average them or take rank 0 moves evaluation
    # scores. We never refuse such a checkpoint; we say how far apart the copies were, so that the user can
    # choose `replicated=` knowingly (`python -m labml_nn.neox.checkpoint merge --report` lists every tensor).
    def _warn_about_divergence(self, threshold: float = 1e-3):
        records = [r for r in self.checkpoint.divergence if r.max_abs > threshold]
        if records:
            worst = max(records, key=lambda r: r.max_abs)
            where = f"layer {worst.part.layer} " if worst.part.kind == "layer" else ""
            warnings.warn(f"{len(records)} replicated tensors differ across tensor-parallel ranks by more than "
                          f"{threshold:g}; the largest is {where}{worst.name}, max abs {worst.max_abs:.3g}. They were "
                          f"merged with replicated={self.checkpoint.replicated!r}; the other choice is "
                          f"{'first' if self.checkpoint.replicated == 'average' else 'average'!r}.", stacklevel=2)

    # One part: build the module without memory, then take the checkpoint's tensors as its parameters
    # (`assign=True` makes the loaded tensors the parameters instead of copying into meta tensors), move it to
    # its device and dtype, and quantize it if asked. `read` has already checked the part's tensor names and shapes
    # against the config, naming the file at fault.
    def _load_part(self, part: Part, device: torch.device) -> nn.Module:
        with torch.device("meta"):
            module = build_module(part, self.config)
        state = self.checkpoint.read(part)
        module.load_state_dict(state, assign=True)
        del state
        module = module.to(device=device, dtype=self.dtype).eval()
        adapter = self.checkpoint.adapter
        if adapter is not None and not self.checkpoint.merge_adapter and part.kind == "layer":
            from labml_nn.neox.training.lora import apply_lora_tensors
            apply_lora_tensors([module], adapter.tensors, {key: adapter.scaling for key in adapter.tensors})
        if self.is_llm_int8 and isinstance(module, TransformerLayer):
            from labml_nn.neox.llm_int8 import make_llm_int8_layer
            module = make_llm_int8_layer(module, threshold=self.llm_int8_threshold,
                                         implementation=self.llm_int8_implementation)
        return module
