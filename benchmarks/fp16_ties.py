r"""
# Benchmark: are fp16 batch-8 disagreements with transformers near-ties?

On an H200, our fp16 greedy tokens at batch 8 differed from transformers' on the same random weights, while at batch
1 they were identical (`benchmarks/RESULTS.md`, GPU run). Two programs that compute the same function in 16 bits
round differently (a different order of the residual sum, other kernels for 8 rows than for 1), and greedy decoding
turns any difference into a different token where the two largest logits are within that rounding. This script
reproduces the question on a CPU and measures, at every token where the two disagree, how close the call was:

* both models hold the same random weights (transformers' `GPTNeoXForCausalLM` as initialised, ours loaded from its
  state dict), cast to `--dtype` (fp16 or bf16);
* each generates greedily for `--seeds` batches of `--batch` random prompts, and each row again alone (batch 1);
* where a row's tokens differ, at the **first** differing step (until then both saw the same context) the context
  is run again in **fp32** (our model) and we read the margin between its two largest logits, the rank of each
  model's pick in fp32, the fp16 (bf16) spacing (ulp) at that logit's magnitude, and how far the two 16-bit models'
  logits are apart on that same context (max over the vocabulary, both run over the whole context);
* for scale, the fp32 margins at every step of every row (the distribution a disagreement is drawn from).

A disagreement is a near-tie when its fp32 margin is within the two 16-bit models' distance on that context: then
either token is the argmax of a correctly rounded computation. A bug would show as a disagreement with a wide fp32
margin, or an fp32 argmax that neither model picked.

```
python benchmarks/fp16_ties.py                      # Pythia-70M shapes, fp16, 3 batches of 8 (a few minutes)
python benchmarks/fp16_ties.py --dtype bf16 --shape 160m
```
"""

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from labml_nn.neox.cli import DTYPES, dtype_name  # noqa: E402
from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.generation import generate  # noqa: E402
from labml_nn.neox.loader import load_hf_state_dict  # noqa: E402
from labml_nn.neox.model import NeoXModel, build_layers  # noqa: E402

SHAPES = {
    "70m": NeoXConfig(n_layers=6, d_model=512, n_heads=8, n_vocab=50304, n_ctx=2048, rotary_pct=0.25,
                      parallel_residual=True, activation="gelu"),
    "160m": NeoXConfig(n_layers=12, d_model=768, n_heads=12, n_vocab=50304, n_ctx=2048, rotary_pct=0.25,
                       parallel_residual=True, activation="gelu"),
    "tiny": NeoXConfig(n_layers=2, d_model=64, n_heads=4, n_vocab=512, n_ctx=256, rotary_pct=0.25,
                       parallel_residual=True, activation="gelu"),
}
# Bits after the binary point of each format: fp16 has 10, bf16 7 (and fp32 23)
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Where our 16-bit greedy tokens differ from transformers' on the "
                                                 "same random weights, the fp32 margin between the top two logits "
                                                 "against 16-bit rounding; prints one table.")
    parser.add_argument("--shape", choices=list(SHAPES), default="70m", help="model shape (default: 70m)")
    parser.add_argument("--dtype", type=dtype_name, choices=["fp16", "bf16"], default="fp16",
                        help="the 16-bit dtype both models run in (default: fp16)")
    parser.add_argument("--batch", type=int, default=8, help="rows generated together (default: 8)")
    parser.add_argument("--seeds", type=int, default=3, help="batches of random prompts (default: 3)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (default: 16)")
    parser.add_argument("--new-tokens", type=int, default=24, help="greedy tokens per row (default: 24)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table (Markdown) here")
    return parser.parse_args(argv)


# transformers' model as initialised (its own `initializer_range` 0.02, like `benchmarks/gpu.py`), and ours on the
# same tensors, both in fp32 first
def make_models(config: NeoXConfig):
    import transformers

    hf_config = {k: v for k, v in config.to_hf_config().items() if k != "architectures"}
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**hf_config, attn_implementation="sdpa")).eval()
    layers = build_layers(config)
    load_hf_state_dict(layers, hf.state_dict())
    return NeoXModel(*layers).eval(), hf


def hf_generate(hf, ids, new_tokens):
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return out[:, ids.shape[1]:]


def ours_generate(model, ids, new_tokens):
    return generate(model, ids, new_tokens, eos_token_id=None)[:, ids.shape[1]:]


# The spacing of 16-bit numbers at the magnitude of `value`: $2^{\lfloor \log_2 |v| \rfloor - m}$
def ulp(value: float, dtype: torch.dtype) -> float:
    return 2.0 ** (math.floor(math.log2(abs(value))) - MANTISSA_BITS[dtype]) if value else 0.0


@torch.inference_mode()
def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return (out.logits if hasattr(out, "logits") else out)[0, -1].float()


