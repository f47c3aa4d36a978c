r"""
# The tensor-parallel page's figures and numbers, from the demo's own two ranks

Every function reads `labml_nn/neox/demo` (two tensor-parallel ranks, as the 20B checkpoint) through
`labml_nn/neox/tensor_parallel.py` and `checkpoint/merge.py`, so the figures show the files' real cuts and the
numbers are what the page's code computes.
"""

from __future__ import annotations

from pathlib import Path

DEMO = "labml_nn/neox/demo"
TEXT = "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day"
RANK_COLOURS = ("#3f6fd1", "#e3843b")
ROLE_COLOURS = {"q": "#6c9be8", "k": "#6cc38a", "v": "#e8a86c"}


def _plt():
    import matplotlib.pyplot as plt
    return plt


# ## Who holds what: layer 0's four matrices, as the two files hold them
#
# Each matrix is drawn `[out, in]` as `nn.Linear` stores it, $|W|$ in the colour of the rank whose file holds
# that block: the column-parallel layers are cut across their rows (outputs), the row-parallel ones across their
# columns (inputs).
def cuts(root: Path):
    import numpy as np
    import torch
    from labml_nn.neox import tensor_parallel as tp
    from labml_nn.neox.checkpoint.merge import RULES
    from labml_nn.neox.checkpoint.parts import Part
    from matplotlib.colors import LinearSegmentedColormap

    config, ranks = tp.ranks_of_checkpoint(root / DEMO)
    layer = ranks[Part("layer", 0)]
    names = [("attention.query_key_value", "column parallel"), ("mlp.dense_h_to_4h", "column parallel"),
             ("attention.dense", "row parallel"), ("mlp.dense_4h_to_h", "row parallel")]
    plt = _plt()
    fig = plt.figure(figsize=(6.4, 6.6))
    grid = fig.add_gridspec(2, 2, height_ratios=[4, 1.35], width_ratios=[1, 1], hspace=0.45, wspace=0.35)
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 0]),
            fig.add_subplot(grid[1, 1])]
    maps = [LinearSegmentedColormap.from_list(f"rank{r}", ["#ffffff", c]) for r, c in enumerate(RANK_COLOURS)]
    for ax, (name, kind) in zip(axes, names):
        dim = RULES[f"{name}.weight"][1]
        blocks = [t[f"{name}.weight"].abs() for t in layer]
        whole = torch.cat(blocks, dim=dim)
        top = float(whole.max())
        start = 0
        for r, block in enumerate(blocks):
            size = block.shape[dim]
            extent = ((0, block.shape[1], start + size, start) if dim == 0 else
                      (start, start + size, block.shape[0], 0))
            ax.imshow(block.numpy(), cmap=maps[r], vmin=0, vmax=top, extent=extent, interpolation="nearest")
            middle = start + size / 2
            label = f"rank {r}"
            if dim == 0:
                ax.text(block.shape[1] / 2, middle, label, ha="center", va="center", fontsize=11,
                        color=RANK_COLOURS[r], fontweight="bold", bbox=dict(fc="white", ec="none", alpha=0.8))
            else:
                ax.text(middle, block.shape[0] / 2, label, ha="center", va="center", fontsize=11, rotation=90,
                        color=RANK_COLOURS[r], fontweight="bold", bbox=dict(fc="white", ec="none", alpha=0.8))
            start += size
        if dim == 0:
            ax.axhline(blocks[0].shape[0], color="#222", lw=1.5)
            ax.set_xlim(0, whole.shape[1])
            ax.set_ylim(whole.shape[0], 0)
        else:
            ax.axvline(blocks[0].shape[1], color="#222", lw=1.5)
            ax.set_xlim(0, whole.shape[1])
            ax.set_ylim(whole.shape[0], 0)
        ax.set_aspect("equal")
        ax.set_title(f"{name.split('.')[-1]} {list(whole.shape)}\n{kind}: cut on dim {dim}", fontsize=11)
        ax.set_xlabel("in", fontsize=11)
        ax.set_ylabel("out", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.set_xticks(np.linspace(0, whole.shape[1], 3 if whole.shape[1] <= 256 else 5))
    return fig


# ## The rows of `query_key_value`: per head, and what `chunk(3)` makes of them
#
# The row numbers themselves go through the code: `qkv_by_head` and `qkv_by_thirds` read an output whose feature
# $i$ is the number $i$, and `merge_qkv_by_thirds` merges ranks whose rows hold their own global row numbers. So
# each strip is the code's own answer to "which row is this?".
def qkv_layout(root: Path):
    import torch
    from labml_nn.neox import tensor_parallel as tp
    from labml_nn.neox.checkpoint.merge import PART_TENSORS
    from labml_nn.neox.checkpoint.parts import Part

    config, ranks = tp.ranks_of_checkpoint(root / DEMO)
    n_ranks, n_heads, d = len(ranks[Part("embedding")]), config.n_heads, config.d_head
    rows = 3 * config.d_model

    def roles(parts):  # row -> (q/k/v, head), from the parts a reading of the output gives
        out = {}
        for role, part in zip("qkv", parts):
            for head in range(n_heads):
                out.update({i: (role, head) for i in part[head].long().tolist()})
        return out

    arange = torch.arange(rows).float()
    true_role = roles(tp.qkv_by_head(arange, n_heads, d))
    chunk_role = roles(tp.qkv_by_thirds(arange, n_heads, d))
    per_rank = rows // n_ranks
    fake = [(f"rank {r}", {**{n: torch.zeros(1, 1) for n in PART_TENSORS["layer"]},
                           "attention.query_key_value.weight": arange[r * per_rank:(r + 1) * per_rank, None],
                           "attention.query_key_value.bias": arange[r * per_rank:(r + 1) * per_rank]})
            for r in range(n_ranks)]
    merged, _ = tp.merge_qkv_by_thirds(Part("layer", 0), fake, parallel_residual=True)
    merged_rows = merged["attention.query_key_value.bias"].long().tolist()
    strips = [("the true layout, per head [H, 3, D]; rank 0's rows, then rank 1's",
               [true_role[x] for x in range(rows)]),
              ("what chunk(3) of the output takes each row for", [chunk_role[x] for x in range(rows)]),
              ("a merge by thirds: the row that lands at each place",
               [true_role[merged_rows[x]] for x in range(rows)])]
    plt = _plt()
    fig, axes = plt.subplots(len(strips), 1, figsize=(6.4, 3.9))
    for ax, (title, labels) in zip(axes, strips):
        # a box and a label on each run of rows of one head and one role
        start = 0
        for x in range(1, len(labels) + 1):
            if x == len(labels) or labels[x] != labels[start]:
                role, head = labels[start]
                ax.add_patch(plt.Rectangle((start, 0), x - start, 1, color=ROLE_COLOURS[role], lw=0))
                if x - start >= d:
                    ax.text((start + x) / 2, 0.5, f"{role}{head}", ha="center", va="center", fontsize=10)
                ax.axvline(start, color="white", lw=0.8)
                start = x
        ax.axvline(per_rank, ymin=-0.25, ymax=1.25, color="#222", lw=2, clip_on=False)
        ax.set_xlim(0, rows)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xticks(range(0, rows + 1, per_rank // 2))
        ax.tick_params(labelsize=10)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.set_title(title, fontsize=11, loc="left")
    axes[-1].set_xlabel("row of the merged weight (output feature); q/k/v and head of the row there", fontsize=10)
    fig.tight_layout(h_pad=0.6)
    return fig


# ## Where the all-reduce sits, in each residual form
def all_reduce(root: Path):
    from labml_nn.neox import tensor_parallel as tp
    from labml_nn.neox.checkpoint.parts import Part

    config, ranks = tp.ranks_of_checkpoint(root / DEMO)
    n_ranks = len(ranks[Part("embedding")])
    c, heads = config.d_model, config.n_heads // n_ranks
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 4.6))

    def box(ax, x, y, text, colour="#eeeeee", size=10):
        ax.text(x, y, text, ha="center", va="center", fontsize=size,
                bbox=dict(boxstyle="round,pad=0.3", fc=colour, ec="#444"))

    def arrow(ax, a, b):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color="#555", lw=1))

    # the residual: from a box's left edge, down the left margin, into the addition's left edge
    def skip(ax, top, bottom, side=-1):
        ax.plot([0.75 * side, 1.9 * side, 1.9 * side], [top, top, bottom], color="#999", lw=1)
        ax.annotate("", xy=(0.7 * side, bottom), xytext=(1.9 * side, bottom),
                    arrowprops=dict(arrowstyle="->", color="#999", lw=1))

    for ax, parallel in zip(axes, (True, False)):
        ax.set_xlim(-2, 2)
        ax.set_ylim(-7.6, 0.6)
        ax.axis("off")
        box(ax, 0, 0, "x (every rank)")
        xs = (-1.05, 1.05)
        if parallel:
            for r, x in enumerate(xs):
                colour = "#dbe5f8" if r == 0 else "#fbe3d2"
                arrow(ax, (0, -0.3), (x, -0.8))
                box(ax, x, -1.1, f"rank {r}\nLN, heads\n{r * heads}–{(r + 1) * heads - 1}", colour)
                sub = "₀₁₂₃"[r]
                box(ax, x, -2.6, f"Attn{sub} + b{sub}\n+ FFN{sub} + b{sub}", colour)
                arrow(ax, (x, -1.6), (x, -2.2))
                arrow(ax, (x, -3.0), (0, -3.9))
            box(ax, 0, -4.2, "all-reduce: Σ over ranks", "#fff3b0")
            box(ax, 0, -5.6, "+ x")
            arrow(ax, (0, -4.5), (0, -5.3))
            skip(ax, 0, -5.6)
            ax.text(0, -6.6, "one all-reduce a layer;\nmerged bias = Σ of the bᵣ", ha="center", va="center",
                    fontsize=10)
            ax.set_title("parallel residual (20B)", fontsize=11)
        else:
            for y, what in ((-1.0, "Attn"), (-4.0, "FFN")):
                for r, x in enumerate(xs):
                    colour = "#dbe5f8" if r == 0 else "#fbe3d2"
                    arrow(ax, (0, y + 0.7), (x, y + 0.25))
                    box(ax, x, y, f"{what}{'₀₁₂₃'[r]}", colour)
                    arrow(ax, (x, y - 0.3), (0, y - 0.95))
                box(ax, 0, y - 1.25, "Σ, then + b", "#fff3b0")
                box(ax, 0, y - 2.2, "+ residual")
                arrow(ax, (0, y - 1.55), (0, y - 1.95))
                skip(ax, 0 if what == "Attn" else -3.2, y - 2.2, -1 if what == "Attn" else 1)
            ax.text(0, -7.2, "two all-reduces a layer;\nthe bias is added once:\nreplicated, merged = any copy",
                    ha="center", va="center", fontsize=10)
            ax.set_title("sequential residual", fontsize=11)
    fig.tight_layout()
    return fig


