r"""
# Benchmark: decoding speed and loading memory

How fast does our `generate` decode, compared with transformers' `generate` on the same weights and with the
limit that memory bandwidth sets? And how much memory does loading a two-rank checkpoint take, compared with
the model itself?

* **Model**: random weights of Pythia-160M's shape (12 layers, $C = 768$, 12 heads, $V = 50304$, a quarter of
  each head rotated, parallel residual). fp32 on a CPU, fp16 on CUDA when there is a GPU.
* **Decoding**: batch 1, a 64-token prompt, 128 new tokens, greedy. transformers runs in eval mode with
  `use_cache=True`, its `sdpa` attention, and `min_new_tokens = max_new_tokens` so that both make the same
  number of steps. The two alternate in one process for several rounds; we report the best round of each.
  Decoding speed counts the tokens after the first (the first token costs the pass over the prompt).
* **The bandwidth floor**: a decoding step reads every weight once (the readout included; the embedding only
  one row) plus the KV cache. Reading memory cannot go faster than a plain reduction over a large tensor, so
  `weight bytes / read bandwidth` is the shortest a step can take.
* **Loading memory**: a subprocess loads a two-rank fp16 checkpoint (written with the checkpoint package's
  writer) with `LayerGenerator` and reports its peak resident memory (`VmHWM`) above what it held before
  loading, against the size of the loaded model.

Run `python benchmarks/generate.py` (a few minutes on two CPU cores); `--rounds`, `--new-tokens` and
`--skip-memory` change the defaults. The figures are recorded in `benchmarks/RESULTS.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.generation import generate_stream  # noqa: E402
from labml_nn.neox.model import build_layers  # noqa: E402

PYTHIA_160M = NeoXConfig(n_layers=12, d_model=768, n_heads=12, n_vocab=50304, n_ctx=2048, rotary_pct=0.25,
                         parallel_residual=True, activation="gelu")


# ## The two models on the same weights
def make_models(config: NeoXConfig, device: str, dtype: torch.dtype):
    import transformers

    hf_config = {k: v for k, v in config.to_hf_config().items() if k != "architectures"}
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**hf_config, attn_implementation="sdpa"))
    hf = hf.to(device=device, dtype=dtype).eval()
    state = hf.state_dict()
    readout = state["lm_head.weight"] if "lm_head.weight" in state else state["embed_out.weight"]
    layers = build_layers(config)
    layers[0].load_state_dict({"word_embeddings.weight": state["gpt_neox.embed_in.weight"]})
    for i in range(config.n_layers):
        prefix = f"gpt_neox.layers.{i}."
        layers[i + 1].load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                       if k.startswith(prefix) and "rotary_emb" not in k})
    layers[-2].load_state_dict({"norm.weight": state["gpt_neox.final_layer_norm.weight"],
                                "norm.bias": state["gpt_neox.final_layer_norm.bias"]})
    layers[-1].load_state_dict({"final_linear.weight": readout})
    ours = torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()
    return ours, hf


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ## Timing one generation
#
# Both runs record when the first new token is ready and when the last is; transformers tells us through a
# streamer, whose `put` it calls with the prompt and then with each new token.
def time_ours(model, ids, new_tokens, device):
    tokens, first = [], None
    sync(device)
    start = time.perf_counter()
    for next_ids in generate_stream(model, ids, new_tokens, temperature=0.0, eos_token_id=None):
        tokens.append(int(next_ids[0]))
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return tokens, first - start, end - first


class _Clock:
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(time.perf_counter())

    def end(self):
        pass


def time_transformers(hf, ids, new_tokens, device):
    clock = _Clock()
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, streamer=clock)
    end = time.perf_counter()
    # `put` is called once with the prompt, then once per new token
    first = clock.calls[1]
    return out[0, ids.shape[1]:].tolist(), first - start, end - first


# ## The bandwidth floor
def read_bandwidth(device: str, n_bytes: int = 1 << 30, repeats: int = 7) -> float:
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


def bytes_per_step(model, config: NeoXConfig, context: int) -> int:
    element = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) - (config.n_vocab - 1) * config.d_model
    # Keys and values of every layer, over the average length of the context during decoding
    cache = 2 * config.n_layers * context * config.d_model
    return (weights + cache) * element


# ## Peak memory while loading a two-rank checkpoint
MEMORY_PROBE = r"""
import json, sys, torch
def status():
    return {line.split()[0][:-1]: int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith(("VmHWM", "VmRSS", "RssFile"))}
