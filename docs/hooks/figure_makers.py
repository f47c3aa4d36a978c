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
# attention and FFN kept as single boxes (the cache is `None`, as in training). `layer_graph` is that graph, the
# nodes laid out by the length of the longest path from the input; `routes` draws each edge straight when nothing
# stands in its way, and around the side otherwise, so a skip connection (the residual, from $x_l$ to an addition
# several steps below) is drawn where a straight line would hide behind the boxes it skips.
# `tests/test_docs_figures.py` holds that every addition takes the residual stream and that every edge is drawn.
def layer_graph(parallel: bool):
    """`(nodes, edges)`: `nodes` `{name: (label, level)}` in order, `edges` `[(from, to)]`, from the traced layer."""
    from unittest import mock

    import torch.fx
    from labml_nn.neox import model

    class Boxes(torch.fx.Tracer):
        def is_leaf_module(self, m, name):
            return name != ""

    layer = model.TransformerLayer(_config(parallel_residual=parallel), 0)
    # moving the input to the layer's device is not a step of the maths (and asks a tensor for its device)
    with mock.patch.object(model, "_on_device_of", lambda x, module: x):
        graph = Boxes().trace(layer, concrete_args={"cache": None})
    # (Unicode subscripts, not maths: a subscript set in maths is 70% of the text's size, too small to read)
    label = {"x": "xₗ", "output": "xₗ₊₁", "input_layernorm": "LN₁",
             "post_attention_layernorm": "LN₂", "attention": "Attn", "mlp": "FFN"}
    nodes, edges = {}, []
    for node in graph.nodes:
        if (node.op == "placeholder" and node.name != "x") or node.name.startswith("_assert"):
            continue  # the cache (None here) and fx's check that it is None
        inputs = [a.name for a in node.all_input_nodes if a.name in nodes]
        name = str(node.target) if node.op == "call_module" else node.name
        text = label.get(name, "+" if node.target in (operator_add(), "add") or "add" in name else name)
        nodes[node.name] = (text, 1 + max((nodes[a][1] for a in inputs), default=-1))
        edges += [(a, node.name) for a in inputs]
    return nodes, edges


def operator_add():
    import operator
    return operator.add


BOX = (0.42, 0.24)  # half the width and height of a node's box, in the layout's units


def layout(nodes):
    rows: dict = {}
    for name, (_, level) in nodes.items():
        rows.setdefault(level, []).append(name)
    return {name: ((i - (len(row) - 1) / 2) * 1.6, -level) for level, row in rows.items()
            for i, name in enumerate(row)}


def routes(nodes, edges, position):
    """Each edge as a list of points: straight, or around the side when a straight line would cross a box."""
    def crosses(a, b, others):
        (x0, y0), (x1, y1) = position[a], position[b]
        for t in [i / 40 for i in range(1, 40)]:
            x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
            if any(abs(x - position[o][0]) < BOX[0] and abs(y - position[o][1]) < BOX[1] for o in others):
                return True
        return False

    out, sides = {}, {}
    for a, b in edges:
        others = [n for n in nodes if n not in (a, b)]
        if not crosses(a, b, others):
            out[a, b] = [position[a], position[b]]
            continue
        (x0, y0), (x1, y1) = position[a], position[b]
        side = -1 if x0 <= 0 else 1
        sides[side] = sides.get(side, 0) + 1
        x = side * (max(abs(p[0]) for p in position.values()) + 0.75 + 0.3 * (sides[side] - 1))
        # leave a little below the source's middle, so that an edge leaving a node the edge before came into
        # does not run on top of it
        out[a, b] = [(x0 + side * BOX[0], y0 - 0.1), (x, y0 - 0.1), (x, y1), (x1 + side * BOX[0], y1)]
    return out


