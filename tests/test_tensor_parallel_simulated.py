r"""
`tensor_parallel.py` runs a model split over $N$ simulated ranks (each rank its slices, the all-reduce a sum).
Split with `merge.py`'s `split_part`, it computes what the merged model computes, for 1, 2 and 4 ranks and both
residual forms; and each of the page's three wrong ways is far off, where the right way is not.
"""

from pathlib import Path

import pytest
import torch

from labml_nn.neox import tensor_parallel as tp
from labml_nn.neox.checkpoint.parts import Part
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.model import NeoXModel, build_layers

TOLERANCE = 1e-5  # fp32 logits


def tiny_model(parallel_residual: bool, seed: int = 0):
    config = NeoXConfig(n_layers=2, d_model=32, n_heads=4, n_vocab=64, n_ctx=32, rotary_pct=0.5,
                        parallel_residual=parallel_residual, activation="gelu_tanh")
    torch.manual_seed(seed)
    modules = build_layers(config)
    # build_layers starts biases at zero and norms at one; random ones make every bias rule matter
    with torch.no_grad():
        for m in modules:
            for name, p in m.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(torch.randn_like(p) * 0.3)
    return config, modules


def share_summed_biases(ranks, seed: int = 1):
    # split_part gives rank 0 the whole summed bias and the others zeros; any split with the same sum is a valid
    # checkpoint, and a random one makes a simulation that forgot a rank's copy fail
    gen = torch.Generator().manual_seed(seed)
    for part, per_rank in ranks.items():
        if part.kind != "layer" or len(per_rank) == 1:
            continue
        for name in ("attention.dense.bias", "mlp.dense_4h_to_h.bias"):
            noise = [torch.randn(per_rank[0][name].shape, generator=gen) for _ in per_rank]
            mean = sum(noise) / len(noise)
            for t, n in zip(per_rank, noise):
                t[name] = t[name] + (n - mean)


@pytest.mark.parametrize("parallel_residual", [True, False], ids=["parallel residual", "sequential residual"])
@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_a_model_split_over_ranks_computes_what_the_merged_model_computes(n_ranks, parallel_residual):
    config, modules = tiny_model(parallel_residual)
    ranks = tp.split_modules(modules, n_ranks)
    assert all(len(per_rank) == n_ranks for per_rank in ranks.values())
    if parallel_residual:
        share_summed_biases(ranks)
    ids = torch.randint(0, config.n_vocab, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = NeoXModel(*modules)(ids)
        got = tp.model_over_ranks(ids, config, ranks)
        # and merging the ranks back (merge.py's rules) gives the same model
        merged = NeoXModel(*tp.merge_modules(config, ranks))(ids)
    assert (got - expected).abs().max().item() < TOLERANCE
    assert (merged - expected).abs().max().item() < TOLERANCE


def test_the_naive_chunk_of_the_fused_output_reads_other_heads_features():
    qkv = torch.arange(2 * 3 * 4).float()[None]  # 2 heads, q k v of 4 features each, laid out [H, 3, D]
    q, k, v = tp.qkv_by_head(qkv, 2, 4)
    assert q.tolist() == [[[0, 1, 2, 3], [12, 13, 14, 15]]]
    assert v.tolist() == [[[8, 9, 10, 11], [20, 21, 22, 23]]]
    q, _, _ = tp.qkv_by_thirds(qkv, 2, 4)
    assert q.tolist() == [[[0, 1, 2, 3], [4, 5, 6, 7]]]  # head 0's query and head 0's *key*


@pytest.mark.parametrize("parallel_residual", [True, False], ids=["parallel residual", "sequential residual"])
def test_each_wrong_way_gives_a_large_error_and_the_right_way_a_tiny_one(parallel_residual):
    config, modules = tiny_model(parallel_residual)
    ranks = tp.split_modules(modules, 2)
    if parallel_residual:
        share_summed_biases(ranks)
    ids = torch.randint(0, config.n_vocab, (1, 16), generator=torch.Generator().manual_seed(3))
    found = tp.errors(config, ranks, ids)
    assert found["right"]["max_abs"] < TOLERANCE
    wrong = ["qkv_chunk", "qkv_concat"] + (["bias_average"] if parallel_residual else [])
    for key in wrong:
        assert found[key]["max_abs"] > 0.05 * found["logit_scale"], (key, found)
    if not parallel_residual:
        # averaging is the sequential residual's own rule: not a mistake there
        assert found["bias_average"]["max_abs"] < TOLERANCE


def test_the_demo_as_its_files_hold_it():
    demo = Path(tp.__file__).parent / "demo"
    config, ranks = tp.ranks_of_checkpoint(demo)
    assert len(ranks[Part("embedding")]) == 2
    ids = torch.arange(1, 40)[None] * 97 % config.n_vocab
    found = tp.errors(config, ranks, ids)
    assert found["right"]["max_abs"] < 1e-4
    for key in ("qkv_chunk", "qkv_concat", "bias_average"):
        assert found[key]["max_abs"] > 1000 * found["right"]["max_abs"], (key, found)


def test_the_command_prints_the_table_and_refuses_a_missing_folder(capsys, tmp_path):
    from labml_nn.neox.cli import run_command

    assert run_command(tp.main, []) == 0
    out = capsys.readouterr().out
    assert "2 rank(s)" in out and "qkv_chunk" in out and "bias_average" in out
    assert run_command(tp.main, ["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
