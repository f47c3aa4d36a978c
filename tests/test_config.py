"""
The config reads gpt-neox YAML files (both key spellings, gpt-neox's defaults) and Hugging Face `config.json`
files (transformers 4.x and 5.x spellings), and refuses models that `model.py` does not build.
"""

import json

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


# ## Every key that changes the computation is read, refused or said to be irrelevant
#
# gpt-neox's model arguments (`NeoXArgsModel` in megatron/neox_arguments/neox_args.py, May 2026), and the keys
# outside it that change what a trained model computes. A key gpt-neox adds must be added here and to the table
# in config.py's essay.
NEOX_MODEL_KEYS = """
precision num_layers hidden_size intermediate_size mlp_multiple_of expansion_factor num_attention_heads
num_kv_heads seq_length sliding_window_width max_position_embeddings norm layernorm_fusion rmsnorm_fusion
use_qk_layernorm layernorm_epsilon rms_norm_epsilon scalenorm_epsilon pos_emb rpe_num_buckets rpe_max_distance
opt_pos_emb_offset no_weight_tying attention_config sparsity_config num_unique_layers param_sharing_style
make_vocab_size_divisible_by activation use_flashattn_swiglu scaled_upper_triang_masked_softmax_fusion
scaled_masked_softmax_fusion bias_gelu_fusion bias_dropout_fusion rope_fusion fused_kernels_build_path
fp16_lm_cross_entropy init_method_std apply_query_key_layer_scaling use_cpu_initialization
attention_softmax_in_fp32 rotary_pct rotary_emb_base rotary_save_freqs_buffer init_method output_layer_init_method
gmlp_attn_dim gpt_j_residual gpt_j_tied use_bias_in_norms use_bias_in_attn_linear use_bias_in_mlp
soft_prompt_tuning mamba_selective_scan_fusion mamba_causal_conv_fusion mamba_inner_func_fusion
mamba_selective_fp32_params mamba_use_bias_in_conv mamba_use_bias_in_linears output_layer_parallelism
serve_model_weights weight_server_port online_dataserver_ips online_dataserver_ports te_columnparallel
te_rowparallel te_layernorm_mlp te_mha te_fp8_format te_fp8_wgrad te_fp8_amax_history_len te_fp8_amax_compute_algo
te_fp8_margin te_fp8_mha dim_att head_size ffn_dim
model_parallel_size use_mup mup_init_scale mup_attn_temp mup_output_temp mup_embedding_mult mup_rp_embedding_mult
mup_width_scale moe_num_experts hidden_dropout attention_dropout
""".split()


def key_table(heading: str) -> dict:
    """`{key: status}` from the table of config.py's essay whose first column is headed `heading`."""
    import re
    import labml_nn.neox.config as config_module

    rows, inside = {}, False
    for line in config_module.__doc__.splitlines():
        if line.startswith(f"| {heading} |"):
            inside = True
        elif inside and not line.startswith("|"):
            break
        elif inside and not line.startswith("|---"):
            keys, status = line.split("|")[1:3]
            rows.update({key: status.strip() for key in re.findall(r"`(\w+)`", keys)})
    return rows


def test_every_gpt_neox_model_key_is_in_the_table():
    table = key_table("gpt-neox key")
    assert len(NEOX_MODEL_KEYS) == len(set(NEOX_MODEL_KEYS)) == 88
    assert sorted(set(NEOX_MODEL_KEYS) - set(table)) == []
    assert set(table.values()) == {"read", "refused", "irrelevant"}


def test_every_transformers_gpt_neox_key_is_in_the_table():
    transformers = pytest.importorskip("transformers")
    own = set(transformers.GPTNeoXConfig().to_dict()) - set(transformers.PretrainedConfig().to_dict())
    # transformers 4.x's spellings, which 5.x still reads from old files
    own |= {"rope_scaling", "rotary_pct", "rotary_emb_base", "model_type"}
    assert sorted(own - set(key_table("transformers key"))) == []


