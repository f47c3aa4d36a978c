r"""
# Reading checkpoint files safely

Every gpt-neox checkpoint file is a `torch.save` pickle. A pickle can call any Python function while it is
being read, so loading a file downloaded from the internet with plain `torch.load` runs whatever code its
author put there. PyTorch's answer is `torch.load(weights_only=True)`: a restricted unpickler that builds
tensors, numbers, strings, lists and dictionaries and refuses everything else.

The slim layer files (`layer_XX-model_RR-model_states.pt`) and Hugging Face's `pytorch_model.bin` hold nothing
but tensors and load that way without trouble. DeepSpeed's `mp_rank_RR_model_states.pt` files are different:
beside the weights they pickle the training run's arguments (an `argparse.Namespace`), NumPy random states and
sometimes objects of DeepSpeed's own classes. We allow a short, explicit list of harmless types (below) and stop
with a message for anything else. The user who trusts the file can then pass `trust_pickle=True`
(`--trust-pickle` on the command line); we never fall back to the unrestricted loader on our own.

We also load with `mmap=True`: the file is mapped into memory and a tensor's bytes are read from disk only
when they are used. Opening all tensor-parallel ranks of the 41 GB checkpoint then costs almost nothing, and the
merge touches one layer at a time.
"""

import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any, List


class CheckpointError(Exception):
    """A checkpoint we cannot read as it is. The message names the file or tensor at fault and what to do."""


# ## The allowlist
#
# `argparse.Namespace` is a bag of attributes, and NumPy's array reconstruction only builds arrays (of numbers,
# in the random states DeepSpeed saves). None of them can run code while being unpickled. The list is
# deliberately short: a type we have not seen in a real gpt-neox checkpoint does not belong here.
def safe_globals() -> List[Any]:
    allowed: List[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:
        return allowed
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    allowed += [multiarray._reconstruct, np.ndarray, np.dtype]
    # NumPy 1.25+ gives each dtype its own class (`numpy.dtypes.UInt32DType`), which the pickle names too
    allowed += [type(np.dtype(t)) for t in (np.uint8, np.uint32, np.int64, np.float32, np.float64)]
    return allowed


def load_torch_file(path: Path, *, trust_pickle: bool = False, what: str = "") -> Any:
    r"""
    Load one `torch.save` file, memory-mapped, with the restricted unpickler unless `trust_pickle` is set.

    Every failure becomes a `CheckpointError` that names the file: a missing file, a truncated or corrupt
    one (the zip directory at the end of a half-downloaded file is missing), or a pickle that needs types
    outside the allowlist. `what` says what the file should hold ("rank 1 of transformer layer 5"), for the
    message.
    """
    import torch

    path = Path(path)
    about = f" ({what})" if what else ""
    if not path.is_file():
        raise CheckpointError(f"Missing {path}{about}. Re-download it, or check the path.")
    # Files written by PyTorch before 1.6 are not zip archives and cannot be memory-mapped; they are read whole.
    mmap = zipfile.is_zipfile(path)
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise CheckpointError(f"{path}{about} is corrupt ({e}). Re-download it.") from None
        raise CheckpointError(_unsafe_message(path, about)) from None
    except CheckpointError:
        raise
    except UnicodeError:
        raise CheckpointError(f"The path {path!r}{about} cannot be encoded for this file system; the file is not "
                              f"the problem: rename the folder with plain characters or set a UTF-8 locale "
                              f"(LANG=C.UTF-8).") from None
    except PermissionError:
        raise CheckpointError(f"{path}{about} cannot be read: permission denied. Check the file's permissions "
                              f"(it need not be re-downloaded).") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile or OS errors for damaged files
        raise CheckpointError(f"Could not read {path}{about}: {type(e).__name__}: {e}. The file is probably "
                              f"truncated or corrupt (an interrupted download?); re-download it.") from None


# The message for a pickle that needs types outside the allowlist. PyTorch can list the globals a pickle refers to
# without running it, which makes the message concrete.
def _unsafe_message(path: Path, about: str) -> str:
    import torch

    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                 if n not in {_global_name(g) for g in safe_globals()}]
    except Exception:
        names = []
    listed = f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
    return (f"{path}{about} pickles Python objects outside the safe allowlist{listed}. Loading them can run "
            f"arbitrary code. If you trust the file, pass trust_pickle=True (--trust-pickle on the command line).")


def _global_name(g) -> str:
    return f"{g.__module__}.{g.__qualname__}"
