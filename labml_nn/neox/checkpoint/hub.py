r"""
# Checkpoints by Hub name and revision

Researchers choose the Pythia models for their training history: each model is published on the Hugging Face Hub
with 154 *revisions*, one per saved training step (`step0`, `step1`, `step2`, `step4`, ... `step512`, then
`step1000` ... `step143000` every thousand steps; `main` is `step143000`). This module turns a name and a
revision into a local folder that the rest of the package reads like any other Hugging Face folder:

```python
LayerLoader("EleutherAI/pythia-160m", revision="step3000")
load_tokenizer("EleutherAI/pythia-160m", revision="step3000")
```

and on the command line `--checkpoint EleutherAI/pythia-160m --revision step3000` (generation, evaluation,
fine-tuning and `merge`). `EleutherAI/gpt-neox-20b`, the Hub's Hugging Face copy of the 20B model, works the same
way.

## What it does, and what it leaves to `huggingface_hub`

`huggingface_hub.snapshot_download` does the work: its cache (`~/.cache/huggingface/hub`, or `HF_HUB_CACHE`,
or `HF_HOME/hub`), laid out as `models--ORG--NAME/refs/REV` (a commit hash), `snapshots/HASH/FILE` (links into
`blobs/`), so that two revisions share the files they have in common; its progress bars; `HF_HUB_OFFLINE=1`,
which resolves a name and revision from that cache without the network; and a token for gated or private
repositories (`HF_TOKEN`, or `hf auth login`). We choose *which* files it fetches, only those we read:

* `config.json` and `tokenizer.json` (or `20B_tokenizer.json`);
* the weights as safetensors (`model.safetensors`, or shards and their index);
* only when a revision has no safetensors (Pythia's older revisions were saved before safetensors
  existed), the pickled `pytorch_model.bin` and its shards instead. A repository that has both would otherwise
  cost its weights twice.

## Which wins, a path or a name

A folder that exists always wins: `EleutherAI/pythia-160m` names a local folder if there is one, and only
otherwise the Hub repository. A `revision` is for names only; given with a local folder it is an error rather
than silently ignored. An unknown name, an unknown revision, or (offline) a revision that is not in the cache
raises `CheckpointError` naming the name and the revision.
"""

import re
from pathlib import Path
from typing import List, Optional

from ..tokenizer import TOKENIZER_FILES as TOKENIZER_NAMES
from .files import CheckpointError
from .layouts import HFLayout

# The files `layouts.HFLayout` and `tokenizer.py` read, as `snapshot_download`'s `allow_patterns`: the names
# they look for, and the shards an index lists
CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = list(TOKENIZER_NAMES)
SAFETENSORS_FILES = [n for n in HFLayout.WEIGHT_FILES if "safetensors" in n] + ["model-*-of-*.safetensors"]
PICKLE_FILES = [n for n in HFLayout.WEIGHT_FILES if ".bin" in n] + ["pytorch_model-*-of-*.bin"]

# A Hub model name: `ORG/NAME`, letters, digits, `-`, `_` and `.`
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_name(name: "str | Path") -> bool:
    return bool(HUB_NAME.match(str(name)))


# ## Resolving a name
def resolve_checkpoint(name_or_path: "str | Path", revision: Optional[str] = None, *,
                       token: "str | bool | None" = None, tokenizer_only: bool = False) -> Path:
    r"""
    The local folder for `name_or_path`: the path itself if it exists, else the Hub model of that name at
    `revision` (default `main`), fetched into (or, offline, found in) the Hugging Face cache. With
    `tokenizer_only`, only `tokenizer.json` is fetched.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if revision is not None:
            raise CheckpointError(f"{path} is a local folder; a revision ({revision}) selects a version of a Hub "
                                  f"model only. Drop the revision, or check out that version into the folder.")
        return path
    name = str(name_or_path)
    if not is_hub_name(name):
        raise CheckpointError(f"{name} does not exist, and is not a Hugging Face Hub name (ORG/NAME, such as "
                              f"EleutherAI/pythia-160m). Pass an existing checkpoint folder or a Hub name.")
    if tokenizer_only:
        return _snapshot(name, revision, TOKENIZER_FILES, token)
    folder = _snapshot(name, revision, CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS_FILES, token)
    if not any((folder / f).is_file() for f in SAFETENSORS_FILES if "*" not in f):
        folder = _snapshot(name, revision, CONFIG_FILES + TOKENIZER_FILES + PICKLE_FILES, token)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{_describe(name, revision)} has no config.json in {folder}: it is not a Hugging "
                              f"Face GPT-NeoX model, or (offline) the cache holds only some of its files.")
    return folder


# `huggingface_hub`'s errors, in words that name the model and the revision and say what to do
def _snapshot(name: str, revision: Optional[str], patterns: List[str], token) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    what = _describe(name, revision)
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns, token=token))
    except GatedRepoError:
        raise CheckpointError(f"{what} is gated: accept its terms on huggingface.co, then give a token "
                              f"(set HF_TOKEN or run `hf auth login`).") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{what}: no such model on the Hugging Face Hub (or it is private: set HF_TOKEN). "
                              f"Check the name, or pass an existing local folder.") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{what}: the model has no revision {revision!r}. Pythia's revisions are step0, "
                              f"step1, step2, step4 ... step512, step1000 ... step143000, and main.") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{what} is not in the Hugging Face cache, and the Hub cannot be reached (no "
                              f"network, or HF_HUB_OFFLINE is set). Download it once with the network on, or "
                              f"check the name and revision.") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{what} could not be fetched: {type(e).__name__}: {e}") from None


def _describe(name: str, revision: Optional[str]) -> str:
    return f"{name} (revision {revision or 'main'})"
