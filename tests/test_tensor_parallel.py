r"""
A tensor-parallel checkpoint computes what its ranks compute together, and the merged model computes the same.

This is the oracle for the merge rules that does not share their assumptions. Each rank's tensors are drawn at
random (nothing is split from a whole model, so no rule for splitting is assumed), and the test computes, in
float64, what gpt-neox's forward pass does with them (`megatron/model/transformer.py`): every rank runs its own
slice of each layer, column-parallel layers on its rows, attention on its block of heads, row-parallel layers on
its columns, and the partial outputs meet in an all-reduce (a sum over ranks):

* **parallel residual** (`gpt_j_residual: true`): each rank adds its own copy of the row-parallel biases to its
  partial output, and one all-reduce sums attention and MLP together:
  $x + \sum_r \big(\text{attn}_r + b^{\text{dense}}_r + \text{mlp}_r + b^{\text{4h→h}}_r\big)$;
* **sequential residual**: the all-reduce comes first and the full bias is added once after it:
  $a = x + \sum_r \text{attn}_r + b^{\text{dense}}$, then
  $a + \sum_r \text{mlp}_r(\operatorname{LN}(a)) + b^{\text{4h→h}}$.

The embedding is split by vocabulary rows (a rank looks up the ids it holds, the all-reduce adds the rest), the
readout by vocabulary rows too (its logits are gathered). The loader's merged model must give these logits.
"""

import math

import pytest
import torch

from labml_nn.neox.loader import LayerLoader

V, C, H, L, T = 64, 32, 4, 2, 10
D = C // H
ROTARY = 4          # features of each head that rotate
EPS = 1e-5