# ## The three wrong ways, run on the demo
def wrong_ways(root: Path):
    from matplotlib.ticker import FuncFormatter

    found = _errors(root)
    rows = [("right: the ranks as they are", "right"), ("chunk(3) of the output", "qkv_chunk"),
            ("weight merged as [3, H, D]", "qkv_concat"), ("row biases averaged", "bias_average")]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 2.7))
    for y, (label, key) in enumerate(rows):
        value = found[key]["max_abs"]
        ax.barh(len(rows) - 1 - y, value, color="#3f6fd1" if key == "right" else "#d62728", height=0.6)
        changed = found[key]["top1_changed"]
        ax.text(value * 1.3, len(rows) - 1 - y, f"{value:.2g}" + (f"; {changed:.0%} changed" if key != "right"
                                                                   else ""),
                va="center", fontsize=10)
    ax.set_xscale("log")
    ax.set_xlim(1e-7, 3e3)
    # tick labels as plain numbers: a superscript exponent would be set at 70% of the text's size
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xticks([1e-6, 1e-4, 1e-2, 1, 100])
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=10)
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel(f"largest |logit error| (largest |logit| {found['logit_scale']:.1f});\n"
                  "share of positions whose next token changed", fontsize=10)
    fig.tight_layout()
    return fig


def _errors(root: Path) -> dict:
    import torch
    from labml_nn.neox import tensor_parallel as tp
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    ids = torch.tensor([encode(load_tokenizer(root / DEMO), TEXT)])
    return tp.errors(*tp.ranks_of_checkpoint(root / DEMO), ids)


