r"""
# Finding the weights: three layouts

The same GPT-NeoX weights are found on disk in three arrangements. This module recognises which one a folder
holds and reads the tensors of one *part* of the model (the embedding, one transformer layer, the final norm or
the readout) from it, one tensor-parallel rank at a time. Merging the ranks is the next module's business.

## The pipeline index map

gpt-neox builds the model as one flat sequence of pipeline stages and numbers the stages in order. For a model
with $L$ transformer layers:

| index | stage |
|---|---|
| $0$ | the embedding |
| $1$ | a reshaping function, no weights |
| $i + 2$ | transformer layer $i$, for $0 \le i < L$ |
| $L + 2$ | another reshaping function, no weights |
| $L + 3$ | the final layer norm |
| $L + 4$ | the readout ("final linear") |

The 20B model has $L = 44$, so its final norm is stage 47 and its readout stage 48.

## The layouts

* **Pipeline** (the 20B "slim weights"): `latest` names a folder such as `global_step150000/`, which holds one
  file per stage and rank, `layer_{index:02d}-model_{rank:02d}-model_states.pt`, each a flat dictionary of
  tensors. We also accept the `global_step...` folder itself.
* **Sequential** (other gpt-neox runs): one DeepSpeed file per rank, `mp_rank_{rank:02d}_model_states.pt`,
  with the weights under `state["module"]`, named `sequential.{index}.{name}` with the same index map.
* **Hugging Face** (Pythia): `config.json` and `model.safetensors` (or shards listed in
  `model.safetensors.index.json`, or the older `pytorch_model.bin`), a single unpartitioned rank with names
  `gpt_neox.embed_in.weight`, `gpt_neox.layers.{i}.{name}`, `gpt_neox.final_layer_norm.{name}`, `embed_out.weight`.

Every layout answers the same question, `load(part, layer)`: a list with one `(source, tensors)` pair per rank,
where the tensor names are the pipeline layout's names without any prefix and `source` names the file for
error messages. (gpt-neox checkpoints since September 2024 name the MLP `mlp.linear1` / `mlp.linear2`; the
reader renames them, `merge.MLP_SPELLINGS`.)
"""

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .files import CheckpointError, load_torch_file

# One rank's tensors of one part, and the file they came from
RankTensors = Tuple[str, Dict[str, "torch.Tensor"]]

PARTS = ("embedding", "layer", "norm", "readout")


# ## The index map and its inverse
def pipeline_index(part: str, layer: Optional[int], n_layers: int) -> int:
    if part == "embedding":
        return 0
    if part == "layer":
        if layer is None or not 0 <= layer < n_layers:
            raise CheckpointError(f"transformer layer {layer} does not exist: the model has {n_layers} layers")
        return layer + 2
    if part == "norm":
        return n_layers + 3
    if part == "readout":
        return n_layers + 4
    raise CheckpointError(f"unknown part {part!r}; the parts are {PARTS}")


def describe(part: str, layer: Optional[int]) -> str:
    """Plain words for a part, used in every message: "transformer layer 5", "the final norm"."""
    return {"embedding": "the embedding", "norm": "the final norm", "readout": "the readout (final linear)"}.get(
        part, f"transformer layer {layer}")


def expected_indices(n_layers: int) -> Dict[int, Tuple[str, Optional[int]]]:
    indices = {0: ("embedding", None), n_layers + 3: ("norm", None), n_layers + 4: ("readout", None)}
    indices.update({i + 2: ("layer", i) for i in range(n_layers)})
    return indices


# An index outside the map means the config's layer count disagrees with the files (or the files hold a
# model with stages we do not know). The highest index is the readout, $L + 4$, so it tells us the $L$
# the files were written for.
def _check_indices(found: set, n_layers: int, config_key: str, where: str):
    extra = sorted(found - set(expected_indices(n_layers)))
    if extra:
        guess = max(found) - 4
        raise CheckpointError(
            f"{where} has stage(s) {extra}, which a {n_layers}-layer model does not use (0 = embedding, "
            f"2..{n_layers + 1} = layers, {n_layers + 3} = final norm, {n_layers + 4} = readout). If the model "
            f"has {guess} layers, set `{config_key}: {guess}` in the config.")


