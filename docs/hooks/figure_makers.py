r"""
# What each figure draws, and from which code

`FIGURES` lists the figures of the site: where each sits (a module and a symbol of it), its alt text and
caption, the files it reads (for the cache key) and the function that draws it. Every function imports the
project's own modules from the repository being built, so the figures show what the code does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DEMO = "labml_nn/neox/demo"
# A line of a play the demo model did not see in training (Macbeth is held out, `samples/train_demo.py`)
SHAKESPEARE = "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day"


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _config(**overrides):
    from labml_nn.neox.config import NeoXConfig

    values = dict(n_layers=1, d_model=64, n_heads=4, n_vocab=64, rotary_pct=0.25, parallel_residual=True,
                  activation="gelu")
    values.update(overrides)
    return NeoXConfig(**values)


# ## The layer: parallel and sequential residual
#
# `torch.fx` traces `TransformerLayer.forward` for both settings of `parallel_residual`, with the norms,
# attention and FFN kept as single boxes (the cache is `None`, as in training); the drawing is that graph, laid out by the length of the longest path
# from the input.
def residual(root: Path):
    from unittest import mock

    import torch.fx
    from labml_nn.neox import model

    class Boxes(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return name != ""

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(5.6, 4.4))
    for ax, parallel in zip(axes, (True, False)):
        layer = model.TransformerLayer(_config(parallel_residual=parallel), 0)
        # moving the input to the layer's device is not a step of the maths (and asks a tensor for its device)
        with mock.patch.object(model, "_on_device_of", lambda x, module: x):
            graph = Boxes().trace(layer, concrete_args={"cache": None})
        nodes, level, edges = [], {}, []
        for node in graph.nodes:
            if (node.op == "placeholder" and node.name != "x") or node.name.startswith("_assert"):
                continue  # the cache (None here) and fx's check that it is None
            inputs = [a for a in node.all_input_nodes if a in level]
            level[node] = 1 + max((level[a] for a in inputs), default=-1)
            nodes.append(node)
            edges += [(a, node) for a in inputs]
        label = {"x": "$x_l$", "output": "$x_{l+1}$", "input_layernorm": "LN$_1$",
                 "post_attention_layernorm": "LN$_2$", "attention": "Attn", "mlp": "FFN"}
        rows: dict = {}
        for node in nodes:
            rows.setdefault(level[node], []).append(node)
        position = {}
        for depth, row in rows.items():
            for i, node in enumerate(row):
                position[node] = ((i - (len(row) - 1) / 2) * 1.6, -depth)
        for a, b in edges:
            (x0, y0), (x1, y1) = position[a], position[b]
            ax.annotate("", xy=(x1, y1 + 0.22), xytext=(x0, y0 - 0.22),
                        arrowprops=dict(arrowstyle="->", color="#555", lw=1.1))
        for node in nodes:
            name = str(node.target) if node.op == "call_module" else node.name
            text = label.get(name, "+" if "add" in name else name)
            x, y = position[node]
            box = "circle,pad=0.25" if text == "+" else "round,pad=0.35"
            colour = {"Attn": "#c7d7f5", "FFN": "#f5dcc7"}.get(text, "#eeeeee")
            ax.text(x, y, text, ha="center", va="center", fontsize=12,
                    bbox=dict(boxstyle=box, fc=colour, ec="#444"))
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-max(rows) - 0.6, 0.6)
        ax.axis("off")
        ax.set_title(f"parallel_residual = {parallel}\n" +
                     ("(gpt_j_residual: 20B, Pythia)" if parallel else "(the classic transformer)"), fontsize=10)
    fig.tight_layout()
    return fig


# ## Rotary embeddings: each feature pair turns at its own speed
#
# The same vector, each pair $(x_i, x_{i+d/2}) = (1, 0)$, at positions $m = 0 \dots 15$, through
# `RotaryEmbedding(d_rotary=8)`: pair $i$ turns by $\theta_i = b^{-2i/d}$ per position.
def rope(root: Path):
    import torch
    from labml_nn.neox.model import RotaryEmbedding

    d, positions = 8, 16
    x = torch.zeros(1, positions, 1, d)
    x[..., : d // 2] = 1.0
    out = RotaryEmbedding(d, 10000.0)(x, offset=0)[0, :, 0]
    plt = _plt()
    fig, axes = plt.subplots(2, d // 4, figsize=(5, 5.2))
    for i, ax in enumerate(axes.flat):
        xs, ys = out[:, i].numpy(), out[:, i + d // 2].numpy()
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="#ccc"))
        ax.plot(xs, ys, "-", color="#bbb", lw=0.8)
        ax.scatter(xs, ys, c=range(positions), cmap="viridis", s=22, zorder=3)
        for m in (0, 1, 2, positions - 1):
            ax.annotate(f"m={m}", (xs[m], ys[m]), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set_aspect("equal")
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.axis("off")
        theta = 10000.0 ** (-2 * i / d)
        ax.set_title(f"pair ({i}, {i + d // 2})\n$\\theta_{i}$ = {theta:.3g}", fontsize=9)
    fig.tight_layout()
    return fig


# ## The causal mask, shifted by the cache
#
# `Attention._mask` for four new tokens after 0, 5 and (one token) after 8 cached ones: which keys each query
# may see. `is_causal` is drawn as the lower triangle `scaled_dot_product_attention` applies for it.
def mask(root: Path):
    import torch
    from labml_nn.neox.model import Attention

    cases = [(0, 4), (5, 4), (8, 1)]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.6), gridspec_kw={"width_ratios": [4, 9, 9]})
    for ax, (offset, n) in zip(axes, cases):
        spec = Attention._mask(offset, n, torch.device("cpu"))
        if "attn_mask" in spec:
            allowed = spec["attn_mask"]
        elif spec.get("is_causal"):
            allowed = torch.ones(n, n, dtype=torch.bool).tril()
        else:
            allowed = torch.ones(n, offset + n, dtype=torch.bool)
        ax.imshow(allowed.numpy(), cmap="Blues", vmin=0, vmax=1.4)
        ax.set_xticks(range(offset + n))
        ax.set_yticks(range(n), [str(offset + i) for i in range(n)])
        if offset:
            ax.axvline(offset - 0.5, color="#d62728", lw=1.5)
        ax.set_xlabel("key position")
        ax.set_title(f"offset {offset}, {n} new token{'s' if n > 1 else ''}\n{sorted(spec) or ['no mask']}",
                     fontsize=9)
    axes[0].set_ylabel("query position")
    fig.tight_layout()
    return fig


# ## Attention of the demo model on a line of Shakespeare
#
# A forward pre-hook records the input of each layer's attention; from it the layer's own `query_key_value`,
# `rotary_emb` and mask give $\operatorname{softmax}(QK^\top/\sqrt{D} + M)$ for each head.
def attention(root: Path):
    import torch
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.model import Attention
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    tokenizer = load_tokenizer(root / DEMO)
    ids = torch.tensor([encode(tokenizer, SHAKESPEARE)])
    layers = list(LayerLoader(root / DEMO, dtype=torch.float32, device="cpu").load())
    attentions = [m.attention for m in layers if hasattr(m, "attention")]
    inputs = {}
    handles = [a.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0]))
               for i, a in enumerate(attentions)]
    with torch.no_grad():
        torch.nn.Sequential(*layers)(ids)
        for h in handles:
            h.remove()
        shown = [(0, 0), (0, 3), (len(attentions) - 1, 1), (len(attentions) - 1, 6)]
        n = ids.shape[1]
        maps = {}
        for layer, head in shown:
            a: Attention = attentions[layer]
            qkv = a.query_key_value(inputs[layer]).view(1, n, a.n_heads, 3, a.d_head)
            qk = a.rotary_emb(qkv[:, :, :, :2], 0)
            q, k = qk[0, :, head, 0], qk[0, :, head, 1]
            scores = q @ k.T / math.sqrt(a.d_head)
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
            maps[layer, head] = scores.softmax(-1)
    tokens = [tokenizer.decode([t]) for t in ids[0].tolist()]
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.9))
    for ax, (layer, head) in zip(axes, shown):
        ax.imshow(maps[layer, head].numpy(), cmap="magma_r", vmin=0, vmax=1)
        ax.set_xticks(range(n), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(n), tokens, fontsize=6)
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
    fig.tight_layout()
    return fig


# ## LLM.int8's outlier columns, on a model that has them
#
# The demo model has no input above the threshold 6, so this is a random model of Pythia-70M's shape with outlier
# features planted by `benchmarks/llm_int8.py`'s own `plant_outlier_features`; the inputs are recorded and drawn
# by `samples/llm_int8_outliers.py`'s `OutlierRecorder` and `figure`.
def outliers(root: Path):
    import importlib.util
    import tempfile
    import types

    import torch
    from labml_nn.neox.model import build_layers
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    def load(path, name):
        spec = importlib.util.spec_from_file_location(name, root / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    bench = load("benchmarks/llm_int8.py", "figure_bench_llm_int8")
    sample = load("samples/llm_int8_outliers.py", "figure_sample_outliers")
    torch.manual_seed(0)
    config = _config(n_layers=6, d_model=512, n_heads=8, n_vocab=4096)
    layers = build_layers(config)
    dims = sorted(torch.randperm(config.d_model)[: bench.N_OUTLIER_DIMS].tolist())
    blocks = [m for m in layers if hasattr(m, "attention")]
    bench.plant_outlier_features(types.SimpleNamespace(gpt_neox=types.SimpleNamespace(layers=blocks)), dims,
                                 bench.GAIN)
    ids = torch.tensor([encode(load_tokenizer(root / DEMO), bench.TEXT)])
    recorder = sample.OutlierRecorder(6.0)
    recorder.attach(layers)
    with torch.no_grad():
        torch.nn.Sequential(*layers).eval()(ids)
    recorder.detach()
    recorder.n_tokens = ids.numel()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "outliers.svg"
        sample.figure(recorder, config.n_layers, f"Outlier dims planted: {dims} (x{bench.GAIN:g})", out)
        return out.read_text(encoding="utf-8")


# ## The demo's training curve
def training(root: Path):
    data = json.loads((root / "benchmarks/results/train_demo.json").read_text(encoding="utf-8"))
    points = data["validation_loss"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p["step"] for p in points], [p["loss"] for p in points], "o-", label="validation (10 batches)")
    ax.axhline(data["uniform_loss"], color="#999", ls=":", label=f"uniform guess, ln {data['vocab']}")
    final = data["held_out"]
    ax.scatter([final["step"]], [final["loss"]], marker="*", s=120, color="#d62728", zorder=3,
               label=f"held-out plays: {final['loss']} nats/token")
    ax.set_xlabel("step (8 windows x 256 tokens)")
    ax.set_ylabel("loss, nats/token")
    ax.set_ylim(0, data["uniform_loss"] + 0.5)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# ## Decoding speed against the memory-bandwidth floor
def decode(root: Path):
    data = json.loads((root / "benchmarks/results/decode.json").read_text(encoding="utf-8"))
    runs = data["runs"]
    plt = _plt()
    # One panel per run, each on its own scale (batch 8 is ~4x batch 1), the floor as a red line
    fig, axes = plt.subplots(len(runs), 1, figsize=(6.2, 0.7 + 1.05 * len(runs)), squeeze=False)
    # Up to three bars per run, top to bottom: ours, CTranslate2, transformers (those the run measured)
    bars = (("ours", "ours_tokens_per_s", "#3f6fd1"), ("CTranslate2", "ctranslate2_tokens_per_s", "#e3a33b"),
            ("transformers", "transformers_tokens_per_s", "#aaa"))
    for ax, run in zip(axes[:, 0], runs):
        floor = run["floor_tokens_per_s"]
        shown = [(label, run[key], color) for label, key, color in bars if run.get(key)]
        for j, (label, value, color) in enumerate(shown):
            y = len(shown) - 1 - j
            ax.barh(y, value, height=0.75, color=color, label=label)
            ax.text(value + floor * 0.02, y, f"{value:g} ({value / floor:.0%})", va="center", fontsize=7,
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
        ax.axvline(floor, color="#d62728", lw=2, label="bandwidth floor")
        ax.set_xlim(0, floor * 1.08)
        ax.set_yticks([])
        ax.set_ylabel(run["label"].replace("CPU, ", "").replace(", ", "\n"), fontsize=8, rotation=0,
                      ha="right", va="center")
        ax.tick_params(axis="x", labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1, 0].set_xlabel("decode tokens/s (in brackets: share of the floor)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


FIGURES = [
    dict(name="residual", module="labml_nn/neox/model.py", symbol="TransformerLayer", make=residual,
         depends=("labml_nn/neox/model.py", "labml_nn/neox/config.py"),
         alt="Two graphs of a transformer layer. Parallel: x goes to LN1 then attention and to LN2 then the FFN, "
             "and both results are added to x. Sequential: attention's result is added to x first, and that sum "
             "goes through LN2 and the FFN.",
         caption="<code>TransformerLayer.forward</code> traced with <code>torch.fx</code> for both values of "
                 "<code>parallel_residual</code>: in the parallel layer attention and the FFN read the same "
                 "input."),
    dict(name="rope-pairs", module="labml_nn/neox/model.py", symbol="RotaryEmbedding", make=rope,
         depends=("labml_nn/neox/model.py",),
         alt="Four circles, one per feature pair of an 8-feature rotary embedding; the point of each pair turns "
             "around the circle as the position grows, fast for pair 0 and very slowly for pair 3.",
         caption="<code>RotaryEmbedding(8, 10000)</code> applied to the same vector at positions 0 to 15: each "
                 "pair $(x_i, x_{i+d/2})$ turns by $\\theta_i$ per position; the first pairs turn fast, the last "
                 "barely move."),
    dict(name="causal-mask", module="labml_nn/neox/model.py", symbol="Attention._mask", make=mask,
         depends=("labml_nn/neox/model.py",),
         alt="Three grids of which keys each query may see: a lower triangle with no cache; with 5 cached tokens "
             "the triangle is shifted right by 5 and all cached keys are visible; one new token sees every key.",
         caption="What <code>Attention._mask</code> returns: without a cache the usual triangle; after 5 cached "
                 "tokens the triangle moves right by the offset (red line); a single new token needs no mask."),
    dict(name="attention-demo", module="labml_nn/neox/model.py", symbol="Attention.forward", make=attention,
         depends=("labml_nn/neox/model.py", "labml_nn/neox/loader.py", "labml_nn/neox/tokenizer.py", DEMO),
         wide=True,
         alt="Four heat maps of attention weights over the tokens of a line from Macbeth, for two heads of the "
             "first and of the last layer of the demo model; each row sums to one and nothing lies above the "
             "diagonal.",
         caption="Attention weights of the demo model (<code>labml_nn/neox/demo</code>) on a line of "
                 "<em>Macbeth</em>, a play it did not train on: “" + SHAKESPEARE + "”. Each row is a query "
                 "token, each column a key; first layer left, last layer right."),
    dict(name="llm-int8-outliers", module="labml_nn/neox/llm_int8.py", symbol="Int8Linear.forward",
         make=outliers, wide=True,
         depends=("labml_nn/neox/model.py", "labml_nn/neox/config.py", "samples/llm_int8_outliers.py",
                  "benchmarks/llm_int8.py", f"{DEMO}/20B_tokenizer.json"),
         alt="Scatter plots of input dimension against layer for the four linear layers of each transformer "
             "layer: squares mark the dimensions whose input reached 6, the same few columns in every layer for "
             "query_key_value and dense_h_to_4h; a fifth panel shows the largest input per layer.",
         caption="The columns <code>Int8Linear</code> would keep out of the int8 product (threshold 6), drawn "
                 "by <code>samples/llm_int8_outliers.py</code>. The model is <b>random weights of Pythia-70M's "
                 "shape</b> (6 layers, $C = 512$) with outlier features planted in 6 dimensions by "
                 "<code>benchmarks/llm_int8.py</code>'s <code>plant_outlier_features</code> (layer-norm gain x20, "
                 "the weight columns that read them /20: the same function), because the demo model has no input "
                 "above 6 and real models with outliers (6.7B and up) are too large to run while building the "
                 "site. The text is the opening of Hamlet's soliloquy."),
    dict(name="training-curve", module="samples/train_demo.py", symbol="main", make=training,
         depends=("benchmarks/results/train_demo.json",),
         alt="Validation loss of the demo model falling from 5.07 at step 100 to 4.42 at step 400, far below the "
             "uniform guess of 8.3 nats per token.",
         caption="The demo model's validation loss while <code>python samples/train_demo.py</code> trained it "
                 "(figures from <code>benchmarks/results/train_demo.json</code>, copied from the run recorded in "
                 "<code>benchmarks/RESULTS.md</code>)."),
    dict(name="decode-speed", module="labml_nn/neox/generation.py", symbol="generate_stream", make=decode,
         depends=("benchmarks/results/decode.json",),
         alt="Three panels of bars, decoding speed in tokens per second for our implementation, CTranslate2 and "
             "transformers, with a red line at the memory-bandwidth floor: batch 1 on one thread, batch 1 on two, "
             "batch 8 on two; each bar is labelled with its tokens per second and its share of the floor.",
         caption="Decoding speed from <code>benchmarks/results/decode.json</code> (written from "
                 "<code>python benchmarks/generate.py</code>'s runs; " + "random weights of Pythia-160M's shape, "
                 "fp32, 2 CPU cores): ours (prepared with <code>prepare_for_cpu_decoding</code>), CTranslate2, "
                 "transformers, and the floor set by reading every weight once per token at the machine's "
                 "measured bandwidth."),
]

# The tensor-parallel page's figures and the numbers its prose prints (`{{tp_...}}`), in a file of their own
import figure_makers_tp  # noqa: E402

FIGURES += figure_makers_tp.FIGURES
VALUES = list(figure_makers_tp.VALUES)
