r"""
# Benchmark: decoding speed against transformers, CTranslate2 and the memory floor

How fast does our `generate` decode on a CPU, compared with transformers' `generate` and with CTranslate2 (what a
CPU user picks instead of both) on the same weights, and with the limit that memory bandwidth sets? How long does
a 512-token prompt take? And how much memory do loading and one generation take, compared with the model itself?

* **Model**: random weights of Pythia-160M's shape (12 layers, $C = 768$, 12 heads, $V = 50304$, a quarter of
  each head rotated, parallel residual), fp32, saved once as a transformers folder; CTranslate2 4.x converts that
  folder (`ctranslate2.converters.TransformersConverter`, `compute_type="float32"`), and ours loads the same
  tensors. CTranslate2 is an optional dependency of this benchmark only; without it its column is left out.
* **Ours** is `model.py` prepared with `prepare_for_cpu_decoding` (`cpu_decoding.py`), the one step a CPU caller
  takes; `--unprepared` measures the plain modules instead.
* **Decoding**: a 64-token prompt, 128 new tokens, greedy, batch 1 (1 and 2 threads) and batch 8 (2 threads; 8
  different prompts of equal length). transformers runs in eval mode with `use_cache=True`, its `sdpa` attention,
  and `min_new_tokens = max_new_tokens`; CTranslate2 with `min_length = max_length`, so that all make the same
  number of steps. Speed counts the tokens after the first of each row (the first costs the pass over the prompt).
* **Prefill**: the time to the first new token for a 512-token prompt, batch 1, 2 threads.
* **Fair timing on a shared machine**: each contender runs in its own process (its own thread pool, nothing left
  over from another library), and the contenders alternate, round after round; we report the best round of each.
* **The memory floor**: a decoding step reads every weight once (the readout included; the embedding only one row
  per row of the batch) plus the KV cache. Reading memory cannot go faster than a plain `sum()` over a large
  tensor with the same number of threads (on 4 KB or on huge pages, whichever reads faster), so `bytes per step /
  read bandwidth` is the shortest a step can take. It is read just before and just after our worker in each
  round, and the round is compared with the faster of the two, the floor of its own moment (the machine's read
  speed moves by a third within minutes). Rounds whose two reads agree within a tenth are *steady*, and the median
  of their fractions is the robust figure; the strictest comparison, against the highest floor of the run, is
  printed too.
* **Memory**: a subprocess loads a two-rank fp16 checkpoint of the same shape (written with the checkpoint
  package's writer) with `LayerLoader`, prepares it and generates once; we report its peak resident memory
  (`VmHWM`) above what it held before loading, against the size of the loaded model.

Run `python benchmarks/generate.py` (about 10 minutes on two CPU cores). The figures are recorded in
`benchmarks/RESULTS.md` and `benchmarks/results/decode.json`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.cpu_decoding import huge_pages_available, on_huge_pages  # noqa: E402
from labml_nn.neox.model import NeoXModel, build_layers  # noqa: E402

PYTHIA_160M = NeoXConfig(n_layers=12, d_model=768, n_heads=12, n_vocab=50304, n_ctx=2048, rotary_pct=0.25,
                         parallel_residual=True, activation="gelu")
CONTENDERS = ("ours", "transformers", "ctranslate2")
TOKENIZER = Path(__file__).resolve().parents[1] / "labml_nn" / "neox" / "demo" / "20B_tokenizer.json"


# ## The weights, once, for every contender
#
# A random transformers model saved to a folder, with a tokenizer (CTranslate2's converter wants one to name the
# vocabulary), and CTranslate2's conversion of it beside it.
def write_models(folder: Path, config: NeoXConfig) -> bool:
    import transformers

    hf_config = {k: v for k, v in config.to_hf_config().items() if k != "architectures"}
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**hf_config))
    hf.save_pretrained(folder / "hf")
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), eos_token="<|endoftext|>",
                                         bos_token="<|endoftext|>", unk_token="<|endoftext|>"
                                         ).save_pretrained(folder / "hf")
    try:
        import ctranslate2.converters
    except ImportError:
        return False

    # CTranslate2 4.x reads `config.rotary_pct` and `embed_out`, which transformers 5 calls
    # `partial_rotary_factor` and `lm_head`
    class Converter(ctranslate2.converters.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            model.config.rotary_pct = config.rotary_pct
            model.embed_out = model.get_output_embeddings()
            return model

    Converter(str(folder / "hf")).convert(str(folder / "ct2"), quantization="float32", force=True)
    return True


def load_ours(folder: Path, prepare: bool):
    import transformers
    from safetensors.torch import load_file
    from labml_nn.neox.cpu_decoding import prepare_for_cpu_decoding
    from labml_nn.neox.loader import load_hf_state_dict

    state = load_file(str(folder / "hf" / "model.safetensors"))
    config = NeoXConfig.from_hf_config(transformers.AutoConfig.from_pretrained(folder / "hf").to_dict())
    layers = build_layers(config)
    load_hf_state_dict(layers, state)
    model = NeoXModel(*layers).eval()
    return prepare_for_cpu_decoding(model) if prepare else model


# ## One contender, in its own process
#
# Each `run` returns the new tokens of every row, the seconds to the first new token and the seconds after it.
# transformers tells us when the first token is ready through a streamer, CTranslate2 through a callback.
def contender(name: str, folder: Path, prepare: bool):
    if name == "ours":
        from labml_nn.neox.generation import generate_stream
        model = load_ours(folder, prepare)

        def run(ids, new_tokens):
            rows, start, first = [], time.perf_counter(), None
            for next_ids in generate_stream(model, ids, new_tokens, eos_token_id=None):
                first = first or time.perf_counter()
                rows.append(next_ids.tolist())
            return [list(r) for r in zip(*rows)], first - start, time.perf_counter() - first
    elif name == "transformers":
        import transformers
        model = transformers.GPTNeoXForCausalLM.from_pretrained(folder / "hf", attn_implementation="sdpa").eval()

        class Clock:
            def __init__(self):
                self.calls = []

            def put(self, value):
                self.calls.append(time.perf_counter())

            def end(self):
                pass

        def run(ids, new_tokens):
            clock, start = Clock(), time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                                     streamer=clock)
            # `put` is called with the prompt, then once per step
            first = clock.calls[1] if len(clock.calls) > 1 else time.perf_counter()
            return out[:, ids.shape[1]:].tolist(), first - start, time.perf_counter() - first
    else:
        import ctranslate2
        model = ctranslate2.Generator(str(folder / "ct2"), device="cpu", compute_type="float32",
                                      intra_threads=torch.get_num_threads(), inter_threads=1)
        vocabulary = json.loads((folder / "ct2" / "vocabulary.json").read_text())
        index = {token: i for i, token in enumerate(vocabulary)}

        def run(ids, new_tokens):
            calls = []
            start = time.perf_counter()
            results = model.generate_batch([[vocabulary[i] for i in row] for row in ids.tolist()],
                                           max_length=new_tokens, min_length=new_tokens, sampling_topk=1,
                                           include_prompt_in_result=False,
                                           callback=lambda step: calls.append(time.perf_counter()) and False)
            first = calls[0] if calls else time.perf_counter()
            return [[index[t] for t in r.sequences[0]] for r in results], first - start, time.perf_counter() - first
    return run


def worker(args):
    torch.set_num_threads(args.threads)
    run = contender(args.worker, Path(args.folder), not args.unprepared)
    prompt = torch.randint(0, 50000, (8, 512), generator=torch.Generator().manual_seed(0))
    out = {}
    # A short warm-up, then each measurement this process was asked for
    run(prompt[:1, :args.prompt_tokens], 4)
    for batch in args.batches:
        tokens, _, decode_s = run(prompt[:batch, :args.prompt_tokens], args.new_tokens)
        out[f"batch {batch}"] = {"tokens_per_s": batch * (args.new_tokens - 1) / decode_s, "tokens": tokens}
    if args.prefill:
        out["prefill_ms"] = 1e3 * min(run(prompt[:1, :args.prefill], 1)[1] for _ in range(2))
    print(json.dumps(out))


# ## The memory floor
# Read from usual 4 KB pages and, where the system offers them, from huge pages (which `prepare_for_cpu_decoding`
# puts large weights on, and which read 5-15% faster here): the floor is the faster of the two, so that no
# contender can beat it by reading memory a way the floor does not.
#
# The read speed of a shared machine moves by a third within minutes (on the test machine, two threads read 34 to
# 63 GB/s in the same hour), so a floor measured once and compared with decoding measured at another moment says
# little. So in each round a process of its own reads memory just before our worker and again just after it, with
# the same threads, and the round's decoding is compared with the faster of the two. (Not in the workers: a read with
# PyTorch's threads in the process slowed CTranslate2's two-thread decoding that followed by 30% here.) The
# contenders that run later in the round are compared with the same floor. When the two reads differ by more than
# a tenth, the machine changed state while ours ran, and the round's fraction means little: such a round is marked
# unsteady, and the median over the steady rounds is the figure to trust. The table also gives the strictest
# comparison: the best round against the highest floor measured in the whole run.
STEADY = 0.9  # a round is steady when its two floor reads are within this ratio of each other


def read_bandwidth(threads: int, n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second of the fastest of several `sum()`s over a 1 GiB fp32 tensor, on either kind of page."""
    torch.set_num_threads(threads)
    tensors = [torch.ones(n_bytes // 4)]
    if huge_pages_available():
        tensors.append(on_huge_pages(tensors[0]))
    best = float("inf")
    for _ in range(repeats):
        for t in tensors:
            start = time.perf_counter()
            t.sum()
            best = min(best, time.perf_counter() - start)
    del tensors
    return n_bytes / best


def bytes_per_step(config: NeoXConfig, batch: int, context: int) -> int:
    layers = build_layers(config)
    weights = sum(p.numel() for layer in layers for p in layer.parameters()) - (config.n_vocab - batch) * config.d_model
    # Keys and values of every layer and row, over the average length of the context during decoding
    cache = 2 * config.n_layers * context * config.d_model * batch
    return (weights + cache) * 4


# ## Peak memory while loading a two-rank checkpoint, preparing it and generating once
MEMORY_PROBE = r"""
import json, sys, torch
def status():
    return {line.split()[0][:-1]: int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith(("VmHWM", "VmRSS", "RssFile"))}
from labml_nn.neox.cli import DTYPES
from labml_nn.neox.loader import LayerLoader
from labml_nn.neox.model import NeoXModel
loader = LayerLoader(sys.argv[1], dtype=DTYPES[sys.argv[2]], progress=False)
start = status()
# Building the first module on the `meta` device imports more of PyTorch (about 75 MB, once per process);
# we count it apart from the memory that grows with the model
with torch.device("meta"):
    torch.nn.Embedding(2, 2)
before = status()
model = NeoXModel(*loader.load())
loaded = status()
from labml_nn.neox.cpu_decoding import prepare_for_cpu_decoding
from labml_nn.neox.generation import generate
model = prepare_for_cpu_decoding(model)
generate(model, torch.zeros(1, 64, dtype=torch.long), 8, eos_token_id=None)
after = status()
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"imports": before["VmRSS"] - start["VmRSS"], "before_rss": before["VmRSS"],
                  "loaded_peak": loaded["VmHWM"], "peak": after["VmHWM"], "after_rss": after["VmRSS"], "after_file": after["RssFile"],
                  "before_file": before["RssFile"], "model": size}))
"""


def loading_memory(config: NeoXConfig, dtype_names=("fp16", "fp32")) -> list:
    from labml_nn.neox.checkpoint import write_neox_checkpoint
    from labml_nn.neox.training.finetune import model_parts

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        layers = build_layers(config)
        parts = list(model_parts(layers))
        write_neox_checkpoint(folder, config, parts, tensor_parallel_size=2, dtype=torch.float16)
        del layers, parts
        for name in dtype_names:
            out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, folder, name], capture_output=True,
                                 text=True, check=True)
            rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