# ## Pipeline layout
#
# One file per stage and rank in the step folder; `files` maps `(stage, rank)` to its path. The number of ranks
# is what the files show until `check` is told the config's.
class PipelineLayout:
    name = "pipeline"
    PATTERN = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt$")

    def __init__(self, folder: Path, root: Path, trust_pickle: bool):
        self.folder, self.root, self.trust_pickle = folder, root, trust_pickle
        self.files = {}
        for f in folder.iterdir():
            m = self.PATTERN.match(f.name)
            if m:
                self.files[int(m.group(1)), int(m.group(2))] = f
        self.ranks_found = max(r for _, r in self.files) + 1
        self.n_ranks = self.ranks_found
        self.n_layers = 0

    def file(self, index: int, rank: int) -> Path:
        return self.folder / f"layer_{index:02d}-model_{rank:02d}-model_states.pt"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    # Once the config is read: every stage needs a file for every rank, and a missing one is named, with the rank
# and the stage it holds.
    def check(self, n_layers: int, n_ranks: int, config_key: str = "num_layers"):
        self.n_layers, self.n_ranks = n_layers, n_ranks
        _check_indices({i for i, _ in self.files}, n_layers, config_key, self.rel(self.folder))
        self._refuse_stray_ranks(n_layers, n_ranks)
        for index, (part, layer) in expected_indices(n_layers).items():
            for rank in range(n_ranks):
                path = self.file(index, rank)
                if not path.is_file():
                    raise CheckpointError(
                        f"Missing {self.rel(path)}: the checkpoint has {n_ranks} tensor-parallel rank(s) but "
                        f"rank {rank} of {describe(part, layer)} is absent. Re-download it (for the 20B model: "
                        f"`python -m labml_nn.neox.checkpoint download`), or copy it from the training run.")

    # A rank with files for only a few stages while rank 0 has them all is not a half-finished download (files
    # come stage by stage, both ranks together) but a stray file of another run, and re-downloading would not help.
    def _refuse_stray_ranks(self, n_layers: int, n_ranks: int):
        stages = list(expected_indices(n_layers))
        have = {r: [i for i in stages if (i, r) in self.files] for r in range(n_ranks)}
        if len(have[0]) < len(stages):
            return
        for rank in range(1, n_ranks):
            if 0 < len(have[rank]) <= len(stages) // 2:
                first = self.rel(self.files[have[rank][0], rank])
                raise CheckpointError(f"{first} is of tensor-parallel rank {rank}, but rank {rank} has files for "
                                      f"only {len(have[rank])} of {len(stages)} stages: a stray file of another "
                                      f"run? Move it out of {self.rel(self.folder)}, or check `model_parallel_size`.")

    def embedding_rows(self) -> List[int]:
        return [t["word_embeddings.weight"].shape[0] if "word_embeddings.weight" in t else 0
                for _, t in self.load("embedding", None)]

    def load(self, part: str, layer: Optional[int]) -> List[RankTensors]:
        index = pipeline_index(part, layer, self.n_layers)
        out = []
        for rank in range(self.n_ranks):
            path = self.file(index, rank)
            tensors = load_torch_file(path, trust_pickle=self.trust_pickle,
                                      what=f"rank {rank} of {describe(part, layer)}")
            if not isinstance(tensors, dict):
                raise CheckpointError(f"{self.rel(path)} holds a {type(tensors).__name__}, not a dictionary of "
                                      f"tensors; it is not a gpt-neox layer file.")
            out.append((self.rel(path), tensors))
        return out


# ## Sequential (DeepSpeed) layout
#
# Each rank's file holds the whole model. We load it again for every part rather than keep it: with
# `mmap=True` a load reads only the pickle's small index, and dropping the dictionary after each part lets the
# pages of the tensors already merged go, so memory stays near one layer.
class SequentialLayout(PipelineLayout):
    name = "sequential"
    PATTERN = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
    KEY = re.compile(r"sequential\.(\d+)\.(.+)$")

    def __init__(self, folder: Path, root: Path, trust_pickle: bool):
        self.folder, self.root, self.trust_pickle = folder, root, trust_pickle
        ranks = [int(m.group(1)) for f in folder.iterdir() if (m := self.PATTERN.match(f.name))]
        self.ranks_found = self.n_ranks = max(ranks) + 1
        self.n_layers = 0

    def file(self, index: int, rank: int) -> Path:
        return self.folder / f"mp_rank_{rank:02d}_model_states.pt"

    def _module(self, rank: int) -> Dict[int, Dict[str, "torch.Tensor"]]:
        path = self.file(0, rank)
        state = load_torch_file(path, trust_pickle=self.trust_pickle, what=f"tensor-parallel rank {rank}")
        module = state.get("module") if isinstance(state, dict) else None
        if not isinstance(module, dict) or not any(self.KEY.match(k) for k in module):
            raise CheckpointError(
                f"{self.rel(path)} has no weights under state['module'] named `sequential.N.<name>`. (The "
                f"mp_rank files beside the 20B slim weights hold none; there, the layer_XX files hold them.)")
        by_index: Dict[int, Dict[str, "torch.Tensor"]] = {}
        for key, value in module.items():
            m = self.KEY.match(key)
            if not m:
                raise CheckpointError(f"{self.rel(path)}: unexpected weight `{key}` in state['module'] (expected "
                                      f"`sequential.N.<name>`); this is not a GPT-NeoX model we can merge.")
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
        return by_index

    def check(self, n_layers: int, n_ranks: int, config_key: str = "num_layers"):
        self.n_layers, self.n_ranks = n_layers, n_ranks
        for rank in range(n_ranks):
            path = self.file(0, rank)
            if not path.is_file():
                raise CheckpointError(f"Missing {self.rel(path)}: the checkpoint has {n_ranks} tensor-parallel "
                                      f"ranks but the file of rank {rank} is absent. Copy it from the training run.")
        by_index = self._module(0)
        _check_indices(set(by_index), n_layers, config_key, self.rel(self.file(0, 0)))
        for index, (part, layer) in expected_indices(n_layers).items():
            if index not in by_index:
                raise CheckpointError(f"{self.rel(self.file(0, 0))} has no `sequential.{index}.*` weights, "
                                      f"which should hold {describe(part, layer)}.")

    def load(self, part: str, layer: Optional[int]) -> List[RankTensors]:
        index = pipeline_index(part, layer, self.n_layers)
        return [(f"{self.rel(self.file(0, r))} [sequential.{index}.*]", self._module(r).get(index, {}))
                for r in range(self.n_ranks)]


