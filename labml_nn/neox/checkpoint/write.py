r"""
# Writing checkpoints

Two writers, both fed the same stream of parts, `(part, tensors)` with `part` a `parts.Part`, in the model's
order (what `Checkpoint.parts()` yields, or what a fine-tuning loop produces from a model's `state_dict()`).
Neither ever holds more than a part (or one safetensors shard) in memory.

* `write_neox_checkpoint` writes the **gpt-neox pipeline layout** with any tensor-parallel degree $N$:
  `latest`, `global_step{step}/layer_XX-model_RR-model_states.pt`, a small
  `global_step{step}/mp_rank_RR_model_states.pt` per rank (DeepSpeed reads its bookkeeping from those
  before it loads the layer files), `configs/{name}.yml` and the tokenizer. Splitting uses the inverse of
  the merge rules (`merge.split_part`), so merging what we write gives back exactly what we were given.
* `write_hf_checkpoint` writes a **transformers `GPTNeoXForCausalLM` folder**: `config.json`, the weights as
  safetensors (one `model.safetensors`, or shards with `model.safetensors.index.json` when they exceed
  `max_shard_bytes`, 1 GiB by default), and `tokenizer.json`.

The writers write into the folder they are given; making the result appear all at once, or not at all, is the
caller's job (see `convert.py`).
"""

import json
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ..config import NeoXConfig
from .files import CheckpointError
from .merge import PART_TENSORS, respell_mlp, split_part
from .parts import Part, all_parts

# One part of the stream: the part and its tensors, merged, named as `Checkpoint.read` names them
PartTensors = Tuple[Part, Dict[str, torch.Tensor]]


def _cast(tensors: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in tensors.items()}


# What we write must be exactly what the reader expects, no more (an unknown tensor would be lost on the
# way back) and no less.
def _check_part(part: Part, tensors: Dict[str, torch.Tensor], n_layers: int):
    part.check(n_layers)
    want, have = set(PART_TENSORS[part.kind]), set(tensors)
    if want != have:
        raise CheckpointError(f"cannot write {part}: missing {sorted(want - have)}, unexpected {sorted(have - want)}")


# And every part must be there, once the stream is over
def _check_complete(written: List[Part], n_layers: int, writer: str):
    missing = [str(p) for p in all_parts(n_layers) if p not in written]
    if missing:
        raise CheckpointError(f"the parts given to {writer} lacked {', '.join(missing)}")


# ## The gpt-neox layout
def write_neox_checkpoint(out_dir: "str | Path", config: NeoXConfig, parts: Iterable[PartTensors], *,
                          tensor_parallel_size: int = 1, tokenizer_path: "str | Path | None" = None,
                          dtype: Optional[torch.dtype] = None, step: int = 0, name: str = "model",
                          mlp_names: str = "dense") -> Path:
    r"""
    Write `parts` as a gpt-neox checkpoint with `tensor_parallel_size` ranks under `out_dir` (created if needed).
    `mlp_names` spells the MLP `mlp.dense_h_to_4h` (`"dense"`, gpt-neox before PR #1212) or `mlp.linear1`
    (`"linear"`, gpt-neox since), as the gpt-neox that will load it expects. Returns the step folder.
    """
    if mlp_names not in ("dense", "linear"):
        raise CheckpointError(f"mlp_names={mlp_names!r}: choose 'dense' (mlp.dense_h_to_4h) or 'linear' "
                              f"(mlp.linear1)")
    out = Path(out_dir)
    tag = f"global_step{step}"
    folder = out / tag
    folder.mkdir(parents=True, exist_ok=True)
    n = tensor_parallel_size
    config = config.with_updates(tensor_parallel_size=n)
    written = []
    for part, tensors in parts:
        _check_part(part, tensors, config.n_layers)
        for rank, shard in enumerate(split_part(_cast(tensors, dtype), n, parallel_residual=config.parallel_residual)):
            torch.save(respell_mlp(shard, mlp_names), folder / part.pipeline_file(config.n_layers, rank))
        written.append(part)
    _check_complete(written, config.n_layers, "write_neox_checkpoint")

    # DeepSpeed's pipeline engine opens `mp_rank_RR_model_states.pt` for the step's bookkeeping and then loads
    # the weights from the layer files; the weights are not repeated here (`module` is None, as in the 20B files).
    for rank in range(n):
        torch.save({"module": None, "buffer_names": [], "global_steps": step, "global_samples": 0,
                    "skipped_steps": 0, "iteration": step, "mp_world_size": n, "dp_world_size": 1},
                   folder / f"mp_rank_{rank:02d}_model_states.pt")
    (out / "latest").write_text(tag)

    # The config: the model's keys from `NeoXConfig`, and the tokenizer's, with the path relative to this folder
    import yaml

    values = config.to_neox_yaml()
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        shutil.copyfile(tokenizer_path, out / tokenizer_path.name)
        values.update({"tokenizer_type": "HFTokenizer", "vocab_file": tokenizer_path.name})
    (out / "configs").mkdir(exist_ok=True)
    header = ("# Written by labml_nn.neox.checkpoint. Paths are relative to the checkpoint folder; gpt-neox\n"
              "# resolves them from where it runs, so make `vocab_file` and `load` absolute before training.\n")
    (out / "configs" / f"{name}.yml").write_text(header + yaml.safe_dump(values, sort_keys=False))
    return folder


