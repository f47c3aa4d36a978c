r"""
Bad checkpoints fail with a `CheckpointError` that names the file or tensor at fault and says what to do, whether
they are opened by the reader (`open_checkpoint`), loaded as a model (`LayerLoader`) or merged; and the merge
command leaves no output behind when they do.
"""

import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, write_slim_from_hf  # noqa: E402
from labml_nn.neox.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from labml_nn.neox.checkpoint.convert import merge_checkpoint  # noqa: E402
from labml_nn.neox.loader import LayerLoader  # noqa: E402


class NotAllowlisted:
    """A class a DeepSpeed file might pickle; the restricted loader must refuse it."""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    # One tiny two-rank checkpoint (2 layers: stages 0, 2, 3, 5, 6), copied afresh for each test that damages it
    path = tmp_path_factory.mktemp("src") / "ckpt"
    write_slim_from_hf(make_tiny_hf_model(), path, tp=2)
    return path


@pytest.fixture
def ckpt(source, tmp_path):
    shutil.copytree(source, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _fails(path, *fragments, out=None, loader=False, **kwargs):
    # Opening and reading every part, or merging to `out`, must fail with all `fragments` in the message; with
    # `loader`, so must loading the model layer by layer
    with pytest.raises(CheckpointError) as e:
        if out is None:
            list(open_checkpoint(path, **kwargs).parts())
        else:
            merge_checkpoint(path, out, format="hf", progress=False, **kwargs)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(out.name + ".tmp-*"))
    if loader:
        with pytest.raises(CheckpointError) as by_loader:
            list(LayerLoader(path, progress=False, **kwargs).load())
        for f in fragments:
            assert f in str(by_loader.value), str(by_loader.value)
    return str(e.value)


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        list(LayerLoader(tmp_path / "nowhere", progress=False).load())


def test_missing_rank_file_names_the_file_the_rank_and_the_layer(ckpt, tmp_path):
    (ckpt / "global_step10/layer_03-model_01-model_states.pt").unlink()
    message = _fails(ckpt, "Missing global_step10/layer_03-model_01-model_states.pt", "2 tensor-parallel rank",
                     "rank 1 of transformer layer 1", "Re-download", out=tmp_path / "out", loader=True)
    assert "download" in message


def test_a_rank_the_config_promises_is_missing(ckpt):
    config = ckpt / "configs/tiny.yml"
    config.write_text(config.read_text().replace('"model-parallel-size": 2', '"model-parallel-size": 4'))
    _fails(ckpt, "Missing global_step10/layer_00-model_02-model_states.pt", "rank 2 of the embedding")


def test_missing_layer_file(ckpt):
    for r in (0, 1):
        (ckpt / f"global_step10/layer_05-model_0{r}-model_states.pt").unlink()
    _fails(ckpt, "layer_05-model_00-model_states.pt", "the final norm")


def test_truncated_file_is_named(ckpt, tmp_path):
    path = ckpt / "global_step10/layer_02-model_00-model_states.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _fails(ckpt, "layer_02-model_00-model_states.pt", "truncated or corrupt", "re-download",
           out=tmp_path / "out", loader=True)


def test_missing_tensor_is_named_with_its_file(ckpt, tmp_path):
    path = ckpt / "global_step10/layer_03-model_01-model_states.pt"
    tensors = torch.load(path)
    del tensors["mlp.dense_4h_to_h.weight"]
    torch.save(tensors, path)
    _fails(ckpt, "`mlp.dense_4h_to_h.weight`", "layer_03-model_01-model_states.pt", out=tmp_path / "out",
           loader=True)


def test_shape_mismatch_names_the_tensor_the_shapes_and_the_config_key(ckpt):
    config = ckpt / "configs/tiny.yml"
    config.write_text(config.read_text().replace('"hidden-size": 64', '"hidden-size": 32'))
    _fails(ckpt, "word_embeddings.weight", "[96, 64]", "[96, 32]", "hidden_size", loader=True)


def test_layer_count_that_disagrees_with_the_files_names_the_key(ckpt):
    config = ckpt / "configs/tiny.yml"
    config.write_text(config.read_text().replace('"num-layers": 2', '"num-layers": 1'))
    _fails(ckpt, "num_layers: 2")


def test_unexpected_tensor_is_refused_rather_than_dropped(ckpt, tmp_path):
    # A gated MLP or experts would bring tensors we have no merge rule for
    path = ckpt / "global_step10/layer_02-model_00-model_states.pt"
    tensors = torch.load(path)
    tensors["mlp.gate_proj.weight"] = torch.zeros(4, 4)
    torch.save(tensors, path)
    _fails(ckpt, "mlp.gate_proj.weight", "layer_02-model_00", "GeGLU", out=tmp_path / "out")


def test_wrong_rotary_settings_are_caught_by_inv_freq(ckpt):
    config = ckpt / "configs/tiny.yml"
    config.write_text(config.read_text().replace('"rotary_pct": 0.25', '"rotary_pct": 0.5'))
    _fails(ckpt, "rotary_emb.inv_freq", "rotary_pct")


def test_unsupported_architecture_in_config_is_refused(ckpt):
    config = ckpt / "configs/tiny.yml"
    config.write_text(config.read_text().replace('"pos-emb": "rotary"', '"pos-emb": "alibi"'))
    _fails(ckpt, "pos_emb: alibi", "tiny.yml")


def test_pickled_objects_outside_the_allowlist_need_trust_pickle(tmp_path):
    write_slim_from_hf(make_tiny_hf_model(), tmp_path / "ckpt", tp=2, layout="sequential")
    path = tmp_path / "ckpt/global_step10/mp_rank_01_model_states.pt"
    state = torch.load(path, weights_only=False)
    state["client_state"] = NotAllowlisted()
    torch.save(state, path)
    _fails(tmp_path / "ckpt", "mp_rank_01_model_states.pt", "NotAllowlisted", "trust_pickle=True",
           "--trust-pickle", out=tmp_path / "out")
    # argparse.Namespace (in every rank's file) is on the allowlist; trusting the file loads the rest
    assert len(list(open_checkpoint(tmp_path / "ckpt", trust_pickle=True).parts())) == 5


def test_latest_naming_a_missing_folder(ckpt):
    (ckpt / "latest").write_text("global_step99")
    _fails(ckpt, "global_step99", "latest")


def test_existing_output_is_not_touched(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(CheckpointError, match="already exists"):
        merge_checkpoint(ckpt, out, format="neox", progress=False)
    assert (out / "keep").read_text() == "x"