def residual(root: Path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(5.6, 5.0))
    for ax, parallel in zip(axes, (True, False)):
        nodes, edges = layer_graph(parallel)
        position = layout(nodes)
        for (a, b), points in routes(nodes, edges, position).items():
            xs, ys = zip(*points)
            skip = len(points) > 2
            # the residual stream: from the input or an addition, into an addition
            colour = "#d62728" if nodes[a][0] in ("xₗ", "+") and nodes[b][0] == "+" else "#555"
            if skip:
                ax.plot(xs[:-1], ys[:-1], color=colour, lw=1.3)
            (x0, y0), (x1, y1) = points[-2], points[-1]
            dy = 0.0 if skip else BOX[1]
            ax.annotate("", xy=(x1, y1 + dy), xytext=(x0, y0 - (0 if skip else BOX[1])),
                        arrowprops=dict(arrowstyle="->", color=colour, lw=1.3))
        for name, (text, _) in nodes.items():
            x, y = position[name]
            box = "circle,pad=0.2" if text == "+" else "round,pad=0.3"
            colour = {"Attn": "#c7d7f5", "FFN": "#f5dcc7"}.get(text, "#eeeeee")
            ax.text(x, y, text, ha="center", va="center", fontsize=12,
                    bbox=dict(boxstyle=box, fc=colour, ec="#444"))
        depth = max(level for _, level in nodes.values())
        ax.set_xlim(-2.6, 2.6)
        ax.set_ylim(-depth - 0.6, 0.6)
        ax.axis("off")
        ax.set_title(f"parallel_residual = {parallel}\n" +
                     ("(gpt_j_residual: 20B, Pythia)" if parallel else "(the classic transformer)"), fontsize=11)
    fig.text(0.5, 0.01, "red: the residual stream, into each addition", ha="center", fontsize=11,
             color="#d62728")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# ## Rotary embeddings: each feature pair turns at its own speed, and which features turn