# ## Hugging Face layout
#
# The index of a sharded folder maps each tensor to the file that holds it. It is read like any config (a regular
# file of sane size, UTF-8, a JSON object), and each file it names must be a plain file name in the folder:
# an entry such as `../../elsewhere.safetensors` is refused, not followed, and a missing shard is found here,
# when the folder is opened, not at its layer half-way through a merge.
def _read_weight_map(folder: Path, name: str) -> Dict[str, str]:
    from ..config import ConfigError, read_config_text
    path = folder / name
    try:
        index = json.loads(read_config_text(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download it.") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path} is not an index of shards: it needs a `weight_map` object mapping each "
                              f"tensor name to a file name. Re-download it.")
    for file in sorted(set(weight_map.values())):
        if Path(file).name != file or file in (".", ".."):
            raise CheckpointError(f"{path}: `weight_map` names the file {file!r}, which is not in {folder}; an "
                                  f"index may only name files beside it. Refusing to follow it.")
        if not (folder / file).is_file():
            raise CheckpointError(f"{path} lists the shard {file}, which is missing from {folder}. Download it "
                                  f"(or the whole folder) again.")
    return weight_map
#
# One rank, so nothing to merge; only the names change. `attention.bias` and `attention.masked_bias` are the
# causal mask and a constant that transformers 4.x saved as buffers in the Pythia files, and `inv_freq` is the
# rotary constant our model computes; none of them are weights.
HF_BUFFERS = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq")


class HFLayout:
    name = "huggingface"
    WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                    "pytorch_model.bin.index.json", "pytorch_model.bin")

    def __init__(self, folder: Path, trust_pickle: bool):
        self.folder = self.root = folder
        self.trust_pickle = trust_pickle
        self.n_ranks = self.ranks_found = 1
        self.n_layers = 0
        name = next(n for n in self.WEIGHT_FILES if (folder / n).is_file())
        if name.endswith(".index.json"):
            weight_map = _read_weight_map(folder, name)
        else:
            weight_map = {n: name for n in self._names(folder / name)}
        # Our part names, `(part, layer, name)`, for every stored name that is a weight
        self.where: Dict[Tuple[str, Optional[int], str], Tuple[str, str]] = {}
        for stored, file in weight_map.items():
            key = self._split(stored)
            if key is None:
                raise CheckpointError(f"{folder / file}: unexpected tensor `{stored}`; a GPTNeoXForCausalLM has "
                                      f"only gpt_neox.embed_in, gpt_neox.layers.N.*, gpt_neox.final_layer_norm "
                                      f"and embed_out. Refusing to convert a model the merge rules do not cover.")
            if key in self.where:
                # `embed_out.weight` and `lm_head.weight` (or a name with and without `gpt_neox.`) are one tensor
                raise CheckpointError(f"{folder}: both `{self.where[key][0]}` and `{stored}` hold "
                                      f"{key[2]}; the folder mixes two models. Keep one of them.")
            if key[2] not in HF_BUFFERS:
                self.where[key] = (stored, file)

    def _names(self, path: Path) -> List[str]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            try:
                with safe_open(path, "pt") as f:
                    return list(f.keys())
            except Exception as e:
                raise CheckpointError(f"Could not read {path}: {e}. Re-download it.") from None
        state = load_torch_file(path, trust_pickle=self.trust_pickle)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dictionary of named tensors; it "
                                  f"is not a model's state_dict.")
        return list(state)

    @staticmethod
    def _split(stored: str) -> Optional[Tuple[str, Optional[int], str]]:
        name = stored.removeprefix("gpt_neox.")
        if name == "embed_in.weight":
            return "embedding", None, "word_embeddings.weight"
        if name in ("embed_out.weight", "lm_head.weight"):
            return "readout", None, "final_linear.weight"
        if name.startswith("final_layer_norm."):
            return "norm", None, "norm." + name.removeprefix("final_layer_norm.")
        if name == "rotary_emb.inv_freq":
            return "layer", -1, "attention.rotary_emb.inv_freq"
        m = re.match(r"layers\.(\d+)\.(.+)$", name)
        return ("layer", int(m.group(1)), m.group(2)) if m else None

    def rel(self, path) -> str:
        return str(path)

    def check(self, n_layers: int, n_ranks: int, config_key: str = "num_hidden_layers"):
        self.n_layers = n_layers
        layers = {layer for part, layer, _ in self.where if part == "layer" and layer >= 0}
        extra = sorted(layers - set(range(n_layers)))
        if extra:
            raise CheckpointError(f"{self.folder}: the weights have layer(s) {extra} but config.json says "
                                  f"`{config_key}: {n_layers}`; fix `{config_key}`.")

    def embedding_rows(self) -> List[int]:
        return [t["word_embeddings.weight"].shape[0] for _, t in self.load("embedding", None)
                if "word_embeddings.weight" in t]

    def load(self, part: str, layer: Optional[int]) -> List[RankTensors]:
        pipeline_index(part, layer, self.n_layers)
        wanted = {key[2]: where for key, where in self.where.items() if key[:2] == (part, layer)}
        tensors, files = {}, sorted({file for _, file in wanted.values()})
        for file in files:
            names = {name: stored for name, (stored, f) in wanted.items() if f == file}
            tensors.update(self._read(self.folder / file, names))
        return [(", ".join(files) or str(self.folder), tensors)]

    def _read(self, path: Path, names: Dict[str, str]) -> Dict[str, "torch.Tensor"]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            try:
                with safe_open(path, "pt") as f:
                    return {name: f.get_tensor(stored) for name, stored in names.items()}
            except Exception as e:
                raise CheckpointError(f"Could not read {path}: {e}. Re-download it.") from None
        state = load_torch_file(path, trust_pickle=self.trust_pickle)
        return {name: state[stored] for name, stored in names.items()}


