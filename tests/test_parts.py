r"""
The parts of the model and their names: every part of a model has its own pipeline index, file, Hugging Face
prefix and place in `model.py`'s sequence, and each name leads back to the part it came from.
"""

import pytest

from labml_nn.neox.checkpoint.files import CheckpointError
from labml_nn.neox.checkpoint.parts import Part, all_parts
from labml_nn.neox.checkpoint.merge import PART_TENSORS
from labml_nn.neox.checkpoint.parts import from_hf_name, is_hf_buffer, pipeline_stages


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
