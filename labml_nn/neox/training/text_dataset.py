r"""
# A text file as training data

A language model learns to predict each token from the tokens before it. To train one on a text, we turn the
text into one long sequence of token ids and cut it into **windows** of $T + 1$ tokens. Each window gives an
input, its first $T$ tokens, and a target, the same tokens shifted by one:

```
ids     :  The  cat  sat  on   the  mat  .
input   :  The  cat  sat  on   the  mat
target  :  cat  sat  on   the  mat  .
```

so that the logits at position $t$ are scored against token $t + 1$. Consecutive windows overlap by one token
(the last target of one window is the first input of the next), so every token but the first is a target
exactly once per pass over the data.

## Documents

A text file can hold several documents (plays, articles). GPT-NeoX was trained with documents joined by the
end-of-text token `<|endoftext|>` (id `0`), which tells the model that what follows is unrelated to what came
before; `tokenize_documents` does the same. We do not reset attention at document boundaries, as gpt-neox does
not either.

## Validation

We hold out the **end** of the token sequence (or whole documents, which is better, because neighbouring windows
of one text share names and topics) and never train on it. Its loss tells how well the model does on text it has
not seen; when the training loss keeps falling and the validation loss rises, the model is memorising.

This module depends on `torch` and on a `tokenizers.Tokenizer`.
"""

from pathlib import Path
from typing import Iterable, List, Tuple, Union

import torch
from torch.utils.data import Dataset


# ## Tokenizing
def tokenize_documents(tokenizer, documents: Iterable[str], eos_token_id: int = 0) -> torch.Tensor:
    r"""
    Encode each document and join them into one sequence, `<|endoftext|>` after each: `[N]`, `int64`.
    """
    ids: List[int] = []
    for text in documents:
        # GPT-NeoX's tokenizer adds no special tokens of its own, so we add the separator ourselves
        ids.extend(tokenizer.encode(text, add_special_tokens=False).ids)
        ids.append(eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def tokenize_file(tokenizer, path: Union[str, Path]) -> torch.Tensor:
    """A whole text file as one document."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"The text file {path} does not exist; pass a UTF-8 text file to train on") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"The text file {path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); "
                         f"convert it to UTF-8 (iconv -t UTF-8) or pass a text file") from None
    return tokenize_documents(tokenizer, [text])


# ## Splitting off validation data
def split_train_valid(ids: torch.Tensor, valid_fraction: float, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    Split a token sequence `[N]` into a training part and a validation part, the last `valid_fraction` of it.
    Each part must hold at least one window of $T + 1$ tokens; a text too short for that is an error that says so.
    """
    n_valid = int(len(ids) * valid_fraction)
    n_train = len(ids) - n_valid
    if n_train < seq_len + 1 or (valid_fraction > 0 and n_valid < seq_len + 1):
        raise ValueError(f"The text has {len(ids)} tokens, too few for windows of {seq_len + 1} tokens in both the "
                         f"training part ({n_train}) and the validation part ({n_valid}, {valid_fraction:.0%}). "
                         f"Use a longer text, a shorter sequence length or a different validation fraction.")
    return ids[:n_train], ids[n_train:]


# ## Fixed-length windows
class TokenWindows(Dataset):
    r"""
    The windows of a token sequence `ids` `[N]`: window $i$ starts at token $iT$, so there are
    $\lfloor (N - 1) / T \rfloor$ of them, and item $i$ is the pair (input `[T]`, target `[T]`).
    The last few tokens that do not fill a window are left out.
    """

    def __init__(self, ids: torch.Tensor, seq_len: int):
        if ids.dim() != 1:
            raise ValueError(f"expected a 1-dimensional sequence of token ids, got shape {tuple(ids.shape)}")
        self.ids = ids
        self.seq_len = seq_len
        self.n_windows = (len(ids) - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"{len(ids)} tokens do not fill one window of {seq_len + 1} tokens")

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        start = i * self.seq_len
        window = self.ids[start:start + self.seq_len + 1]
        return window[:-1], window[1:]

    def batch(self, indices: Union[List[int], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stack the windows `indices` into inputs and targets, each `[B, T]`."""
        pairs = [self[int(i)] for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def batches(self, batch_size: int) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
        """All windows in order, `batch_size` at a time (the last batch may be smaller): for validation."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))
