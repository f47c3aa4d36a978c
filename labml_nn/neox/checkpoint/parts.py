r"""
# The four kinds of part, and their many names

Whatever the file format, a GPT-NeoX model is the same sequence of *parts*: the embedding, $L$ transformer
layers, the final layer norm and the readout. We load, merge and write the model one part at a time, so every
module of this package and the loader keep asking the same questions about a part: which file holds it, what
Hugging Face calls its tensors, where it sits in `model.py`'s sequence of modules. A `Part` answers them all,
so that each answer is written once, here:

| part | in `model.py` | pipeline index | Hugging Face prefix | our tensors |
|---|---|---|---|---|
| `Part("embedding")` | $0$ | $0$ | `gpt_neox.embed_in.` | `word_embeddings.weight` |
| `Part("layer", i)` | $i + 1$ | $i + 2$ | `gpt_neox.layers.{i}.` | `attention.*`, `mlp.*`, ... |
| `Part("norm")` | $L + 1$ | $L + 3$ | `gpt_neox.final_layer_norm.` | `norm.*` |
| `Part("readout")` | $L + 2$ | $L + 4$ | `embed_out.` | `final_linear.weight` |

The second column is the part's place in `model.py`'s sequence of modules. In messages a part calls itself
"the embedding", "transformer layer $i$", "the final norm" or "the readout (final linear)".

Which `model.py` class builds each part is the loader's to say (`loader.py`, `build_module` and `part_of`),
since `model.py` must not depend on this package, nor this package on the model's code.

## The pipeline index map

gpt-neox builds the model as one flat sequence of pipeline stages and numbers the stages in order. Two stages
are reshaping functions without weights, so the numbering skips them:

| index | stage |
|---|---|
| $0$ | the embedding |
| $1$ | a reshaping function, no weights |
| $i + 2$ | transformer layer $i$, for $0 \le i < L$ |
| $L + 2$ | another reshaping function, no weights |
| $L + 3$ | the final layer norm |
| $L + 4$ | the readout ("final linear") |

The 20B model has $L = 44$, so its final norm is stage 47 and its readout stage 48. The pipeline layout names
its files by this index, `layer_{index:02d}-model_{rank:02d}-model_states.pt`, and the sequential layout its
tensors, `sequential.{index}.{name}`.
"""

import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from .files import CheckpointError

# The four kinds of part, in the model's order
KINDS = ("embedding", "layer", "norm", "readout")


# ## A part
#
# A frozen dataclass, so a part can key a dictionary (the divergence records, a Hugging Face folder's index)
# and two parts are equal when they name the same thing. Only a transformer layer has a number.
@dataclass(frozen=True)
class Part:
    kind: str
    layer: Optional[int] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise CheckpointError(f"unknown part {self.kind!r}; the parts are {KINDS}")
        if self.kind == "layer" and not (isinstance(self.layer, int) and self.layer >= 0):
            raise CheckpointError(f"a transformer layer needs its number (0, 1, ...), not {self.layer!r}")
        if self.kind != "layer" and self.layer is not None:
            raise CheckpointError(f"{self.kind} is not a transformer layer and has no number (got {self.layer})")

    # Plain words for a part, used in every message: "transformer layer 5", "the final norm"
    def __str__(self) -> str:
        return {"embedding": "the embedding", "norm": "the final norm",
                "readout": "the readout (final linear)"}.get(self.kind, f"transformer layer {self.layer}")

    # A layer number beyond the config's is the one mistake a well-formed part can still make
    def check(self, n_layers: int) -> "Part":
        if self.kind == "layer" and self.layer >= n_layers:
            raise CheckpointError(f"transformer layer {self.layer} does not exist: the model has {n_layers} layers")
        return self

    # ### Its place in each sequence
    #
    # In `model.py`'s sequence of modules (`build_layers`, `NeoXModel`, `LayerLoader`'s `filter_layers`)
    # the parts follow each other with no gaps; in gpt-neox's pipeline, stages 1 and $L + 2$ have no weights.
    def module_index(self, n_layers: int) -> int:
        self.check(n_layers)
        return {"embedding": 0, "norm": n_layers + 1, "readout": n_layers + 2}.get(self.kind, (self.layer or 0) + 1)

    def pipeline_index(self, n_layers: int) -> int:
        self.check(n_layers)
        return {"embedding": 0, "norm": n_layers + 3, "readout": n_layers + 4}.get(self.kind, (self.layer or 0) + 2)

    def pipeline_file(self, n_layers: int, rank: int) -> str:
        """The name of the pipeline layout's file holding tensor-parallel rank `rank` of this part."""
        return pipeline_file(self.pipeline_index(n_layers), rank)

    # ### Its names in a Hugging Face folder
    #
    # transformers' names are ours with another prefix: `final_linear.weight` is `embed_out.weight`,
    # `norm.bias` is `gpt_neox.final_layer_norm.bias`, and a layer's names are kept whole under
    # `gpt_neox.layers.{i}.`.
    @property
    def hf_prefix(self) -> str:
        return _HF_PREFIXES[self.kind][1].format(layer=self.layer)

    def hf_name(self, name: str) -> str:
        ours = _HF_PREFIXES[self.kind][0]
        if not name.startswith(ours):
            raise CheckpointError(f"`{name}` is not a tensor of {self} (its names begin with `{ours}`)")
        return self.hf_prefix + name[len(ours):]

    # ### Its size
    #
    # The parameter count, for spreading the parts over devices: $VC$ for the embedding and the readout, $2C$
    # for the final norm, and for a layer its four matrices, $3C^2 + C^2$ in attention and $2CF$ in the MLP,
    # $F$ its inner width (`d_ff`, $4C$ in GPT-NeoX); the biases and norms are too small to matter.
    def n_parameters(self, config) -> int:
        c = config
        return {"embedding": c.n_vocab * c.d_model, "readout": c.n_vocab * c.d_model, "norm": 2 * c.d_model,
                "layer": 4 * c.d_model * c.d_model + 2 * c.d_model * c.d_ff}[self.kind]


