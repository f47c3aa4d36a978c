r"""
# Benchmark: one GPU run, end to end

Everything a CUDA machine should tell us, in one unattended run of a few minutes:

* **fp16 decoding** on random weights of Pythia-1.4B's shape (24 layers, $C = 2048$, 16 heads, $V = 50304$):
  decode tokens/s and first-token latency, ours (`generation.generate_stream`) against transformers'
  `generate` on the same weights, at batch 1 and 8 (a 64-token prompt, 128 greedy tokens, best of `--rounds`),
  with the **HBM floor**: a decoding step reads every weight once plus the KV cache, so it cannot take less
  than `bytes / read bandwidth` (the bandwidth of a plain `sum()` over 1 GiB).
* **The CUDA graph** (`static_decoding.py`, `prepare_for_gpu_decoding`): the same rows for our static step
  compiled with `torch.compile(mode="reduce-overhead")`, plus the seconds its compile and capture take for each
  batch size and the peak GPU memory of a batch size's whole run, eager against graph. (On a CPU, `--tiny` runs
  the static step uncompiled: the same code, no graph.) `--no-cuda-graph` leaves these rows out.
* **Same tokens**: in fp32 all three must give the same greedy tokens. In fp16 two correct programs can pick
  different tokens where the two largest logits are closer than their rounding (`benchmarks/fp16_ties.py`): where
  tokens differ, the first differing step is checked in fp32 (our model, a copy in fp32) and the section fails
  only when that is not a near-tie (the two picks are not fp32's top two, or their margin is wider than the
  distance between our and transformers' fp16 logits on that context).
* **LLM.int8** through bitsandbytes (`llm_int8.py`): the logits' error against fp16 on a `[8, 64]` batch,
  the weights' memory and the peak memory of that forward pass.
* **Fine-tuning** a few steps under autocast (bf16 where the GPU has it, else fp16 with a gradient scaler) with
  fp32 master weights and AdamW: seconds per step, tokens/s, peak memory, the loss before and after.
* **The evaluation adapter** (`evaluation/`): the bundled demo model on the shipped `shakespeare_cloze` task
  through lm-eval's `simple_evaluate`, and `generate_until` on contexts of different lengths in one batch.

It prints one table and writes it, with the machine's description, to `--output` (Markdown) and a `.json`
beside it. A section that fails is reported in the table with its error and the run goes on; the exit status is
1 if any section failed. `--device cpu --tiny` runs the same code on tiny shapes in seconds (the tests do).

```
python benchmarks/gpu.py                      # on a CUDA machine, under 8 minutes
python benchmarks/gpu.py --device cpu --tiny  # the same code paths, tiny shapes
```
"""

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from labml_nn.neox.cli import DTYPES, default_dtype, dtype_name, quiet_bitsandbytes  # noqa: E402
from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.generation import generate_stream  # noqa: E402
from labml_nn.neox.loader import load_hf_state_dict  # noqa: E402
from labml_nn.neox.model import NeoXModel, TransformerLayer, build_layers  # noqa: E402

PYTHIA_1_4B = NeoXConfig(n_layers=24, d_model=2048, n_heads=16, n_vocab=50304, n_ctx=2048, rotary_pct=0.25,
                         parallel_residual=True, activation="gelu")
TINY = NeoXConfig(n_layers=2, d_model=64, n_heads=4, n_vocab=512, n_ctx=256, rotary_pct=0.25,
                  parallel_residual=True, activation="gelu")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="fp16 decoding, LLM.int8, fine-tuning and the evaluation adapter "
                                                 "on one GPU, in one unattended run; prints one table.")
    parser.add_argument("--device", default="cuda", help="where to run (cuda, cuda:1, or cpu with --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and few tokens: the same code paths in seconds (for tests and CPUs)")
    parser.add_argument("--dtype", type=dtype_name, choices=list(DTYPES), default=None,
                        help="the decoding dtype (default: fp16 on CUDA, fp32 on a CPU)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default: 64; tiny: 8)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens to decode (default: 128; tiny: 8)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per contender, the best is reported (default: 3; tiny: 1)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="optimizer steps of the fine-tuning section (default: 5; tiny: 2)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="documents of the evaluation task (default: 200; tiny: 8)")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="leave out the compiled static decoding step (static_decoding.py) and its rows")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the table (default: benchmarks/results/gpu.md, or gpu-tiny.md)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; on a CPU run with --device cpu --tiny")
    defaults = dict(prompt_tokens=(8, 64), new_tokens=(8, 128), rounds=(1, 3), finetune_steps=(2, 5),
                    eval_limit=(8, 200))
    for name, (tiny, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.dtype is None:
        args.dtype = default_dtype(args.device)
    if args.output is None:
        args.output = Path(__file__).parent / "results" / ("gpu-tiny.md" if args.tiny else "gpu.md")
    return args


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_reset(device: str):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str):
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None