# ## The figure's data
def write_json(path: Path, config: NeoXConfig, settings, best, floors, args):
    import transformers

    runs = []
    for row, threads, batch in settings:
        step = bytes_per_step(config, batch, args.prompt_tokens + args.new_tokens // 2)
        # The floor at the fastest read of the run: a round's own floor can be slower than what ours reached when
        # the machine sped up during its worker, and a floor drawn below a bar would say nothing
        bandwidth = floors(row)["highest"]
        run = {"label": f"CPU, {row}", "device": "cpu", "threads": threads, "dtype": "float32",
               "ours_tokens_per_s": round(best(row, "ours"), 1),
               "transformers_tokens_per_s": round(best(row, "transformers"), 1),
               "floor_tokens_per_s": round(bandwidth / step * batch, 1),
               "read_gb_per_s": round(bandwidth / 1e9, 1), "bytes_per_step": step}
        if batch == 1:  # ours / the floor, the median over the steady rounds
            fraction = floors(row)["steady_median"]
            run["steady_floor_fraction"] = round(fraction, 2) if fraction == fraction else None
        if best(row, "ctranslate2") is not None:
            run["ctranslate2_tokens_per_s"] = round(best(row, "ctranslate2"), 1)
        runs.append(run)
    path.write_text(json.dumps({
        "about": "Decoding speed against the speed memory bandwidth allows (floor_tokens_per_s: a ceiling on "
                 "tokens/s, a floor on the time a step takes), drawn on the website (cpu_decoding.py). One "
                 "entry of `runs` per row of a benchmark table; add rows (a GPU, another machine, a faster model) "
                 "and the figure follows. tokens/s count the tokens after the first of each row, summed over the "
                 "batch; floor = the fastest read bandwidth of the run / bytes read per decoding step, times the "
                 "batch.",
        "source": "benchmarks/RESULTS.md, section Generation (python benchmarks/generate.py --json ...)",
        "model": f"Random weights of Pythia-160M's shape, fp32, {args.prompt_tokens}-token prompt, "
                 f"{args.new_tokens} greedy new tokens; ours prepared with prepare_for_cpu_decoding; "
                 f"{os.cpu_count()} CPU cores, torch {torch.__version__}, transformers {transformers.__version__}",
        "runs": runs}, indent=1) + "\n")


# ## Rounds of alternating contenders, and the table
SETTINGS = [  # (row of the table, threads, batch)
    ("batch 1, 1 thread", 1, 1), ("batch 1, 2 threads", 2, 1), ("batch 8, 2 threads", 2, 8)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every contender; the best "
                        "round of each is reported")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt length for the decoding figures")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated per prompt")
    parser.add_argument("--prefill", type=int, default=512, help="prompt length for the prefill figure (0: skip)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the loading-memory measurement")
    parser.add_argument("--unprepared", action="store_true",
                        help="measure our plain modules, without prepare_for_cpu_decoding")
    parser.add_argument("--json", type=Path, help="also write the decoding rows to this file in the schema of "
                        "benchmarks/results/decode.json (which the website draws)")
    parser.add_argument("--floor", action="store_true", help="internal: print the read bandwidth with --threads")
    parser.add_argument("--worker", choices=CONTENDERS, help="internal: run one contender in this process and print its figures as JSON")
    parser.add_argument("--folder", help="internal: the folder with the saved weights (for --worker)")
    parser.add_argument("--threads", type=int, default=1, help="internal: CPU threads (for --worker)")
    parser.add_argument("--batches", type=int, nargs="*", default=[], help="internal: batch sizes (for --worker)")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.floor:
        return print(read_bandwidth(args.threads))

    # The floor of this moment, in a process of its own
    def floor_now(threads: int) -> float:
        command = [sys.executable, __file__, "--floor", "--threads", str(threads)]
        return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])

    config = PYTHIA_160M
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        contenders = CONTENDERS if write_models(Path(folder), config) else CONTENDERS[:2]
        floor, floor_reads = {}, {1: [], 2: []}
        for r in range(args.rounds):
            for name in contenders:
                for threads in (1, 2):
                    batches = [b for _, t, b in SETTINGS if t == threads]
                    command = [sys.executable, __file__, "--worker", name, "--folder", folder, "--threads",
                               str(threads), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
                               str(args.new_tokens), "--batches", *map(str, batches)]
                    if threads == 2 and args.prefill:
                        command += ["--prefill", str(args.prefill)]
                    else:
                        command += ["--prefill", "0"]
                    if args.unprepared:
                        command.append("--unprepared")
                    before = floor_now(threads) if name == "ours" else None
                    out = subprocess.run(command, capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"error: the {name} worker failed:\n{out.stderr[-3000:]}")
                    if name == "ours":
                        after = floor_now(threads)
                        floor[threads] = (before, after)
                        floor_reads[threads] += [before, after]
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    for key, value in got.items():
                        row = f"{key}, {threads} thread{'s' if threads > 1 else ''}"
                        if isinstance(value, dict):
                            value["read_bytes_per_s"] = max(floor[threads])
                            value["steady"] = min(floor[threads]) >= STEADY * max(floor[threads])
                        results.setdefault((row, name), []).append(value)
                    print(f"  round {r + 1} {name:>12} {threads} thread(s): " + ", ".join(
                        f"{k} {v['tokens_per_s']:.1f} tokens/s" if isinstance(v, dict) else f"{k} {v:.0f}"
                        for k, v in got.items()), flush=True)

    def best(row, name):
        runs = results.get((row, name))
        return None if runs is None else max(v["tokens_per_s"] for v in runs)

    # Each round's speed as a fraction of the floor measured beside it; the median of these over the steady rounds;
    # the best round's own fraction; and the strictest: the best round against the highest floor read in the run
    # with the same threads
    def floors(row, name="ours"):
        threads, batch = next((t, b) for r, t, b in SETTINGS if r == row)
        step = bytes_per_step(config, batch, args.prompt_tokens + args.new_tokens // 2)
        runs = results[(row, name)]
        fractions = [v["tokens_per_s"] / (v["read_bytes_per_s"] / step * batch) for v in runs]
        best_run = max(runs, key=lambda v: v["tokens_per_s"])
        highest = max(floor_reads[threads])
        steady = [f for f, v in zip(fractions, runs) if v["steady"]]
        return {"fractions": fractions, "best_round_bandwidth": best_run["read_bytes_per_s"],
                "steady": [v["steady"] for v in runs],
                "steady_median": statistics.median(steady) if steady else float("nan"),
                "best_round_fraction": fractions[runs.index(best_run)],
                "strict_fraction": best_run["tokens_per_s"] / (highest / step * batch),
                "floor": best_run["read_bytes_per_s"] / step * batch, "highest": highest}

    names = list(dict.fromkeys(name for _, name in results))
    print(f"\n| decode tokens/s (best of {args.rounds}) | " + " | ".join(names) +
          " | ours / CT2 | memory floor |")
    print("|---" * (len(names) + 3) + "|")
    for row, threads, batch in SETTINGS:
        cells = []
        for name in names:
            speed = best(row, name)
            cells.append(f"{speed:.1f}" + (f" ({floors(row, name)['best_round_fraction']:.0%})" if batch == 1 else ""))
        ratio = best(row, "ours") / best(row, "ctranslate2") if "ctranslate2" in names else float("nan")
        print(f"| {row} | " + " | ".join(cells) + f" | {ratio:.2f} | {floors(row)['floor']:.1f} |")
        same = all(results[(row, n)][0]["tokens"] == results[(row, "ours")][0]["tokens"] for n in names)
        print(f"|   (same greedy tokens as ours: {same}) |" + " |" * (len(names) + 2))
    print("\n(%) = the best round's speed / the floor of its round (the faster of two reads, just before and just "
          "after our worker); memory floor = ours' floor, in tokens/s.")
    for row, threads, batch in SETTINGS:
        if batch == 1:
            f = floors(row)
            print(f"ours, {row}: each round / its own floor: " + ", ".join(
                      f"{x:.0%}" + ("" if steady else " (unsteady)") for x, steady in zip(f["fractions"], f["steady"]))
                  + f"; median of the {sum(f['steady'])} steady rounds: {f['steady_median']:.0%}; the best round / "
                  f"the highest floor of the run ({f['highest'] / 1e9:.1f} GB/s): {f['strict_fraction']:.0%}")
    if args.json:
        write_json(args.json, config, SETTINGS, best, floors, args)
    prefill = {n: min(results[("prefill_ms, 2 threads", n)]) for n in names
               if ("prefill_ms, 2 threads", n) in results}
    if prefill:
        print(f"| prefill {args.prefill} tokens, 2 threads (ms) | " + " | ".join(f"{prefill[n]:.0f}" for n in names)
              + (f" | {prefill['ours'] / prefill['ctranslate2']:.2f} | — |" if "ctranslate2" in prefill else " | |"))
    step = bytes_per_step(config, 1, args.prompt_tokens + args.new_tokens // 2)
    speeds = {t: sorted(v / 1e9 for v in reads) for t, reads in floor_reads.items()}
    print(f"\nread bandwidth of the rounds (sum over 1 GiB on either kind of page, best of 5): "
          f"{speeds[1][0]:.1f}-{speeds[1][-1]:.1f} GB/s with 1 thread, {speeds[2][0]:.1f}-{speeds[2][-1]:.1f} with 2; "
          f"{step / 1e6:.0f} MB read per step at batch 1; load average now {os.getloadavg()[0]:.1f}")

    if not args.skip_memory:
        print("\n| load dtype | model | peak RSS - RSS before loading: after loading | ratio | after preparing and "
              "one generate | ratio | RSS after - before | of it, file pages still mapped | one-time imports |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, m in loading_memory(config):
            loaded, grown = m["loaded_peak"] - m["before_rss"], m["peak"] - m["before_rss"]
            print(f"| {name} | {m['model'] / 1e6:.0f} MB | {loaded / 1e6:.0f} MB | {loaded / m['model']:.2f} | "
                  f"{grown / 1e6:.0f} MB | {grown / m['model']:.2f} | "
                  f"{(m['after_rss'] - m['before_rss']) / 1e6:.0f} MB | "
                  f"{(m['after_file'] - m['before_file']) / 1e6:.0f} MB | {m['imports'] / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
