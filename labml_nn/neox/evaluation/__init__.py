r"""
# Evaluating with lm-eval

EleutherAI's [lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness) (lm-eval) is how
GPT-NeoX-20B's published numbers were measured, and how most papers report theirs. It holds hundreds of tasks
(LAMBADA, HellaSwag, PIQA, WinoGrande, ...), and reduces every one of them to three questions it asks a model:

* `loglikelihood(context, continuation)`: $\log P(\text{continuation} \mid \text{context})$, the sum of the
  log-probabilities of the continuation's tokens, and whether greedy decoding would have produced exactly
  those tokens. Multiple-choice tasks compare the log-likelihoods of the choices; LAMBADA asks whether the
  last word is the greedy continuation.
* `loglikelihood_rolling(text)`: $\log P(\text{text})$ of a whole document, for perplexity. A document longer
  than the model's context is scored in windows.
* `generate_until(context, until)`: the text the model generates, up to a stop sequence.

This module answers them for our model: `EvalHarnessAdapter` is an `lm_eval.api.model.LM` over the modules
of `model.py` (a `NeoXModel`, or the modules `LayerLoader` gives) and a `tokenizers.Tokenizer`. It works with
lm-eval 0.4; the adapter of the annotated reference implementation only works with lm-eval 0.2.

```python
from lm_eval import simple_evaluate
adapter = EvalHarnessAdapter(model, tokenizer, batch_size=8)
results = simple_evaluate(model=adapter, tasks=["lambada_openai"])
```

`python -m labml_nn.neox.evaluation` (in `__main__.py`) does this for a checkpoint from the command line, and
`tasks.py` defines tasks that read local files, for machines without internet.

## What lm-eval does before it asks us

lm-eval's `TemplateLM` (our base class) encodes `context + continuation` together and splits the tokens after
the context's, so a word is tokenized as in running text (`" word"`, with its space); an empty context becomes
the end-of-text token. We only score the ids, in `_loglikelihood_tokens`, making every choice lm-eval's own `hf`
model (`HFLM`) makes, so our numbers equal its numbers on the same weights (`tests/test_evaluation.py`).
"""

import sys
from typing import List, Optional, Sequence, Tuple, Union

from labml_nn.neox.cli import missing_extra

# lm-eval is the `eval` extra. Without it, `python -m labml_nn.neox.evaluation` (even `--help`) says in one line
# what to install; Python imports this package before it runs `__main__.py`, with `-m` as `sys.argv[0]` while it
# does so. Imported from Python code, the package raises the same sentence as a `ModuleNotFoundError`.
_MISSING = missing_extra("lm_eval", "The evaluation")
if _MISSING is not None:
    if sys.argv[:1] == ["-m"] and __name__ in getattr(sys, "orig_argv", []):
        print(f"error: {_MISSING}", file=sys.stderr)
        sys.exit(1)
    raise ModuleNotFoundError(_MISSING, name="lm_eval")

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator
from tokenizers import Tokenizer

from labml_nn.neox.generation import as_model, context_length, generate_stream, left_pad

# One scoring request as `TemplateLM` hands it to us: the original strings (or `None` for the windows of a
# rolling log-likelihood), the context's token ids and the continuation's token ids
Request = Tuple[Optional[Tuple[str, str]], List[int], List[int]]


