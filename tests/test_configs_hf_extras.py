r"""
Three things transformers' `config.json` can say that we used to refuse, each held to transformers 5.x on a tiny
random model (fp32 logits within 1e-5): tied embeddings (`tie_word_embeddings: true`, with and without a separate
readout in the file), dynamic NTK RoPE scaling (`rope_scaling` of type `dynamic`, past the context), and
`eos_token_id` given as a list. And what generation does at the end of the context, and two messages about
folders that hold less than a model.
"""

import hashlib
import json
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, random_ids  # noqa: E402

from labml_nn.neox.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from labml_nn.neox.checkpoint.convert import merge_checkpoint  # noqa: E402
from labml_nn.neox.config import NeoXConfig  # noqa: E402
from labml_nn.neox.generation import ContextLengthWarning, generate, generate_stream  # noqa: E402
from labml_nn.neox.loader import LayerLoader  # noqa: E402
from labml_nn.neox.model import NeoXModel, build_layers  # noqa: E402

TOLERANCE = 1e-5


def theirs(model, ids):
    with torch.no_grad():
        return model(ids).logits


def ours(path, ids, **loader_args):
    model = NeoXModel(*LayerLoader(path, progress=False, **loader_args).load())
    with torch.no_grad():
        return model(ids), model


def save_without_readout(model, folder):
    """`model` saved with `tie_word_embeddings: true` and no readout in the file, as transformers saves it."""
    from safetensors.torch import save_file
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in ("lm_head.weight", "embed_out.weight")}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


# ## Tied embeddings
def test_tied_embeddings_read_the_embedding_as_the_readout(tmp_path):
    from transformers import GPTNeoXForCausalLM
    model = make_tiny_hf_model(seed=1, tie_word_embeddings=True)
    save_without_readout(model, tmp_path)
    reference = GPTNeoXForCausalLM.from_pretrained(tmp_path).eval()
    assert reference.lm_head.weight is reference.gpt_neox.embed_in.weight
    ids = random_ids(96)
    logits, mine = ours(tmp_path, ids)
    assert (logits - theirs(reference, ids)).abs().max().item() < TOLERANCE
    # One parameter, as in transformers: training the one trains the other
    assert mine[-1].final_linear.weight is mine[0].word_embeddings.weight


def test_a_tied_config_with_its_own_readout_in_the_file_uses_it_as_transformers_does(tmp_path):
    from transformers import GPTNeoXForCausalLM
    model = make_tiny_hf_model(seed=2)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    reference = GPTNeoXForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(96)
    logits, mine = ours(tmp_path, ids)
    assert (logits - theirs(reference, ids)).abs().max().item() < TOLERANCE
    assert (logits - theirs(model, ids)).abs().max().item() < TOLERANCE
    assert mine[-1].final_linear.weight is not mine[0].word_embeddings.weight


def test_a_tied_model_merged_to_hf_loads_in_transformers_tied(tmp_path):
    from transformers import GPTNeoXForCausalLM
    model = make_tiny_hf_model(seed=1, tie_word_embeddings=True)
    save_without_readout(model, tmp_path / "src")
    merge_checkpoint(tmp_path / "src", tmp_path / "out", format="hf", progress=False)
    reread = GPTNeoXForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reread.config.tie_word_embeddings and reread.lm_head.weight is reread.gpt_neox.embed_in.weight
    ids = random_ids(96)
    assert (theirs(reread, ids) - theirs(model, ids)).abs().max().item() < TOLERANCE


