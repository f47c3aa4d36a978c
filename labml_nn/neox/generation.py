r"""
# Generating text

A language model gives, for every position, a distribution over the next token. Generating text is a loop:
run the prompt through the model, pick a token from the distribution at the last position, append it, repeat.

Two things make the loop fast:

* **A key-value cache** (`model.py`'s `KVCache`). The first step runs the whole prompt and stores every layer's
  keys and values; each later step runs only the one new token, whose attention reads the stored ones.
* **Logits for the last position only.** During the prompt step only the last position's logits are needed, so
  the others skip the readout (`NeoXModel`'s `last_only`).

`model` is a `NeoXModel`, or a list of `model.py`'s modules (the loader's), which we run as one.

## Why decoding is memory-bound

Each step multiplies every weight once per sequence: 2 FLOPs a parameter, 41 GFLOP for 20B, while all 41.1 GB
of its fp16 weights ([memory.py](memory.py)) stream from memory, one FLOP per byte read. A GPU computes hundreds
of FLOPs in the time it reads a byte, so a step takes as long as reading the weights and the cache; a batch of
$B$ sequences reuses each byte $B$ times. ([cpu_decoding.py](cpu_decoding.py) measures this on a CPU.)

## Choosing the next token

With logits $z$ and temperature $\tau$, the next token is drawn from $p_i \propto \exp(z_i / \tau)$.
`temperature=0` means greedy decoding, $\arg\max_i z_i$. Two filters cut the tail of the distribution first:
**top-k** keeps the $k$ most likely tokens, **top-p** (nucleus sampling) keeps the smallest set of most likely
tokens whose probabilities add up to at least $p$.

## Prompts of different lengths

`left_pad` puts each row's padding before its prompt, so all rows end in the same slot; `padding` `[B]` goes
into the cache, where `model.py`'s attention reads it (each row then generates what it generates alone).
"""

import warnings
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from labml_nn.neox.model import KVCache, NeoXModel


# A model is a `NeoXModel`, or its modules in an `nn.Sequential`, a list or a tuple, or (for a quick test) a
# single module. Anything but a `NeoXModel` is run as one: a new container around the same modules.
def as_model(model) -> NeoXModel:
    if isinstance(model, NeoXModel):
        return model
    return NeoXModel(*(model if isinstance(model, (nn.Sequential, list, tuple)) else [model]))


def _config(model):
    for module in as_model(model):
        config = getattr(module, "config", None)
        if config is not None:
            return config
    return None


def context_length(model) -> Optional[int]:
    r"""
    The longest context the model was trained on, read from the config its modules carry; `None` for a model
    with dynamic RoPE scaling, which is made to read past it (`model.py`'s `RotaryEmbedding`).
    """
    config = _config(model)
    if config is None or getattr(config, "rotary_scaling_type", "linear") == "dynamic":
        return None
    return config.n_ctx


def vocabulary_size(model) -> Optional[int]:
    """`V`, the rows of the model's embedding, read from the config its modules carry."""
    config = _config(model)
    return None if config is None else config.n_vocab