# ## The numbers the page prints
def numbers(root: Path) -> dict:
    found = _errors(root)
    out = {"tp_n_tokens": len(TEXT.split()), "tp_logit_scale": f"{found['logit_scale']:.1f}"}
    for key in ("right", "qkv_chunk", "qkv_concat", "bias_average"):
        value = found[key]["max_abs"]
        mantissa, exponent = f"{value:.1e}".split("e")
        out[f"tp_{key}"] = f"{value:.2g}" if value >= 1e-2 else f"{mantissa} × 10<sup>{int(exponent)}</sup>"
        out[f"tp_{key}_changed"] = f"{found[key]['top1_changed']:.0%}"
        out[f"tp_{key}_ratio"] = f"{value / max(found['right']['max_abs'], 1e-12):,.0f}"
    return out


DEPENDS = ("labml_nn/neox/tensor_parallel.py", "labml_nn/neox/checkpoint/merge.py", "labml_nn/neox/model.py",
           DEMO)
MODULE = "labml_nn/neox/tensor_parallel.py"

FIGURES = [
    dict(name="tp-cuts", module=MODULE, symbol="column_parallel", make=cuts, depends=DEPENDS,
         alt="Layer 0's four weight matrices of the demo model, coloured by the rank whose file holds each block: "
             "query_key_value and dense_h_to_4h are cut into a top and a bottom half of rows, attention.dense and "
             "dense_4h_to_h into a left and a right half of columns.",
         caption="Layer 0 of the demo as its two files hold it (<code>layer_02-model_00</code> blue, "
                 "<code>-model_01</code> orange), $|W|$ drawn <code>[out, in]</code>: the first layer of each pair "
                 "is cut by outputs, the second by inputs."),
    dict(name="tp-qkv-layout", module=MODULE, symbol="qkv_by_thirds", make=qkv_layout, depends=DEPENDS,
         alt="Three strips of the 768 rows of query_key_value. Top: head by head, q0 k0 v0 q1 k1 v1 ..., rank 0 "
             "holding heads 0 to 3 and rank 1 heads 4 to 7. Middle: chunk(3)'s thirds, each mixing queries, keys "
             "and values of several heads. Bottom: a merge by thirds, interleaving the ranks' rows wrongly.",
         caption="Which query, key or value (and of which head) each row of <code>query_key_value</code> is. "
                 "Top, the true layout; middle, what <code>chunk(3)</code> of the output reads as q, k and v; "
                 "bottom, a merge that treats each rank's rows as <code>[3, H/N, D]</code>."),
    dict(name="tp-all-reduce", module=MODULE, symbol="layer_over_ranks", make=all_reduce, depends=DEPENDS,
         alt="Two diagrams. Parallel residual: x goes to rank 0 and rank 1, each computes attention and FFN of its "
             "heads and adds its own bias copies, one all-reduce sums them, and x is added. Sequential: attention "
             "on both ranks, a sum and the bias, the residual; then the FFN likewise: two all-reduces.",
         caption="Where the ranks meet: the parallel residual needs one all-reduce a layer, and each rank's bias "
                 "copy is inside the sum; the sequential residual needs two, each followed by the whole bias."),
    dict(name="tp-wrong-ways", module=MODULE, symbol="errors", make=wrong_ways, depends=DEPENDS,
         alt="Bars on a log scale of the largest logit error on the demo: the right way's is rounding error, "
             "chunk(3) and the [3, H, D] merge are as large as the logits themselves, the averaged biases smaller "
             "but still far above rounding.",
         caption="Each wrong way run on the demo model on a line of <em>Macbeth</em>, against the merged model "
                 "(<code>errors</code>); the right way's error is rounding."),
]

VALUES = [dict(module=MODULE, make=numbers, depends=DEPENDS)]
