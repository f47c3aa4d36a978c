r"""
# Benchmark: the compiled static step against the CPU kernel, on a CPU

Does the static decoding step (`static_decoding.py`), compiled by `torch.compile` (inductor's default mode, which on a
CPU generates vectorised C++ loops), decode faster on a CPU than the path a CPU caller takes today,
`prepare_for_cpu_decoding` (`cpu_decoding.py`: our C++ matrix-vector kernel, a whole layer in one call)? The faster
is the CPU default; this measures it.

Random weights of Pythia-160M's shape in fp32 (as `benchmarks/generate.py`), a 64-token prompt, greedy tokens at
batch 1; three contenders in one process, alternating round after round, best round of each: the plain model
(`NeoXModel.forward` as loaded), the kernel path, and the compiled static step (its compile time reported
apart). All three must give the same tokens.

```
python benchmarks/static_cpu.py             # a few minutes on two cores, most of it compiling
```
"""

import argparse
import copy
import sys
import time

import torch

from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.cpu_decoding import prepare_for_cpu_decoding
from labml_nn.neox.generation import generate
from labml_nn.neox.model import NeoXModel, build_layers
from labml_nn.neox.static_decoding import StaticDecoder

PYTHIA_160M = NeoXConfig(n_layers=12, d_model=768, n_heads=12, n_vocab=50304, n_ctx=2048, rotary_pct=0.25,
                         parallel_residual=True, activation="gelu")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Decode tokens/s on a CPU at batch 1: the plain model, the C++ "
                                                 "kernel path and the compiled static step; prints one table.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per round (default: 32)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each, best reported (default: 3)")
    parser.add_argument("--compile", default="default",
                        help="torch.compile mode for the static step (default: default)")
    return parser.parse_args(argv)


# Seconds for the tokens after the first (the first is the prompt's pass), and the tokens
def time_decode(model, ids, new_tokens):
    from labml_nn.neox.generation import generate_stream

    tokens, first = [], None
    start = time.perf_counter()
    for next_ids in generate_stream(model, ids, new_tokens, eos_token_id=None):
        tokens.append(next_ids)
        if first is None:
            first = time.perf_counter()
    return time.perf_counter() - first, torch.stack(tokens, dim=1), first - start


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = NeoXModel(*build_layers(PYTHIA_160M)).eval()
    ids = torch.randint(0, PYTHIA_160M.n_vocab, (1, 64), generator=torch.Generator().manual_seed(1))
    kernel = prepare_for_cpu_decoding(copy.deepcopy(plain))
    compiled = StaticDecoder(*copy.deepcopy(plain), compile=args.compile)
    start = time.perf_counter()
    compiled.warm_up(1, ids.shape[1] + args.new_tokens)
    compile_seconds = time.perf_counter() - start
    contenders = {"plain model": plain, "kernel (prepare_for_cpu_decoding)": kernel,
                  f"static step, torch.compile {args.compile}": compiled}
    for model in contenders.values():
        generate(model, ids, 2, eos_token_id=None)
    best = {name: float("inf") for name in contenders}
    first = {name: float("inf") for name in contenders}
    tokens = {}
    for _ in range(args.rounds):
        for name, model in contenders.items():
            seconds, tokens[name], prompt_seconds = time_decode(model, ids, args.new_tokens)
            best[name], first[name] = min(best[name], seconds), min(first[name], prompt_seconds)
    reference = tokens["plain model"]
    lines = [f"Pythia-160M shapes, random weights, fp32, batch 1, 64-token prompt, {args.new_tokens} new tokens, "
             f"{args.threads} thread(s), best of {args.rounds}; torch {torch.__version__}; compile + warm-up "
             f"{compile_seconds:.0f} s{'' if compiled.compile_error is None else ' (FAILED: ' + compiled.compile_error + ')'}",
             "", "| contender | decode tokens/s | vs kernel | first token (ms) | same tokens |", "|---|---|---|---|---|"]
    kernel_speed = (args.new_tokens - 1) / best["kernel (prepare_for_cpu_decoding)"]
    for name in contenders:
        speed = (args.new_tokens - 1) / best[name]
        lines.append(f"| {name} | {speed:.1f} | {speed / kernel_speed:.2f} | {1000 * first[name]:.0f} | "
                     f"{torch.equal(tokens[name], reference)} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