class EvalHarnessAdapter(TemplateLM):
    r"""
    ## The adapter

    * `model`: a `NeoXModel` or `model.py`'s modules in order, in any dtype or with LLM.int8 layers, on one
      device or several.
    * `tokenizer`: a `tokenizers.Tokenizer`, or its path.
    * `batch_size`: requests run together. `device`: where input ids go (default: the embedding's device).
    * `max_length`: the longest input in tokens (default: the config's `n_ctx`, 2048 for 20B).
    * `max_gen_toks`: tokens `generate_until` may produce when the task does not say (256, as HFLM).
    * `eot_token_id`: end-of-text, `0` for GPT-NeoX: an empty context, a rolling window's start, padding, the end
      of generation.
    """

    def __init__(self, model: Union[nn.Sequential, Sequence[nn.Module]], tokenizer: Union[Tokenizer, str], *,
                 batch_size: int = 8, device: Union[str, torch.device, None] = None,
                 max_length: Optional[int] = None, max_gen_toks: int = 256,
                 eot_token_id: Optional[int] = None, progress: bool = True):
        super().__init__()
        if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
            from labml_nn.neox.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(tokenizer)
        modules = list(model)
        if not modules:
            raise ValueError("the model has no modules; pass NeoXModel(*LayerLoader(...).load())")
        # One `NeoXModel` (`model.py`), whose `forward` passes a cache to each module
        self.model = as_model(model if isinstance(model, nn.Sequential) else modules)
        self.model.eval()
        self.tokenizer = tokenizer
        # lm-eval reads `max_length` (the longest input in tokens), `max_gen_toks` (the default number of tokens
        # to generate) and `batch_size` as plain attributes, and `device` through its base class's property,
        # which returns `_device`
        self.batch_size = int(batch_size)
        self.max_length = max_length or context_length(self.model) or 2048
        self.max_gen_toks = max_gen_toks
        self._device = torch.device(device) if device is not None else _first_device(self.model)
        config = getattr(modules[0], "config", None)
        self._eot_token_id = eot_token_id if eot_token_id is not None else getattr(config, "eos_token_id", 0)
        self.progress = progress

    # The end-of-text token is a property because lm-eval's `TemplateLM` declares it an abstract one
    @property
    def eot_token_id(self) -> int:
        return self._eot_token_id

    # lm-eval keys its request cache on this; the vocabulary size tells tokenizers apart well enough
    @property
    def tokenizer_name(self) -> str:
        return f"neox-tokenizer-{self.tokenizer.get_vocab_size()}"

    # ### Tokens
    #
    # The GPT-NeoX tokenizer adds no special tokens around a text, so `add_special_tokens` changes nothing;
    # we always encode the text alone.
    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    # ### Scoring continuations
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: List[Request], disable_tqdm: bool = False,
                              **kwargs) -> List[Tuple[float, bool]]:
        r"""
        For each request, the log-likelihood of the continuation tokens $y_1 \dots y_m$ after the context
        tokens $x_1 \dots x_n$,

        $$\log P(y \mid x) = \sum_{j=1}^{m} \log \operatorname{softmax}(z_{n+j-1})_{y_j}$$

        where $z_t$ are the logits at position $t$ of the input $x_1 \dots x_n y_1 \dots y_{m-1}$ (the last
        continuation token is never an input), and whether $y_j = \arg\max z_{n+j-1}$ for every $j$.
        """
        # Longest first, as HFLM does: a batch is as long as its first request, so padding is small, and if
        # the model runs out of memory it does so at the start rather than after an hour.
        collator = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        return self._run_batches(collator, self._score_batch, "Scoring", len(requests), disable_tqdm)

    # Scoring and generating run the same way: the batches of lm-eval's `Collator`, a progress bar over the
    # requests, and the results put back in the order lm-eval asked for them
    def _run_batches(self, collator: Collator, run_batch, desc: str, total: int, disable_tqdm: bool) -> list:
        results = []
        progress = tqdm(total=total, desc=desc, disable=disable_tqdm or not self.progress)
        for batch in collator.get_batched(n=self.batch_size):
            results += run_batch(batch)
            progress.update(len(batch))
        progress.close()
        return collator.get_original(results)

    def _score_batch(self, batch: List[Request]) -> List[Tuple[float, bool]]:
        r"""
        #### One batch

        **Truncation.** An input longer than `max_length` loses tokens from the left, exactly as in HFLM:
        of `context + continuation` we keep the last `max_length + 1` tokens and drop the last one, so the
        model sees at most `max_length` tokens and the continuation is always scored in full.

        **Padding.** Inputs of different lengths are padded on the right to `[B, T]`. The attention is
        causal, so the real position $t$ attends only to positions $\le t$, all real: the padding after it
        cannot change its logits, and we never read the logits at padded positions. No attention mask is
        needed. (`test_right_padding_does_not_change_scores` checks this.)
        """
        for _, _, continuation in batch:
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored in full with "
                                 f"max_length={self.max_length}; pass a larger max_length or shorten the task's "
                                 f"continuations")
        inputs = [(context + continuation)[-(self.max_length + 1):][:-1] for _, context, continuation in batch]
        longest = max(len(x) for x in inputs)
        ids = torch.full((len(batch), longest), self.eot_token_id, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)

        # `[B, T, V]`, in the model's dtype, on the device of the readout
        logits = self.model(ids.to(self.device))

        results = []
        for row, ((strings, _, continuation), x) in enumerate(zip(batch, inputs)):
            # The logits that predict the continuation: the last `m` positions of this row's real tokens.
            # The log-softmax is computed in fp32 whatever the model's dtype: in fp16 the sum over 50,000
            # exponentials loses digits that change perplexities in the third decimal.
            m = len(continuation)
            log_probs = F.log_softmax(logits[row, len(x) - m:len(x)].float(), dim=-1)  # `[m, V]`
            target = torch.tensor(continuation, device=log_probs.device)
            log_likelihood = float(log_probs.gather(-1, target[:, None]).sum())
            is_greedy = bool((log_probs.argmax(dim=-1) == target).all())
            results.append((log_likelihood, is_greedy))
            if strings is not None:
                # lm-eval's optional request cache (`--use_cache`) stores each answer through this hook
                self.cache_hook.add_partial("loglikelihood", strings, (log_likelihood, is_greedy))
        return results

    # ### The log-likelihood of whole documents
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        r"""
        $\log P(\text{document})$ for perplexity and bits per byte. A document of $N$ tokens is cut into
        windows of at most `max_length` predicted tokens; lm-eval's `get_rolling_token_windows` gives, for a
        window length $L$,

        * the first window: input `[eot, t_1 ... t_{L-1}]`, predicting $t_1 \dots t_L$ (the end-of-text token
          stands for "start of a document");
        * each later window: the $L$ tokens before its last prediction as input, predicting only the tokens
          not yet predicted, so each token is predicted once, with as much context as fits.

        `make_disjoint_window` splits each window into a (context, continuation) pair, and we score all windows
        of all documents as one list of requests, so they are batched and sorted together. The document's
        log-likelihood is the sum over its windows.
        """
        windows, owners = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            for window in lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                    max_seq_len=self.max_length, context_len=1):
                context, continuation = lm_eval_utils.make_disjoint_window(window)
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (log_likelihood, _) in zip(owners, scores):
            totals[index] += log_likelihood
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ### Generating
    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        r"""
        Greedy (or sampled) continuations of each context, cut at the first of the request's stop sequences
        `until`. The end-of-text token always stops generation too, and at most `max_gen_toks` tokens are
        generated (from the request's options, or this adapter's default).

        The context is left-truncated to `max_length - max_gen_toks` tokens, leaving room for the new ones.
        Each batch is generated with `generation.generate_stream` and its KV cache; a row stops when it has
        produced end-of-text or one of the stop sequences appears in its text, and the batch stops when every
        row has.

        Generation cannot use right padding (the next token of a short row would be predicted after padding), so
        contexts of different lengths share a batch by left padding (`generation.left_pad`): the cache tells the
        attention where each row starts, and each row generates what it generates alone.
        """
        encoded = [(self.tok_encode(context), context, options) for context, options in
                   (request.args for request in requests)]
        # Group by the options (greedy and sampled requests never share a batch) and by length, longest first
        collator = Collator(encoded, sort_fn=lambda r: (-len(r[0]), r[1]), group_by="gen_kwargs",
                            group_fn=lambda r: _options_key(r[2]))
        return self._run_batches(collator, self._generate_batch, "Generating", len(requests), disable_tqdm)

    def _generate_batch(self, batch) -> List[str]:
        options = _normalise_options(batch[0][2], self.max_gen_toks)
        max_new = options["max_gen_toks"]
        # The end-of-text token's text ends generation too, as in HFLM
        until = options["until"] + [self.tok_decode([self.eot_token_id], skip_special_tokens=False)]
        room = self.max_length - max_new
        if room <= 0:
            raise ValueError(f"max_gen_toks={max_new} leaves no room for a context in max_length="
                             f"{self.max_length}; lower max_gen_toks")
        # Left truncation; an empty context becomes the end-of-text token
        prompts = [(ids[-room:] or [self.eot_token_id]) for ids, _, _ in batch]

        prompt_ids, padding = left_pad(prompts, pad_id=self.eot_token_id)
        return self._generate(prompt_ids.to(self.device), padding.to(self.device), max_new, until, options)

    def _generate(self, prompt_ids: torch.Tensor, padding: torch.Tensor, max_new: int, until: List[str],
                  options: dict) -> List[str]:
        new_tokens: List[List[int]] = [[] for _ in range(prompt_ids.shape[0])]
        done = [False] * prompt_ids.shape[0]
        stream = generate_stream(self.model, prompt_ids, max_new, temperature=options["temperature"],
                                 top_k=options.get("top_k"), top_p=options.get("top_p"),
                                 eos_token_id=self.eot_token_id, max_len=prompt_ids.shape[1] + max_new,
                                 padding=padding)
        for next_ids in stream:
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                if token == self.eot_token_id:
                    done[row] = True
                    continue
                new_tokens[row].append(token)
                # Decoding the whole continuation each step is simple and cheap next to a forward pass
                if any(stop and stop in self.tok_decode(new_tokens[row]) for stop in until):
                    done[row] = True
            if all(done):
                break
        # The text up to (without) the first stop sequence
        texts = []
        for tokens in new_tokens:
            text = self.tok_decode(tokens)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts


def _first_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# Options are dictionaries (unhashable); the Collator groups by this string
def _options_key(options: dict) -> str:
    return repr(sorted(options.items())) if options else ""


def _normalise_options(options: Optional[dict], default_max_gen_toks: int) -> dict:
    r"""
    The generation options of a task (`generation_kwargs` in its YAML), read the way HFLM reads them:
    `until` a string or a list, `max_gen_toks` (or `max_new_tokens`), and sampling only with `do_sample` and a
    temperature above 0; otherwise greedy.
    """
    options = dict(options or {})
    until = options.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    max_gen_toks = int(options.get("max_gen_toks") or options.get("max_new_tokens") or default_max_gen_toks)
    temperature = float(options.get("temperature") or 0.0)
    if not options.get("do_sample", temperature > 0):
        temperature = 0.0
    return {"until": until, "max_gen_toks": max_gen_toks, "temperature": temperature,
            "top_k": options.get("top_k"), "top_p": options.get("top_p")}
