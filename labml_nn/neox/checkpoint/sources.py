r"""
# Where a checkpoint's files are, and what kind of folder holds them

Every command takes a checkpoint as a folder or a Hugging Face Hub name (with a revision). Three readers ask the
same two questions of it: the checkpoint reader (where are the weights and the config?), the tokenizer (where is
`tokenizer.json`?) and the adapter reader (is this a LoRA adapter, and of which base?). This module answers them
once:

* **which files** each kind of folder is recognised by, and which of them a Hub download fetches;
* **where** the folder is: `resolve_checkpoint` returns a path that exists as it is, or fetches a Hub name at a
  revision into the Hugging Face cache (`hub.py` talks to the Hub);
* **what kind** of folder it is: `folder_kind`, one of

| kind | recognised by |
|---|---|
| `"pipeline"` | `layer_XX-model_RR-model_states.pt` files (the 20B slim weights), perhaps under `latest`'s step folder |
| `"sequential"` | `mp_rank_RR_model_states.pt` files (other gpt-neox runs) |
| `"huggingface"` | `config.json` with `model.safetensors` (or shards, or `pytorch_model.bin`) |
| `"peft_adapter"` | `adapter_config.json` with `adapter_model.safetensors` (or `.bin`): a LoRA adapter, not a model |
| `"incomplete_adapter"` | `adapter_config.json` without the adapter's tensors |
| `"config_only"` | `config.json` and no weights: an interrupted download, or a model saved without them |
| `"unknown"` | none of these |

`layouts.py` opens the first three, `adapters.py` reads the fourth; the last two become errors that say what to
do.
"""

import re
from pathlib import Path
from typing import Optional, Union

from . import hub
from .files import CheckpointError

# ## The files
#
# Names under which a tokenizer sits beside a checkpoint's weights: the 20B slim weights', then a Hugging Face
# folder's
TOKENIZER_FILES = ("20B_tokenizer.json", "tokenizer.json")
CONFIG_FILE = "config.json"
# A Hugging Face model's weights: one file or shards with an index, safetensors first
HF_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                   "pytorch_model.bin.index.json", "pytorch_model.bin")
HF_SHARDS = {"safetensors": "model-*-of-*.safetensors", "bin": "pytorch_model-*-of-*.bin"}
# A peft adapter: its config, and its tensors (safetensors since peft 0.7, a pickle before)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# gpt-neox's two layouts
PIPELINE_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt$")
SEQUENTIAL_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt$")


def find_tokenizer(path: Union[str, Path]) -> Optional[Path]:
    """The tokenizer file itself, or the first of `TOKENIZER_FILES` in the folder `path`, or `None`."""
    path = Path(path)
    if path.is_file():
        return path
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            return path / name
    return None


# ## What kind of folder
def folder_kind(folder: Union[str, Path]) -> str:
    """One of the kinds in the table above, from the names of the files in `folder` (no file is read)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "unknown"
    if (folder / ADAPTER_CONFIG).is_file() and any((folder / n).is_file() for n in ADAPTER_WEIGHTS):
        return "peft_adapter"
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / CONFIG_FILE).is_file():
        return "incomplete_adapter"
    if (folder / CONFIG_FILE).is_file():
        return "huggingface" if any((folder / n).is_file() for n in HF_WEIGHT_FILES) else "config_only"
    # gpt-neox: the files themselves, or those of the step folder `latest` names, or of a single `global_step*`
    candidates = [folder]
    if (folder / "latest").is_file():
        candidates.append(folder / (folder / "latest").read_text().strip())
    candidates += sorted(p for p in folder.glob("global_step*") if p.is_dir())
    for candidate in candidates:
        if candidate.is_dir():
            names = [f.name for f in candidate.iterdir()]
            if any(PIPELINE_FILE.match(n) for n in names):
                return "pipeline"
            if any(SEQUENTIAL_FILE.match(n) for n in names):
                return "sequential"
    return "unknown"


# ## Where the folder is
def resolve_checkpoint(name_or_path: "str | Path", revision: Optional[str] = None, *,
                       token: "str | bool | None" = None, tokenizer_only: bool = False) -> Path:
    r"""
    The local folder for `name_or_path`: the path itself if it exists, else the Hub model (or adapter) of that name
    at `revision` (default `main`), fetched into (or, offline, found in) the Hugging Face cache. With
    `tokenizer_only`, only the tokenizer is fetched.

    We fetch only what we read: the config, the tokenizer and the adapter's files, with the weights as
    safetensors; the pickled `pytorch_model.bin` only when a revision has no safetensors (Pythia's oldest
    revisions), since a repository holding both would otherwise cost its weights twice.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if revision is not None:
            raise CheckpointError(f"{path} is a local folder; a revision ({revision}) selects a version of a Hub "
                                  f"model only. Drop the revision, or check out that version into the folder.")
        return path
    name = str(name_or_path)
    if not hub.is_hub_name(name):
        raise CheckpointError(f"{name} does not exist, and is not a Hugging Face Hub name (ORG/NAME, such as "
                              f"EleutherAI/pythia-160m). Pass an existing checkpoint folder or a Hub name.")
    small = [CONFIG_FILE, *TOKENIZER_FILES, ADAPTER_CONFIG, ADAPTER_WEIGHTS[0]]
    if tokenizer_only:
        return hub.snapshot(name, revision, list(TOKENIZER_FILES), token)
    safetensors = [n for n in HF_WEIGHT_FILES if "safetensors" in n] + [HF_SHARDS["safetensors"]]
    folder = hub.snapshot(name, revision, small + safetensors, token)
    if not any((folder / n).is_file() for n in safetensors + [ADAPTER_WEIGHTS[0]] if "*" not in n):
        pickles = [n for n in HF_WEIGHT_FILES if ".bin" in n] + [HF_SHARDS["bin"], ADAPTER_WEIGHTS[1]]
        folder = hub.snapshot(name, revision, small + pickles, token)
    check_complete(folder, name, revision)
    return folder


# A snapshot in the cache that holds a config and no weights is, nearly always, a download that was interrupted
# (or, offline, a cache that never got the weights): say so, with the model, the revision and the fix, before
# the layout reader says only that it found no checkpoint.
def check_complete(folder: Path, name: str, revision: Optional[str]):
    kind = folder_kind(folder)
    what = hub.describe(name, revision)
    if kind == "config_only":
        raise CheckpointError(
            f"{what}: the Hugging Face cache at {folder} holds {CONFIG_FILE} but no weights ({HF_WEIGHT_FILES[1]} "
            f"or {HF_WEIGHT_FILES[3]}): the download was interrupted. Download it again with the network on "
            f"(`hf download {name}{' --revision ' + revision if revision else ''}`, or delete {folder} and rerun).")
    if kind == "incomplete_adapter":
        raise CheckpointError(f"{what}: the Hugging Face cache at {folder} holds the LoRA adapter's {ADAPTER_CONFIG} "
                              f"but not its {ADAPTER_WEIGHTS[0]}: the download was interrupted. Download it again "
                              f"with the network on.")
    if kind == "unknown":
        raise CheckpointError(f"{what} has no {CONFIG_FILE} and no {ADAPTER_CONFIG} in {folder}: it is not a "
                              f"Hugging Face GPT-NeoX model or adapter, or (offline) the cache holds only some of "
                              f"its files. Download it again with the network on.")
