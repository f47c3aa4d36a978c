r"""
The parts of the model and their names: every part of a model has its own pipeline index, file, Hugging Face
prefix and place in `model.py`'s sequence, and each name leads back to the part it came from. The layouts are
found first and opened whole for a config, and then say how their config spells its keys.
"""

import os

import pytest
import torch

from labml_nn.neox.checkpoint import CheckpointError, Part, all_parts
from labml_nn.neox.checkpoint.layouts import HFLayout, PipelineLayout, SequentialLayout, find_layout
from labml_nn.neox.checkpoint.merge import PART_TENSORS
from labml_nn.neox.checkpoint.parts import from_hf_name, is_hf_buffer, pipeline_stages
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.loader import build_module, part_of

CONFIG = NeoXConfig(n_layers=3, d_model=64, n_heads=4, n_vocab=96, n_ctx=64, rotary_pct=0.25)


def test_the_parts_come_in_the_model_order():
    assert all_parts(2) == [Part("embedding"), Part("layer", 0), Part("layer", 1), Part("norm"), Part("readout")]
    assert [str(p) for p in all_parts(1)] == ["the embedding", "transformer layer 0", "the final norm",
                                              "the readout (final linear)"]


@pytest.mark.parametrize("n_layers", [1, 3, 44])
def test_every_part_has_its_own_indices_and_prefix_and_they_lead_back(n_layers):
    parts = all_parts(n_layers)
    # In `model.py`'s sequence the parts follow each other without gaps
    assert [p.module_index(n_layers) for p in parts] == list(range(n_layers + 3))
    # The pipeline skips two stages without weights, 1 and L + 2
    indices = [p.pipeline_index(n_layers) for p in parts]
    assert indices == sorted(set(indices)) and set(range(n_layers + 5)) - set(indices) == {1, n_layers + 2}
    assert pipeline_stages(n_layers) == dict(zip(indices, parts))
    assert len({p.pipeline_file(n_layers, 0) for p in parts}) == len(parts)
    assert len({p.hf_prefix for p in parts}) == len(parts)
    # Each tensor's Hugging Face name leads back to its part and its name
    for part in parts:
        for name in PART_TENSORS[part.kind]:
            assert from_hf_name(part.hf_name(name)) == (part, name)


def test_the_20b_model_has_its_final_norm_at_stage_47_and_its_readout_at_48():
    assert Part("norm").pipeline_file(44, 1) == "layer_47-model_01-model_states.pt"
    assert Part("readout").pipeline_index(44) == 48 and Part("layer", 43).pipeline_index(44) == 45
    assert Part("embedding").hf_name("word_embeddings.weight") == "gpt_neox.embed_in.weight"
    assert Part("norm").hf_name("norm.bias") == "gpt_neox.final_layer_norm.bias"
    assert Part("readout").hf_name("final_linear.weight") == "embed_out.weight"
    assert Part("layer", 7).hf_name("mlp.dense_4h_to_h.bias") == "gpt_neox.layers.7.mlp.dense_4h_to_h.bias"


def test_hugging_face_spellings_and_buffers():
    # transformers 5 calls the readout `lm_head`; a model without its head saves names without `gpt_neox.`
    assert from_hf_name("lm_head.weight") == (Part("readout"), "final_linear.weight")
    assert from_hf_name("layers.2.input_layernorm.weight") == (Part("layer", 2), "input_layernorm.weight")
    assert from_hf_name("gpt_neox.emb_dropout.weight") is None
    assert is_hf_buffer("gpt_neox.layers.0.attention.masked_bias") and is_hf_buffer("gpt_neox.rotary_emb.inv_freq")
    assert not is_hf_buffer("gpt_neox.layers.0.attention.dense.bias")


def test_a_part_that_does_not_exist_is_refused_in_words():
    for kind, layer in [("head", None), ("layer", None), ("layer", -1), ("norm", 2)]:
        with pytest.raises(CheckpointError):
            Part(kind, layer)
    with pytest.raises(CheckpointError, match="transformer layer 5 does not exist: the model has 3 layers"):
        Part("layer", 5).pipeline_index(3)


def test_the_loader_builds_each_part_and_knows_each_module():
    for part in all_parts(CONFIG.n_layers):
        with torch.device("meta"):
            module = build_module(part, CONFIG)
        assert part_of(module) == part
        # The parameter count used for placing parts on devices: every matrix (a layer's biases and norms aside)
        params = [p for p in module.parameters() if part.kind != "layer" or p.dim() == 2]
        assert part.n_parameters(CONFIG) == sum(p.numel() for p in params)
    with pytest.raises(TypeError, match="not a module of model.py"):
        part_of(torch.nn.Linear(2, 2))


def test_loading_a_transformers_state_dict_gives_transformers_logits():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    from helpers import hf_logits, make_tiny_hf_model
    from labml_nn.neox.loader import load_hf_state_dict
    from labml_nn.neox.model import build_layers

    hf = make_tiny_hf_model(num_hidden_layers=3)
    layers = build_layers(NeoXConfig.from_hf_config(hf.config.to_dict()))
    load_hf_state_dict(layers, hf.state_dict())
    ids = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = torch.nn.Sequential(*layers).eval()(ids)
    assert (ours - hf_logits(hf)).abs().max() < 1e-4


# ## Layouts: found, then opened whole
@pytest.mark.parametrize("layout, cls", [("pipeline", PipelineLayout), ("sequential", SequentialLayout)])
def test_a_gpt_neox_layout_is_found_then_opened_for_its_config(tmp_path, layout, cls):
    pytest.importorskip("transformers")
    from helpers import make_tiny_hf_model, write_slim_from_hf

    write_slim_from_hf(make_tiny_hf_model(num_hidden_layers=3), tmp_path / "ckpt", tp=2, layout=layout,
                       tokenizer=False)
    location = find_layout(tmp_path / "ckpt")
    assert location.layout is cls and location.search_folders[0] == tmp_path / "ckpt" / "configs"
    opened = location.open(CONFIG, trust_pickle=True)
    assert (opened.n_layers, opened.n_ranks) == (3, 2)
    assert opened.config_keys["n_vocab"] == "padded_vocab_size"
    assert [len(t) for _, t in opened.load(Part("norm"))] == [2, 2]
    # A config with fewer layers than the files is refused while opening, with the key to fix
    with pytest.raises(CheckpointError, match="num_layers: 3"):
        location.open(CONFIG.with_updates(n_layers=2), trust_pickle=True)


def test_a_hugging_face_layout_is_one_rank_and_spells_its_keys_its_way(tmp_path):
    pytest.importorskip("transformers")
    from helpers import make_tiny_hf_model

    make_tiny_hf_model(num_hidden_layers=3).save_pretrained(tmp_path / "hf")
    location = find_layout(tmp_path / "hf")
    assert location.layout is HFLayout
    opened = location.open(CONFIG)
    assert opened.n_ranks == 1 and opened.config_keys["n_vocab"] == "vocab_size"
    assert set(opened.load(Part("layer", 2))[0][1]) == set(PART_TENSORS["layer"])
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        location.open(CONFIG.with_updates(n_layers=2))