#
# Top: the same vector, each pair $(x_i, x_{i+d/2}) = (1, 0)$, at positions $m = 0 \dots 15$, through
# `RotaryEmbedding(d_rotary=8)`: pair $i$ turns by $\theta_i = b^{-2i/d}$ per position. Bottom: which of a 20B
# head's features `RotaryEmbedding` changes, found by rotating a random head vector and comparing.
def rope(root: Path):
    import torch
    from labml_nn.neox.model import RotaryEmbedding

    d, positions = 8, 16
    x = torch.zeros(1, positions, 1, d)
    x[..., : d // 2] = 1.0
    out = RotaryEmbedding(d, 10000.0)(x, offset=0)[0, :, 0]
    # the 20B model's heads: $D = 96$ features, `rotary_pct` 0.25
    big = _config(n_layers=44, d_model=6144, n_heads=64, n_vocab=50432, rotary_pct=0.25)
    head = torch.randn(1, 1, 1, big.d_head, generator=torch.Generator().manual_seed(0))
    turned = RotaryEmbedding(big.d_rotary, big.rotary_base)(head.expand(1, 8, 1, -1).contiguous(), offset=0)
    changed = (turned[0, 7, 0] != head[0, 0, 0]).numpy()
    plt = _plt()
    fig = plt.figure(figsize=(5.2, 6.6))
    grid = fig.add_gridspec(3, 3, height_ratios=[1, 1, 0.42], width_ratios=[1, 1, 0.07], hspace=0.55)
    scatter = None
    for i in range(d // 2):
        ax = fig.add_subplot(grid[i // 2, i % 2])
        xs, ys = out[:, i].numpy(), out[:, i + d // 2].numpy()
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="#ccc"))
        ax.plot(xs, ys, "-", color="#bbb", lw=0.8)
        scatter = ax.scatter(xs, ys, c=range(positions), cmap="viridis", s=26, zorder=3)
        ax.annotate("m=0", (xs[0], ys[0]), fontsize=10, xytext=(4, -12), textcoords="offset points")
        ax.set_aspect("equal")
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.axis("off")
        theta = 10000.0 ** (-2 * i / d)
        ax.set_title(f"pair ({i}, {i + d // 2}): θ{'₀₁₂₃₄₅₆₇'[i]} = {theta:.3g}", fontsize=11)
    bar = fig.colorbar(scatter, cax=fig.add_subplot(grid[0:2, 2]))
    bar.set_label("position m", fontsize=11)
    bar.ax.tick_params(labelsize=10)
    ax = fig.add_subplot(grid[2, :])
    for j, moved in enumerate(changed):
        ax.add_patch(plt.Rectangle((j, 0), 1, 1, color="#3f6fd1" if moved else "#dddddd", lw=0))
    ax.set_xlim(0, big.d_head)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([0, big.d_rotary // 2, big.d_rotary, big.d_head])
    ax.tick_params(labelsize=10)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"a 20B head's {big.d_head} features at m = 7: blue rotate ({int(changed.sum())}), "
                 f"grey pass", fontsize=11)
    ax.set_xlabel(f"feature; pairs (i, i + {big.d_rotary // 2})", fontsize=10)
    return fig


# ## The causal mask, shifted by the cache
#
# `Attention._mask` for four new tokens after 0, 5 and (one token) after 8 cached ones: which keys each query
# may see, and by which of `scaled_dot_product_attention`'s arguments. `is_causal` is drawn as the lower
# triangle it applies.
def mask(root: Path):
    import torch
    from labml_nn.neox.model import Attention
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    how = {"is_causal": "a triangle\n(is_causal)", "attn_mask": "a shifted triangle\n(attn_mask)",
           "": "every key\n(no mask)"}
    cases = [(0, 4), (5, 4), (8, 1)]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(5.9, 2.5), gridspec_kw={"width_ratios": [4, 9, 9]})
    for ax, (offset, n) in zip(axes, cases):
        spec = Attention._mask(offset, n, torch.device("cpu"))
        if "attn_mask" in spec:
            allowed = spec["attn_mask"]
        elif spec.get("is_causal"):
            allowed = torch.ones(n, n, dtype=torch.bool).tril()
        else:
            allowed = torch.ones(n, offset + n, dtype=torch.bool)
        ax.imshow(allowed.numpy(), cmap="Blues", vmin=0, vmax=1.4)
        ax.set_xticks(range(0, offset + n, 1 if offset + n < 6 else 2))
        ax.set_yticks(range(n), [str(offset + i) for i in range(n)])
        ax.tick_params(labelsize=10)
        if offset:
            ax.axvline(offset - 0.5, color="#d62728", lw=2)
        ax.set_xlabel("key position", fontsize=10)
        used = next((k for k in ("is_causal", "attn_mask") if spec.get(k) is not None and spec.get(k) is not False), "")
        ax.set_title(f"{offset} cached, {n} new:\n{how[used]}", fontsize=10)
    axes[0].set_ylabel("query position", fontsize=10)
    legend = [Patch(fc=plt.get_cmap("Blues")(1 / 1.4), label="may attend"),
              Patch(fc=plt.get_cmap("Blues")(0.0), ec="#999", label="masked"),
              Line2D([0], [0], color="#d62728", lw=2, label="cached | new")]
    fig.legend(handles=legend, loc="lower center", ncol=3, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1), w_pad=0.4)
    return fig


# ## Attention of the demo model on a line of Shakespeare
#
# A forward pre-hook records the input of each layer's attention; from it the layer's own `query_key_value`,
# `rotary_emb` and mask give $\operatorname{softmax}(QK^\top/\sqrt{D} + M)$ for each head. Two patterns are
# looked for in every head, and the head that shows each most strongly is drawn: weight on the token just before
# the query (a *previous-token* head), and weight on the first token of the line.
_ATTENTION: dict = {}


def attention_maps(root: Path):
    if root in _ATTENTION:
        return _ATTENTION[root]
    import torch
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    tokenizer = load_tokenizer(root / DEMO)
    ids = torch.tensor([encode(tokenizer, SHAKESPEARE)])
    layers = list(LayerLoader(root / DEMO, dtype=torch.float32, device="cpu").load())
    attentions = [m.attention for m in layers if hasattr(m, "attention")]
    inputs = {}
    handles = [a.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0]))
               for i, a in enumerate(attentions)]
    n = ids.shape[1]
    maps = {}
    with torch.no_grad():
        torch.nn.Sequential(*layers)(ids)
        for h in handles:
            h.remove()
        for layer, a in enumerate(attentions):
            qkv = a.query_key_value(inputs[layer]).view(1, n, a.n_heads, 3, a.d_head)
            qk = a.rotary_emb(qkv[:, :, :, :2], 0)
            scores = torch.einsum("thd,shd->hts", qk[0, :, :, 0], qk[0, :, :, 1]) / math.sqrt(a.d_head)
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
            for head, weights in enumerate(scores.softmax(-1)):
                maps[layer, head] = weights
    # each head's mean weight on the previous token and on the first token, over the queries from the third on
    previous = {k: float(w.diagonal(-1)[1:].mean()) for k, w in maps.items()}
    first = {k: float(w[2:, 0].mean()) for k, w in maps.items()}
    prev_head = max(previous, key=previous.get)
    first_head = max((k for k in first if k != prev_head), key=first.get)
    found = dict(maps=maps, tokens=[tokenizer.decode([t]) for t in ids[0].tolist()], previous=previous,
                 first=first, prev_head=prev_head, first_head=first_head)
    _ATTENTION[root] = found
    return found