# ## Dynamic NTK scaling
def dynamic_model(factor=2.0):
    return make_tiny_hf_model(seed=4, scale=0.3, max_position_embeddings=16, rotary_pct=0.5,
                              rope_parameters={"rope_type": "dynamic", "factor": factor, "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.5})


@pytest.mark.parametrize("length", [12, 16, 40])
def test_dynamic_rope_scaling_matches_transformers_within_and_past_the_context(tmp_path, length):
    model = dynamic_model()
    model.save_pretrained(tmp_path)
    config = NeoXConfig.from_hf_config(tmp_path)
    assert config.rotary_scaling_type == "dynamic" and config.rotary_scaling == 2.0
    ids = random_ids(96, length=length)
    logits, _ = ours(tmp_path, ids)
    assert (logits - theirs(model, ids)).abs().max().item() < TOLERANCE


def test_dynamic_rope_changes_the_logits_past_the_context_only(tmp_path):
    model = dynamic_model()
    model.save_pretrained(tmp_path)
    plain = NeoXConfig.from_hf_config(tmp_path).with_updates(rotary_scaling_type="linear", rotary_scaling=1.0)
    layers = build_layers(plain)
    for module, loaded in zip(layers, LayerLoader(tmp_path, progress=False).load()):
        module.load_state_dict(loaded.state_dict())
    ids = random_ids(96, length=40)
    with torch.no_grad():
        unscaled = NeoXModel(*layers)(ids)
    dynamic, _ = ours(tmp_path, ids)
    assert not torch.allclose(unscaled[:, :16], dynamic[:, :16], atol=1e-3)  # N = 40 changes every angle
    short = ids[:, :16]
    with torch.no_grad():
        assert torch.allclose(NeoXModel(*layers)(short), ours(tmp_path, short)[0], atol=TOLERANCE)


def test_greedy_generation_past_the_context_with_dynamic_rope_matches_transformers(tmp_path):
    model = dynamic_model()
    model.save_pretrained(tmp_path)
    prompt = random_ids(96, batch=1, length=10)
    # (An explicit mask: transformers would otherwise mask every prompt token equal to `pad_token_id`)
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    _, mine = ours(tmp_path, prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLengthWarning)
        generated = generate(mine, prompt, 20, eos_token_id=None)
    assert generated.shape[1] == 30 and torch.equal(generated, expected)


# ## A list of end-of-text ids
def test_a_list_of_eos_ids_stops_on_any_of_them_like_transformers(tmp_path):
    model = make_tiny_hf_model(seed=5, scale=0.3, max_position_embeddings=64)
    prompt = random_ids(96, batch=1, length=6)
    mask = torch.ones_like(prompt)
    free = model.generate(prompt, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, 6:]
    # The fourth new token that is not among the first three ends it; an id never produced is listed first
    stop = next(int(t) for t in free[3:] if int(t) not in free[:3].tolist())
    never = next(i for i in range(96) if i not in free.tolist())
    model.config.eos_token_id = [never, stop]
    model.save_pretrained(tmp_path)
    config = NeoXConfig.from_hf_config(tmp_path)
    assert config.stop_token_ids == (never, stop) and config.eos_token_id == never
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == [never, stop]
    # transformers' generation, given the list, stops on any of them
    expected = model.generate(prompt, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                              eos_token_id=[never, stop])
    _, mine = ours(tmp_path, prompt)
    generated = generate(mine, prompt, 12, eos_token_id=config.stop_token_ids)
    assert torch.equal(generated, expected) and int(generated[0, -1]) == stop
    # And it is written back as a list
    assert config.to_hf_config()["eos_token_id"] == [never, stop]


# ## The end of the context
def test_generation_at_the_end_of_the_context_warns_and_stops_there():
    config = NeoXConfig(n_layers=1, d_model=16, n_heads=2, n_vocab=40, n_ctx=32, rotary_pct=0.5)
    torch.manual_seed(0)
    model = NeoXModel(*build_layers(config)).eval()
    prompt = torch.randint(1, 40, (1, 17))
    with pytest.warns(ContextLengthWarning, match="only 15 of the 20 new tokens asked for fit"):
        new = list(generate_stream(model, prompt, 20, eos_token_id=None))
    assert len(new) == 15
    # Asked for what fits: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextLengthWarning)
        assert len(list(generate_stream(model, prompt, 15, eos_token_id=None))) == 15
    # A larger max_len generates past the context, as asked
    assert len(list(generate_stream(model, prompt, 20, eos_token_id=None, max_len=40))) == 20


# ## Folders that hold less than a model
def test_a_hub_snapshot_with_only_its_config_says_the_download_was_interrupted(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from test_hub import add_to_hub_cache
    model = make_tiny_hf_model()
    model.config.save_pretrained(tmp_path / "src")
    cache = tmp_path / "cache"
    add_to_hub_cache(cache, "EleutherAI/pythia-cut", "step9", {"config.json": (tmp_path / "src" / "config.json")
                     .read_bytes()}, hashlib.sha1(b"cut").hexdigest())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"EleutherAI/pythia-cut \(revision step9\).*no weights.*interrupted"
                                              r".*Download it again"):
        open_checkpoint("EleutherAI/pythia-cut", revision="step9")


def test_a_folder_saved_from_a_bare_gpt_neox_model_is_told_it_has_no_readout(tmp_path):
    from transformers import GPTNeoXModel
    model = make_tiny_hf_model()
    bare = GPTNeoXModel(model.config)
    bare.load_state_dict({k.removeprefix("gpt_neox."): v for k, v in model.state_dict().items()
                          if k.startswith("gpt_neox.")})
    bare.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="has no readout.*GPTNeoXModel") as error:
        list(LayerLoader(tmp_path, progress=False).load())
    assert "re-download" not in str(error.value).lower() and "final_linear" not in str(error.value)
