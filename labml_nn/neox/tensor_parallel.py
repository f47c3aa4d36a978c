r"""
# How GPT-NeoX-20B is split over GPUs, and put back together

GPT-NeoX-20B was trained with *tensor parallelism*: every large matrix of every layer is cut into $N$ slices,
one per GPU ("rank"), and each rank computes with its own slice. The 20B checkpoint keeps that cut: it has two
files per layer, `layer_05-model_00-...` and `layer_05-model_01-...`. To run the model on one device, the
checkpoint package merges the slices (`checkpoint/merge.py`, whose rules this page uses without restating them).

This page runs the other direction, on plain tensors: it computes a model **split over $N$ simulated ranks**, each
rank with its own slices, the communication between GPUs written as what it computes (an all-reduce is a sum),
and checks that the result equals the merged model's. Along the way it shows the three mistakes a merge or a
reimplementation can make, each run on the demo model (`labml_nn/neox/demo`, shipped as two ranks, like 20B),
with the logit error it causes.

The whole idea (Megatron-LM, [Shoeybi et al. 2019](https://arxiv.org/abs/1909.08053)) is to cut each pair of
linear layers so that the ranks need to talk **once** per pair:

* the first layer of a pair is **column parallel**: rank $r$ holds a block of its *outputs* (rows of the
  weight `[out, in]`) and computes those outputs from the whole input. `query_key_value` and `dense_h_to_4h`.
* the second is **row parallel**: rank $r$ holds the *inputs* matching the outputs it computed (columns of the
  weight) and computes a partial sum of every output. `attention.dense` and `dense_4h_to_h`.
* between them nothing crosses ranks: attention works head by head, and each rank holds whole heads; GELU works
  feature by feature. After the row-parallel layer, an **all-reduce** adds the partial sums of all ranks.

Run `python -m labml_nn.neox.tensor_parallel` to print this page's numbers for the demo model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F

from labml_nn.neox.checkpoint.merge import merge_part, respell_mlp, split_part
from labml_nn.neox.checkpoint.parts import Part, all_parts
from labml_nn.neox.checkpoint.reader import open_checkpoint
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.loader import build_module, part_of
from labml_nn.neox.model import NeoXModel, RotaryEmbedding

# One rank's tensors of one part, `{name: tensor}`, and all ranks' tensors of every part
RankTensors = Dict[str, torch.Tensor]
Ranks = Dict[Part, List[RankTensors]]


# ## The ranks' tensors
#
# From a checkpoint, as its files hold them: rank $r$ of each part is what
# `layer_XX-model_0r-model_states.pt` holds (the checkpoint package reads the files and renames gpt-neox's
# newer MLP names to ours).
def ranks_of_checkpoint(path) -> tuple[NeoXConfig, Ranks]:
    checkpoint = open_checkpoint(path)
    ranks = {}
    for part in all_parts(checkpoint.config.n_layers):
        ranks[part] = [{name: t.float() for name, t in respell_mlp(tensors, "dense").items()
                        if not name.endswith("inv_freq")} for _, tensors in checkpoint.layout.load(part)]
    return checkpoint.config, ranks


# Or from a model in memory, cut into `n_ranks` with `merge.py`'s `split_part`, the inverse of its merge.
def split_modules(modules: Sequence[torch.nn.Module], n_ranks: int) -> Ranks:
    config = modules[0].config
    return {part_of(m): split_part(m.state_dict(), n_ranks, parallel_residual=config.parallel_residual)
            for m in modules}


# And back: the merged modules, `merge.py`'s `merge_part` on every part, the model that runs on one device.
def merge_modules(config: NeoXConfig, ranks: Ranks, merge=merge_part) -> List[torch.nn.Module]:
    modules = []
    for part, per_rank in ranks.items():
        merged, _ = merge(part, [(f"rank {r}", t) for r, t in enumerate(per_rank)],
                          parallel_residual=config.parallel_residual)
        module = build_module(part, config)
        module.load_state_dict(merged)
        modules.append(module)
    return modules


# ## The two kinds of cut
#
# A column-parallel layer on rank $r$: $y_r = x W_r^\top + b_r$, its own block of the outputs, computed from the
# whole input $x$. Its bias is cut like its rows.
def column_parallel(x: torch.Tensor, tensors: RankTensors, name: str) -> torch.Tensor:
    return F.linear(x, tensors[f"{name}.weight"], tensors[f"{name}.bias"])


# A row-parallel layer on rank $r$: $x_r W_r^\top$, a *partial* sum of every output from this rank's slice of the
# input. The bias is not added here: when it is added is the one rule that differs between the two residual
# forms (`layer_over_ranks`, below).
def row_parallel(x_r: torch.Tensor, tensors: RankTensors, name: str) -> torch.Tensor:
    return F.linear(x_r, tensors[f"{name}.weight"])


# The all-reduce. On GPUs it is `torch.distributed.all_reduce`, and every rank receives the sum of every rank's
# tensor; here the ranks are a list, and it is a sum.
def all_reduce(partials: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(partials)).sum(0)


# ## Queries, keys and values of a rank's heads
#
# `query_key_value`'s output is laid out head by head, `[H, 3, D]`: head 0's query, key and value, then head 1's.
# Rank $r$ of $N$ holds the rows of a contiguous block of $H/N$ heads, so its output, `[B, T, 3C/N]`, is the same
# layout for its heads, `[B, T, H/N, 3, D]`. This is why the merged weight is the ranks' weights one after the
# other: the heads stay in order.
def qkv_by_head(qkv: torch.Tensor, n_heads: int, d_head: int):
    q, k, v = qkv.view(*qkv.shape[:-1], n_heads, 3, d_head).unbind(-2)
    return q, k, v


# The naive reading, `q, k, v = qkv.chunk(3, dim=-1)`, takes the first third of the features as the queries. With
# the `[H, 3, D]` layout that third is heads 0's q, k, v, head 1's, and a part of head 2's: every "head" it makes
# mixes queries, keys and values. It runs without an error; the first wrong way (at the end) runs it.
def qkv_by_thirds(qkv: torch.Tensor, n_heads: int, d_head: int):
    q, k, v = (part.reshape(*qkv.shape[:-1], n_heads, d_head) for part in qkv.chunk(3, dim=-1))
    return q, k, v


# ## Attention and the FFN on one rank
#
# Attention on rank $r$: its heads' queries, keys and values (column parallel), attention within each head, as in
# `model.py`'s `Attention`, then this rank's columns of `dense` (row parallel): a partial sum, without the bias.
# No rank needs another's heads.
def attention_on_rank(x: torch.Tensor, tensors: RankTensors, config: NeoXConfig, n_ranks: int,
                      split_qkv: Callable = qkv_by_head) -> torch.Tensor:
    batch_size, n_tokens, _ = x.shape
    n_heads = config.n_heads // n_ranks
    qkv = column_parallel(x, tensors, "attention.query_key_value")
    q, k, v = split_qkv(qkv, n_heads, config.d_head)
    rotary = RotaryEmbedding(config.d_rotary, config.rotary_base, config.rotary_scaling)
    q, k = rotary(q, 0), rotary(k, 0)
    # `[B, H/N, T, D]` for the kernel, then back to `[B, T, C/N]`: this rank's slice of the heads' outputs
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=n_tokens > 1)
    out = out.transpose(1, 2).reshape(batch_size, n_tokens, n_heads * config.d_head)
    return row_parallel(out, tensors, "attention.dense")


# The FFN on rank $r$: its block of the $4C$ hidden features (column parallel), GELU feature by feature, and its
# columns of `dense_4h_to_h` (row parallel). Again a partial sum without the bias.
def mlp_on_rank(x: torch.Tensor, tensors: RankTensors, config: NeoXConfig) -> torch.Tensor:
    approximate = "tanh" if config.activation == "gelu_tanh" else "none"
    hidden = F.gelu(column_parallel(x, tensors, "mlp.dense_h_to_4h"), approximate=approximate)
    return row_parallel(hidden, tensors, "mlp.dense_4h_to_h")


# Layer norms are replicated: every rank holds the whole norm and normalises the whole input.
def layer_norm(x: torch.Tensor, tensors: RankTensors, name: str, config: NeoXConfig) -> torch.Tensor:
    return F.layer_norm(x, (config.d_model,), tensors[f"{name}.weight"], tensors[f"{name}.bias"],
                        config.layer_norm_eps)


# ## A layer over the ranks, and where the all-reduce sits
#
# **Parallel residual** (20B, Pythia): attention and the FFN read the same input, so their partial sums can share
# **one** all-reduce per layer. gpt-neox lets each rank add its own copy of the two row-parallel biases before
# that sum, so the bias the layer adds is the *sum* of the ranks' copies, and merging sums them:
#
# $$x_{l+1} = x_l + \sum_r \big(\text{attn}_r + b^{\text{dense}}_r + \text{ffn}_r + b^{\text{4h→h}}_r\big)$$
#
# **Sequential residual**: the FFN reads attention's result, so there are **two** all-reduces, and the full bias
# is added once after each; the ranks' copies are replicated, and merging keeps one (averages them):
#
# $$h = x_l + \sum_r \text{attn}_r + b^{\text{dense}},\qquad x_{l+1} = h + \sum_r \text{ffn}_r(\operatorname{LN}_2(h))
#   + b^{\text{4h→h}}$$
def layer_over_ranks(x: torch.Tensor, ranks: List[RankTensors], config: NeoXConfig,
                     split_qkv: Callable = qkv_by_head) -> torch.Tensor:
    n = len(ranks)
    if config.parallel_residual:
        partials = []
        for t in ranks:
            ln1 = layer_norm(x, t, "input_layernorm", config)
            ln2 = ln1 if config.tied_layernorms else layer_norm(x, t, "post_attention_layernorm", config)
            partials.append(attention_on_rank(ln1, t, config, n, split_qkv) + t["attention.dense.bias"]
                            + mlp_on_rank(ln2, t, config) + t["mlp.dense_4h_to_h.bias"])
        return x + all_reduce(partials)
    attn = all_reduce([attention_on_rank(layer_norm(x, t, "input_layernorm", config), t, config, n, split_qkv)
                       for t in ranks])
    h = x + attn + ranks[0]["attention.dense.bias"]
    ffn = all_reduce([mlp_on_rank(layer_norm(h, t, "post_attention_layernorm", config), t, config) for t in ranks])
    return h + ffn + ranks[0]["mlp.dense_4h_to_h.bias"]


# ## The whole model over the ranks
#
# The embedding and the readout are cut by vocabulary rows too. A rank looks up only the ids its rows hold and
# gives zeros for the others; the all-reduce fills in the rest. The readout is column parallel with no bias: each
# rank computes the logits of its block of the vocabulary, and the blocks are gathered side by side.
def model_over_ranks(ids: torch.Tensor, config: NeoXConfig, ranks: Ranks,
                     split_qkv: Callable = qkv_by_head) -> torch.Tensor:
    by_kind = {}
    for part, per_rank in ranks.items():
        by_kind.setdefault(part.kind, []).append(per_rank)
    embeddings = [t["word_embeddings.weight"] for t in by_kind["embedding"][0]]
    start = 0
    looked_up = []
    for rows in embeddings:
        mine = (ids >= start) & (ids < start + rows.shape[0])
        looked_up.append(torch.where(mine[..., None], rows[(ids - start).clamp(0, rows.shape[0] - 1)], 0.0))
        start += rows.shape[0]
    x = all_reduce(looked_up)
    for per_rank in by_kind["layer"]:
        x = layer_over_ranks(x, per_rank, config, split_qkv)
    x = layer_norm(x, by_kind["norm"][0][0], "norm", config)
    return torch.cat([F.linear(x, t["final_linear.weight"]) for t in by_kind["readout"][0]], dim=-1)


# ## Three wrong ways, and what each costs
#
# Each runs on the demo's two ranks, on a line of *Macbeth* ({{tp_n_tokens}} words), and is compared with the
# merged model, whose largest logit is {{tp_logit_scale}}. (These numbers are computed while the site is built, by
# `errors` below; `python -m labml_nn.neox.tensor_parallel` prints them.)
#
# * **The right way**, the ranks as the files hold them: the largest logit error is {{tp_right}}, rounding.
# * **`chunk(3)` of the fused output** (`qkv_by_thirds` on each rank): {{tp_qkv_chunk}}, and the most likely next
#   token changes at {{tp_qkv_chunk_changed}} of the positions.
# * **The fused weight merged as `[3, H, D]`**: each rank's rows taken as its queries, keys and values (thirds),
#   and all ranks' queries written first, then the keys, then the values: {{tp_qkv_concat}}, the next token
#   changed at {{tp_qkv_concat_changed}}. (Concatenating on the wrong *dim* fails on the shapes: that mistake is
#   loud. These are silent.)
# * **The row-parallel biases averaged instead of summed**, the sequential residual's rule applied to a parallel
#   residual: {{tp_bias_average}}, {{tp_bias_average_ratio}} times the right way's error. It is the smallest of the
#   three here because the demo's biases are small (its rank 1 holds zeros, as `split_part` writes them), so
#   averaging halves a small number; the next token changed at {{tp_bias_average_changed}} of the positions.
def merge_qkv_by_thirds(part: Part, ranks, parallel_residual: bool):
    merged, records = merge_part(part, ranks, parallel_residual=parallel_residual)
    if part.kind == "layer":
        for name in ("attention.query_key_value.weight", "attention.query_key_value.bias"):
            thirds = [t[name].chunk(3, dim=0) for _, t in ranks]
            merged[name] = torch.cat([third[i] for i in range(3) for third in thirds], dim=0)
    return merged, records


def merge_biases_averaged(part: Part, ranks, parallel_residual: bool):
    return merge_part(part, ranks, parallel_residual=False)


def logit_error(got: torch.Tensor, expected: torch.Tensor) -> dict:
    return {"max_abs": float((got - expected).abs().max()),
            "top1_changed": float((got.argmax(-1) != expected.argmax(-1)).float().mean())}


# Every number of this page for the ranks of a model and a text's ids: the right way's error, each wrong way's,
# and the logits' own scale for comparison.
def errors(config: NeoXConfig, ranks: Ranks, ids: torch.Tensor) -> dict:
    with torch.no_grad():
        merged = NeoXModel(*merge_modules(config, ranks))(ids)
        return {
            "n_ranks": len(ranks[Part("embedding")]),
            "logit_scale": float(merged.abs().max()),
            "right": logit_error(model_over_ranks(ids, config, ranks), merged),
            "qkv_chunk": logit_error(model_over_ranks(ids, config, ranks, split_qkv=qkv_by_thirds), merged),
            "qkv_concat": logit_error(NeoXModel(*merge_modules(config, ranks, merge_qkv_by_thirds))(ids), merged),
            "bias_average": logit_error(NeoXModel(*merge_modules(config, ranks, merge_biases_averaged))(ids),
                                        merged),
        }


# ## The command
#
# `python -m labml_nn.neox.tensor_parallel [--checkpoint FOLDER] [--text TEXT]` prints the table above for a
# checkpoint's own ranks (the demo's two by default). All ranks are held in memory in fp32: a small model's job.
def main(argv=None):
    import argparse

    from labml_nn.neox.cli import DEMO_CHECKPOINT
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    parser = argparse.ArgumentParser(
        prog="python -m labml_nn.neox.tensor_parallel",
        description="Run a checkpoint split over its tensor-parallel ranks (simulated, the all-reduce a sum) and "
                    "merged, and print the logit error of the right way and of three wrong ways.")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT,
                        help="a gpt-neox checkpoint folder with one file per rank (default: the demo model)")
    parser.add_argument("--text", default="Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from "
                                          "day to day", help="the text whose logits are compared")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_dir():
        parser.error(f"{args.checkpoint} is not a folder; pass --checkpoint with a gpt-neox checkpoint folder")
    config, ranks = ranks_of_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(args.checkpoint)
    ids = torch.tensor([encode(tokenizer, args.text)])
    found = errors(config, ranks, ids)
    print(f"{args.checkpoint}: {found['n_ranks']} rank(s), largest |logit| {found['logit_scale']:.3g}")
    for key in ("right", "qkv_chunk", "qkv_concat", "bias_average"):
        print(f"{key:>13}: max |logit error| {found[key]['max_abs']:.3g}, "
              f"next token changed at {found[key]['top1_changed']:.0%} of positions")


if __name__ == "__main__":
    import sys

    from labml_nn.neox.cli import run_command

    sys.exit(run_command(main))
