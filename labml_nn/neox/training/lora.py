r"""
# LoRA: training a low-rank update beside frozen weights

[LoRA](https://arxiv.org/abs/2106.09685) (Hu et al., 2021) fine-tunes a linear layer $y = x W^\top + b$ without
changing $W$. It learns a correction of low rank instead, the product of two thin matrices,

$$y = x W^\top + b + \frac{\alpha}{r}\, x A^\top B^\top, \qquad
  A \in \mathbb{R}^{r \times C_\text{in}},\; B \in \mathbb{R}^{C_\text{out} \times r}$$

so the layer computes with the weight $W + \frac{\alpha}{r} B A$. The rank $r$ is small (4 to 64), so $A$ and
$B$ hold $r (C_\text{in} + C_\text{out})$ numbers where $W$ holds $C_\text{in} C_\text{out}$: for
`query_key_value` of the 20B model ($C = 6144$, `[3C, C]`) at $r = 8$, 197 thousand numbers beside 113 million.
The idea behind it is that the change fine-tuning makes to a pretrained weight has a low "intrinsic rank":
a few directions carry most of it.

Like BitFit (`finetune.py`), only a small set of tensors train and need optimiser state; unlike BitFit, the
trained part can change what the matrices do, not only shift their outputs.

## Starting at the base model

$A$ starts random and $B$ starts at zero, so at step 0 $BA = 0$ and the model is exactly the base model; the
first gradient reaches $B$ (through the random $A$), and from then both train. We initialise $A$ as
`nn.Linear` initialises its weights (Kaiming-uniform with $a = \sqrt 5$, a uniform distribution of bound
$1/\sqrt{C_\text{in}}$), which is also what [peft](https://github.com/huggingface/peft) does, so an adapter that
has not trained yet is the same in both.

## The scale $\alpha / r$

The update is multiplied by $\alpha / r$. With Adam, each step moves every entry of $A$ and $B$ by about the
learning rate whatever the gradients' scale, and each entry of $BA$ is a sum of $r$ products, so the update
tends to grow with $r$; dividing by $r$ lets one try another rank without retuning the learning rate (the LoRA
paper's reason), and $\alpha$ (often $2r$, or a fixed 16) sets the size once. A variant,
rsLoRA (peft's `use_rslora`), divides by $\sqrt r$ instead; we read and write that too.

## Which layers

A transformer layer has four linear layers, named as in the checkpoint:

| target | weight | numbers at rank $r$ |
|---|---|---|
| `query_key_value` | `[3C, C]` | $4rC$ |
| `dense` (attention's output) | `[C, C]` | $2rC$ |
| `dense_h_to_4h` | `[4C, C]` | $5rC$ |
| `dense_4h_to_h` | `[C, 4C]` | $5rC$ |

The LoRA paper adapted only the query and value projections; [QLoRA](https://arxiv.org/abs/2305.14314) found that
adapting every linear layer is needed to match full fine-tuning, and that is our default. peft's default for
GPT-NeoX is `query_key_value` alone. The embedding, the norms and the readout stay frozen.

## Dropout

Dropout on the adapter's input, $\frac{\alpha}{r} B A\, \mathrm{dropout}(x)$, regularises the update alone (the
frozen path sees $x$ unchanged); 0.05 is common, 0 is peft's default. It acts only in training.

## Merging, and why inference costs nothing

After training, $W' = W + \frac{\alpha}{r} B A$ is an ordinary matrix of $W$'s shape: `merge_lora` replaces each
adapted layer by a plain `nn.Linear` holding $W'$, and the model is again exactly `model.py`'s, with no extra
multiplication per token. Unmerged, each adapted layer does two more thin products per token (cheap, but not
free); merged, none. The adapter stays useful on its own: a few megabytes to keep, share or swap on one base
model. `checkpoint/adapters.py` writes and reads it in peft's format (`adapter_config.json` +
`adapter_model.safetensors`), so it loads in peft on transformers' model, and peft's adapters load here.

`samples/finetune.py --train lora --lora-rank 8 --lora-alpha 16 --lora-dropout 0.05` trains one on your text.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from labml_nn.neox.model import TransformerLayer

# The four linear layers of a transformer layer, by the name of the module inside `TransformerLayer`. A target is
# the last part of the name, as peft's `target_modules` gives it.
LINEARS = {"query_key_value": "attention.query_key_value", "dense": "attention.dense",
           "dense_h_to_4h": "mlp.dense_h_to_4h", "dense_4h_to_h": "mlp.dense_4h_to_h"}
TARGETS = tuple(LINEARS)


@dataclass(frozen=True)
class LoRAConfig:
    r"""The rank $r$, $\alpha$, the adapter's input dropout, the targets, and whether to scale by
    $\alpha / \sqrt r$ (rsLoRA) instead of $\alpha / r$."""
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Tuple[str, ...] = field(default=TARGETS)
    use_rslora: bool = False

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank {self.rank} must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout {self.dropout} must be in [0, 1)")
        unknown = [t for t in self.targets if t not in LINEARS]
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets {list(self.targets)}: each must be one of {', '.join(TARGETS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


class LoRALinear(nn.Linear):
    r"""
    ## An adapted linear layer

    An `nn.Linear` (its `weight` and `bias` are the frozen base layer's, the same tensors, not copies) with two
    more: `lora_A.weight` `[r, C_in]` and `lora_B.weight` `[C_out, r]`, named as peft names them. Being an
    `nn.Linear`, it sits where the base layer sat and its `weight` keeps its checkpoint name.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, scaling: float = None):
        # Built on the meta device (no memory), then given the base layer's own parameters
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank if scaling is None else scaling
        # The adapter trains in fp32 (on the base weight's device) whatever the frozen weight's dtype
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=device, dtype=torch.float32)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # $A$ as `nn.Linear` (and peft) initialise it; $B = 0$, so that $BA = 0$ at the start
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # $x W^\top + b + \frac{\alpha}{r} \, \mathrm{dropout}(x) A^\top B^\top$: the frozen product in the weight's
    # dtype, the adapter's in its own (fp32, or autocast's), added in the output's dtype, as peft does
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        low_rank = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return out + (low_rank * self.scaling).to(out.dtype)

    # $W' = W + \frac{\alpha}{r} B A$, computed in fp32 and returned in $W$'s dtype
    def merged_weight(self) -> torch.Tensor:
        return merged_weight(self.weight, self.lora_A.weight, self.lora_B.weight, self.scaling)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    r"""$W + s\, B A$ for $W$ `[C_out, C_in]`, $A$ `[r, C_in]`, $B$ `[C_out, r]`, in fp32, returned in $W$'s dtype."""
    update = lora_b.to(device=weight.device, dtype=torch.float32) @ lora_a.to(device=weight.device,
                                                                              dtype=torch.float32)
    return (weight.float() + scaling * update).to(weight.dtype)