# ## Recognising the layout
def find_layout(path: "str | Path", trust_pickle: bool = False):
    r"""
    Look at a folder and return the layout it holds, or say what was expected and not found.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    if path.is_file():
        raise CheckpointError(f"{path} is a file; pass the checkpoint's folder.")
    if (path / "config.json").is_file() and any((path / n).is_file() for n in HFLayout.WEIGHT_FILES):
        return HFLayout(path, trust_pickle)

    # `latest` names the step folder, as DeepSpeed writes it. Without it, a single `global_step*` folder will do.
    folder = path
    if (path / "latest").is_file():
        tag = (path / "latest").read_text().strip()
        folder = path / tag
        if not folder.is_dir():
            raise CheckpointError(f"{path / 'latest'} names `{tag}`, but {folder} does not exist. Re-download it "
                                  f"or fix `latest`.")
    elif not _has(path, PipelineLayout.PATTERN) and not _has(path, SequentialLayout.PATTERN):
        steps = sorted(p for p in path.glob("global_step*") if p.is_dir())
        if len(steps) > 1:
            raise CheckpointError(f"{path} has several step folders ({', '.join(p.name for p in steps)}) and no "
                                  f"`latest` file: pass the step folder you want, or write its name into `latest`.")
        folder = steps[0] if steps else path

    if _has(folder, PipelineLayout.PATTERN):
        return PipelineLayout(folder, path, trust_pickle)
    if _has(folder, SequentialLayout.PATTERN):
        return SequentialLayout(folder, path, trust_pickle)
    raise CheckpointError(
        f"No checkpoint found in {folder}: expected layer_XX-model_RR-model_states.pt files (gpt-neox pipeline "
        f"layout), mp_rank_RR_model_states.pt files (sequential layout), or config.json with model.safetensors "
        f"(Hugging Face).")


def _has(folder: Path, pattern: re.Pattern) -> bool:
    return any(pattern.match(f.name) for f in folder.iterdir())