def attention(root: Path):
    found = attention_maps(root)
    tokens = found["tokens"]
    shown = [(found["prev_head"], "previous token"), (found["first_head"], "first token")]
    plt = _plt()
    fig = plt.figure(figsize=(5.2, 10.4), layout="constrained")
    grid = fig.add_gridspec(3, 1, height_ratios=[1, 1, 0.035])
    image = None
    for row, ((layer, head), what) in enumerate(shown):
        ax = fig.add_subplot(grid[row])
        image = ax.imshow(found["maps"][layer, head].numpy(), cmap="magma_r", vmin=0, vmax=1)
        n = len(tokens)
        ax.set_xticks(range(n), tokens, rotation=90, fontsize=10)
        ax.set_yticks(range(n), tokens, fontsize=10)
        share = found["previous" if what == "previous token" else "first"][layer, head]
        ax.set_title(f"layer {layer}, head {head}: {share:.0%} on the {what}", fontsize=11)
        ax.set_ylabel("query", fontsize=10)
    bar = fig.colorbar(image, cax=fig.add_subplot(grid[2]), orientation="horizontal")
    bar.set_label("attention weight (each row sums to 1)", fontsize=11)
    bar.ax.tick_params(labelsize=10)
    return fig


def attention_numbers(root: Path) -> dict:
    found = attention_maps(root)
    (pl, ph), (fl, fh) = found["prev_head"], found["first_head"]
    others = sorted(v for k, v in found["previous"].items() if k != (pl, ph))
    return {"attn_prev_layer": pl, "attn_prev_head": ph, "attn_prev_share": f"{found['previous'][pl, ph]:.0%}",
            "attn_prev_median": f"{others[len(others) // 2]:.0%}", "attn_first_layer": fl, "attn_first_head": fh,
            "attn_first_share": f"{found['first'][fl, fh]:.0%}", "attn_n_heads": len(found["previous"])}


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
    ax.legend(fontsize=10)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    return fig