# ## The Hugging Face layout
#
# Our names map one-to-one onto transformers' names; only the prefixes differ (`Part.hf_name`).
def write_hf_checkpoint(out_dir: "str | Path", config: NeoXConfig, parts: Iterable[PartTensors], *,
                        tokenizer_path: "str | Path | None" = None, dtype: Optional[torch.dtype] = None,
                        max_shard_bytes: int = 1024 ** 3) -> Path:
    r"""
    Write `parts` as a `GPTNeoXForCausalLM` folder that `from_pretrained` loads offline.

    A shard is written as soon as the next part would take it past `max_shard_bytes`, so the writer holds at
    most one shard in memory. The default, 1 GiB, is about one layer of the 20B model in fp16 (906 MB), which
    keeps a merge's memory near one layer; a part larger than the limit gets a shard of its own. A stream that
    fits in one shard is written as a plain `model.safetensors` with no index.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size, stored_dtype, written = [], {}, 0, None, []

    def flush():
        nonlocal current, size
        if current:
            path = out / f"model-{len(shards) + 1:05d}.safetensors"
            save_file(current, str(path), metadata={"format": "pt"})
            shards.append((path, list(current)))
        current, size = {}, 0

    embedding = None
    for part, tensors in parts:
        _check_part(part, tensors, config.n_layers)
        # With tied embeddings, a readout equal to the embedding is not written: transformers ties it (and a
        # tensor shared by two names is refused by safetensors). A readout of its own is written, and used.
        if part.kind == "embedding":
            embedding = tensors["word_embeddings.weight"]
        if (part.kind == "readout" and config.tie_word_embeddings and embedding is not None
                and torch.equal(tensors["final_linear.weight"], embedding)):
            written.append(part)
            continue
        # transformers has no `gpt_j_tied`; a copy of the first norm in the second's place computes the same
        if config.tied_layernorms and part.kind == "layer":
            tensors = {**tensors, **{f"post_attention_layernorm.{k}": tensors[f"input_layernorm.{k}"].clone()
                                     for k in ("weight", "bias")}}
        tensors = {part.hf_name(k): v for k, v in _cast(tensors, dtype).items()}
        nbytes = sum(v.numel() * v.element_size() for v in tensors.values())
        if current and size + nbytes > max_shard_bytes:
            flush()
        current.update(tensors)
        size += nbytes
        stored_dtype = stored_dtype or next(iter(tensors.values())).dtype
        written.append(part)
    flush()
    _check_complete(written, config.n_layers, "write_hf_checkpoint")

    # One shard is renamed `model.safetensors`; several get their final names, `-of-` the count, and an index
    if len(shards) == 1:
        shards[0][0].rename(out / "model.safetensors")
    else:
        weight_map, total = {}, 0
        for i, (path, names) in enumerate(shards):
            final = out / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            path.rename(final)
            weight_map.update({n: final.name for n in names})
            total += final.stat().st_size
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    hf = config.with_updates(tied_layernorms=False).to_hf_config()
    hf["dtype"] = str(stored_dtype).removeprefix("torch.") if stored_dtype else "float32"
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    return out
