r"""
# Benchmark: LLM.int8, ours against bitsandbytes

Loads one set of GPT-NeoX weights four ways with `LayerLoader(..., is_llm_int8=True)`: our plain-PyTorch
`Int8Linear` and bitsandbytes' `Linear8bitLt`, each with the outlier decomposition (threshold 6) and without
it (threshold 0, plain vector-wise int8), and compares each with the same weights in fp32:

* **logit error**: $\|z_{\text{int8}} - z_{\text{fp32}}\|_2 / \|z_{\text{fp32}}\|_2$ over all positions of a
  batch of token ids;
* **memory**: bytes of the transformer layers' weights (int8 weights, their steps, biases and layer norms, the
  floating-point parts counted in fp16) against the same layers in fp16;
* **speed**: time of a forward pass over the batch; on CUDA also greedy decoding with the key-value cache and
  the GPU memory allocated. (Written for CUDA but run here only on a 2-core CPU without a GPU, where neither
  implementation is faster than fp32.)

Targets (the project's issue 4): our error at most 1.25 times bitsandbytes', memory at most 0.55 of fp16.

## The weights

By default a random transformers `GPTNeoXForCausalLM` with Pythia-160M's shape (12 layers, $C = 768$, 12 heads,
vocabulary 50,304, rotary on a quarter of each head, parallel residual), saved with `save_pretrained` and read
back by our loader, so both implementations and the fp32 reference run on identical weights (the fp32 logits are
checked against transformers' own). Random weights have no outlier features, so we plant some as large models
have them: in 6 hidden dimensions the layer norms' gain and bias are multiplied by 20 and the weight columns of
`query_key_value` and `dense_h_to_4h` that read them are divided by 20. The model computes the same function,
but those dimensions of the inputs of the two layers are about 20 times larger than the rest, in most tokens.
The benchmark runs both the planted and the unplanted model.

`--checkpoint PATH` runs the same comparison on a real checkpoint (the demo model, a Pythia folder) instead,
with the opening of Hamlet's soliloquy as the text.

## How to run

```
python benchmarks/llm_int8.py                          # Pythia-160M shape, random, on CPU: about 2 minutes
python benchmarks/llm_int8.py --device cuda            # adds decoding speed and GPU memory
python benchmarks/llm_int8.py --checkpoint labml_nn/neox/demo
python benchmarks/llm_int8.py --results benchmarks/RESULTS.md   # also write the table into the LLM.int8 section
```

## What it prints

One markdown table per model: a row for fp32 (and fp16 on CUDA) and for each int8 variant, with the logit error,
the bytes of the transformer layers, their ratio to fp16 and the timings; then whether the two targets are met.
"""

import argparse
import gc
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from labml_nn.neox.model import NeoXModel  # noqa: E402

PYTHIA_160M = dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, hidden_act="gelu", max_position_embeddings=2048,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
                   use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5,
                   bos_token_id=0, eos_token_id=0)
N_OUTLIER_DIMS = 6
GAIN = 20.0
TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer The slings and "
        "arrows of outrageous fortune, Or to take arms against a sea of troubles And by opposing end them. To "
        "die: to sleep; No more; and by a sleep to say we end The heart-ache and the thousand natural shocks That "
        "flesh is heir to, 'tis a consummation Devoutly to be wish'd.")


def plant_outlier_features(hf_model, dims: List[int], gain: float):
    """Layer norms in `dims` times `gain`, the weight columns that read them divided by `gain`: same function."""
    with torch.no_grad():
        for layer in hf_model.gpt_neox.layers:
            for norm, linear in ((layer.input_layernorm, layer.attention.query_key_value),
                                 (layer.post_attention_layernorm, layer.mlp.dense_h_to_4h)):
                norm.weight[dims] *= gain
                norm.bias[dims] *= gain
                linear.weight[:, dims] /= gain