def random_ranks(tp: int, parallel_residual: bool, seed: int = 0):
    r"""
    The tensors of each rank, `{part: [rank -> {name: tensor}]}`, in float64. Replicated tensors (layer norms,
    and the row-parallel biases with the sequential residual) are the same on every rank, as training keeps them;
    with the parallel residual each rank's row-parallel bias is its own.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    def norm():
        return {"weight": 1 + rand(C, scale=0.1), "bias": rand(C, scale=0.1)}

    ranks = {"embedding": [{"word_embeddings.weight": rand(V // tp, C)} for _ in range(tp)]}
    for i in range(L):
        shared = {f"{n}.{k}": v for n in ("input_layernorm", "post_attention_layernorm") for k, v in norm().items()}
        row_biases = {"attention.dense.bias": rand(C, scale=0.1), "mlp.dense_4h_to_h.bias": rand(C, scale=0.1)}
        layer = []
        for _ in range(tp):
            tensors = dict(shared)
            tensors.update({
                "attention.query_key_value.weight": rand(3 * C // tp, C),
                "attention.query_key_value.bias": rand(3 * C // tp),
                "attention.dense.weight": rand(C, C // tp),
                "mlp.dense_h_to_4h.weight": rand(4 * C // tp, C), "mlp.dense_h_to_4h.bias": rand(4 * C // tp),
                "mlp.dense_4h_to_h.weight": rand(C, 4 * C // tp),
                "attention.rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, ROTARY, 2).double() / ROTARY)})
            tensors.update({k: rand(C, scale=0.1) for k in row_biases} if parallel_residual else row_biases)
            layer.append(tensors)
        ranks[f"layer {i}"] = layer
    final = {f"norm.{k}": v for k, v in norm().items()}
    ranks["norm"] = [dict(final) for _ in range(tp)]
    ranks["readout"] = [{"final_linear.weight": rand(V // tp, C)} for _ in range(tp)]
    return ranks


def layer_norm(x, p, name):
    return torch.nn.functional.layer_norm(x, (C,), p[f"{name}.weight"], p[f"{name}.bias"], EPS)


def rotate(x, positions):
    # Rotary embedding on the first ROTARY features of each head, "rotate half" pairs (i, i + ROTARY/2)
    theta = 1.0 / 10000 ** (torch.arange(0, ROTARY, 2).double() / ROTARY)
    angles = positions[:, None] * theta[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
    rot, rest = x[..., :ROTARY], x[..., ROTARY:]
    half = ROTARY // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    return torch.cat([rot * cos + rotated * sin, rest], -1)


def rank_attention(h, p):
    # This rank's heads: `query_key_value` gives [T, H/N, 3, D], head by head
    qkv = (h @ p["attention.query_key_value.weight"].T + p["attention.query_key_value.bias"]).view(T, -1, 3, D)
    positions = torch.arange(T, dtype=torch.float64)
    q, k, v = rotate(qkv[:, :, 0], positions), rotate(qkv[:, :, 1], positions), qkv[:, :, 2]
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, -1)
    # Row-parallel: this rank's columns of `dense`, without the bias
    return out @ p["attention.dense.weight"].T


def rank_mlp(h, p):
    hidden = torch.nn.functional.gelu(h @ p["mlp.dense_h_to_4h.weight"].T + p["mlp.dense_h_to_4h.bias"],
                                      approximate="tanh")
    return hidden @ p["mlp.dense_4h_to_h.weight"].T


def tensor_parallel_logits(ranks, ids, parallel_residual: bool):
    tp = len(ranks["embedding"])
    rows = V // tp
    # Vocabulary-parallel embedding: each rank looks up the ids in its rows, the others give zeros
    x = sum(torch.where(((ids >= r * rows) & (ids < (r + 1) * rows))[:, None],
                        p["word_embeddings.weight"][(ids - r * rows).clamp(0, rows - 1)], 0.0)
            for r, p in enumerate(ranks["embedding"]))
    for i in range(L):
        layer = ranks[f"layer {i}"]
        if parallel_residual:
            x = x + sum(rank_attention(layer_norm(x, p, "input_layernorm"), p) + p["attention.dense.bias"]
                        + rank_mlp(layer_norm(x, p, "post_attention_layernorm"), p) + p["mlp.dense_4h_to_h.bias"]
                        for p in layer)
        else:
            x = x + sum(rank_attention(layer_norm(x, p, "input_layernorm"), p) for p in layer) \
                + layer[0]["attention.dense.bias"]
            x = x + sum(rank_mlp(layer_norm(x, p, "post_attention_layernorm"), p) for p in layer) \
                + layer[0]["mlp.dense_4h_to_h.bias"]
    x = layer_norm(x, ranks["norm"][0], "norm")
    return torch.cat([x @ p["final_linear.weight"].T for p in ranks["readout"]], -1)


def write_pipeline_checkpoint(folder, ranks, parallel_residual: bool):
    tp = len(ranks["embedding"])
    step = folder / "global_step1"
    step.mkdir(parents=True)
    (folder / "latest").write_text("global_step1\n")
    (folder / "configs").mkdir()
    (folder / "configs" / "tiny.yml").write_text(
        f"num_layers: {L}\nhidden_size: {C}\nnum_attention_heads: {H}\nseq_length: 64\n"
        f"max_position_embeddings: 64\nnorm: layernorm\npos_emb: rotary\nrotary_pct: {ROTARY / D}\n"
        f"no_weight_tying: true\ngpt_j_residual: {str(parallel_residual).lower()}\nbias_gelu_fusion: true\n"
        f"layernorm_epsilon: {EPS}\nmodel_parallel_size: {tp}\n")
    # The pipeline index of each part: 0 embedding, i + 2 layer i, L + 3 final norm, L + 4 readout
    index = {"embedding": 0, "norm": L + 3, "readout": L + 4, **{f"layer {i}": i + 2 for i in range(L)}}
    for part, per_rank in ranks.items():
        for r, tensors in enumerate(per_rank):
            torch.save({k: v.float() for k, v in tensors.items()},
                       step / f"layer_{index[part]:02d}-model_{r:02d}-model_states.pt")


@pytest.mark.parametrize("parallel_residual", [True, False], ids=["parallel residual", "sequential residual"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_merged_model_computes_what_the_ranks_compute_together(tmp_path, tp, parallel_residual):
    ranks = random_ranks(tp, parallel_residual)
    # The checkpoint is fp32; the oracle computes on the same fp32-rounded values, in float64
    ranks = {part: [{k: v.float().double() for k, v in p.items()} for p in per_rank]
             for part, per_rank in ranks.items()}
    write_pipeline_checkpoint(tmp_path / "ckpt", ranks, parallel_residual)
    ids = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(1))
    expected = tensor_parallel_logits(ranks, ids, parallel_residual)

    model = torch.nn.Sequential(*LayerLoader(tmp_path / "ckpt", dtype=torch.float64, progress=False).load())
    with torch.no_grad():
        got = model(ids[None])[0]
    assert got.shape == expected.shape
    # float64 throughout, except that the model keeps its rotary angles' cos and sin in fp32 (errors ~1e-7)
    assert (got - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_the_oracle_tells_the_bias_rules_apart():
    # With the parallel residual the ranks' row-parallel biases add up; a merge that averaged them instead (the
    # sequential rule) would change the logits far beyond the tolerance above, so the test above can fail
    ranks = random_ranks(2, parallel_residual=True)
    ids = torch.arange(T) % V
    right = tensor_parallel_logits(ranks, ids, parallel_residual=True)
    for i in range(L):
        for name in ("attention.dense.bias", "mlp.dense_4h_to_h.bias"):
            mean = sum(p[name] for p in ranks[f"layer {i}"]) / 2
            for p in ranks[f"layer {i}"]:
                p[name] = mean / 2
    assert (tensor_parallel_logits(ranks, ids, parallel_residual=True) - right).abs().max() > 1e-3