# ## Decoding speed against the speed memory bandwidth allows
#
# A decoding step reads every weight once, so no step can be faster than `bytes per step / read bandwidth`: the
# benchmark's `floor_tokens_per_s` is that *ceiling* on tokens per second (a floor on the time a step takes).
def decode(root: Path):
    data = json.loads((root / "benchmarks/results/decode.json").read_text(encoding="utf-8"))
    runs = data["runs"]
    plt = _plt()
    # One panel per run, each on its own scale (batch 8 is ~4x batch 1), the ceiling as a red line
    fig, axes = plt.subplots(len(runs), 1, figsize=(6.2, 1.0 + 1.25 * len(runs)), squeeze=False)
    # Up to three bars per run, top to bottom: ours, CTranslate2, transformers (those the run measured)
    bars = (("ours", "ours_tokens_per_s", "#3f6fd1"), ("CTranslate2", "ctranslate2_tokens_per_s", "#e3a33b"),
            ("transformers", "transformers_tokens_per_s", "#aaa"))
    for ax, run in zip(axes[:, 0], runs):
        ceiling = run["floor_tokens_per_s"]
        shown = [(label, run[key], color) for label, key, color in bars if run.get(key)]
        for j, (label, value, color) in enumerate(shown):
            y = len(shown) - 1 - j
            ax.barh(y, value, height=0.75, color=color, label=label)
            ax.text(value + ceiling * 0.02, y, f"{value:g} ({value / ceiling:.0%})", va="center", fontsize=10,
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
        ax.axvline(ceiling, color="#d62728", lw=2, label="what memory bandwidth allows")
        ax.set_xlim(0, ceiling * 1.08)
        ax.set_yticks([])
        ax.set_ylabel(run["label"].replace("CPU, ", "").replace(", ", "\n"), fontsize=10, rotation=0,
                      ha="right", va="center")
        ax.tick_params(axis="x", labelsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1, 0].set_xlabel("decode tokens/s (in brackets: share of the ceiling)", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=10, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def decode_numbers(root: Path) -> dict:
    runs = json.loads((root / "benchmarks/results/decode.json").read_text(encoding="utf-8"))["runs"]
    one = next(r for r in runs if r["label"].endswith("batch 1, 2 threads"))
    eight = next(r for r in runs if "batch 8" in r["label"])
    return {"decode_b1_ours": f"{one['ours_tokens_per_s']:g}", "decode_b1_ceiling": f"{one['floor_tokens_per_s']:g}",
            "decode_b1_share": f"{one['ours_tokens_per_s'] / one['floor_tokens_per_s']:.0%}",
            "decode_b8_ceiling": f"{eight['floor_tokens_per_s']:g}",
            "decode_b8_share": f"{eight['ours_tokens_per_s'] / eight['floor_tokens_per_s']:.0%}",
            "decode_gb_s": f"{one['read_gb_per_s']:g}", "decode_mb_step": f"{one['bytes_per_step'] / 1e6:.0f}"}


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
         depends=("labml_nn/neox/model.py", "labml_nn/neox/config.py"),
         alt="Four circles, one per feature pair of an 8-feature rotary embedding; the point of each pair turns "
             "around the circle as the position grows, fast for pair 0 and very slowly for pair 3. Below, a strip "
             "of a 20B head's 96 features: the first 24 are changed by the rotation, the other 72 are not.",
         caption="Top: <code>RotaryEmbedding(8, 10000)</code> applied to the same vector at positions 0 to 15: "
                 "each pair $(x_i, x_{i+d/2})$ turns by $\\theta_i$ per position; the first pairs turn fast, the "
                 "last barely move. Bottom: the features of one 20B head that the rotation changes, only the first "
                 "quarter (<code>rotary_pct</code> 0.25); the rest reach attention as they are."),
    dict(name="causal-mask", module="labml_nn/neox/model.py", symbol="Attention._mask", make=mask,
         depends=("labml_nn/neox/model.py",),
         alt="Three grids of which keys each query may see: a lower triangle with no cache; with 5 cached tokens "
             "the triangle is shifted right by 5 and all cached keys are visible; one new token sees every key.",
         caption="What <code>Attention._mask</code> returns: without a cache the usual triangle "
                 "(<code>is_causal</code>); after 5 cached tokens the triangle moves right by the offset (red "
                 "line), which needs an explicit mask; a single new token needs no mask."),
    dict(name="attention-demo", module="labml_nn/neox/model.py", symbol="Attention", make=attention,
         depends=("labml_nn/neox/model.py", "labml_nn/neox/loader.py", "labml_nn/neox/tokenizer.py", DEMO),
         alt="Two heat maps of attention weights over the tokens of a line from Macbeth, for two heads of the demo "
             "model: one with a bright line just below the diagonal (each token looks at the one before it), one "
             "with a bright first column (each token looks at the first).",
         caption="Attention weights of the demo model (<code>labml_nn/neox/demo</code>) on a line of "
                 "<em>Macbeth</em>, a play it did not train on: “" + SHAKESPEARE + "”. Each row is a query, each "
                 "column a key; nothing lies above the diagonal. Of its {{attn_n_heads}} heads, the code looked for "
                 "two patterns: layer {{attn_prev_layer}}, head {{attn_prev_head}} is a <b>previous-token head</b>, "
                 "putting {{attn_prev_share}} of each query's weight on the token just before it (the bright line "
                 "below the diagonal; the median head puts {{attn_prev_median}} there); layer "
                 "{{attn_first_layer}}, head {{attn_first_head}} puts {{attn_first_share}} on the line's first "
                 "token (the bright first column)."),
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
    dict(name="decode-speed", module="labml_nn/neox/cpu_decoding.py", symbol="prepare_for_cpu_decoding",
         make=decode, depends=("benchmarks/results/decode.json",),
         alt="Three panels of bars, decoding speed in tokens per second for our implementation, CTranslate2 and "
             "transformers, with a red line at the speed memory bandwidth allows: batch 1 on one thread, batch 1 "
             "on two, batch 8 on two; each bar is labelled with its tokens per second and its share of that "
             "ceiling.",
         caption="Decoding speed against the speed memory bandwidth allows (red): a step reads every weight "
                 "({{decode_mb_step}} MB here) once, so at {{decode_gb_s}} GB/s no batch-1 step can run faster "
                 "than {{decode_b1_ceiling}} tokens/s. Read it as: ours reaches {{decode_b1_share}} of that "
                 "ceiling at batch 1 and {{decode_b8_share}} at batch 8, where one read of the weights serves "
                 "eight tokens, so the ceiling is {{decode_b8_ceiling}}. From "
                 "<code>benchmarks/results/decode.json</code> (<code>python benchmarks/generate.py</code>; random "
                 "weights of Pythia-160M's shape, fp32, 2 CPU cores), ours prepared with "
                 "<code>prepare_for_cpu_decoding</code>."),
]

# The tensor-parallel page's figures and the numbers its prose prints (`{{tp_...}}`), in a file of their own
import figure_makers_tp  # noqa: E402

FIGURES += figure_makers_tp.FIGURES
VALUES = list(figure_makers_tp.VALUES) + [
    dict(module="labml_nn/neox/model.py", make=attention_numbers,
         depends=("labml_nn/neox/model.py", "labml_nn/neox/loader.py", "labml_nn/neox/tokenizer.py", DEMO)),
    dict(module="labml_nn/neox/cpu_decoding.py", make=decode_numbers, depends=("benchmarks/results/decode.json",)),
]