# ## Adding adapters to a model
#
# Walk the transformer layers of `modules` (the model's modules in order, as the loader gives them) and yield
# `(layer, name, linear)` for each linear layer a target names.
def _targeted(modules: Sequence[nn.Module], targets: Sequence[str]) -> Iterator[Tuple[TransformerLayer, str, nn.Module]]:
    for module in modules:
        if isinstance(module, TransformerLayer):
            for target in targets:
                yield module, LINEARS[target], module.get_submodule(LINEARS[target])


def _replace(layer: nn.Module, name: str, new: nn.Module):
    parent_name, _, child = name.rpartition(".")
    setattr(layer.get_submodule(parent_name) if parent_name else layer, child, new)


def add_lora(modules: Sequence[nn.Module], config: LoRAConfig) -> List[str]:
    r"""
    Replace the targeted linear layers of every transformer layer in `modules` by `LoRALinear`s, freeze every
    other parameter, and return the keys of the trainable ones, `"{index}.{name}"` as `finetune.py` keys them
    (`"1.attention.query_key_value.lora_A.weight"`).
    """
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
    for layer, name, linear in list(_targeted(modules, config.targets)):
        if isinstance(linear, LoRALinear):
            raise ValueError(f"layer {layer.layer_idx}'s {name} already has a LoRA adapter")
        _replace(layer, name, LoRALinear(linear, config.rank, config.alpha, config.dropout, config.scaling))
    keys = [f"{i}.{n}" for i, m in enumerate(modules) for n, p in m.named_parameters() if p.requires_grad]
    if not keys:
        raise ValueError(f"the {len(modules)} modules hold no transformer layer, so LoRA has nothing to adapt")
    return keys


def lora_layers(modules: Sequence[nn.Module]) -> Iterator[Tuple[int, str, LoRALinear]]:
    """`(layer index, name inside the layer, LoRALinear)` for every adapted linear layer of `modules`."""
    for module in modules:
        if isinstance(module, TransformerLayer):
            for name, child in module.named_modules():
                if isinstance(child, LoRALinear):
                    yield module.layer_idx, name, child


def wrap_like(source: nn.Module, copy: nn.Module):
    r"""
    Give `copy` (a plain module of the same part) `LoRALinear`s where `source` has them, with the same rank and
    scale, so that `source`'s state dict loads into it (gathering FSDP's shards, `trainer.py`).
    """
    for name, child in list(source.named_modules()):
        if isinstance(child, LoRALinear):
            lora = LoRALinear(copy.get_submodule(name), child.rank, child.alpha, 0.0, child.scaling)
            lora.lora_dropout = child.lora_dropout
            _replace(copy, name, lora)


# ## Merging
@torch.no_grad()
def merge_lora(modules: Sequence[nn.Module]) -> int:
    r"""
    Replace every `LoRALinear` in `modules` by a plain `nn.Linear` holding $W + \frac{\alpha}{r} B A$, in the base
    weight's dtype and device; returns how many were merged. The model is then `model.py`'s again.
    """
    merged = 0
    for module in modules:
        for name, child in list(module.named_modules()):
            if isinstance(child, LoRALinear):
                weight = child.merged_weight()
                with torch.device("meta"):
                    plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight = nn.Parameter(weight, requires_grad=False)
                if child.bias is not None:
                    plain.bias = nn.Parameter(child.bias.detach(), requires_grad=False)
                _replace(module, name, plain)
                merged += 1
    return merged


def apply_lora_tensors(modules: Sequence[nn.Module], tensors: Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]],
                       scaling: Dict[Tuple[int, str], float]):
    r"""
    Attach given adapters without merging them (applied on the fly): `tensors[(layer, name)] = (A, B)` and
    `scaling[(layer, name)]`, for the transformer layers among `modules` (a filtered model may hold only some).
    """
    layers = {m.layer_idx: m for m in modules if isinstance(m, TransformerLayer)}
    for (index, name), (a, b) in tensors.items():
        if index not in layers:
            continue
        linear = layers[index].get_submodule(name)
        lora = LoRALinear(linear, a.shape[0], scaling[index, name] * a.shape[0], 0.0, scaling[index, name])
        with torch.no_grad():
            lora.lora_A.weight.copy_(a)
            lora.lora_B.weight.copy_(b)
        lora.requires_grad_(False)
        _replace(layers[index], name, lora)