# Our prefix of each part's tensor names, and transformers' in its place
_HF_PREFIXES = {"embedding": ("word_embeddings.", "gpt_neox.embed_in."),
                "layer": ("", "gpt_neox.layers.{layer}."),
                "norm": ("norm.", "gpt_neox.final_layer_norm."),
                "readout": ("final_linear.", "embed_out.")}


# ## All the parts, in order
def all_parts(n_layers: int) -> List[Part]:
    """The parts of an `n_layers`-layer model in the model's order: the embedding, the layers, the norm, the readout."""
    return [Part("embedding")] + [Part("layer", i) for i in range(n_layers)] + [Part("norm"), Part("readout")]


def pipeline_stages(n_layers: int) -> Dict[int, Part]:
    """The pipeline index map: `{index: part}` for the stages that hold weights."""
    return {part.pipeline_index(n_layers): part for part in all_parts(n_layers)}


def pipeline_file(index: int, rank: int) -> str:
    return f"layer_{index:02d}-model_{rank:02d}-model_states.pt"


# ## From a Hugging Face name back to a part
#
# The inverse of `hf_name`. It accepts the names as stored with and without `gpt_neox.` (a `GPTNeoXModel`
# without its head saves them bare), and `lm_head.weight`, transformers 5's name for `embed_out.weight`. A name
# that belongs to no part gives `None`, for the caller to refuse in its own words.
def from_hf_name(stored: str) -> Optional[Tuple[Part, str]]:
    name = stored.removeprefix("gpt_neox.")
    if name.startswith("lm_head."):
        name = "embed_out." + name.removeprefix("lm_head.")
    m = re.match(r"layers\.(\d+)\.(.+)$", name)
    if m:
        return Part("layer", int(m.group(1))), m.group(2)
    for kind in ("embedding", "norm", "readout"):
        ours, theirs = _HF_PREFIXES[kind][0], _HF_PREFIXES[kind][1].removeprefix("gpt_neox.")
        if name.startswith(theirs) and len(name) > len(theirs):
            return Part(kind), ours + name[len(theirs):]
    return None


# `attention.bias` and `attention.masked_bias` are the causal mask and a constant that transformers 4.x saved
# as buffers in the Pythia files, and `inv_freq` (in each layer, or once for the model) is the rotary constant
# our model computes; none of them are weights.
HF_BUFFERS = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq")


def is_hf_buffer(stored: str) -> bool:
    if stored.removeprefix("gpt_neox.") == "rotary_emb.inv_freq":
        return True
    found = from_hf_name(stored)
    return found is not None and found[0].kind == "layer" and found[1] in HF_BUFFERS


# The weights among stored names, as `(stored name, part, our name)`; `sources` maps each stored name to where it
# was found (a file), for the message that refuses a name of no part. A tensor the merge rules do not cover
# would be lost on the way, so it stops the reading rather than being skipped.
def hf_weights(sources: Dict[str, str]) -> Iterator[Tuple[str, Part, str]]:
    for stored, source in sources.items():
        if is_hf_buffer(stored):
            continue
        found = from_hf_name(stored)
        if found is None:
            raise CheckpointError(f"{source}: unexpected tensor `{stored}`; a GPTNeoXForCausalLM has only "
                                  f"gpt_neox.embed_in, gpt_neox.layers.N.*, gpt_neox.final_layer_norm and embed_out. "
                                  f"Refusing to convert a model the merge rules do not cover.")
        yield stored, found[0], found[1]


def parts_from_hf_state(state: Dict[str, "torch.Tensor"]) -> Dict[Part, Dict[str, "torch.Tensor"]]:
    r"""
    A transformers `GPTNeoXForCausalLM` state dict as `{part: {our name: tensor}}`, without the buffers, for
    loading each of `model.py`'s modules with `load_state_dict`.
    """
    parts: Dict[Part, Dict[str, "torch.Tensor"]] = {}
    for stored, part, name in hf_weights(dict.fromkeys(state, "the state dict")):
        parts.setdefault(part, {})[name] = state[stored]
    return parts
