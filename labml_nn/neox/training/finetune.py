r"""
# Fine-tuning: choosing what trains, and keeping only that

Fine-tuning continues training a trained model on new text. Updating all 20.6 billion parameters of GPT-NeoX-20B
with AdamW in fp32 needs about 16 bytes a parameter (weights, gradients, two moments): 330 GB. Training a small
part instead keeps the rest frozen in fp16, with optimiser state only for that part.

| `train` | what changes | share of the 20B model |
|---|---|---|
| `biases` | every bias, of the linear layers and the layer norms ([BitFit](https://arxiv.org/abs/2106.10199)) | 0.0145% |
| `ffn` | the feed-forward networks, `mlp.dense_h_to_4h` and `mlp.dense_4h_to_h`, weights and biases | 65% |
| `all` | everything | 100% |

BitFit showed that training only the biases recovers much of what full fine-tuning gains on small tasks. 20B's
biases are 3 million numbers (11 vectors of $C$ a layer): with their optimiser state, a few dozen MB beside the
41 GB fp16 model.

## How a parameter is frozen

`select_trainable` sets `requires_grad` to `False` everywhere but on the chosen tensors, and converts those to
fp32 (small updates to fp16 numbers round away); the optimiser (`trainer.py`) takes only those.

## Saving just the trained tensors

The trained tensors are a small file (12 MB in fp32 for BitFit of the 20B model) that, with the base checkpoint,
reproduces the fine-tuned model. We write them with [safetensors](https://github.com/huggingface/safetensors),
which stores raw tensors and a JSON header and runs no code when loaded, keyed by the module's index in the model
and the parameter's name, `"{index}.{name}"`: `"5.mlp.dense_4h_to_h.bias"` is a bias of transformer layer 4
(index 0 is the embedding, $1 \dots L$ the transformer layers, $L + 1$ the final norm, $L + 2$ the readout, the
same indices as `LayerLoader(filter_layers=...)`). The header's metadata records what was trained and the
model's config, so that a file is never applied to a model of another shape.

`merge_into_checkpoint` puts the tensors back into the base checkpoint's weights and writes a complete
checkpoint, which any tool that reads gpt-neox checkpoints can load.
"""

import json
import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from labml_nn.neox.checkpoint import Part
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.model import TransformerLayer

TRAINABLE = ("biases", "ffn", "all")
FORMAT = "labml_nn.neox.finetune/1"


# ## Which tensors train
def is_trained(train: str, module: nn.Module, name: str) -> bool:
    """Whether parameter `name` of `module` trains under the choice `train` (one of `TRAINABLE`)."""
    if train == "all":
        return True
    if train == "biases":
        return name.endswith("bias")
    if train == "ffn":
        return isinstance(module, TransformerLayer) and name.startswith("mlp.")
    raise ValueError(f"train={train!r}: choose one of {', '.join(TRAINABLE)}")


def select_trainable(modules: Sequence[nn.Module], train: str,
                     dtype: Optional[torch.dtype] = torch.float32) -> List[str]:
    r"""
    Freeze every parameter of `modules` but the ones `train` selects, convert those to `dtype` (fp32 by default;
    `None` keeps them as they are), and return their keys, `"{index}.{name}"`.
    """
    keys = []
    for index, module in enumerate(modules):
        for name, p in module.named_parameters():
            trained = is_trained(train, module, name)
            if trained and dtype is not None and p.dtype != dtype:
                # `p.data = ...` keeps the `nn.Parameter` object (and any reference to it) while changing its dtype
                p.data = p.data.to(dtype)
            p.requires_grad_(trained)
            if trained:
                keys.append(f"{index}.{name}")
        # A layer norm takes a half-precision input with fp32 parameters, but not with one fp32 and one
        # half-precision parameter (a trained bias beside a frozen gain); so a norm with a trained parameter is
        # converted whole. Linear layers need no such care: autocast casts their weight and bias alike.
        for norm in module.modules():
            if isinstance(norm, nn.LayerNorm) and dtype is not None:
                if any(p.requires_grad for p in norm.parameters()):
                    for p in norm.parameters():
                        p.data = p.data.to(dtype)
    if not keys:
        raise ValueError(f"train={train!r} selected no parameter of these {len(modules)} modules")
    return keys