class ContextLengthWarning(UserWarning):
    """Fewer new tokens than asked for fit in the model's context; generation stops at its end."""


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""
    Token id lists of different lengths $\rightarrow$ `ids` `[B, T]`, each row padded on the left with `pad_id` to
    the longest length `T`, and `padding` `[B]`, how many padding tokens each row starts with. (Which id pads
    does not matter: no real token attends to it.)
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token; for unconditional generation start from the "
                         "end-of-text token")
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompts], dtype=torch.long)
    padding = torch.tensor([longest - len(p) for p in prompts], dtype=torch.long)
    return ids, padding


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    r"""
    Pick the next token for each row of `logits` `[B, V]`; returns `[B]`.
    """
    # A temperature too small for fp32 to hold is 0 in fp32: its limit, greedy decoding
    if temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1)
    probs = next_token_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_token_distribution(logits: torch.Tensor, *, temperature: float, top_k: Optional[int] = None,
                            top_p: Optional[float] = None) -> torch.Tensor:
    r"""
    The distribution `sample_next` draws from, `[B, V]`, for `temperature` > 0. (The site's live model computes
    the same in JavaScript, `docs/javascripts/live/neox.js`, in the same order.)
    """
    # Sample in fp32, and subtract the largest logit first: $p_i$ is the same, and $(z_i - \max z) / \tau$ is at
    # most 0, so a small $\tau$ sends the unlikely tokens to $-\infty$ instead of the likely ones to $+\infty$
    # (whose softmax is `NaN`)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k > 0:
        # Everything below the $k$-th largest logit is removed
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Sort, and drop a token when the tokens more likely than it already add up to at least $p$.
        # The most likely token is always kept.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs
        drop = before >= top_p
        drop[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits.softmax(dim=-1)


# ## Checking the sampling arguments
#
# A wrong argument here does not crash: a negative temperature would quietly mean greedy decoding, `top_p=1.5`
# would mean no filter, a negative `max_new_tokens` would return the prompt. So every argument is checked once,
# before the first step, and a wrong one is a `ValueError` that names it and its valid range.
def check_sampling_args(max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                        seed: Optional[int] = None):
    import math

    def number(name, value, kinds=(int, float)):
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{name}={value!r} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")

    number("max_new_tokens", max_new_tokens, (int,))
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be 0 (greedy) or positive")
    if top_k is not None:
        number("top_k", top_k, (int,))
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1 (or None for no top-k filter)")
    if top_p is not None:
        number("top_p", top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must be in (0, 1] (or None for no nucleus filter)")
    if seed is not None:
        # PyTorch's generators take a 64-bit seed; a larger one fails deep inside the first step
        number("seed", seed, (int,))
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed={seed} must be between 0 and 2**64 - 1 = {2 ** 64 - 1}")


# ## Checking the prompt
#
# The ids index the embedding's rows: an id outside `0 .. V - 1` would fail with PyTorch's bare `index out of
# range in self` on a CPU (and a device-side assert that ends the process on a GPU). `padding` must leave every
# row at least one real token: a row of padding alone has nothing to continue. Both are checked once, on the
# prompt; every later id comes from the readout, so it is a row of the embedding.
def check_prompt(prompt_ids: torch.Tensor, n_vocab: Optional[int], padding: Optional[torch.Tensor] = None):
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be [B, T], got shape {tuple(prompt_ids.shape)}")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype.is_complex or prompt_ids.dtype == torch.bool:
        raise ValueError(f"prompt_ids must hold integer token ids, not {prompt_ids.dtype}")
    batch_size, n_prompt = prompt_ids.shape
    if n_prompt == 0:
        raise ValueError("the prompt is empty; for unconditional generation start from the end-of-text token")
    smallest, largest = int(prompt_ids.min()), int(prompt_ids.max())
    if smallest < 0 or (n_vocab is not None and largest >= n_vocab):
        bad = smallest if smallest < 0 else largest
        raise ValueError(f"prompt_ids holds the token id {bad}, outside the model's vocabulary 0 .. "
                         f"{'V - 1' if n_vocab is None else n_vocab - 1}; encode the prompt with the model's own "
                         f"tokenizer")
    if padding is not None:
        if tuple(padding.shape) != (batch_size,) or padding.dtype.is_floating_point:
            raise ValueError(f"padding must be [B] = [{batch_size}] integer counts, one per row of prompt_ids, got "
                             f"{padding.dtype} of shape {tuple(padding.shape)}")
        if int(padding.min()) < 0 or int(padding.max()) >= n_prompt:
            raise ValueError(f"padding {padding.tolist()} must count 0 .. {n_prompt - 1} padding tokens per row: "
                             f"each row of the {n_prompt}-token prompt needs at least one real token (left_pad "
                             f"makes both)")


# Logits that are NaN or infinite come from broken weights (a half-written or corrupt file) or from an overflow
# (a model trained in bf16 run in fp16). Greedy decoding would then emit token 0 forever and sampling would crash
# inside `multinomial`, so each step checks its logits and stops with the likely causes. (The check reads one
# flag back from the device per token, as the end-of-text check below already does.)
class NonFiniteLogitsError(ArithmeticError):
    """The model produced NaN or infinite logits."""


def _check_finite(logits: torch.Tensor, step: int):
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogitsError(
            f"the model's logits are NaN or infinite at generation step {step}: the weights hold NaN/Inf (a corrupt "
            f"or half-written checkpoint) or overflow in this dtype (try --dtype fp32 or bf16)")


@torch.inference_mode()
def generate_stream(model, prompt_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                    eos_token_id: Union[int, Sequence[int], None] = 0, max_len: Optional[int] = None,
                    padding: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    r"""
    ## The generation loop, one token at a time

    Yields the next tokens `[B]` as they are chosen, so a caller can print them as they come. `prompt_ids` is
    `[B, T]`; rows of different lengths are left-padded, with `padding` `[B]` counting each row's padding tokens
    (`left_pad` makes both). A row that produced `eos_token_id` keeps producing it; the loop stops when
    every row has (`eos_token_id=None` never stops early).

    `eos_token_id` may also be a list of ids (a `config.json` may give several, `config.stop_token_ids`): any of
    them ends a row, and finished rows repeat the first.

    `max_len` is the length of the context the model may use, by default the one it was trained on: a prompt
    longer than that is an error, and **generation stops when the context is full**, with a
    `ContextLengthWarning` up front saying how many of the new tokens asked for fit. (transformers generates past
    the context instead, with a warning; but positions the model never saw in training give text that degrades
    quickly, so we stop.) Pass a larger `max_len` to generate past it anyway; a model with dynamic RoPE scaling
    has no default limit.

    The model is used as it is: nothing here changes its weights or their layout. On a CPU, call
    `prepare_for_cpu_decoding` (`cpu_decoding.py`) once beforehand to decode faster; on a GPU, pass the model
    `prepare_for_gpu_decoding` returns (`static_decoding.py`).
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, seed)
    model = as_model(model)
    check_prompt(prompt_ids, vocabulary_size(model), padding)
    batch_size, n_prompt = prompt_ids.shape
    max_len = max_len or context_length(model) or n_prompt + max_new_tokens
    if n_prompt > max_len:
        raise ValueError(f"the prompt has {n_prompt} tokens but the model's context is {max_len}; "
                         f"shorten the prompt (keep its last {max_len} tokens) or pass a larger max_len")
    if n_prompt + max_new_tokens > max_len:
        warnings.warn(f"the prompt has {n_prompt} tokens and the model's context is {max_len}, so only "
                      f"{max_len - n_prompt} of the {max_new_tokens} new tokens asked for fit; generation stops "
                      f"there. Shorten the prompt, or pass a larger max_len to generate past the context "
                      f"the model was trained on.", ContextLengthWarning, stacklevel=3)
        max_new_tokens = max_len - n_prompt
    # The end-of-text ids, `[E]` on the prompt's device; finished rows repeat the first
    stop_ids = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=prompt_ids.device)

    # With a `seed`, the random generator is made in the first step, once the logits exist: it must live on their
    # device (the readout's), which need not be the prompt's, since the embedding moves the ids to its own device
    # and with the loader's `devices=` the readout sits on the last GPU
    generator = None

    # Each call makes its own cache, sized for the prompt and the new tokens: nothing carries over between calls
    # The model makes it (`NeoXModel.new_cache`): a new `KVCache`, or a static decoder's own buffers, emptied
    cache = model.new_cache(batch_size, n_prompt + max_new_tokens, padding)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=prompt_ids.device)
    # The first step runs the whole prompt
    ids = prompt_ids
    for step in range(max_new_tokens):
        logits = model(ids, cache, last_only=True)[:, -1]
        _check_finite(logits, step)
        if seed is not None and generator is None:
            generator = torch.Generator(device=logits.device).manual_seed(seed)
        next_ids = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator).to(prompt_ids.device)
        if stop_ids is not None:
            # Finished rows keep emitting end-of-text so that all rows stay the same length
            next_ids = next_ids.masked_fill(finished, stop_ids[0])
            finished |= torch.isin(next_ids, stop_ids)
        yield next_ids
        if stop_ids is not None and bool(finished.all()):
            return
        # Each later step runs only the token just chosen, `[B, 1]`
        ids = next_ids[:, None]


def generate(model, prompt_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    r"""
    ## Generate

    The prompt followed by the generated tokens, `[B, T + new]`, where `new <= max_new_tokens`.
    Keyword arguments are those of `generate_stream`: `temperature`, `top_k`, `top_p`, `seed`,
    `eos_token_id`, `max_len`, `padding`.
    """
    new = list(generate_stream(model, prompt_ids, max_new_tokens, **kwargs))
    if not new:
        return prompt_ids
    return torch.cat([prompt_ids, torch.stack(new, dim=1)], dim=1)
