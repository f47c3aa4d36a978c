r"""
# Checkpoints by Hub name and revision

Researchers choose the Pythia models for their training history: each model is published on the Hugging Face Hub
with 154 *revisions*, one per saved training step (`step0`, `step1`, `step2`, `step4`, ... `step512`, then
`step1000` ... `step143000` every thousand steps; `main` is `step143000`). This module fetches a name and a
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

* `config.json` and `tokenizer.json` (or `20B_tokenizer.json`), and a LoRA adapter's `adapter_config.json`
  and `adapter_model.safetensors` (`checkpoint/adapters.py`);
* the weights as safetensors (`model.safetensors`, or shards and their index);
* only when a revision has no safetensors (Pythia's older revisions were saved before safetensors
  existed), the pickled `pytorch_model.bin` and its shards instead. A repository that has both would otherwise
  cost its weights twice.

Which files those are, and what kind of folder came back, `sources.py` knows; this module only talks to the Hub.

## Which wins, a path or a name

A folder that exists always wins: `EleutherAI/pythia-160m` names a local folder if there is one, and only
otherwise the Hub repository. A `revision` is for names only; given with a local folder it is an error rather
than silently ignored. An unknown name, an unknown revision, or (offline) a revision that is not in the cache
raises `CheckpointError` naming the name and the revision.
"""

import re
from pathlib import Path
from typing import List, Optional

from .files import CheckpointError

# A Hub model name: `ORG/NAME`, letters, digits, `-`, `_` and `.`
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_name(name: "str | Path") -> bool:
    return bool(HUB_NAME.match(str(name)))


# ## Fetching a snapshot
#
# The files of `name` at `revision` that match `patterns` (`sources.py` says which), as a local folder.
# `huggingface_hub`'s errors become ours, in words that name the model and the revision and say what to do.
def snapshot(name: str, revision: Optional[str], patterns: List[str], token=None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)

    what = describe(name, revision)
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


def describe(name: str, revision: Optional[str]) -> str:
    return f"{name} (revision {revision or 'main'})"