from labml_nn.neox.loader import LayerGenerator
generator = LayerGenerator(sys.argv[1], dtype=getattr(torch, sys.argv[2]), progress=False)
start = status()
# Building the first module on the `meta` device imports more of PyTorch (about 75 MB, once per process);
# we count it apart from the memory that grows with the model
with torch.device("meta"):
    torch.nn.Embedding(2, 2)
before = status()
model = torch.nn.Sequential(*generator.load())
after = status()
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"imports": before["VmRSS"] - start["VmRSS"], "before_rss": before["VmRSS"],
                  "peak": after["VmHWM"], "after_rss": after["VmRSS"], "after_file": after["RssFile"],
                  "before_file": before["RssFile"], "model": size}))
"""


def loading_memory(config: NeoXConfig, dtype_names=("float16", "float32")) -> list:
    from labml_nn.neox.checkpoint import write_neox_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        layers = build_layers(config)
        parts = [("embedding", None, layers[0].state_dict())]
        parts += [("layer", i, layers[i + 1].state_dict()) for i in range(config.n_layers)]
        parts += [("norm", None, layers[-2].state_dict()), ("readout", None, layers[-1].state_dict())]
        write_neox_checkpoint(folder, config, parts, tensor_parallel_size=2, dtype=torch.float16)
        del layers, parts
        for name in dtype_names:
            out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, folder, name], capture_output=True,
                                 text=True, check=True)
            rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both (default: PyTorch's choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    config = PYTHIA_160M
    print(f"device {device}, dtype {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    ours, hf = make_models(config, device, dtype)
    ids = torch.randint(0, 50000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)

    # A short warm-up of each, then alternating rounds
    time_ours(ours, ids, 4, device)
    time_transformers(hf, ids, 4, device)
    results = {"ours": [], "transformers": []}
    for r in range(args.rounds):
        for name, run in (("ours", time_ours), ("transformers", time_transformers)):
            model = ours if name == "ours" else hf
            tokens, prompt_s, decode_s = run(model, ids, args.new_tokens, device)
            results[name].append((tokens, prompt_s, decode_s))
            print(f"  round {r + 1} {name:>12}: prompt {prompt_s * 1e3:7.1f} ms, "
                  f"decode {(len(tokens) - 1) / decode_s:6.2f} tokens/s")
    same = results["ours"][0][0] == results["transformers"][0][0]

    bandwidth = read_bandwidth(device)
    step_bytes = bytes_per_step(ours, config, args.prompt_tokens + args.new_tokens // 2)
    floor = bandwidth / step_bytes

    def best(name):
        return max((len(t) - 1) / d for t, _, d in results[name])

    ours_speed, hf_speed = best("ours"), best("transformers")
    print()
    print(f"| | decode tokens/s (best of {args.rounds}) | vs transformers | of the bandwidth floor |")
    print("|---|---|---|---|")
    print(f"| ours | {ours_speed:.2f} | {ours_speed / hf_speed:.2f}x | {ours_speed / floor:.0%} |")
    print(f"| transformers {__import__('transformers').__version__} | {hf_speed:.2f} | 1.00x | "
          f"{hf_speed / floor:.0%} |")
    print(f"| bandwidth floor | {floor:.2f} | | 100% |")
    print(f"\nread bandwidth {bandwidth / 1e9:.1f} GB/s (sum over 1 GiB, best of 7); {step_bytes / 1e6:.0f} MB read "
          f"per step; same greedy tokens as transformers: {same}; load average now {os.getloadavg()[0]:.1f}")

    if not args.skip_memory:
        del ours, hf
        print("\n| load dtype | model | peak RSS - RSS before loading | ratio | RSS after - before | of it, "
              "file pages still mapped | one-time imports |")
        print("|---|---|---|---|---|---|---|")
        for name, m in loading_memory(config):
            grown = m["peak"] - m["before_rss"]
            print(f"| {name} | {m['model'] / 1e6:.0f} MB | {grown / 1e6:.0f} MB | {grown / m['model']:.2f} | "
                  f"{(m['after_rss'] - m['before_rss']) / 1e6:.0f} MB | "
                  f"{(m['after_file'] - m['before_file']) / 1e6:.0f} MB | {m['imports'] / 1e6:.0f} MB |")

if __name__ == "__main__":
    main()
