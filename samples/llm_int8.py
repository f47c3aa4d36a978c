r"""
# Generating with an LLM.int8 model

This sample loads a checkpoint with every transformer layer converted to int8 right after it is read
(`LayerLoader(..., is_llm_int8=True)`, see `labml_nn/neox/llm_int8.py`), reports how much memory the
weights take against fp16, and generates text. With `--compare` it then loads the same checkpoint without
quantization and shows how far the two models' logits and greedy continuations agree.

The 20B model's weights take about 21 GB this way instead of 41 GB in fp16 (its transformer layers, 19.9 B parameters,
shrink to just over half; the embedding and the readout, 0.3 B parameters each, stay in fp16), so it fits a single 40
GB GPU with room for activations and the key-value cache. On a CPU it works too, for small models: bitsandbytes does
real int8 products on CPU in eval mode, and the plain PyTorch implementation (`--implementation reference`) uses
`torch._int_mm`. Neither is faster than fp32 on a CPU; the point there is memory, and being able to read and check the
method.

## How to run

```
python samples/llm_int8.py                                      # the demo model (labml_nn/neox/demo/), on CPU or GPU
python samples/llm_int8.py --prompt "ROMEO:" --compare          # also run the unquantized model, compare
python samples/llm_int8.py --checkpoint ~/data/20B_checkpoints --prompt "The meaning of life is"
python samples/llm_int8.py --checkpoint pythia-410m --implementation reference --threshold 6 --device cpu
python samples/llm_int8.py --help
```

`--threshold 0` turns the outlier decomposition off (plain vector-wise int8): compare it with `--compare` on a
large model to see why LLM.int8 keeps the outliers. Decoding is greedy unless `--temperature` is above 0, so
that the int8 and floating-point continuations can be compared token by token.

## What it prints

A table of the bytes of the weights, for the transformer layers (the part converted) and for the whole model:
what they would take in fp16, and what the int8 model holds. On CUDA, also the GPU memory allocated after
loading and its peak while loading (which stays near the final size, since each layer is converted as soon as
it arrives). Then the prompt and its continuation, as it is generated, and the speed of generation. With
`--compare`: the relative L2 distance between the two models' logits on the prompt, the floating-point
model's continuation, and how many greedy tokens the two share before they first differ. On the demo model on a
CPU, `python samples/llm_int8.py --compare --max-new-tokens 20` prints (after the progress bars)

```
| weights | parameters | fp16 | LLM.int8 (as held) | ratio |
|---|---|---|---|---|
| 4 transformer layers | 3.2 M | 6.0 MiB | 3.1 MiB | 0.512 |
| embedding, final norm, readout | 2.1 M | 4.0 MiB | 8.0 MiB | 2.000 |
| whole model | 5.3 M | 10.0 MiB | 11.1 MiB | 1.106 |
(The parts kept in floating point are held in fp32 here, not fp16.)

ROMEO:
I'll be a man.
...
[20 new tokens in 0.33 s, 60.1 tokens/s]

The same checkpoint in fp32, unquantized:
ROMEO:
I'll be a man.
...
Relative L2 distance of the prompt's logits, LLM.int8 vs fp32: 0.0038
The two continuations share their first 20 of 20 tokens
```

In this tiny model the embedding and the readout are 40% of the weights and stay in floating point (fp32 on a
CPU), so the whole model does not shrink; in the 20B model they are 3%.
"""

import argparse
import gc
import sys
import time
from typing import List, Optional

import torch
from torch import nn

from labml_nn.neox.cli import (DTYPES, ArgumentParser, HelpFormatter, add_model_args, check_model_args,
                               quiet_bitsandbytes, run_command)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Generate text with a GPT-NeoX model quantized to LLM.int8, and report the memory its weights "
                    "take against fp16.", formatter_class=HelpFormatter)
    add_model_args(parser, dtype_help="dtype of what stays in floating point")
    parser.add_argument("--prompt", default="ROMEO:", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=60, help="tokens to generate with the int8 model")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    parser.add_argument("--implementation", choices=["bitsandbytes", "reference"], default="bitsandbytes",
                        help="bitsandbytes' Linear8bitLt, or our plain PyTorch Int8Linear")
    parser.add_argument("--threshold", type=float, default=6.0,
                        help="outlier threshold alpha; 0 turns the decomposition off")
    parser.add_argument("--compare", action="store_true",
                        help="also load the unquantized model and compare logits and continuations")
    args = check_model_args(parser, parser.parse_args(argv))
    if not args.prompt:
        parser.error("--prompt is empty; give some text to continue")
    from labml_nn.neox.generation import check_sampling_args
    try:
        check_sampling_args(args.max_new_tokens, args.temperature, None, None, args.seed)
    except ValueError as e:
        parser.error("--" + str(e).replace("_", "-", 2))
    return args


def load(args, is_llm_int8: bool) -> nn.Sequential:
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.model import NeoXModel

    loader = LayerLoader(args.checkpoint, dtype=DTYPES[args.dtype], device=args.device,
                               is_llm_int8=is_llm_int8, llm_int8_threshold=args.threshold,
                               llm_int8_implementation=args.implementation, trust_pickle=args.trust_pickle,
                               revision=args.revision, base=args.base)
    return NeoXModel(*loader.load())


