"""
The config reads gpt-neox YAML files (both key spellings, gpt-neox's defaults) and Hugging Face `config.json`
files (transformers 4.x and 5.x spellings), and refuses models that `model.py` does not build.
"""

import json
from pathlib import Path

import pytest

from helpers import needs_shared_file, shared_file
from labml_nn.neox.config import ConfigError, NeoXConfig

SHARED_20B_YML = shared_file("20B.yml")

# The model part of gpt-neox's 20B.yml, written here so the test runs without ../shared
NEOX_20B = {
    "num_layers": 44, "hidden_size": 6144, "num_attention_heads": 64, "seq_length": 2048,
    "max_position_embeddings": 2048, "norm": "layernorm", "pos_emb": "rotary", "rotary_pct": 0.25,
    "no_weight_tying": True, "gpt_j_residual": True, "bias_gelu_fusion": True, "model_parallel_size": 2,
}


@needs_shared_file("20B.yml")
def test_the_real_20b_yml_gives_the_20b_model():
    config = NeoXConfig.from_neox_yaml(SHARED_20B_YML)
    assert (config.n_layers, config.d_model, config.n_heads, config.d_head) == (44, 6144, 64, 96)
    assert config.d_rotary == 24 and config.d_ff == 4 * 6144 and config.n_ctx == 2048
    assert config.parallel_residual and config.activation == "gelu_tanh"
    assert config.tensor_parallel_size == 2 and config.layer_norm_eps == 1e-5


def test_dashed_and_underscored_keys_are_the_same_key(tmp_path):
    dashed = {k.replace("_", "-"): v for k, v in NEOX_20B.items()}
    path = tmp_path / "dashed.yml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in dashed.items()))
    assert NeoXConfig.from_neox_yaml(path) == NeoXConfig.from_neox_yaml(NEOX_20B)


def test_absent_keys_take_gpt_neox_defaults():
    minimal = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "no_weight_tying": True}
    config = NeoXConfig.from_neox_yaml(minimal)
    # gpt-neox defaults: sequential residual, full rotary, exact GELU without the fusion
    assert not config.parallel_residual and config.rotary_pct == 1.0 and config.activation == "gelu"
    assert config.rotary_base == 10000.0 and config.tensor_parallel_size == 1


def test_gelu_follows_bias_gelu_fusion():
    assert NeoXConfig.from_neox_yaml({**NEOX_20B, "bias_gelu_fusion": False}).activation == "gelu"
    assert NeoXConfig.from_neox_yaml(NEOX_20B).activation == "gelu_tanh"


@pytest.mark.parametrize("key, value", [("pos_emb", "alibi"), ("norm", "rmsnorm"), ("activation", "geglu"),
                                        ("no_weight_tying", False), ("moe_num_experts", 8)])
def test_unsupported_architectures_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        NeoXConfig.from_neox_yaml({**NEOX_20B, key: value})


def test_missing_required_key_names_both_spellings():
    values = dict(NEOX_20B)
    del values["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size.*hidden-size"):
        NeoXConfig.from_neox_yaml(values)


def test_hf_config_in_transformers_4_and_5_spellings_agree():
    common = {"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 768, "num_hidden_layers": 12,
              "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
              "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "use_parallel_residual": True}
    v4 = {**common, "rotary_pct": 0.25, "rotary_emb_base": 10000}
    v5 = {**common, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}}
    assert NeoXConfig.from_hf_config(v4) == NeoXConfig.from_hf_config(v5)
    assert NeoXConfig.from_hf_config(v5).d_rotary == 16


def test_hf_activation_names():
    base = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    assert NeoXConfig.from_hf_config({**base, "hidden_act": "gelu_fast"}).activation == "gelu_tanh"
    assert NeoXConfig.from_hf_config({**base, "hidden_act": "gelu_new"}).activation == "gelu_tanh"
    assert NeoXConfig.from_hf_config({**base, "hidden_act": "gelu"}).activation == "gelu"
    with pytest.raises(ConfigError, match="hidden_act"):
        NeoXConfig.from_hf_config({**base, "hidden_act": "relu"})


def test_our_hf_config_is_read_by_transformers_with_the_same_settings(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = NeoXConfig.from_neox_yaml(NEOX_20B).with_updates(n_vocab=50432)
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_config()))
    hf = transformers.GPTNeoXConfig.from_pretrained(tmp_path)
    assert hf.hidden_act == "gelu_fast" and hf.use_parallel_residual
    assert hf.num_hidden_layers == 44 and hf.vocab_size == 50432
    rope = getattr(hf, "rope_parameters", None) or {}
    assert rope.get("partial_rotary_factor", getattr(hf, "rotary_pct", None)) == 0.25
    # And the file reads back to the config we wrote (tensor parallelism is not a Hugging Face notion)
    assert NeoXConfig.from_hf_config(tmp_path) == config.with_updates(tensor_parallel_size=1)


def test_neox_yaml_round_trip():
    config = NeoXConfig.from_neox_yaml(NEOX_20B).with_updates(n_vocab=50432, rotary_base=20000.0)
    assert NeoXConfig.from_neox_yaml(config.to_neox_yaml()) == config
    assert "intermediate_size" not in config.to_neox_yaml()
    # A feed-forward width other than 4C is read from gpt-neox's `intermediate_size` and written back
    narrow = config.with_updates(d_ff=3 * config.d_model)
    assert NeoXConfig.from_neox_yaml(narrow.to_neox_yaml()) == narrow


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yml"):
        NeoXConfig.from_neox_yaml(tmp_path / "missing.yml")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        NeoXConfig.from_hf_config(tmp_path)
