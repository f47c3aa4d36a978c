r"""
The config keys whose meaning we once got wrong, each checked against transformers' `GPTNeoXForCausalLM` on
equivalent weights, in fp32, to 2e-4 in the logits:

* gpt-neox checkpoints written since PR #1212, with the MLP named `mlp.linear1` / `mlp.linear2`;
* `gpt_j_tied: true` (both branches of the parallel residual read `input_layernorm`): transformers has no such
  key, so its equivalent is the same model with `post_attention_layernorm` a copy of `input_layernorm`;
* linear RoPE scaling in transformers 4.x's spelling (`rope_scaling`) and 5.x's (`rope_parameters`), a
  `config.json` with no rotary key, and one with both;
* gpt-neox's feed-forward width keys, and `num_kv_heads` equal to the heads.

Each test also checks that the key matters (the logits move when it is ignored), so that it can fail.
"""

import json

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, write_slim_from_hf  # noqa: E402

from labml_nn.neox.checkpoint.__main__ import main as checkpoint_cli  # noqa: E402
from labml_nn.neox.loader import LayerLoader  # noqa: E402

TOLERANCE = 2e-4
IDS = torch.randint(0, 96, (2, 60), generator=torch.Generator().manual_seed(0))


def ours(path) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.Sequential(*LayerLoader(path, progress=False).load())(IDS)


def theirs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def update_yaml(path, **keys):
    config = path / "configs" / "tiny.yml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **keys}))


def respell(tensors: dict) -> dict:
    # gpt-neox since PR #1212: the same tensors, the MLP named linear1 / linear2
    return {k.replace("dense_h_to_4h", "linear1").replace("dense_4h_to_h", "linear2"): v for k, v in tensors.items()}


def respell_files(path):
    for f in (path / "global_step10").glob("layer_*-model_*-model_states.pt"):
        torch.save(respell(torch.load(f, weights_only=True)), f)
    for f in (path / "global_step10").glob("mp_rank_*_model_states.pt"):
        state = torch.load(f, weights_only=False)
        torch.save({**state, "module": respell(state["module"])}, f)


# ## gpt-neox's MLP spelling since September 2024
@pytest.mark.parametrize("layout", ["pipeline", "sequential"])
def test_linear1_linear2_checkpoint_matches_transformers_and_merge_keeps_its_spelling(tmp_path, layout):
    hf = make_tiny_hf_model()
    write_slim_from_hf(hf, tmp_path / "src", tp=2, layout=layout, tokenizer=False)
    respell_files(tmp_path / "src")
    assert error(ours(tmp_path / "src"), theirs(hf)) < TOLERANCE

    # `merge --format neox` writes the source's spelling, or the one asked for; both read back the same
    for spelling, expected in ((None, "mlp.linear1.weight"), ("dense", "mlp.dense_h_to_4h.weight")):
        out = tmp_path / f"merged-{spelling}"
        assert checkpoint_cli(["merge", str(tmp_path / "src"), str(out), "--format", "neox"]
                              + (["--mlp-names", spelling] if spelling else [])) == 0
        names = torch.load(out / "global_step0" / "layer_02-model_00-model_states.pt", weights_only=True)
        assert expected in names and len(names) == 12
        assert error(ours(out), theirs(hf)) < TOLERANCE


# ## Tied layer norms
def test_gpt_j_tied_matches_transformers_with_the_first_norm_copied(tmp_path):
    hf = make_tiny_hf_model()
    write_slim_from_hf(hf, tmp_path / "src", tp=2, tokenizer=False)
    update_yaml(tmp_path / "src", gpt_j_tied=True)
    # transformers' equivalent: the second norm replaced by the first
    state = hf.state_dict()
    for i in range(hf.config.num_hidden_layers):
        for p in ("weight", "bias"):
            layer = f"gpt_neox.layers.{i}."
            state[f"{layer}post_attention_layernorm.{p}"] = state[f"{layer}input_layernorm.{p}"]
    tied = make_tiny_hf_model()
    tied.load_state_dict(state)

    logits = ours(tmp_path / "src")
    assert error(logits, theirs(tied)) < TOLERANCE
    assert error(logits, theirs(hf)) > 1e-2  # ignoring the key changes the logits

    # Exported to Hugging Face format, it is that equivalent model
    assert checkpoint_cli(["merge", str(tmp_path / "src"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    exported = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    assert error(theirs(exported), theirs(tied)) < TOLERANCE


# ## Rotary keys of `config.json`
LINEAR_4X = {"rotary_pct": 0.25, "rotary_emb_base": 10000, "rope_scaling": {"type": "linear", "factor": 2.0}}
LINEAR_5X = {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0,
                                 "partial_rotary_factor": 0.25}}
# transformers takes `rope_scaling` whole over `rope_parameters`, and the top level's (here absent) keys
BOTH = {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},
        "rope_scaling": {"type": "linear", "factor": 3.0}}


@pytest.mark.parametrize("rotary", [LINEAR_4X, LINEAR_5X, {}, BOTH], ids=["linear-4x", "linear-5x", "none", "both"])
def test_rotary_keys_of_config_json_match_transformers(tmp_path, rotary):
    # Large random weights, so that attention depends strongly on the positions
    hf = make_tiny_hf_model(max_position_embeddings=64, scale=0.3,
                            rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0})
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling", "rotary_pct", "rotary_emb_base", "rope_theta",
                "partial_rotary_factor"):
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps({**config, **rotary}))
    reference = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()

    logits = ours(tmp_path)
    assert error(logits, theirs(reference)) < TOLERANCE
    assert error(logits, theirs(hf)) > 50 * TOLERANCE  # the model as saved, full rotary with base 500, differs


# ## gpt-neox's feed-forward width and key-value heads
@pytest.mark.parametrize("keys", [{"expansion_factor": 3, "mlp_multiple_of": 32},
                                  {"expansion_factor": 2.5, "mlp_multiple_of": 96},
                                  {"intermediate_size": 190, "mlp_multiple_of": 16},
                                  {"intermediate_size": 192, "num_kv_heads": 4}])
def test_ffn_width_keys_and_kv_heads_match_transformers(tmp_path, keys):
    hf = make_tiny_hf_model(intermediate_size=192)
    write_slim_from_hf(hf, tmp_path / "src", tp=2, tokenizer=False)
    update_yaml(tmp_path / "src", **keys)
    assert error(ours(tmp_path / "src"), theirs(hf)) < TOLERANCE
