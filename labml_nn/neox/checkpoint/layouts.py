r"""
# Finding the weights: three layouts

The same GPT-NeoX weights are found on disk in three arrangements. This module recognises which one a folder
holds and reads the tensors of one *part* of the model (`parts.py`: the embedding, one transformer layer, the
final norm or the readout) from it, one tensor-parallel rank at a time. Merging the ranks is the next module's
business.

## The layouts

* **Pipeline** (the 20B "slim weights"): `latest` names a folder such as `global_step150000/`, which holds one
  file per stage and rank, `layer_{index:02d}-model_{rank:02d}-model_states.pt` (the index is the pipeline
  index of `parts.py`), each a flat dictionary of tensors. We also accept the `global_step...` folder itself.
* **Sequential** (other gpt-neox runs): one DeepSpeed file per rank, `mp_rank_{rank:02d}_model_states.pt`,
  with the weights under `state["module"]`, named `sequential.{index}.{name}` with the same index map.
* **Hugging Face** (Pythia): `config.json` and `model.safetensors` (or shards listed in
  `model.safetensors.index.json`, or the older `pytorch_model.bin`), a single unpartitioned rank with names
  `gpt_neox.embed_in.weight`, `gpt_neox.layers.{i}.{name}`, `gpt_neox.final_layer_norm.{name}`, `embed_out.weight`.

## Two steps: find, then open

A layout cannot be checked before the config is read: only the config says how many layers and ranks there
should be, and so which files must exist. But the config is found *through* the layout (a Hugging Face folder
carries `config.json`; a gpt-neox checkpoint keeps YAML files in `configs/`, perhaps one folder up). So
`find_layout(path)` only looks at the folder and returns a `Location`: which layout, where its files and its
config are. The reader reads the config from there, and `location.open(config)` builds the layout whole,
checking every file the config implies. A layout, once it exists, is complete.

Every layout then answers the same questions: `load(part)`, a list with one `(source, tensors)` pair per rank,
where the tensor names are the pipeline layout's names without any prefix and `source` names the file for
error messages; `n_layers` and `n_ranks`; and `config_keys`, how its config file spells the keys that error
messages tell the user to fix. (gpt-neox checkpoints since September 2024 name the MLP `mlp.linear1` /
`mlp.linear2`; the reader renames them, `merge.MLP_SPELLINGS`.)
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from .files import CheckpointError, load_torch_file
from .parts import Part, hf_weights, pipeline_stages
from .sources import HF_WEIGHT_FILES, PIPELINE_FILE, SEQUENTIAL_FILE

# One rank's tensors of one part, and the file they came from
RankTensors = Tuple[str, Dict[str, "torch.Tensor"]]


# ## Where the files are
#
# What `find_layout` learns from the folder alone: the layout's class, the folder of weight files, the folder
# the user named, and the folders where the config and the tokenizer may lie.
@dataclass(frozen=True)
class Location:
    layout: type
    folder: Path
    root: Path
    search_folders: Tuple[Path, ...]

    def open(self, config, trust_pickle: bool = False) -> "Layout":
        """Build the layout for `config` (a `NeoXConfig`), checking every file the config implies."""
        return self.layout(self, config, trust_pickle)


# The keys a config spells differently in its two formats (gpt-neox's YAML, Hugging Face's `config.json`), named
# in the messages that tell the user which key to fix; each layout carries its format's as `config_keys`.
NEOX_KEYS = {"n_layers": "num_layers", "n_vocab": "padded_vocab_size", "d_model": "hidden_size",
             "d_ff": "intermediate_size, expansion_factor or mlp_multiple_of (gpt-neox's MLP width; the default "
                     "is 4 x hidden_size)",
             "rotary_pct": "rotary_pct", "rotary_base": "rotary_emb_base"}
HF_KEYS = {"n_layers": "num_hidden_layers", "n_vocab": "vocab_size", "d_model": "hidden_size",
           "d_ff": "intermediate_size", "rotary_pct": "partial_rotary_factor", "rotary_base": "rope_theta"}


class Layout:
    r"""
    ## What every layout answers

    A checkpoint's files, opened for a config: `n_layers` transformer layers in `n_ranks` tensor-parallel ranks.

    * `name`: `"pipeline"`, `"sequential"` or `"huggingface"`;
    * `config_format`: `"gpt-neox"` (YAML files) or `"huggingface"` (`config.json`), and `config_keys`, how
      that format spells the config's keys;
    * `folder`, the folder of the weight files, and `root`, the folder the user named;
    * `load(part)`: one `(source, tensors)` pair per rank; `embedding_rows()`: each rank's vocabulary rows.
    """
    name = ""
    config_format = "gpt-neox"
    config_keys = NEOX_KEYS

    def __init__(self, location: Location, config, trust_pickle: bool):
        self.folder, self.root, self.trust_pickle = location.folder, location.root, trust_pickle
        self.n_layers = config.n_layers

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def load(self, part: Part) -> List[RankTensors]:
        raise NotImplementedError

    # Whether the files hold a readout of their own (a model with tied embeddings may not; `reader.py`)
    def has_readout(self) -> bool:
        return True

    def embedding_rows(self) -> List[int]:
        return [t["word_embeddings.weight"].shape[0] if "word_embeddings.weight" in t else 0
                for _, t in self.load(Part("embedding"))]


# An index outside the map means the config's layer count disagrees with the files (or the files hold a
# model with stages we do not know). The highest index is the readout, $L + 4$, so it tells us the $L$
# the files were written for. The other way round, files that form the complete map of another $L$ (with its
# gap at $L + 2$, which a half-finished download does not have) mean a config that asks for more layers than
# the files hold: the config is named, not a "missing" file.
def _check_indices(found: set, n_layers: int, config_key: str, where: str):
    guess = max(found, default=4) - 4
    if guess >= 1 and guess != n_layers and found == set(pipeline_stages(guess)):
        raise CheckpointError(
            f"{where} holds a complete {guess}-layer model, but the config says `{config_key}: {n_layers}`. If the "
            f"model has {guess} layers, set `{config_key}: {guess}` in the config.")
    extra = sorted(found - set(pipeline_stages(n_layers)))
    if extra:
        guess = max(found) - 4
        raise CheckpointError(
            f"{where} has stage(s) {extra}, which a {n_layers}-layer model does not use (0 = embedding, "
            f"2..{n_layers + 1} = layers, {n_layers + 3} = final norm, {n_layers + 4} = readout). If the model "
            f"has {guess} layers, set `{config_key}: {guess}` in the config.")


# ## Pipeline layout
#
# One file per stage and rank in the step folder; `files` maps `(stage, rank)` to its path. The number of ranks
# is the config's `model_parallel_size` or the ranks the files show, whichever is larger, so that a rank whose
# files are all missing is reported rather than silently skipped. Every stage needs a file for every rank, and
# a missing one is named, with the rank and the part it holds.
class PipelineLayout(Layout):
    name = "pipeline"
    PATTERN = PIPELINE_FILE

    def __init__(self, location: Location, config, trust_pickle: bool):
        super().__init__(location, config, trust_pickle)
        self.files = {}
        for f in self.folder.iterdir():
            m = self.PATTERN.match(f.name)
            if m:
                self.files[int(m.group(1)), int(m.group(2))] = f
        self.n_ranks = max(max(r for _, r in self.files) + 1, config.tensor_parallel_size)
        _check_indices({i for i, _ in self.files}, self.n_layers, self.config_keys["n_layers"],
                       self.rel(self.folder))
        self._refuse_stray_ranks()
        for part in pipeline_stages(self.n_layers).values():
            for rank in range(self.n_ranks):
                path = self.file(part, rank)
                if not path.is_file():
                    raise CheckpointError(
                        f"Missing {self.rel(path)}: the checkpoint has {self.n_ranks} tensor-parallel rank(s) but "
                        f"rank {rank} of {part} is absent. Re-download it (for the 20B model: "
                        f"`python -m labml_nn.neox.checkpoint download`), or copy it from the training run.")

    def file(self, part: Part, rank: int) -> Path:
        return self.folder / part.pipeline_file(self.n_layers, rank)

    # A rank with files for only a few stages while rank 0 has them all is not a half-finished download (files
    # come stage by stage, both ranks together) but a stray file of another run, and re-downloading would not help.
    def _refuse_stray_ranks(self):
        stages = list(pipeline_stages(self.n_layers))
        have = {r: [i for i in stages if (i, r) in self.files] for r in range(self.n_ranks)}
        if len(have[0]) < len(stages):
            return
        for rank in range(1, self.n_ranks):
            if 0 < len(have[rank]) <= len(stages) // 2:
                first = self.rel(self.files[have[rank][0], rank])
                raise CheckpointError(f"{first} is of tensor-parallel rank {rank}, but rank {rank} has files for "
                                      f"only {len(have[rank])} of {len(stages)} stages: a stray file of another "
                                      f"run? Move it out of {self.rel(self.folder)}, or check `model_parallel_size`.")

    def load(self, part: Part) -> List[RankTensors]:
        out = []
        for rank in range(self.n_ranks):
            path = self.file(part, rank)
            tensors = load_torch_file(path, trust_pickle=self.trust_pickle, what=f"rank {rank} of {part}")
            if not isinstance(tensors, dict):
                raise CheckpointError(f"{self.rel(path)} holds a {type(tensors).__name__}, not a dictionary of "
                                      f"tensors; it is not a gpt-neox layer file.")
            out.append((self.rel(path), tensors))
        return out


# ## Sequential (DeepSpeed) layout
#
# Each rank's file holds the whole model. We load it again for every part rather than keep it: with
# `mmap=True` a load reads only the pickle's small index, and dropping the dictionary after each part lets the
# pages of the tensors already merged go, so memory stays near one layer. Opening checks that every rank's file
# is there and that rank 0's holds weights for exactly the stages the config implies.
class SequentialLayout(Layout):
    name = "sequential"
    PATTERN = SEQUENTIAL_FILE
    KEY = re.compile(r"sequential\.(\d+)\.(.+)$")

    def __init__(self, location: Location, config, trust_pickle: bool):
        super().__init__(location, config, trust_pickle)
        ranks = [int(m.group(1)) for f in self.folder.iterdir() if (m := self.PATTERN.match(f.name))]
        self.n_ranks = max(max(ranks) + 1, config.tensor_parallel_size)
        for rank in range(self.n_ranks):
            path = self.file(rank)
            if not path.is_file():
                raise CheckpointError(f"Missing {self.rel(path)}: the checkpoint has {self.n_ranks} tensor-parallel "
                                      f"ranks but the file of rank {rank} is absent. Copy it from the training run.")
        by_index = self._module(0)
        _check_indices(set(by_index), self.n_layers, self.config_keys["n_layers"], self.rel(self.file(0)))
        for index, part in pipeline_stages(self.n_layers).items():
            if index not in by_index:
                raise CheckpointError(f"{self.rel(self.file(0))} has no `sequential.{index}.*` weights, "
                                      f"which should hold {part}.")

    def file(self, rank: int) -> Path:
        return self.folder / f"mp_rank_{rank:02d}_model_states.pt"

    def _module(self, rank: int) -> Dict[int, Dict[str, "torch.Tensor"]]:
        path = self.file(rank)
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

    def load(self, part: Part) -> List[RankTensors]:
        index = part.pipeline_index(self.n_layers)
        return [(f"{self.rel(self.file(r))} [sequential.{index}.*]", self._module(r).get(index, {}))
                for r in range(self.n_ranks)]


# ## Hugging Face layout
#
# One rank, so nothing to merge; only the names change (`Part.hf_name` and its inverse `parts.from_hf_name`).
# The weights are in one file, or in shards with an index that maps each tensor to the file that holds it.
#
# The index is read like any config (a regular file of sane size, UTF-8, a JSON object), and each file it names
# must be a plain file name in the folder: an entry such as `../../elsewhere.safetensors` is refused, not
# followed, and a missing shard is found here, when the folder is opened, not at its layer half-way through a
# merge.
def _read_weight_map(folder: Path, name: str) -> Dict[str, str]:
    from ..config import ConfigError, read_config_text
    path = folder / name
    try:
        index = json.loads(read_config_text(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download it.") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be an index of shards; re-download it.") from None
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


# Opening reads the names of the stored tensors, not the tensors, and records where each weight of each part is;
# the buffers transformers saved beside the weights (`parts.HF_BUFFERS`) are skipped. A name held twice, or a
# layer number beyond the config's, is refused here.
class HFLayout(Layout):
    name = "huggingface"
    config_format = "huggingface"
    config_keys = HF_KEYS
    WEIGHT_FILES = HF_WEIGHT_FILES

    def __init__(self, location: Location, config, trust_pickle: bool):
        super().__init__(location, config, trust_pickle)
        self.n_ranks = 1
        folder = self.folder
        weight_file = next(n for n in self.WEIGHT_FILES if (folder / n).is_file())
        if weight_file.endswith(".index.json"):
            weight_map = _read_weight_map(folder, weight_file)
        else:
            weight_map = {n: weight_file for n in self._names(folder / weight_file)}
        # Where each weight of each part is: `(part, our name)` to `(stored name, file)`
        self.where: Dict[Tuple[Part, str], Tuple[str, str]] = {}
        for stored, part, name in hf_weights({s: str(folder / f) for s, f in weight_map.items()}):
            if (part, name) in self.where:
                # `embed_out.weight` and `lm_head.weight` (or a name with and without `gpt_neox.`) are one tensor
                raise CheckpointError(f"{folder}: both `{self.where[part, name][0]}` and `{stored}` hold "
                                      f"{name}; the folder mixes two models. Keep one of them.")
            self.where[part, name] = (stored, weight_map[stored])
        config_key = self.config_keys["n_layers"]
        extra = sorted({part.layer for part, _ in self.where if part.kind == "layer"} - set(range(self.n_layers)))
        if extra:
            raise CheckpointError(f"{self.folder}: the weights have layer(s) {extra} but config.json says "
                                  f"`{config_key}: {self.n_layers}`; fix `{config_key}`.")

    # Reading a file: the names of its tensors when the folder is opened, and then, per part, only the tensors
    # of that part (`safe_open` reads a `.safetensors` file's tensors one by one; a `.bin` file is unpickled whole,
    # memory-mapped where its format allows). The names come back as ours, the way every layout gives them.
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

    def rel(self, path) -> str:
        return str(path)

    def has_readout(self) -> bool:
        return (Part("readout"), "final_linear.weight") in self.where

    def embedding_rows(self) -> List[int]:
        return [t["word_embeddings.weight"].shape[0] for _, t in self.load(Part("embedding"))
                if "word_embeddings.weight" in t]

    def load(self, part: Part) -> List[RankTensors]:
        part.check(self.n_layers)
        wanted = {name: where for (p, name), where in self.where.items() if p == part}
        # A folder saved from transformers' bare `GPTNeoXModel` has the layers and no language-model head:
        # nothing to re-download, the model simply has no readout
        if part.kind == "readout" and not wanted:
            raise CheckpointError(
                f"{self.folder} has no readout: no `embed_out.weight` (or `lm_head.weight`) beside the layers, as "
                f"when a transformers `GPTNeoXModel` (the model without its language-model head) is saved. It cannot "
                f"predict tokens. Save the `GPTNeoXForCausalLM` instead; or, if the readout is meant to be the "
                f"embedding, set `tie_word_embeddings: true` in its config.json.")
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
#
# The config and the tokenizer lie beside the weights (in `configs/` for gpt-neox), or one level up when the user
# pointed at a `global_step...` folder itself.
def find_layout(path: "str | Path") -> Location:
    r"""
    Look at a folder and say which layout it holds and where its files are, or say what was expected and not
    found. `Location.open(config)` then builds the layout.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    if path.is_file():
        raise CheckpointError(f"{path} is a file; pass the checkpoint's folder.")
    if (path / "config.json").is_file() and any((path / n).is_file() for n in HFLayout.WEIGHT_FILES):
        return Location(HFLayout, path, path, _existing(path / "configs", path))

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

    search = [path / "configs", path] + ([path.parent / "configs", path.parent] if folder == path else [])
    for layout in (PipelineLayout, SequentialLayout):
        if _has(folder, layout.PATTERN):
            return Location(layout, folder, path, _existing(*search))
    raise CheckpointError(
        f"No checkpoint found in {folder}: expected layer_XX-model_RR-model_states.pt files (gpt-neox pipeline "
        f"layout), mp_rank_RR_model_states.pt files (sequential layout), or config.json with model.safetensors "
        f"(Hugging Face).")


def _has(folder: Path, pattern: re.Pattern) -> bool:
    return any(pattern.match(f.name) for f in folder.iterdir())


def _existing(*folders: Path) -> Tuple[Path, ...]:
    return tuple(f for f in folders if f.is_dir())