def count_parameters(modules: Sequence[nn.Module]) -> Tuple[int, int]:
    """(trained, total) numbers of parameters."""
    params = [p for m in modules for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trained_tensors(modules: Sequence[nn.Module]) -> Dict[str, torch.Tensor]:
    """The parameters with `requires_grad`, keyed `"{index}.{name}"`, detached, on the CPU."""
    return {f"{index}.{name}": p.detach().cpu().contiguous()
            for index, module in enumerate(modules)
            for name, p in module.named_parameters() if p.requires_grad}


# ## The file of trained tensors
def save_trained(path: Union[str, Path], modules: Sequence[nn.Module], train: str,
                 config: NeoXConfig, extra: Optional[Dict[str, str]] = None) -> Path:
    r"""
    Write the trained tensors of `modules` to a safetensors file, with metadata: the format, what was
    trained (`train`), the model's config as JSON, and any `extra` strings (such as the base checkpoint's path).
    """
    from safetensors.torch import save_file
    metadata = {"format": FORMAT, "train": train, "config": json.dumps(config.to_dict())}
    metadata.update(extra or {})
    path = Path(path)
    save_file(trained_tensors(modules), str(path), metadata=metadata)
    return path


def load_trained(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors and the metadata of a file `save_trained` wrote."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the .safetensors file that fine-tuning wrote")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a file of fine-tuned tensors (its metadata says format="
                             f"{metadata.get('format')!r}, expected {FORMAT!r})")
        return {key: f.get_tensor(key) for key in f.keys()}, metadata


def apply_trained(modules: Sequence[nn.Module], tensors: Dict[str, torch.Tensor],
                  metadata: Optional[Dict[str, str]] = None):
    r"""
    Copy fine-tuned tensors into `modules` (the whole model, in order). When `metadata` is given, the config it
    records must match the model's in every field that sets a tensor's shape.
    """
    if metadata is not None and "config" in metadata:
        _check_config(NeoXConfig.from_dict(json.loads(metadata["config"])), modules[0].config)
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(modules):
            raise KeyError(f"fine-tuned tensor `{key}` names module {index}, but the model has modules "
                           f"0 ... {len(modules) - 1}")
        params = dict(modules[int(index)].named_parameters())
        if name not in params:
            raise KeyError(f"fine-tuned tensor `{key}`: module {index} ({type(modules[int(index)]).__name__}) has "
                           f"no parameter `{name}`")
        p = params[name]
        if p.shape != value.shape:
            raise ValueError(f"fine-tuned tensor `{key}` has shape {tuple(value.shape)}, the model's "
                             f"{tuple(p.shape)}: the file was trained on another model")
        with torch.no_grad():
            p.copy_(value.to(device=p.device, dtype=p.dtype))


def _check_config(saved: NeoXConfig, model: NeoXConfig):
    for field in ("n_layers", "d_model", "n_heads", "n_vocab", "d_ff"):
        if getattr(saved, field) != getattr(model, field):
            raise ValueError(f"the fine-tuned tensors were trained on a model with {field}="
                             f"{getattr(saved, field)}, this model has {getattr(model, field)}")


# ## Writing a complete checkpoint
def model_parts(modules: Sequence[nn.Module], dtype: Optional[torch.dtype] = None
                ) -> Iterator[Tuple[Part, Dict[str, torch.Tensor]]]:
    r"""
    The model's weights as the checkpoint writer takes them: `(part, tensors)` for the embedding, each
    transformer layer, the final norm and the readout, on the CPU, in `dtype` if given. Which part a module is,
    the loader says (`loader.part_of`).
    """
    from labml_nn.neox.loader import part_of
    for module in modules:
        part = part_of(module)
        tensors = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        if dtype is not None:
            tensors = {k: v.to(dtype) for k, v in tensors.items()}
        yield part, tensors


def write_checkpoint(out_dir: Union[str, Path], modules: Sequence[nn.Module], *, tensor_parallel_size: int = 1,
                     tokenizer_path: Union[str, Path, None] = None, dtype: Optional[torch.dtype] = None,
                     extra_files: Sequence[Path] = (), overwrite: bool = False, reads: Sequence = ()) -> Path:
    r"""
    Write `modules` as a gpt-neox checkpoint (the 20B slim layout) at `out_dir`, all at once or not at all: the
    files go to a temporary folder beside `out_dir`, which is renamed when complete. `extra_files` are copied
    in too (such as the file of fine-tuned tensors). `reads` are the paths the caller read (its checkpoint), which
    `overwrite` never replaces (`checkpoint/atomic.py`).
    """
    from labml_nn.neox.checkpoint import write_neox_checkpoint
    from labml_nn.neox.checkpoint.atomic import atomic_folder
    out = Path(out_dir)
    # An empty folder at `out` (made by the user for us) counts as free
    replace = overwrite or (out.is_dir() and not out.is_symlink() and not any(out.iterdir()))
    with atomic_folder(out, overwrite=replace, reads=reads) as tmp:
        write_neox_checkpoint(tmp, modules[0].config, model_parts(modules, dtype),
                              tensor_parallel_size=tensor_parallel_size, tokenizer_path=tokenizer_path)
        for f in extra_files:
            shutil.copyfile(f, tmp / Path(f).name)
    return out


def merge_into_checkpoint(base: Union[str, Path], trained_path: Union[str, Path], out_dir: Union[str, Path],
                          *, dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> Path:
    r"""
    Load the base checkpoint, put the fine-tuned tensors into it and write the result as a complete checkpoint
    with the base's tensor-parallel degree and tokenizer. (This holds the whole model in memory.)
    """
    from labml_nn.neox.loader import LayerLoader
    tensors, metadata = load_trained(trained_path)
    loader = LayerLoader(base, dtype=torch.float32, device="cpu", progress=False)
    modules = list(loader.load())
    apply_trained(modules, tensors, metadata)
    checkpoint = loader.checkpoint
    return write_checkpoint(out_dir, modules, tensor_parallel_size=loader.config.tensor_parallel_size,
                            tokenizer_path=checkpoint.tokenizer_path, dtype=dtype, overwrite=overwrite,
                            reads=[checkpoint.layout.root, trained_path])