def mib(n_bytes: int) -> float:
    return n_bytes / 2 ** 20


# ## The two models on the same weights
#
# transformers' `GPTNeoXForCausalLM` with random weights, and our modules holding the same tensors.
def make_models(config: NeoXConfig, device: str, dtype: torch.dtype):
    import transformers

    hf_config = {k: v for k, v in config.to_hf_config().items() if k != "architectures"}
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**hf_config, attn_implementation="sdpa"))
    hf = hf.to(dtype=dtype).eval()
    state = hf.state_dict()
    layers = build_layers(config)
    load_hf_state_dict(layers, state)
    return NeoXModel(*layers).to(device=device, dtype=dtype).eval(), hf


# ## Timing one generation
#
# Each run records when the first new token is ready (the prompt's pass) and when the last is; transformers
# tells us through a streamer, whose `put` it calls with the prompt and then with each new token.
def time_ours(model, ids, new_tokens, device):
    tokens, first = [], None
    sync(device)
    start = time.perf_counter()
    for next_ids in generate_stream(model, ids, new_tokens, temperature=0.0, eos_token_id=None):
        tokens.append(next_ids)
        if first is None:
            sync(device)
            first = time.perf_counter()
    sync(device)
    end = time.perf_counter()
    return torch.stack(tokens, dim=1).cpu(), first - start, end - first


class _Clock:
    def __init__(self, device):
        self.device, self.calls = device, []

    def put(self, value):
        sync(self.device)
        self.calls.append(time.perf_counter())

    def end(self):
        pass


def time_transformers(hf, ids, new_tokens, device):
    clock = _Clock(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, streamer=clock)
    sync(device)
    end = time.perf_counter()
    # `put` is called once with the prompt, then once per new token
    return out[:, ids.shape[1]:].cpu(), clock.calls[1] - start, end - clock.calls[1]


