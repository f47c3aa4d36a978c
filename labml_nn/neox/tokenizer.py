r"""
# Tokenizer

GPT-NeoX-20B and the Pythia models share one byte-level BPE tokenizer, shipped beside the 20B weights as
`20B_tokenizer.json` (and as `tokenizer.json` in each Pythia folder). It has 50,277 entries: id `0` is
`<|endoftext|>`, which separates documents during training and which we use to end generation and to start
unconditional generation, and id `1` is `<|padding|>`. `"Hello world"` is `[12092, 1533]`.

The file is in the format of Hugging Face's `tokenizers` library, which does the work; this module only finds
the file and decodes a stream of tokens into text as they are generated.
"""

from pathlib import Path
from typing import List, Optional, Union

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# Where a tokenizer sits beside a checkpoint's weights (`20B_tokenizer.json`, then `tokenizer.json`) is
# `checkpoint/sources.py`'s to say, with the rest of where a checkpoint's files are
from labml_nn.neox.checkpoint.sources import TOKENIZER_FILES, find_tokenizer  # noqa: E402,F401


def load_tokenizer(path: Union[str, Path], revision: Optional[str] = None) -> Tokenizer:
    """
    Load a `tokenizers` JSON file, or the one in a checkpoint folder, or the `tokenizer.json` of a Hugging Face
    Hub model (`"EleutherAI/pythia-160m"`, at `revision`; see `checkpoint/sources.py`). An existing path wins.
    """
    if revision is not None or not Path(path).exists():
        from labml_nn.neox.checkpoint.hub import is_hub_name
        from labml_nn.neox.checkpoint.sources import resolve_checkpoint
        if revision is not None or is_hub_name(path):
            path = resolve_checkpoint(path, revision, tokenizer_only=True)
    found = find_tokenizer(path)
    if found is None:
        raise FileNotFoundError(f"No tokenizer at {path}: expected a tokenizers JSON file or a folder holding one of "
                                f"{', '.join(TOKENIZER_FILES)}. Pass the tokenizer's path explicitly.")
    try:
        return Tokenizer.from_file(str(found))
    except Exception as e:
        raise ValueError(f"{found} is not a tokenizers JSON file ({e})") from None


# A tokenizer and a model are a pair, and we check it both ways once, when both are loaded.
#
# Every id the tokenizer can produce must be a row of the model's embedding, or the embedding fails with
# PyTorch's bare `index out of range in self` at the first unlucky word. And every id the model can produce should
# be one the tokenizer can print, or generation emits ids that decode to nothing. The padded vocabulary of the
# model is a little larger than the tokenizer (50,432 rows for 50,277 tokens in the 20B model, 50,304 in Pythia):
# gpt-neox rounds it up to a multiple of `make_vocab_size_divisible_by` (128) times the tensor-parallel degree, so
# the rows beyond the tokenizer number fewer than `PADDING_ROWS`, and a model never learns to choose them. A model
# with `PADDING_ROWS` or more rows beyond its tokenizer (a 50,304-row model with the demo's 4,096-id tokenizer) is
# paired with the wrong tokenizer, and refused. A padding row that is chosen anyway (an untrained or broken model)
# is reported by the generation command, which says how many of its ids printed nothing.
PADDING_ROWS = 1024


def check_vocabulary(tokenizer: Tokenizer, n_vocab: int, tokenizer_path: Union[str, Path, None] = None):
    """Raise `ValueError` when `tokenizer` and a model with `n_vocab` embedding rows are not a pair."""
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if n_vocab and largest >= n_vocab:
        raise ValueError(f"the tokenizer {tokenizer_path or ''} has ids up to {largest} but the model's embedding "
                         f"has {n_vocab} rows: they are not a pair. Pass --tokenizer with the model's own "
                         f"tokenizer.json")
    if n_vocab and n_vocab - (largest + 1) >= PADDING_ROWS:
        raise ValueError(f"the tokenizer {tokenizer_path or ''} has {largest + 1:,} ids but the model can generate "
                         f"{n_vocab:,}: the {n_vocab - largest - 1:,} ids beyond the tokenizer would print nothing, "
                         f"so they are not a pair. Pass --tokenizer with the model's own tokenizer.json")


def known_id(tokenizer: Tokenizer, token_id: int) -> bool:
    """Whether `tokenizer` has an entry for `token_id` (a model's padding rows have none)."""
    return tokenizer.id_to_token(int(token_id)) is not None


def encode(tokenizer: Tokenizer, text: str) -> List[int]:
    """The ids of `text` alone: no end-of-text or other special token is added around it."""
    return tokenizer.encode(text, add_special_tokens=False).ids


class StreamDecoder:
    r"""
    ## Decoding token by token

    Decoding each token on its own and joining the pieces goes wrong for byte-level BPE: one character (an
    emoji, a Chinese character) can be split over two tokens, and its first half is not valid UTF-8. `tokenizers`'
    `DecodeStream` holds such bytes back until the character is complete; `step` returns the new text, possibly
    empty.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def step(self, token_id: int) -> str:
        return self.stream.step(self.tokenizer, int(token_id)) or ""
