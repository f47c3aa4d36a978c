r"""
# LoRA adapters in peft's format

Most LoRA adapters of GPT-NeoX models (Pythia fine-tunes, mostly) are made with Hugging Face's
[peft](https://github.com/huggingface/peft) and shared as a folder of two files:

* `adapter_config.json`: `peft_type: "LORA"`, the rank `r`, `lora_alpha`, `target_modules` (such as
  `["query_key_value"]`), `base_model_name_or_path` (the base model, a Hub name or a path) and `revision` (the
  base's), and options that change the maths (`use_rslora`, `use_dora`, `rank_pattern`, ...);
* `adapter_model.safetensors`: $A$ and $B$ of each adapted layer, named after transformers' modules,
  `base_model.model.gpt_neox.layers.3.attention.query_key_value.lora_A.weight` `[r, C_in]` and `...lora_B.weight`
  `[C_out, r]`.

`save_adapter` writes what `training/lora.py` trained in exactly this form, so that peft loads it on
transformers' `GPTNeoXForCausalLM`; `read_adapter` reads peft's, so that an adapter trained elsewhere loads here
wherever a checkpoint is accepted: `open_checkpoint` (`reader.py`) sees an adapter folder (or Hub name), opens
the base model it names (or the one the caller gives instead, `base=`, `--base`) and reads its layers with
$W + \frac{\alpha}{r} B A$ merged in. `LayerLoader(adapter="apply")` keeps the adapter beside the weights instead
(`lora.apply_lora_tensors`). What peft can express and we do not compute (DoRA, per-module ranks, trained biases,
extra trained modules) is refused by name, never ignored.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from .files import CheckpointError, load_torch_file
from .sources import ADAPTER_CONFIG, ADAPTER_WEIGHTS, find_tokenizer

# peft's names for the four linear layers of a transformer layer, and ours (the same inside a layer)
PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?:gpt_neox\.)?layers\.(\d+)\."
                      r"(attention\.query_key_value|attention\.dense|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)"
                      r"\.lora_([AB])(?:\.default)?\.weight$")
PEFT_PREFIX = "base_model.model.gpt_neox.layers.{layer}.{name}.lora_{which}.weight"

# Options of `adapter_config.json` that change what the adapter computes, and the value under which it is the
# plain LoRA of `lora.py`
PLAIN = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "lora_bias": False, "modules_to_save": None,
         "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "trainable_token_indices": None,
         "target_parameters": None, "use_qalora": False}


# ## The adapter in memory
#
# $A$ and $B$ of each adapted linear layer, keyed `(layer, name)` with `name` as inside our `TransformerLayer`
# (`"attention.query_key_value"`), and the scale $\alpha / r$ (or $\alpha / \sqrt r$ with rsLoRA).
@dataclass
class Adapter:
    folder: Path
    rank: int
    alpha: float
    use_rslora: bool
    targets: Tuple[str, ...]
    base: Optional[str]
    base_revision: Optional[str]
    tensors: Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]]

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def describe(self) -> str:
        return (f"LoRA adapter {self.folder} (rank {self.rank}, alpha {self.alpha:g}, "
                f"{', '.join(self.targets)}, {len(self.tensors)} linear layers adapted)")

    # Every adapted layer must exist in the base and have the shape $A$ and $B$ imply
    def check(self, config, base: str):
        for (layer, name), (a, b) in self.tensors.items():
            if layer >= config.n_layers:
                raise CheckpointError(f"{self.folder} adapts layer {layer}, but the base model {base} has "
                                      f"{config.n_layers} layers: the adapter was trained on another model. Pass "
                                      f"its own base with --base.")
            c, f = config.d_model, config.d_ff
            n_in, n_out = {"attention.query_key_value": (c, 3 * c), "attention.dense": (c, c),
                           "mlp.dense_h_to_4h": (c, f), "mlp.dense_4h_to_h": (f, c)}[name]
            if a.shape[1] != n_in or b.shape[0] != n_out:
                raise CheckpointError(f"{self.folder}: layer {layer}'s {name} adapter is for a [{b.shape[0]}, "
                                      f"{a.shape[1]}] weight, but the base model {base} has [{n_out}, {n_in}]: the "
                                      f"adapter was trained on another model. Pass its own base with --base.")

    def merge_into(self, layer: int, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        r"""One transformer layer's tensors with $W + s B A$ in place of each adapted $W$, in $W$'s dtype."""
        from labml_nn.neox.training.lora import merged_weight
        out = dict(tensors)
        for (index, name), (a, b) in self.tensors.items():
            if index == layer:
                out[f"{name}.weight"] = merged_weight(tensors[f"{name}.weight"], a, b, self.scaling)
        return out


# ## Reading peft's folder
def is_adapter(folder: Union[str, Path]) -> bool:
    from .sources import folder_kind
    return folder_kind(folder) == "peft_adapter"


def read_adapter(folder: Union[str, Path]) -> Adapter:
    r"""
    Read a peft LoRA adapter folder, refusing what `lora.py` does not compute. Rank and $\alpha$ come from the
    config; each tensor's shape is checked against the rank.
    """
    from ..config import ConfigError, read_config_text
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(read_config_text(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download the adapter.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters (\"LORA\") "
                              f"load into this model.")
    for key, plain in PLAIN.items():
        value = config.get(key, plain)
        if value != plain and not (plain is None and not value) and not (plain == {} and not value):
            raise CheckpointError(f"{path}: `{key}: {json.dumps(value)}` changes what the adapter computes in a way "
                                  f"this implementation does not (plain LoRA needs {json.dumps(plain)}); merge "
                                  f"it with peft (`merge_and_unload`) and load the merged model instead.")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{path}: `r` ({rank!r}) and `lora_alpha` ({alpha!r}) must be a positive integer and "
                              f"a number")
    tensors = _read_tensors(folder, rank)
    targets = sorted({name.rpartition(".")[2] for _, name in tensors})
    return Adapter(folder, rank, float(alpha), bool(config.get("use_rslora", False)), tuple(targets),
                   config.get("base_model_name_or_path"), config.get("revision"), tensors)


def _read_tensors(folder: Path, rank: int) -> Dict[Tuple[int, str], Tuple[torch.Tensor, torch.Tensor]]:
    weights = next(folder / n for n in ADAPTER_WEIGHTS if (folder / n).is_file())
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(weights))
        except Exception as e:
            raise CheckpointError(f"Could not read {weights}: {e}. Re-download the adapter.") from None
    else:
        state = load_torch_file(weights, what="the adapter's tensors")
    pairs: Dict[Tuple[int, str], Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = PEFT_KEY.match(key)
        if not m:
            raise CheckpointError(f"{weights}: `{key}` is not the lora_A or lora_B weight of a GPT-NeoX layer's "
                                  f"query_key_value, dense, dense_h_to_4h or dense_4h_to_h; this adapter adapts "
                                  f"something we do not. Merge it with peft (`merge_and_unload`) and load that.")
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value
    tensors = {}
    for (layer, name), pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{weights}: layer {layer}'s {name} has lora_{next(iter(pair))} but not its "
                                  f"partner; the file is incomplete. Re-download the adapter.")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise CheckpointError(f"{weights}: layer {layer}'s {name} has rank {a.shape[0]}, but "
                                  f"{ADAPTER_CONFIG} says r = {rank}")
        tensors[layer, name] = (a, b)
    if not tensors:
        raise CheckpointError(f"{weights} holds no LoRA tensors")
    return tensors


# ## Writing peft's folder
def save_adapter(out: Union[str, Path], modules: Sequence[torch.nn.Module], lora_config, *, base: str,
                 base_revision: Optional[str] = None, tokenizer_path: Union[str, Path, None] = None,
                 overwrite: bool = False) -> Path:
    r"""
    Write the `LoRALinear`s of `modules` as peft writes an adapter: `adapter_config.json` (peft's keys, with
    `base_model_name_or_path` = `base`) and `adapter_model.safetensors` (fp32 $A$ and $B$ under peft's names),
    plus the base's tokenizer for convenience (peft ignores it). All at once or not at all.
    """
    from safetensors.torch import save_file

    from labml_nn.neox.training.lora import lora_layers
    from .atomic import atomic_folder
    tensors = {}
    for layer, name, lora in lora_layers(modules):
        for which, linear in (("A", lora.lora_A), ("B", lora.lora_B)):
            tensors[PEFT_PREFIX.format(layer=layer, name=name, which=which)] = \
                linear.weight.detach().float().cpu().contiguous()
    if not tensors:
        raise ValueError("the modules hold no LoRA layer; add them with lora.add_lora and train first")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
              "revision": base_revision, "r": lora_config.rank, "lora_alpha": lora_config.alpha,
              "lora_dropout": lora_config.dropout, "target_modules": list(lora_config.targets),
              "use_rslora": lora_config.use_rslora, "init_lora_weights": True, "inference_mode": True,
              "layers_to_transform": None, "layers_pattern": None, **PLAIN}
    out = Path(out)
    replace = overwrite or (out.is_dir() and not any(out.iterdir()))
    with atomic_folder(out, overwrite=replace) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS[0]), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        found = find_tokenizer(tokenizer_path) if tokenizer_path else None
        if found is not None:
            (tmp / found.name).write_bytes(found.read_bytes())
    return out
