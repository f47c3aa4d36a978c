r"""
# Generating text from the command line

This sample puts the pieces together: `LayerLoader` (loader.py) reads a checkpoint one layer at a time,
on a CPU `prepare_for_cpu_decoding` (cpu_decoding.py) makes its fp32 products fast (with a small kernel of our
own, built on the first run with a model of 100 MB or more), `generate_stream` (generation.py) runs the model
with a key-value cache and picks one token per step, and the tokenizer's `StreamDecoder` turns each token into
text as soon as it is chosen, so the text appears as it is generated. On a GPU, `prepare_for_gpu_decoding`
(static_decoding.py) compiles the decoding step and captures it as a CUDA graph, once per batch size, before the
first generation's prompt runs (counted in that prompt's time); `--no-cuda-graph` turns it off.

With no arguments it loads the **demo model** that ships with the package: a tiny GPT-NeoX trained on
Shakespeare's plays, stored in the same layout as the 20B slim weights (two tensor-parallel ranks) with its
tokenizer. It runs in a few seconds on a CPU. Point `--checkpoint` at the 20B weights or at a Pythia folder to
use a real model.

## How to run

```
python samples/generate.py                                    # the demo model, unconditional
python samples/generate.py --prompt "ROMEO:" --max-new-tokens 200
python samples/generate.py --checkpoint ~/data/20B_checkpoints --prompt "The meaning of life is"
python samples/generate.py --checkpoint pythia-160m --prompt-file prompts.txt --output results.jsonl
python samples/generate.py --interactive --temperature 0.7 --top-p 0.9
python samples/generate.py --help
```

Sampling: `--temperature 0` is greedy decoding; otherwise tokens are drawn from the softmax of the logits
divided by the temperature, after `--top-k` and `--top-p` (nucleus) filtering. `--seed` makes a run
repeatable. The 20B model needs about 40 GB of GPU memory in fp16 (`--dtype` defaults to fp16 on CUDA and fp32
on a CPU).

## What it prints

For `--prompt`, and each turn of `--interactive`: the prompt, then the generated text as it comes, then a line
on standard error with the decoding speed (tokens after the first, each one decoding step) and the time the
prompt took. Without a prompt it generates unconditionally, starting from the end-of-text token (id 0), which is
how every document began during training. Sampling is random unless `--seed` is given, so the text differs from
run to run; on a 2-core CPU, `python samples/generate.py --max-new-tokens 40` printed

```
ANNE,
If you with a man, with you resortion,
So remorse of your crook'd.

[Enter SS.]

CHARLE.
Where
[40 new tokens, 347.2 tokens/s; prompt of 0 tokens in 0.02 s]
```

The demo model is small (4 layers, 5.3M parameters, 400 steps of training), so it writes the shape of a play,
character names, stage directions and verse lines, rather than sense. When standard output is not a terminal, a
line such as `[loaded 7 modules (4 transformer layers) on cpu in fp32 in 0.1 s]` on standard error replaces
labml's loading progress bar.

For `--prompt-file` (one prompt per line) it writes one JSON object per prompt,
`{"prompt": ..., "completion": ..., "prompt_tokens": ..., "new_tokens": ..., "tokens_per_second": ...}`, to
`--output` (written beside it as `NAME.tmp-XXXX` and renamed when every prompt is done; an existing file is
replaced only with `--overwrite`, and never the prompt file), or to standard output when no `--output` is given; then standard output holds nothing but the JSON
lines (labml's progress bar, which it draws on standard output, is then left out). With `--batch-size N`, N
prompts of different lengths generate together, left-padded to one length (`generation.left_pad`); their
`prompt_seconds` and `tokens_per_second` are then the batch's.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, TextIO

import torch

from labml_nn.neox.cli import (DTYPES, ArgumentParser, DataError, UsageError, add_model_args, announce_source,
                               check_model_args, run_command)


# ## Command-line arguments
#
# The options that choose the model (`--checkpoint`, `--revision`, `--device`, `--dtype`, `--trust-pickle`) are
# those of every command here (`cli.add_model_args`), and so are their checks (`cli.check_model_args`). Sampling
# defaults to temperature 0.8 with nucleus sampling at $p = 0.95$; the dtype follows the device.
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Generate text with a GPT-NeoX model (the 20B slim weights, any gpt-neox checkpoint, or a "
                    "Hugging Face GPT-NeoX folder such as Pythia). With no arguments, the bundled Shakespeare "
                    "demo model generates unconditionally.")
    add_model_args(parser)
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer JSON file (default: the one in the checkpoint folder)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="text to continue; without any prompt, generate unconditionally from "
                                         "the end-of-text token")
    source.add_argument("--prompt-file", type=Path,
                        help="a text file with one prompt per line; writes one JSON line per prompt")
    source.add_argument("--interactive", action="store_true",
                        help="ask for a prompt, generate, and ask again (an empty line or Ctrl-D quits; Ctrl-C "
                             "stops the generation under way)")
    parser.add_argument("--output", type=Path, help="with --prompt-file: write the JSON lines here, all at once "
                                                    "when every prompt is done (default: standard output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists (only when every prompt is done; never the prompt file)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="with --prompt-file: how many prompts generate together, left-padded to one length "
                             "(faster per prompt; greedy completions are the same as one at a time)")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="the most tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=0.95,
                        help="sample only among the most likely tokens whose probabilities add up to p")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable sampling")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="on a GPU, decode with the eager step instead of the compiled step captured as a CUDA "
                             "graph (which is compiled first, once per batch size; static_decoding.py)")
    args = check_model_args(parser, parser.parse_args(argv))
    if args.output is not None and args.prompt_file is None:
        parser.error("--output is for --prompt-file")
    # Where the lines go is checked before the model loads: not the prompt file, nothing that exists unless
    # --overwrite (`checkpoint/atomic.py`, the rule of every command that writes)
    if args.output is not None:
        from labml_nn.neox.checkpoint.atomic import check_target
        check_target(args.output, overwrite=args.overwrite, reads=[args.prompt_file, args.checkpoint, args.tokenizer],
                     folder=False, name="--output")
    from labml_nn.neox.generation import check_sampling_args
    try:
        check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    except ValueError as e:
        # The library names its arguments as Python does (`top_p`); the command line spells them `--top-p`
        parser.error("--" + str(e).replace("_", "-", 2))
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


# ## Loading the model and its tokenizer
def load(args: argparse.Namespace, progress: bool):
    from labml_nn.neox.checkpoint import CheckpointError
    from labml_nn.neox.cpu_decoding import prepare_for_cpu_decoding
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.model import NeoXModel
    from labml_nn.neox.tokenizer import check_vocabulary, load_tokenizer

    checkpoint = args.checkpoint
    try:
        loader = LayerLoader(checkpoint, dtype=DTYPES[args.dtype], device=args.device,
                                   trust_pickle=args.trust_pickle, progress=progress, revision=args.revision,
                             base=args.base)
        announce_source(loader.checkpoint)
        tokenizer_path = args.tokenizer or loader.checkpoint.tokenizer_path
        if tokenizer_path is None:
            raise UsageError(f"No tokenizer found beside {checkpoint} (20B_tokenizer.json or tokenizer.json); "
                             f"pass --tokenizer PATH.")
        tokenizer = load_tokenizer(tokenizer_path)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        # A checkpoint that is damaged or does not fit its config is a data error (exit 1), as in `merge`
        raise DataError(str(e)) from None
    try:
        check_vocabulary(tokenizer, loader.config.n_vocab, tokenizer_path)
    except ValueError as e:
        raise DataError(str(e)) from None
    model = NeoXModel(*loader.load())
    # On a CPU, one explicit step makes the fp32 products of decoding fast (our matrix-vector kernel, built once per
    # machine for a model of 100 MB or more; `cpu_decoding.py`): same names, same values, same tokens
    if str(args.device) == "cpu":
        model = prepare_for_cpu_decoding(model)
    # On a GPU, the decoding step compiled and captured as a CUDA graph (`static_decoding.py`), unless turned off
    elif str(args.device).startswith("cuda") and not args.no_cuda_graph:
        model = prepare_for_gpu_or_say_why(model)
    return model, tokenizer


# The compiled step where it can run; where it cannot, the model as it is, and one line on stderr that says why. (A
# compile that fails does the same, from `StaticDecoder`, when the first generation starts.)
def prepare_for_gpu_or_say_why(model):
    from labml_nn.neox.static_decoding import StaticDecodingUnavailable, prepare_for_gpu_decoding
    try:
        return prepare_for_gpu_decoding(model)
    except StaticDecodingUnavailable as e:
        print(f"[decoding without a CUDA graph: {e}]", file=sys.stderr, flush=True)
        return model


# ## Generating for one prompt
#
# The prompt is encoded, or replaced by the end-of-text token for unconditional generation, and checked
# against the model's context length before any work is done. `generate_stream` yields one token `[1]` per
# step; `on_text` receives each piece of decoded text. The end-of-text token ends the generation and is not
# printed.
def complete(model, tokenizer, prompt: str, args: argparse.Namespace, on_text=None) -> dict:
    from labml_nn.neox.generation import generate_stream
    from labml_nn.neox.tokenizer import StreamDecoder, encode, known_id

    config = model[0].config
    ids = encode(tokenizer, prompt) if prompt else [config.eos_token_id]
    if len(ids) >= config.n_ctx:
        raise UsageError(f"The prompt has {len(ids)} tokens but the model's context is {config.n_ctx}, which "
                         f"leaves no room to generate; shorten the prompt.")
    prompt_ids = torch.tensor([ids], device=args.device)
    decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
    pieces, new_ids = [], []
    start = time.perf_counter()
    first_token_at = None
    n_new = 0
    for next_ids in generate_stream(model, prompt_ids, args.max_new_tokens, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                    eos_token_id=config.stop_token_ids):
        token = int(next_ids[0])
        if first_token_at is None:
            first_token_at = time.perf_counter()
        n_new += 1
        if token in config.stop_token_ids:
            break
        new_ids.append(token)
        text = decoder.step(token)
        pieces.append(text)
        if on_text is not None and text:
            on_text(text)
    end = time.perf_counter()
    unknown = [token for token in new_ids if not known_id(tokenizer, token)]
    if unknown:
        warn_unknown_ids(unknown, len(new_ids))
    # The stream holds back the bytes of a character that is not complete yet; if the generation stops in the
    # middle of one, those bytes are printed as decoding all the tokens at once prints them (as U+FFFD), so that
    # the completion is the same streamed or batched
    whole = tokenizer.decode(new_ids, skip_special_tokens=True)
    streamed = "".join(pieces)
    if len(whole) > len(streamed) and whole.startswith(streamed):
        pieces.append(whole[len(streamed):])
        if on_text is not None:
            on_text(pieces[-1])
    # The first token costs a pass over the whole prompt; the rest are one decoding step each
    decode_time = end - (first_token_at or end)
    return {"prompt": prompt, "completion": "".join(pieces), "prompt_tokens": len(ids) if prompt else 0,
            "new_tokens": n_new, "prompt_seconds": round((first_token_at or end) - start, 4),
            "tokens_per_second": round((n_new - 1) / decode_time, 2) if n_new > 1 and decode_time > 0 else None}


# ## Generating for a batch of prompts
#
# The prompts are left-padded to one length, and the padding counts go to `generate_stream`, which tells the
# model's attention where each row starts. A row that produced end-of-text keeps emitting it until every row
# has, so each row's tokens are read only up to its first end-of-text. The timings are the batch's: the first
# step runs every prompt, and each later step one token of every row.
def complete_batch(model, tokenizer, prompts: List[str], args: argparse.Namespace) -> List[dict]:
    from labml_nn.neox.generation import generate_stream, left_pad
    from labml_nn.neox.tokenizer import encode, known_id

    config = model[0].config
    encoded = [encode(tokenizer, prompt) or [config.eos_token_id] for prompt in prompts]
    for prompt, ids in zip(prompts, encoded):
        if len(ids) >= config.n_ctx:
            raise UsageError(f"The prompt {prompt[:40]!r} has {len(ids)} tokens but the model's context is "
                             f"{config.n_ctx}, which leaves no room to generate; shorten the prompt.")
    prompt_ids, padding = left_pad(encoded, pad_id=config.eos_token_id)
    new: List[List[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    start = time.perf_counter()
    first_token_at = None
    n_steps = 0
    for next_ids in generate_stream(model, prompt_ids.to(args.device), args.max_new_tokens,
                                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                    seed=args.seed, eos_token_id=config.stop_token_ids,
                                    padding=padding.to(args.device)):
        if first_token_at is None:
            first_token_at = time.perf_counter()
        n_steps += 1
        for row, token in enumerate(next_ids.tolist()):
            if not ended[row]:
                ended[row] = token in config.stop_token_ids
                new[row].append(token)
    end = time.perf_counter()
    for tokens in new:
        unknown = [token for token in tokens if not known_id(tokenizer, token)]
        if unknown:
            warn_unknown_ids(unknown, len(tokens))
    decode_time = end - (first_token_at or end)
    speed = round((n_steps - 1) / decode_time, 2) if n_steps > 1 and decode_time > 0 else None
    return [{"prompt": prompt, "completion": tokenizer.decode(tokens, skip_special_tokens=True),
             "prompt_tokens": len(ids) if prompt else 0, "new_tokens": len(tokens),
             "prompt_seconds": round((first_token_at or end) - start, 4), "tokens_per_second": speed}
            for prompt, ids, tokens in zip(prompts, encoded, new)]


# An id the tokenizer lacks (one of the model's padding rows, see `tokenizer.check_vocabulary`) decodes to nothing.
# The model chose it, so it stays in the count of new tokens, and a line on standard error says so, rather than
# let a completion come out shorter or empty without a word.
def warn_unknown_ids(unknown: List[int], n_new: int):
    print(f"warning: {len(unknown)} of the {n_new} generated ids ({', '.join(map(str, sorted(set(unknown))[:5]))}"
          f"{', ...' if len(set(unknown)) > 5 else ''}) are not in the tokenizer and print nothing; are the "
          f"model and its tokenizer a pair? (--tokenizer)", file=sys.stderr, flush=True)


# The speed line goes to standard error, so that redirecting standard output keeps only the text
def report(result: dict):
    speed = result["tokens_per_second"]
    print(f"[{result['new_tokens']} new tokens{'' if speed is None else f', {speed:.1f} tokens/s'}; "
          f"prompt of {result['prompt_tokens']} tokens in {result['prompt_seconds']:.2f} s]",
          file=sys.stderr, flush=True)


def stream_to_stdout(text: str):
    sys.stdout.write(text)
    sys.stdout.flush()


# ## The three modes
#
# One prompt (or none) streamed to the terminal; a prompt read from the keyboard, again and again; or a file of
# prompts, one JSON line out for each.
def run_one(model, tokenizer, prompt: Optional[str], args):
    if prompt:
        stream_to_stdout(prompt)
    result = complete(model, tokenizer, prompt or "", args, on_text=stream_to_stdout)
    stream_to_stdout("\n")
    report(result)


# In the interactive mode a mistake ends only its turn: a prompt too long, or bytes that are not UTF-8 (a binary
# file piped in, a terminal in another encoding), get their error line and the next prompt. Ctrl-C during a
# generation stops that generation and asks again; Ctrl-C or Ctrl-D at the prompt quits.
def run_interactive(model, tokenizer, args):
    print("Type a prompt and press Enter; an empty line or Ctrl-D quits. Ctrl-C stops a generation.",
          file=sys.stderr)
    # Read bytes that are not UTF-8 as lone surrogates (checked below, line by line) rather than let the decoder
    # fail on a whole buffer of lines at once
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            prompt = input("\n> ")
        except EOFError:
            break
        except UnicodeDecodeError as e:
            print(f"error: the prompt is not UTF-8 text ({e.reason} at byte {e.start}); type it again",
                  file=sys.stderr)
            continue
        if not prompt.strip():
            break
        try:
            # Python reads bytes that are not UTF-8 as lone surrogates, which no tokenizer can encode
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            print(f"error: the prompt is not UTF-8 text (a byte that is not UTF-8 at character {e.start}); "
                  f"type it again", file=sys.stderr)
            continue
        try:
            run_one(model, tokenizer, prompt, args)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n[generation stopped]", file=sys.stderr, flush=True)


def read_prompts(path: Path) -> List[str]:
    check_prompt_file(path)
    try:
        return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise DataError(f"--prompt-file {path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); "
                        f"give a text file with one prompt per line") from None


def check_prompt_file(path: Path):
    if path.is_dir():
        raise UsageError(f"--prompt-file {path} is a folder; give a text file with one prompt per line")
    if not path.is_file():
        raise UsageError(f"--prompt-file {path} does not exist; give a text file with one prompt per line")


def run_prompt_file(model, tokenizer, args, out: TextIO):
    prompts = read_prompts(args.prompt_file)
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UsageError(f"{args.prompt_file} has no prompts (one per line).")
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first:first + args.batch_size]
        results = complete_batch(model, tokenizer, batch, args) if len(batch) > 1 else \
            [complete(model, tokenizer, batch[0], args)]
        for result in results:
            out.write(json.dumps(result) + "\n")
        out.flush()


def _generate(argv: Optional[List[str]] = None) -> int:
    from labml_nn.neox.generation import NonFiniteLogitsError
    args = parse_args(argv)
    # labml draws its progress bar on standard output, with terminal escape codes even when the output is
    # piped. We show it only on a terminal, and never when standard output carries JSON lines; otherwise a
    # one-line summary goes to standard error.
    json_to_stdout = args.prompt_file is not None and args.output is None
    progress = sys.stdout.isatty() and not json_to_stdout
    try:
        if args.prompt_file is not None:
            check_prompt_file(args.prompt_file)
        start = time.perf_counter()
        model, tokenizer = load(args, progress=progress)
        if not progress:
            print(f"[loaded {len(model)} modules ({model[0].config.n_layers} transformer layers) on {args.device} "
                  f"in {args.dtype} in {time.perf_counter() - start:.1f} s]", file=sys.stderr, flush=True)
        if args.prompt_file is not None:
            if json_to_stdout:
                run_prompt_file(model, tokenizer, args, sys.stdout)
            else:
                # Written aside and renamed when every prompt is done: a failed or interrupted run leaves what
                # was at --output as it was
                from labml_nn.neox.checkpoint.atomic import atomic_file
                with atomic_file(args.output, overwrite=args.overwrite, name="--output",
                                 reads=[args.prompt_file, args.checkpoint, args.tokenizer]) as out:
                    run_prompt_file(model, tokenizer, args, out)
        elif args.interactive:
            run_interactive(model, tokenizer, args)
        else:
            run_one(model, tokenizer, args.prompt, args)
    except NonFiniteLogitsError as e:
        raise DataError(str(e)) from None
    return 0


# Every error becomes one line and an exit status (2 for a wrong argument, 1 for a bad file or value), see
# `cli.py`
def main(argv: Optional[List[str]] = None) -> int:
    return run_command(_generate, argv)


if __name__ == "__main__":
    sys.exit(main())