# ## The HBM floor
def read_bandwidth(device: str, n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second of the fastest of several `sum()`s over a 1 GiB fp32 tensor."""
    t = torch.ones(n_bytes // 4, device=device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        t.sum()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return n_bytes / best


# Bytes one decoding step reads: every weight (of the embedding, one row per token) and the keys and values of
# the whole context, at its average length
def bytes_per_step(model, config: NeoXConfig, batch: int, context: int) -> int:
    element = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) - (config.n_vocab - batch) * config.d_model
    return element * (weights + batch * config.n_layers * 2 * context * config.d_model)


# Our static step, compiled and captured on CUDA; on a CPU the same step uncompiled (no graphs there)
def static_decoder(ours, device: str):
    from labml_nn.neox.static_decoding import StaticDecoder, prepare_for_gpu_decoding

    if device.startswith("cuda"):
        return prepare_for_gpu_decoding(ours), "CUDA graph"
    return StaticDecoder(*ours, compile=None), "static step, eager"


# Where two token arrays `[B, new]` differ: for each differing row, the first differing step checked in fp32
# (`fp16_ties.divergence`). Returns the note for the table, and whether every difference is a near-tie.
def same_tokens_note(name, a, b, ids, ours, hf, dtype):
    if torch.equal(a, b):
        return f"same tokens as {name}: True", True
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fp16_ties import divergence

    ours32 = copy.deepcopy(ours).float()
    checks = [divergence(ids[row], a[row].to(ids.device), b[row].to(ids.device), ours32, ours, hf, dtype)
              for row in range(a.shape[0]) if not torch.equal(a[row], b[row])]
    del ours32
    ties = all(c["near_tie"] for c in checks)
    margins = ", ".join(f"{c['margin']:.2g} (noise {c['distance']:.2g}, ranks {c['ranks'][0]}/{c['ranks'][1]})"
                        for c in checks)
    return (f"same tokens as {name}: False, {len(checks)} of {a.shape[0]} rows, fp32 top-2 margin at the first "
            f"difference {margins}: {'near-ties' if ties else 'NOT near-ties'}"), ties


def decode_section(args, config, rows):
    dtype = DTYPES[args.dtype]
    ours, hf = make_models(config, args.device, dtype)
    bandwidth = read_bandwidth(args.device, n_bytes=(1 << 30) if not args.tiny else (1 << 24))
    rows.append(["decode", "read bandwidth (GB/s)", f"{bandwidth / 1e9:.0f}", "", "the HBM floor's basis"])
    from labml_nn.neox.static_decoding import StaticDecodingUnavailable

    failures = []
    graph, graph_name = None, None
    if not args.no_cuda_graph:
        try:
            graph, graph_name = static_decoder(ours, args.device)
        except StaticDecodingUnavailable as e:
            rows.append(["decode", "CUDA graph", "", "", f"unavailable: {e}"])
            failures.append(f"the CUDA graph is unavailable: {e}")
    for batch in (1, 8):
        ids = torch.randint(0, config.n_vocab, (batch, args.prompt_tokens), device=args.device,
                            generator=torch.Generator(device=args.device).manual_seed(batch))
        contenders = {"ours": ours, "transformers": hf}
        # One warm-up each (kernels, caches), then the rounds; the graph's warm-up compiles and captures first, and
        # the memory it keeps (its cache at full length, the graph's pool) is what it holds afterwards
        time_ours(ours, ids, 2, args.device)
        time_transformers(hf, ids, 2, args.device)
        if graph is not None:
            contenders["graph"] = graph
            sync(args.device)
            held = torch.cuda.memory_allocated() if args.device.startswith("cuda") else 0
            compile_seconds = graph.warm_up(batch, args.prompt_tokens + args.new_tokens)
            sync(args.device)
            held = (torch.cuda.memory_allocated() - held) / 2 ** 30 if args.device.startswith("cuda") else None
            time_ours(graph, ids, 2, args.device)
        best = {name: (None, float("inf"), float("inf")) for name in contenders}
        peak = {}
        for _ in range(args.rounds):
            for name, model in contenders.items():
                run = time_transformers if name == "transformers" else time_ours
                peak_memory_reset(args.device)
                tokens, first, rest = run(model, ids, args.new_tokens, args.device)
                peak[name] = peak_memory_gib(args.device)
                old = best[name]
                best[name] = (tokens, min(old[1], first), min(old[2], rest))
        note, tie = same_tokens_note("transformers", best["ours"][0], best["transformers"][0], ids, ours, hf, dtype)
        steps = args.new_tokens - 1
        speed = {name: batch * steps / rest for name, (_, _, rest) in best.items()}
        context = args.prompt_tokens + args.new_tokens // 2
        floor = batch * bandwidth / bytes_per_step(ours, config, batch, context)
        rows.append([f"decode batch {batch}", "decode tokens/s", f"{speed['ours']:.1f}",
                     f"{speed['transformers']:.1f}",
                     f"{speed['ours'] / speed['transformers']:.2f}x transformers; floor {floor:.0f} tokens/s, "
                     f"ours {100 * speed['ours'] / floor:.0f}% of it; {note}"])
        rows.append([f"decode batch {batch}", f"first token, {args.prompt_tokens}-token prompt (ms)",
                     f"{1000 * best['ours'][1]:.1f}", f"{1000 * best['transformers'][1]:.1f}", ""])
        failures += [] if tie else [f"batch {batch}: our greedy tokens differ from transformers' (not a near-tie)"]
        if graph is None:
            continue
        graph_note, graph_tie = same_tokens_note("ours eager", best["graph"][0], best["ours"][0], ids, ours, hf,
                                                 dtype)
        error = f"; fell back: {graph.compile_error}" if graph.compile_error else ""
        rows.append([f"decode batch {batch}", f"decode tokens/s, {graph_name}", f"{speed['graph']:.1f}",
                     f"{speed['transformers']:.1f}",
                     f"{speed['graph'] / speed['transformers']:.2f}x transformers, "
                     f"{speed['graph'] / speed['ours']:.2f}x ours eager; {100 * speed['graph'] / floor:.0f}% of the "
                     f"floor; {graph_note}{error}"])
        rows.append([f"decode batch {batch}", f"first token, {args.prompt_tokens}-token prompt (ms), {graph_name}",
                     f"{1000 * best['graph'][1]:.1f}", f"{1000 * best['transformers'][1]:.1f}", ""])
        rows.append([f"decode batch {batch}", f"compile and capture (s), {graph_name}", f"{compile_seconds:.1f}", "",
                     "once per batch size and cache length, before the first token"])
        if peak["graph"] is not None:
            rows.append([f"decode batch {batch}", "peak GPU memory during a generation (GiB), CUDA graph",
                         f"{peak['graph']:.2f}", f"{peak['transformers']:.2f}",
                         f"ours eager {peak['ours']:.2f}; the graph's warm-up kept {held:.2f} GiB (its cache at full "
                         f"length and the graph's pool)"])
        failures += [] if graph_tie else [f"batch {batch}: the graph's tokens differ from ours (not a near-tie)"]
        if graph.compile_error:
            failures.append(f"the compiled step fell back: {graph.compile_error}")
    del hf, graph
    if failures:
        raise AssertionError("; ".join(failures))
    return ours


# ## LLM.int8 against fp16
def int8_section(args, config, model, rows):
    from labml_nn.neox.llm_int8 import bitsandbytes_problem, make_llm_int8_layer, weight_bytes

    # Without bitsandbytes, the plain PyTorch `Int8Linear` gives the numbers (they are the same algorithm), and on
    # CUDA the section is then reported as failed, since bitsandbytes is what it is for
    problem = bitsandbytes_problem(torch.device(args.device).type)
    implementation = "bitsandbytes" if problem is None else "reference"
    ids = torch.randint(0, config.n_vocab, (8, args.prompt_tokens), device=args.device,
                        generator=torch.Generator(device=args.device).manual_seed(8))
    int8 = NeoXModel(*[make_llm_int8_layer(copy.deepcopy(m), implementation=implementation)
                                 if isinstance(m, TransformerLayer) else m for m in model]).eval()
    with torch.inference_mode():
        expected = model(ids).float()
        peak_memory_reset(args.device)
        got = int8(ids).float()
        peak = peak_memory_gib(args.device)
    error = (got - expected).abs()
    relative = (error.mean() / expected.abs().mean()).item()
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    rows.append(["LLM.int8", f"logit error vs {args.dtype} (max / mean relative)", f"{error.max().item():.3g}",
                 f"{relative:.2%}", f"{implementation}; top-1 agrees at {agree:.1%} of positions"])
    rows.append(["LLM.int8", "weights (MiB)", f"{mib(weight_bytes(int8)):.1f}", f"{mib(weight_bytes(model)):.1f}",
                 f"int8 vs {args.dtype}" + ("" if peak is None else f"; peak during forward {peak:.2f} GiB")])
    del int8
    if problem is not None and args.device.startswith("cuda"):
        raise RuntimeError(problem)


# ## Fine-tuning under autocast
def finetune_section(args, config, model, rows):
    from labml_nn.neox.training.trainer import autocast_context, lm_loss

    device = torch.device(args.device)
    precision = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    # fp32 master weights, as mixed-precision training keeps them; autocast runs the products in 16 bits
    model = model.float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batch, length = (4, 256) if not args.tiny else (2, 16)
    ids = torch.randint(0, config.n_vocab, (batch, length + 1), device=device,
                        generator=torch.Generator(device=args.device).manual_seed(3))
    losses, times = [], []
    peak_memory_reset(args.device)
    for _ in range(args.finetune_steps):
        sync(args.device)
        start = time.perf_counter()
        with autocast_context(precision, device):
            loss = lm_loss(model(ids[:, :-1]), ids[:, 1:])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)):
        raise AssertionError(f"the loss is not finite: {losses}")
    # The first step pays for allocation; the speed is that of the others
    step = min(times[1:] or times)
    peak = peak_memory_gib(args.device)
    rows.append(["fine-tuning", f"seconds per step ({precision} autocast, AdamW, [{batch}, {length}])",
                 f"{step:.3f}", "", f"{batch * length / step:.0f} tokens/s"
                 + ("" if peak is None else f"; peak {peak:.2f} GiB")])
    rows.append(["fine-tuning", f"loss, step 1 -> step {len(losses)}", f"{losses[0]:.4f} -> {losses[-1]:.4f}", "",
                 "the same batch each step, so it falls"])
    del optimizer


# ## The evaluation adapter on a local task
def evaluation_section(args, rows):
    from labml_nn.neox.evaluation.tasks import offline
    with offline():
        _evaluation_section(args, rows)


def _evaluation_section(args, rows):
    import tempfile

    import lm_eval
    from lm_eval.api.instance import Instance

    from labml_nn.neox.evaluation import EvalHarnessAdapter
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.tokenizer import load_tokenizer
    from labml_nn.neox.cli import DEMO_CHECKPOINT
    from labml_nn.neox.evaluation.tasks import task_manager, write_local_tasks

    model = NeoXModel(*LayerLoader(DEMO_CHECKPOINT, dtype=DTYPES[args.dtype], device=args.device,
                                   progress=False).load())
    adapter = EvalHarnessAdapter(model, load_tokenizer(DEMO_CHECKPOINT / "20B_tokenizer.json"), batch_size=8,
                                 progress=False)
    with tempfile.TemporaryDirectory() as task_dir:
        write_local_tasks(task_dir, cache_dir=Path(task_dir) / "cache")
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(model=adapter, tasks=["shakespeare_cloze"], limit=args.eval_limit,
                                          task_manager=task_manager(task_dir, include_defaults=False),
                                          bootstrap_iters=0, log_samples=False)
        seconds = time.perf_counter() - start
    metrics = results["results"]["shakespeare_cloze"]
    rows.append(["evaluation", f"shakespeare_cloze accuracy ({args.eval_limit} docs, demo model)",
                 f"{metrics['acc,none']:.3f}", "", f"perplexity {metrics['perplexity,none']:.2f}; {seconds:.1f} s"])
    # `generate_until` on contexts of different lengths: one left-padded batch against one at a time
    contexts = ["ROMEO:", "KING HENRY:\nWhat say you", "O", "First Citizen:\nBefore we proceed any further, hear"]
    requests = [Instance("generate_until", {}, (c, {"until": ["\n\n"], "max_gen_toks": 16}), i)
                for i, c in enumerate(contexts)]
    start = time.perf_counter()
    batched = adapter.generate_until(requests)
    seconds = time.perf_counter() - start
    alone = EvalHarnessAdapter(model, adapter.tokenizer, batch_size=1, progress=False).generate_until(requests)
    rows.append(["evaluation", f"generate_until, {len(contexts)} uneven contexts in one batch (s)",
                 f"{seconds:.2f}", "", f"same texts as one at a time: {batched == alone}"])
    if batched != alone:
        raise AssertionError("generate_until in one batch differs from one context at a time")


# ## The table
def machine(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB; torch {torch.__version__}, " \
               f"CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}"


def format_table(rows) -> str:
    lines = ["| section | measure | ours | reference | notes |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_bitsandbytes()
    config = TINY if args.tiny else PYTHIA_1_4B
    rows, failed = [], []
    started = time.perf_counter()
    model = None

    def run(name, section, *section_args):
        try:
            return section(*section_args)
        except Exception as e:
            traceback.print_exc()
            failed.append(name)
            rows.append([name, "FAILED", "", "", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"])

    model = run("decode", decode_section, args, config, rows)
    if model is None:
        model = NeoXModel(*build_layers(config)).to(args.device, DTYPES[args.dtype]).eval()
    run("LLM.int8", int8_section, args, config, model, rows)
    run("fine-tuning", finetune_section, args, config, model, rows)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    run("evaluation", evaluation_section, args, rows)

    title = (f"{'tiny shapes' if args.tiny else 'Pythia-1.4B shapes, random weights'}, {args.dtype}, "
             f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, best of {args.rounds}; "
             f"{machine(args.device)}; {time.perf_counter() - started:.0f} s in all")
    table = format_table(rows)
    print(f"\n{title}\n\n{table}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(f"{title}\n\n{table}\n")
    args.output.with_suffix(".json").write_text(json.dumps({"title": title, "rows": rows, "failed": failed},
                                                           indent=1))
    print(f"\nwritten to {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
