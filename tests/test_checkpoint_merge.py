r"""
Merging tensor-parallel ranks: what the rules are, and that they give back the unpartitioned weights exactly,
for any number of ranks and in every layout. Replicated tensors that disagree are averaged (or rank 0's taken)
and their disagreement measured exactly.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import hf_logits, load_hf_state_dict, make_tiny_hf_model, write_slim_from_hf  # noqa: E402
from labml_nn.neox.checkpoint import Part, merge_part, open_checkpoint, split_part  # noqa: E402
from labml_nn.neox.checkpoint.merge import PART_TENSORS, divergence  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_hf_model()


def _random_layer(dtype=torch.float16, C=16, F=64):
    g = torch.Generator().manual_seed(0)
    shapes = {"attention.query_key_value.weight": (3 * C, C), "attention.query_key_value.bias": (3 * C,),
              "attention.dense.weight": (C, C), "mlp.dense_h_to_4h.weight": (F, C), "mlp.dense_h_to_4h.bias": (F,),
              "mlp.dense_4h_to_h.weight": (C, F)}
    return {n: torch.randn(shapes.get(n, (C,)), generator=g).to(dtype) for n in PART_TENSORS["layer"]}


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
@pytest.mark.parametrize("parallel_residual", [True, False])
def test_splitting_then_merging_gives_back_the_same_bits(n_ranks, parallel_residual):
    layer = _random_layer()
    ranks = split_part(layer, n_ranks, parallel_residual=parallel_residual)
    merged, records = merge_part(Part("layer", 0), [(f"rank{r}", t) for r, t in enumerate(ranks)],
                                 parallel_residual=parallel_residual)
    assert set(merged) == set(layer)
    for name in layer:
        assert merged[name].dtype == layer[name].dtype and torch.equal(merged[name], layer[name]), name
    assert all(r.max_abs == 0 for r in records)


def test_row_parallel_bias_is_summed_with_parallel_residual_and_replicated_without():
    # With the parallel residual each rank adds its own bias copy before the one all-reduce
    layer = _random_layer(torch.float32)
    b1, b2 = torch.randn(16), torch.randn(16)
    ranks = split_part(layer, 2, parallel_residual=True)
    ranks[0]["attention.dense.bias"], ranks[1]["attention.dense.bias"] = b1, b2
    merged, _ = merge_part(Part("layer", 0), [("a", ranks[0]), ("b", ranks[1])], parallel_residual=True)
    assert torch.allclose(merged["attention.dense.bias"], b1 + b2)
    # With the sequential residual the bias is added once after the all-reduce: every rank holds all of it
    merged, records = merge_part(Part("layer", 0), [("a", ranks[0]), ("b", ranks[1])], parallel_residual=False)
    assert torch.allclose(merged["attention.dense.bias"], (b1 + b2) / 2)
    assert "attention.dense.bias" in {r.name for r in records}


def test_divergence_figures_are_the_largest_spread_between_any_two_ranks():
    copies = [torch.tensor([1.0, -2.0, 0.0, 0.5]), torch.tensor([1.5, -2.0, 0.0, 0.25]),
              torch.tensor([0.5, -1.0, 0.0, 0.5])]
    record = divergence(Part("norm"), "norm.weight", copies)
    # spreads: 1.0, 1.0, 0, 0.25; magnitudes: 1.5, 2.0, 0, 0.5
    assert record.max_abs == 1.0
    assert record.max_rel == pytest.approx(max(1.0 / 1.5, 1.0 / 2.0, 0.25 / 0.5))
    assert record.n_ranks == 3


@pytest.mark.parametrize("layout", ["pipeline", "sequential"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_merged_checkpoint_equals_unpartitioned_weights(tiny, tmp_path, layout, tp):
    slim = write_slim_from_hf(tiny, tmp_path / "ckpt", tp=tp, layout=layout)
    ckpt = open_checkpoint(tmp_path / "ckpt")
    assert ckpt.layout.name == layout
    assert ckpt.config.tensor_parallel_size == tp
    assert ckpt.config.n_vocab == tiny.config.vocab_size
    assert ckpt.config.activation == "gelu_tanh" and ckpt.config.rotary_pct == 0.25
    assert ckpt.tokenizer_path.name == "20B_tokenizer.json"
    for part, tensors in ckpt.parts():
        expected = slim.parts[part.kind, part.layer]
        assert set(tensors) == set(expected)  # no rotary_emb.inv_freq: the model computes it
        for name, t in tensors.items():
            assert torch.equal(t, expected[name]), (part, name)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("mode", ["average", "first"])
def test_noisy_replicated_tensors_are_merged_and_their_divergence_recorded(tiny, tmp_path, tp, mode):
    slim = write_slim_from_hf(tiny, tmp_path / "ckpt", tp=tp, replicated_noise=1e-2)
    ckpt = open_checkpoint(tmp_path / "ckpt", replicated=mode)
    expected = slim.merged_parts(mode)
    for part, tensors in ckpt.parts():
        for name, t in tensors.items():
            assert torch.equal(t, expected[part.kind, part.layer][name]), (part, name)
    records = {(r.part.kind, r.part.layer, r.name): r for r in ckpt.divergence}
    assert set(records) == set(slim.replicas)
    for key, copies in slim.replicas.items():
        x = torch.stack([c.double() for c in copies])
        spread = x.max(0).values - x.min(0).values
        assert records[key].max_abs == float(spread.max())
        assert records[key].max_rel == float((spread / x.abs().max(0).values).max())


def test_hf_layout_reads_as_one_rank_and_matches_transformers(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "hf")
    ckpt = open_checkpoint(tmp_path / "hf")
    assert ckpt.layout.name == "huggingface" and ckpt.config.tensor_parallel_size == 1
    state = {}
    for part, tensors in ckpt.parts():
        for name, t in tensors.items():
            key = {"embedding": "gpt_neox.embed_in.weight", "readout": "embed_out.weight"}.get(part.kind)
            key = key or (f"gpt_neox.final_layer_norm.{name[5:]}" if part.kind == "norm"
                          else f"gpt_neox.layers.{part.layer}.{name}")
            state[key] = t
    reloaded = load_hf_state_dict(state, like_model=tiny)
    assert torch.equal(hf_logits(reloaded), hf_logits(tiny))


def test_the_step_folder_itself_can_be_opened_and_the_config_found_beside_it(tiny, tmp_path):
    write_slim_from_hf(tiny, tmp_path / "ckpt", tp=2)
    ckpt = open_checkpoint(tmp_path / "ckpt/global_step10")
    assert ckpt.config.tensor_parallel_size == 2 and ckpt.tokenizer_path.name == "20B_tokenizer.json"
    # without `latest`, a single step folder is found too
    (tmp_path / "ckpt/latest").unlink()
    assert open_checkpoint(tmp_path / "ckpt").read(Part("norm"))["norm.weight"].shape == (64,)