def random_checkpoint(folder: Path, planted: bool, seed: int = 0):
    r"""Save a random Pythia-160M-shaped model to `folder`; return it (fp32, eval) and the planted dims."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_160M)).eval()
    dims = sorted(torch.randperm(PYTHIA_160M["hidden_size"])[:N_OUTLIER_DIMS].tolist())
    if planted:
        plant_outlier_features(model, dims, GAIN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return model, dims


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.double() - reference.double()).norm() / reference.double().norm()).item()


def layer_bytes(model: nn.Sequential):
    r"""
    Bytes of the transformer layers as they would be on a GPU (floating-point tensors in fp16, int8 as int8,
    the fp32 steps as fp32), and the same layers' parameters in fp16.
    """
    from labml_nn.neox.model import TransformerLayer
    from labml_nn.neox.llm_int8 import weight_bytes

    held = fp16 = 0
    for module in model:
        if not isinstance(module, TransformerLayer):
            continue
        n_params = sum(p.numel() for p in module.parameters())
        floats = sum(p.numel() * p.element_size() for p in module.parameters() if p.is_floating_point())
        n_floats = sum(p.numel() for p in module.parameters() if p.is_floating_point())
        # What `weight_bytes` counts, with the floating-point parameters at 2 bytes instead of as held
        held += weight_bytes(module) - floats + 2 * n_floats
        fp16 += 2 * n_params
    return held, fp16


def timed(fn, device: torch.device, repeat: int = 2) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat


def measure(path: Path, ids: torch.Tensor, device: torch.device, dtype: torch.dtype, reference: Optional[torch.Tensor],
            decode_tokens: int, **int8) -> dict:
    from labml_nn.neox.generation import generate
    from labml_nn.neox.loader import LayerLoader

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = NeoXModel(*LayerLoader(path, dtype=dtype, device=device, progress=False, **int8).load())
    with torch.no_grad():
        logits = model(ids).float().cpu()
        seconds = timed(lambda: model(ids), device)
    held, fp16 = layer_bytes(model)
    result = {"logits": logits, "error": None if reference is None else relative_error(logits, reference),
              "bytes": held, "fp16_bytes": fp16, "forward_s": seconds}
    if device.type == "cuda":
        result["cuda_gib"] = torch.cuda.memory_allocated(device) / 2 ** 30
        prompt = ids[:1, :32]
        start = time.perf_counter()
        generate(model, prompt, decode_tokens, eos_token_id=None)
        torch.cuda.synchronize(device)
        result["decode_tok_s"] = decode_tokens / (time.perf_counter() - start)
    del model
    gc.collect()
    return result


# The whole run takes minutes on a CPU (about 7 on two cores): say on stderr what is being measured, as it starts
_STARTED = time.perf_counter()


def progress(message: str):
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def table(rows: List[tuple], device: torch.device) -> str:
    cuda = device.type == "cuda"
    header = "| model | logit rel. L2 vs fp32 | layer weights | vs fp16 | forward |"
    rule = "|---|---|---|---|---|"
    if cuda:
        header += " decode | CUDA allocated |"
        rule += "---|---|"
    lines = [header, rule]
    for name, r in rows:
        error = "—" if r["error"] is None else f"{r['error']:.5f}"
        line = (f"| {name} | {error} | {r['bytes'] / 2**20:,.1f} MiB | {r['bytes'] / r['fp16_bytes']:.3f} | "
                f"{r['forward_s'] * 1000:,.0f} ms |")
        if cuda:
            line += f" {r['decode_tok_s']:.1f} tok/s | {r['cuda_gib']:.2f} GiB |"
        lines.append(line)
    return "\n".join(lines)


def run(path: Path, ids: torch.Tensor, device: torch.device, decode_tokens: int) -> tuple:
    fp = torch.float16 if device.type == "cuda" else torch.float32
    progress("fp32")
    reference = measure(path, ids, device, torch.float32, None, decode_tokens)
    rows = [("fp32", reference)]
    if device.type == "cuda":
        progress("fp16")
        rows.append(("fp16", measure(path, ids, device, torch.float16, reference["logits"], decode_tokens)))
    for implementation, label in (("reference", "ours (Int8Linear)"), ("bitsandbytes", "bitsandbytes")):
        for threshold in (6.0, 0.0):
            progress(f"{label}, threshold {threshold:g}")
            r = measure(path, ids, device, fp, reference["logits"], decode_tokens, is_llm_int8=True,
                        llm_int8_threshold=threshold, llm_int8_implementation=implementation)
            rows.append((f"{label}, threshold {threshold:g}", r))
    ours, theirs = rows[-4][1], rows[-2][1]
    verdict = (f"ours / bitsandbytes logit error: {ours['error'] / theirs['error']:.3f} (target <= 1.25: "
               f"{'met' if ours['error'] <= 1.25 * theirs['error'] else 'NOT met'}); "
               f"memory vs fp16: ours {ours['bytes'] / ours['fp16_bytes']:.3f}, bitsandbytes "
               f"{theirs['bytes'] / theirs['fp16_bytes']:.3f} (target <= 0.55: "
               f"{'met' if max(ours['bytes'] / ours['fp16_bytes'], theirs['bytes'] / theirs['fp16_bytes']) <= 0.55 else 'NOT met'})")
    return table(rows, device), verdict


def write_results(results: Path, text: str):
    r"""Replace this benchmark's section (`## LLM.int8` up to the next `## `) of `results`, or append it."""
    heading = "## LLM.int8"
    old = results.read_text() if results.exists() else "# Benchmark results\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    section = text.rstrip("\n").splitlines()
    if start is None:
        lines += [""] + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section + ([""] if end < len(lines) else [])
    results.write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="LLM.int8: logit error, memory and speed of our Int8Linear "
                                                 "against bitsandbytes' Linear8bitLt, on the same weights.")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a real checkpoint instead of the random Pythia-160M-shaped models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda when PyTorch sees a GPU)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per forward pass")
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--decode-tokens", type=int, default=64, help="CUDA only: tokens to decode for the speed")
    parser.add_argument("--results", type=Path, default=None, help="write the tables into this RESULTS.md")
    args = parser.parse_args(argv)
    from labml_nn.neox.cli import quiet_bitsandbytes
    quiet_bitsandbytes()
    device = torch.device(args.device)
    torch.manual_seed(0)

    from labml_nn.neox.llm_int8 import bitsandbytes_problem
    problem = bitsandbytes_problem(device.type)
    if problem is not None:
        print(f"bitsandbytes cannot run here: {problem}", file=sys.stderr)
        return 2

    cpu = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    import bitsandbytes
    sections = [f"Run with `python benchmarks/llm_int8.py{' --device cuda' if device.type == 'cuda' else ''}` "
                f"on {cpu}: torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}; a batch of "
                f"{args.batch} x {args.length} tokens. Floating-point parts run in "
                f"{'fp16' if device.type == 'cuda' else 'fp32'} beside the int8 products; layer weights are "
                f"counted with them in fp16."]
    if args.checkpoint is not None:
        from labml_nn.neox.checkpoint import open_checkpoint
        from labml_nn.neox.tokenizer import encode, load_tokenizer
        checkpoint = open_checkpoint(args.checkpoint)
        ids = encode(load_tokenizer(checkpoint.tokenizer_path), TEXT)[:args.length]
        ids = torch.tensor([ids], device=device)
        text, verdict = run(args.checkpoint, ids, device, args.decode_tokens)
        sections.append(f"### {args.checkpoint} ({checkpoint.config.n_layers} layers, C = "
                        f"{checkpoint.config.d_model}), {ids.shape[1]} tokens of Hamlet\n\n{text}\n\n{verdict}")
    else:
        for planted in (True, False):
            with tempfile.TemporaryDirectory() as folder:
                progress(f"random Pythia-160M-shaped weights, {'with' if planted else 'without'} planted outliers")
                hf_model, dims = random_checkpoint(Path(folder), planted)
                ids = torch.randint(0, PYTHIA_160M["vocab_size"], (args.batch, args.length),
                                    generator=torch.Generator().manual_seed(1))
                with torch.no_grad():
                    hf_logits = hf_model(ids).logits
                del hf_model
                from labml_nn.neox.loader import LayerLoader
                ours_fp32 = NeoXModel(*LayerLoader(folder, progress=False).load())(ids).detach()
                check = relative_error(ours_fp32, hf_logits)
                text, verdict = run(Path(folder), ids.to(device), device, args.decode_tokens)
            what = (f"with outlier features planted in dims {dims} (x{GAIN:g})" if planted
                    else "as initialised (no outlier features)")
            sections.append(f"### Pythia-160M shape, random weights {what}\n\n{text}\n\n{verdict}. "
                            f"(Our fp32 logits vs transformers' on these weights: {check:.1e}.)")
        del hf_logits
    output = "\n\n".join(sections)
    print(output)
    if args.results is not None:
        write_results(args.results, "## LLM.int8\n\n" + output + "\n")
        print(f"\nWritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