def divergence(row_prompt, tokens_a, tokens_b, model32, a16, b16, dtype) -> dict:
    r"""
    At the first step where two token rows `[new]` differ (until then both saw the same context): the fp32 margin
    between the top two logits of `model32`, the fp32 rank of each row's pick, the 16-bit ulp at the top logit, and
    the max distance between the 16-bit models `a16` and `b16`'s logits on that context (the rounding noise of two
    16-bit computations of the same function). `near_tie`: the two picks are fp32's top two and the margin is
    within that noise.
    """
    step = int((tokens_a != tokens_b).nonzero()[0])
    context = torch.cat([row_prompt, tokens_a[:step]])[None]
    logits = last_logits(model32, context)
    top = logits.topk(2).values
    order = logits.argsort(descending=True).tolist()
    ranks = (order.index(int(tokens_a[step])) + 1, order.index(int(tokens_b[step])) + 1)
    distance = (last_logits(a16, context) - last_logits(b16, context)).abs().max().item()
    margin = (top[0] - top[1]).item()
    return {"step": step, "margin": margin, "top1": top[0].item(), "ulp": ulp(top[0].item(), dtype),
            "distance": distance, "ranks": ranks, "near_tie": sorted(ranks) == [1, 2] and margin <= distance}


# The fp32 margin between the top two logits at every generated step of the rows (one pass over each whole row)
@torch.inference_mode()
def all_margins(model32, prompts, tokens):
    margins = []
    logits = model32(torch.cat([prompts, tokens], dim=1)).float()
    steps = logits[:, prompts.shape[1] - 1:-1]
    top = steps.topk(2, dim=-1).values
    margins += (top[..., 0] - top[..., 1]).flatten().tolist()
    return margins


def main(argv=None) -> int:
    args = parse_args(argv)
    config, dtype = SHAPES[args.shape], DTYPES[args.dtype]
    start = time.perf_counter()
    ours32, hf32 = make_models(config)
    import copy
    ours16, hf16 = copy.deepcopy(ours32).to(dtype), copy.deepcopy(hf32).to(dtype)
    rows, margins = [], []
    counts = {"batch": [0, 0], "alone": [0, 0], "ours batch vs alone": [0, 0], "transformers batch vs alone": [0, 0]}
    for seed in range(args.seeds):
        prompts = torch.randint(0, config.n_vocab, (args.batch, args.prompt_tokens),
                                generator=torch.Generator().manual_seed(seed))
        ours_b, hf_b = ours_generate(ours16, prompts, args.new_tokens), hf_generate(hf16, prompts, args.new_tokens)
        ours_1 = torch.cat([ours_generate(ours16, p[None], args.new_tokens) for p in prompts])
        hf_1 = torch.cat([hf_generate(hf16, p[None], args.new_tokens) for p in prompts])
        margins += all_margins(ours32, prompts, ours_b)
        for name, a, b in (("batch", ours_b, hf_b), ("alone", ours_1, hf_1), ("ours batch vs alone", ours_b, ours_1),
                           ("transformers batch vs alone", hf_b, hf_1)):
            differ = (a != b).any(dim=1)
            counts[name][0] += int(differ.sum())
            counts[name][1] += len(differ)
        for label, a, b in ((f"batch {args.batch}", ours_b, hf_b), ("batch 1", ours_1, hf_1)):
            for row in range(args.batch):
                if not torch.equal(a[row], b[row]):
                    rows.append((f"{seed}.{row}", label,
                                 divergence(prompts[row], a[row], b[row], ours32, ours16, hf16, dtype)))
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    lines = [f"{args.shape} shapes, random weights (transformers' initialisation), {args.dtype}, {args.seeds} x "
             f"{args.batch} prompts of {args.prompt_tokens} tokens, {args.new_tokens} greedy tokens; torch "
             f"{torch.__version__} on a CPU; {time.perf_counter() - start:.0f} s", "",
             "| rows whose tokens differ | count |", "|---|---|"]
    lines += [f"| {name} | {n} of {total} |" for name, (n, total) in counts.items()]
    lines += ["", f"| row | batch | first differing step | fp32 top-2 margin | {args.dtype} ulp at top logit | "
                  f"margin / ulp | {args.dtype} ours vs transformers, max logit distance | fp32 rank of ours' / "
                  f"transformers' pick | near-tie |", "|---|---|---|---|---|---|---|---|---|"]
    for name, label, d in rows:
        lines.append(f"| {name} | {label} | {d['step']} | {d['margin']:.2e} | {d['ulp']:.2e} | "
                     f"{d['margin'] / d['ulp']:.2f} | {d['distance']:.2e} | {d['ranks'][0]} / {d['ranks'][1]} | "
                     f"{'yes' if d['near_tie'] else 'NO'} |")
    margins.sort()
    quantile = lambda q: margins[min(len(margins) - 1, int(q * len(margins)))]  # noqa: E731
    lines += ["", f"fp32 top-2 margins over all {len(margins)} generated steps: median {statistics.median(margins):.2e}, "
                  f"5th percentile {quantile(0.05):.2e}, 1st percentile {quantile(0.01):.2e}, smallest "
                  f"{margins[0]:.2e}."]
    table = "\n".join(lines)
    print(table)
    if args.output is not None:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
