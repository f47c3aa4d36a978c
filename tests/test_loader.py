r"""
`LayerLoader` turns checkpoint files into our modules, and `nn.Sequential` of them gives transformers'
logits on the same weights: for the gpt-neox layouts with 1, 2 and 4 tensor-parallel ranks, for Hugging Face
folders, and for checkpoints whose replicated tensors disagree across ranks.

The tiny checkpoints come from `helpers.py` (which splits weights itself, independently of the code under
test). The merge rules have their own tests in `test_checkpoint_merge.py`; these go through the model. What the
loader says about a damaged checkpoint is tested, with the reader and the merge command, in
`test_checkpoint_errors.py`.
"""

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import load_hf_state_dict, make_tiny_hf_model, write_slim_from_hf  # noqa: E402
from labml_nn.neox.checkpoint import Part  # noqa: E402
from labml_nn.neox.loader import LayerLoader, build_module  # noqa: E402
from labml_nn.neox.model import Embedding, ReadoutLayer, TransformerLayer  # noqa: E402

TOLERANCE = 2e-4


def ids_for(hf_model, batch: int = 2, length: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, hf_model.config.vocab_size, (batch, length), generator=gen)


def load_model(path, **kwargs) -> torch.nn.Sequential:
    return torch.nn.Sequential(*LayerLoader(path, progress=False, **kwargs).load())


def max_logit_error(model, hf_model) -> float:
    ids = ids_for(hf_model)
    with torch.no_grad():
        return (model(ids) - hf_model(ids).logits).abs().max().item()


# ## The gpt-neox layouts

@pytest.mark.parametrize("tp", [1, 2, 4])
def test_slim_checkpoint_with_tp_ranks_gives_transformers_logits(tmp_path, tp):
    hf = make_tiny_hf_model()
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=tp, tokenizer=False)
    assert max_logit_error(load_model(tmp_path / "ckpt"), hf) <= TOLERANCE


@pytest.mark.parametrize("hidden_act,parallel_residual", [("gelu", True), ("gelu_fast", False), ("gelu", False)])
def test_both_gelus_and_both_residuals_through_the_loader(tmp_path, hidden_act, parallel_residual):
    # The config comes from the checkpoint's YAML (`bias_gelu_fusion`, `gpt_j_residual`); a wrong reading of
    # either gives logits far outside the tolerance (see test_model.py)
    hf = make_tiny_hf_model(hidden_act=hidden_act, use_parallel_residual=parallel_residual)
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, tokenizer=False)
    assert max_logit_error(load_model(tmp_path / "ckpt"), hf) <= TOLERANCE


def test_identical_replicated_tensors_raise_no_divergence_warning(tmp_path):
    hf = make_tiny_hf_model()
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, tokenizer=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(LayerLoader(tmp_path / "ckpt", progress=False).load())


def test_sequential_mp_rank_layout_gives_transformers_logits(tmp_path):
    hf = make_tiny_hf_model(num_hidden_layers=3)
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, layout="sequential", tokenizer=False)
    assert max_logit_error(load_model(tmp_path / "ckpt"), hf) <= TOLERANCE


@pytest.mark.parametrize("replicated", ["average", "first"])
def test_noisy_replicated_tensors_give_the_logits_of_the_merged_norms(tmp_path, replicated):
    # Rank 1's copies of the layer norms differ from rank 0's (as in large trained models). The model must give
    # transformers' logits on the merged norms: averaged, or rank 0's with replicated="first".
    hf = make_tiny_hf_model()
    slim = write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, replicated_noise=0.05, tokenizer=False)
    loader = LayerLoader(tmp_path / "ckpt", progress=False, replicated=replicated)
    # The loader warns, naming the worst tensor, instead of refusing the checkpoint
    with pytest.warns(UserWarning, match=r"replicated tensors differ across tensor-parallel ranks.*max abs"):
        model = torch.nn.Sequential(*loader.load())
    reference = load_hf_state_dict(slim.merged_hf_state_dict(replicated), like_model=hf)
    assert max_logit_error(model, reference) <= TOLERANCE
    other = load_hf_state_dict(slim.merged_hf_state_dict("first" if replicated == "average" else "average"),
                               like_model=hf)
    assert max_logit_error(model, other) > 10 * TOLERANCE
    # The loader reports how far the copies diverged
    assert max(d.max_abs for d in loader.checkpoint.divergence) > 0.01


# ## Hugging Face folders

@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_hf_folder_single_or_sharded_gives_transformers_logits(tmp_path, max_shard_size):
    hf = make_tiny_hf_model()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    hf.save_pretrained(tmp_path / "hf", **kwargs)
    index = tmp_path / "hf" / "model.safetensors.index.json"
    assert index.exists() == (max_shard_size is not None)
    assert max_logit_error(load_model(tmp_path / "hf"), hf) <= TOLERANCE


def test_fp16_checkpoint_loads_in_the_dtype_asked_for(tmp_path):
    hf = make_tiny_hf_model()
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, dtype=torch.float16, tokenizer=False)
    model = load_model(tmp_path / "ckpt", dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # fp16 rounding of the weights only
    assert max_logit_error(model, hf) < 0.02


# ## Loading part of a model, and several devices

def test_filter_layers_reads_and_builds_only_the_chosen_parts(tmp_path):
    hf = make_tiny_hf_model(num_hidden_layers=3)
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, tokenizer=False)
    loader = LayerLoader(tmp_path / "ckpt", progress=False, filter_layers={0, 2, 5})
    read = []
    original = loader.checkpoint.read
    loader.checkpoint.read = lambda part: read.append(part) or original(part)
    modules = list(loader.load())
    # 0 is the embedding, 1 ... 3 the transformer layers (so 2 is layer 1), 4 the final norm, 5 the readout
    assert read == [Part("embedding"), Part("layer", 1), Part("readout")]
    assert [type(m) for m in modules] == [Embedding, TransformerLayer, ReadoutLayer]
    assert modules[1].layer_idx == 1
    with pytest.raises(ValueError, match="outside 0 ... 5"):
        LayerLoader(tmp_path / "ckpt", progress=False, filter_layers={6})


def test_two_devices_split_the_parameter_bytes_evenly(tmp_path):
    hf = make_tiny_hf_model(num_hidden_layers=4)
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, tokenizer=False)
    # Two CPUs: the model runs and is exact
    assert max_logit_error(load_model(tmp_path / "ckpt", devices=["cpu", "cpu"]), hf) <= TOLERANCE
    # The placement, with two distinguishable devices: contiguous runs, each device about half the bytes
    loader = LayerLoader(tmp_path / "ckpt", progress=False, devices=["cpu", "cpu"])
    loader.devices = ["first", "second"]
    parts = loader._parts()
    placement = loader._placement(parts)
    assert placement == sorted(placement) and set(placement) == {"first", "second"}
    modules = [build_module(part, loader.config) for part in parts]
    nbytes = [sum(p.numel() for p in m.parameters()) for m in modules]
    first = sum(n for n, d in zip(nbytes, placement) if d == "first")
    assert abs(first / sum(nbytes) - 0.5) <= max(nbytes) / sum(nbytes) / 2 + 1e-9


def test_modules_are_in_eval_mode_and_carry_the_config(tmp_path):
    hf = make_tiny_hf_model()
    write_slim_from_hf(hf, tmp_path / "ckpt", tp=2, tokenizer=False)
    loader = LayerLoader(tmp_path / "ckpt", progress=False)
    for module in loader.load():
        assert not module.training
        assert module.config == loader.config