# ## What the keys of the table compute
@pytest.mark.parametrize("key, value", [
    ("use_mup", True), ("sliding_window_width", 512), ("num_kv_heads", 16), ("use_bias_in_mlp", False),
    ("use_bias_in_norms", False), ("output_layer_parallelism", "row"), ("te_layernorm_mlp", True),
    ("num_unique_layers", 4), ("soft_prompt_tuning", {"enabled": True, "n_tokens": 10})])
def test_unbuilt_keys_are_refused_by_name_with_what_it_would_take(key, value):
    with pytest.raises(ConfigError, match=f"`{key}: .*(supporting it would take|other tensor names|other names)"):
        NeoXConfig.from_neox_yaml({**NEOX_20B, key: value})


def test_num_kv_heads_equal_to_the_heads_is_plain_attention():
    assert NeoXConfig.from_neox_yaml({**NEOX_20B, "num_kv_heads": 64}) == NeoXConfig.from_neox_yaml(NEOX_20B)


def test_gpt_neox_ffn_width_keys():
    h = NEOX_20B["hidden_size"]
    assert NeoXConfig.from_neox_yaml({**NEOX_20B, "expansion_factor": 3}).d_ff == 3 * h
    assert NeoXConfig.from_neox_yaml({**NEOX_20B, "intermediate_size": 5000, "mlp_multiple_of": 256}).d_ff == 5120
    # Rounded to 2m outputs and m inputs that differ: gpt-neox cannot build it either
    with pytest.raises(ConfigError, match="mlp_multiple_of"):
        NeoXConfig.from_neox_yaml({**NEOX_20B, "intermediate_size": 5000, "mlp_multiple_of": 5000})
    with pytest.raises(ConfigError, match="intermediate_size.*expansion_factor"):
        NeoXConfig.from_neox_yaml({**NEOX_20B, "intermediate_size": 5000, "expansion_factor": 2})


def test_gpt_j_tied_counts_only_with_the_parallel_residual():
    assert NeoXConfig.from_neox_yaml({**NEOX_20B, "gpt_j_tied": True}).tied_layernorms
    assert not NeoXConfig.from_neox_yaml({**NEOX_20B, "gpt_j_tied": True, "gpt_j_residual": False}).tied_layernorms


HF_BASE = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}


@pytest.mark.parametrize("values, expected", [
    # No rotary key at all: transformers' 0.25 and 10000
    ({}, (0.25, 10000.0, 1.0)),
    ({"rotary_pct": 0.5, "rope_scaling": {"type": "linear", "factor": 4.0}}, (0.5, 10000.0, 4.0)),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0, "partial_rotary_factor": 1.0}},
     (1.0, 500.0, 2.0)),
    # Both: `rope_scaling` replaces `rope_parameters` whole, the rest comes from the top level
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},
      "rope_scaling": {"type": "linear", "factor": 3.0}, "rotary_emb_base": 20000}, (0.25, 20000.0, 3.0)),
])
def test_hf_rotary_keys_with_transformers_defaults_and_precedence(values, expected):
    config = NeoXConfig.from_hf_config({**HF_BASE, **values})
    assert (config.rotary_pct, config.rotary_base, config.rotary_scaling) == expected


def test_other_rope_types_are_refused_naming_the_key():
    # (`dynamic` is read: tests/test_configs_hf_extras.py)
    with pytest.raises(ConfigError, match="rope_scaling.*'yarn'"):
        NeoXConfig.from_hf_config({**HF_BASE, "rope_scaling": {"type": "yarn", "factor": 2.0}})


def test_linear_scaling_has_no_gpt_neox_key():
    with pytest.raises(ConfigError, match="Hugging Face format"):
        NeoXConfig.from_neox_yaml(NEOX_20B).with_updates(rotary_scaling=2.0).to_neox_yaml()


def test_rotary_features_that_cannot_pair_are_refused_before_any_forward_pass():
    # 4 features per head: a quarter is 1 feature, which has no partner to rotate with
    with pytest.raises(ConfigError, match="rotary_pct 0.25 .* odd number"):
        NeoXConfig(n_layers=1, d_model=16, n_heads=4, n_vocab=32, rotary_pct=0.25)
    assert NeoXConfig(n_layers=1, d_model=16, n_heads=4, n_vocab=32, rotary_pct=0.5).d_rotary == 2