# ## Memory
#
# "fp16" is what each part would take with every parameter in fp16 (2 bytes a parameter; an int8 weight
# counts as the fp16 weight it replaced). "LLM.int8" is what the loaded model holds: int8 weights, their fp32
# steps, and everything else in `--dtype`.
def memory_table(model: nn.Sequential, dtype: str) -> str:
    from labml_nn.neox.model import TransformerLayer
    from labml_nn.neox.llm_int8 import weight_bytes

    def row(name, modules):
        n = sum(p.numel() for m in modules for p in m.parameters())
        held = sum(weight_bytes(m) for m in modules)
        return f"| {name} | {n / 1e6:,.1f} M | {2 * n / 2**20:,.1f} MiB | {held / 2**20:,.1f} MiB | " \
               f"{held / (2 * n):.3f} |"

    layers = [m for m in model if isinstance(m, TransformerLayer)]
    others = [m for m in model if not isinstance(m, TransformerLayer)]
    lines = ["| weights | parameters | fp16 | LLM.int8 (as held) | ratio |", "|---|---|---|---|---|",
             row(f"{len(layers)} transformer layers", layers), row("embedding, final norm, readout", others),
             row("whole model", list(model))]
    if dtype != "fp16":
        lines.append(f"(The parts kept in floating point are held in {dtype} here, not fp16.)")
    return "\n".join(lines)


def cuda_memory_line(device) -> str:
    return (f"CUDA memory allocated: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB "
            f"(peak while loading {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB)")


# ## Generating
#
# Greedy by default, so that the int8 and floating-point continuations can be compared token by token; with
# `--temperature` above 0, nucleus sampling at $p = 0.95$. The speed line counts every new token, the first
# (the pass over the prompt) included.
def continue_prompt(model, tokenizer, prompt_ids: torch.Tensor, args, echo: bool) -> List[int]:
    from labml_nn.neox.generation import generate_stream
    from labml_nn.neox.tokenizer import StreamDecoder

    eos = model[0].config.eos_token_id
    decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
    tokens = []
    start = time.perf_counter()
    for next_ids in generate_stream(model, prompt_ids, args.max_new_tokens, temperature=args.temperature,
                                    top_p=0.95 if args.temperature > 0 else None, seed=args.seed,
                                    eos_token_id=eos):
        token = int(next_ids[0])
        tokens.append(token)
        if token == eos:
            break
        if echo:
            sys.stdout.write(decoder.step(token))
            sys.stdout.flush()
    elapsed = time.perf_counter() - start
    if echo:
        print(f"\n[{len(tokens)} new tokens in {elapsed:.2f} s, {len(tokens) / elapsed:.1f} tokens/s]")
    return tokens


def main(argv: Optional[List[str]] = None) -> int:
    from labml_nn.neox.tokenizer import encode, load_tokenizer
    from labml_nn.neox.llm_int8 import bitsandbytes_problem

    args = parse_args(argv)
    quiet_bitsandbytes()
    device = torch.device(args.device)
    # Without a working bitsandbytes the sample runs our plain PyTorch implementation, says so in one line first,
    # and names it everywhere after (the header, the loader), so no library warning repeats it
    if args.implementation == "bitsandbytes" and bitsandbytes_problem(device.type) is not None:
        print(f"note: {bitsandbytes_problem(device.type)}; using the plain PyTorch implementation instead "
              f"(--implementation reference)", file=sys.stderr)
        args.implementation = "reference"
    print(f"LLM.int8 ({args.implementation}, threshold {args.threshold}) of {args.checkpoint} on {device}")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = load(args, is_llm_int8=True)
    print(memory_table(model, args.dtype))
    if device.type == "cuda":
        print(cuda_memory_line(device))

    from labml_nn.neox.checkpoint import open_checkpoint
    tokenizer_path = open_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle,
                                     revision=args.revision, base=args.base).tokenizer_path
    if tokenizer_path is None:
        print(f"error: no tokenizer beside {args.checkpoint}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(tokenizer_path)
    prompt_ids = torch.tensor([encode(tokenizer, args.prompt)], device=device)

    print("\n" + args.prompt, end="")
    int8_tokens = continue_prompt(model, tokenizer, prompt_ids, args, echo=True)
    if not args.compare:
        return 0

    # The comparison: logits of the prompt from both models, then the floating-point model's continuation
    with torch.no_grad():
        int8_logits = model(prompt_ids).float()
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = load(args, is_llm_int8=False)
    print(f"\nThe same checkpoint in {args.dtype}, unquantized:")
    if device.type == "cuda":
        print(cuda_memory_line(device))
    with torch.no_grad():
        logits = model(prompt_ids).float()
    error = ((int8_logits - logits).norm() / logits.norm()).item()
    print(args.prompt, end="")
    fp_tokens = continue_prompt(model, tokenizer, prompt_ids, args, echo=True)
    same = next((i for i, (a, b) in enumerate(zip(int8_tokens, fp_tokens)) if a != b),
                min(len(int8_tokens), len(fp_tokens)))
    print(f"\nRelative L2 distance of the prompt's logits, LLM.int8 vs {args.dtype}: {error:.4f}")
    print(f"The two continuations share their first {same} of {len(fp_tokens)} tokens"
          + (" (sampled, not greedy)" if args.temperature > 0 else ""))
    return 0


if __name__ == "__main__":
    # Every error becomes one line and an exit status (`cli.py`)
    sys.exit(run_command(main))
