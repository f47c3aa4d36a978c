r"""
The ONNX graph that `onnx_export.py` writes computes what our model computes, run by `onnxruntime`, an
implementation that shares no code with PyTorch: on the demo model (exported by the command, with fp16-stored
weights, as the site uses it; a parallel residual) and on tiny random models with a sequential residual and with
tied layer norms.

* logits within 1e-4 of ours, for a left-padded batch (the padding in `attention_mask`) and then cached steps of
  one and of several tokens, the cache going out as `present.N.*` and back in as `past_key_values.N.*`;
* 50 greedy tokens with the cache, identical;
* the attention probabilities `attentions.N` within 1e-4 of softmax$(QK^\top/\sqrt{D} + M)$ computed here in
  float64 from the queries and keys that our model's own layers make (captured by a hook);
* the command on a Hugging Face checkpoint that transformers saved, checked against transformers itself, and
  its refusal to write over an existing folder.

Each model is exported once per module (a tiny one in a few seconds, the demo in about 20, on an idle machine).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from helpers import TOLERANCE, make_tiny_hf_model, our_model_from_hf, write_tiny_tokenizer  # noqa: E402

from labml_nn.neox.cli import DEMO_CHECKPOINT  # noqa: E402
from labml_nn.neox.loader import LayerLoader  # noqa: E402
from labml_nn.neox.model import Attention, KVCache, NeoXModel  # noqa: E402
from labml_nn.neox import onnx_export  # noqa: E402
from labml_nn.neox.onnx_export import GraphModel, _example_inputs, export_onnx, main  # noqa: E402

# Logits and probabilities of the graph against ours (both fp32, different kernels)
CLOSE = 1e-4


# ## Running the graph as any runtime would
class OrtDecoder:
    r"""Feeds the graph as transformers.js does: the whole mask every call, positions, the cache it returned."""

    def __init__(self, folder: Path, config):
        self.session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.config = config

    def start(self, ids: torch.Tensor, padding: torch.Tensor) -> dict:
        r"""The prompt step: `ids` `[B, T]` whose row $b$ starts with `padding[b]` padding tokens."""
        batch, n = ids.shape
        self.mask = (torch.arange(n)[None, :] >= padding[:, None]).long()
        self.past = {f"past_key_values.{i}.{kv}": np.zeros((batch, self.config.n_heads, 0, self.config.d_head),
                                                           np.float32)
                     for i in range(self.config.n_layers) for kv in ("key", "value")}
        return self._run(ids)

    def step(self, ids: torch.Tensor) -> dict:
        self.mask = torch.cat([self.mask, torch.ones(ids.shape, dtype=torch.long)], dim=1)
        return self._run(ids)

    def _run(self, ids: torch.Tensor) -> dict:
        # A token's position is the count of real tokens before it; padding slots get 0
        positions = (self.mask.cumsum(1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        feed = {"input_ids": ids.numpy(), "attention_mask": self.mask.numpy(), "position_ids": positions.numpy(),
                **self.past}
        out = dict(zip(self.names, self.session.run(None, feed)))
        self.past = {name.replace("present", "past_key_values"): v for name, v in out.items()
                     if name.startswith("present.")}
        return out


# ## The exports, once per module
#
# Three exports cover the three ways a layer adds its parts: the demo (a parallel residual, as in Pythia and the
# 20B model) through the command, as the site makes it, with fp16-stored weights; a tiny transformers model with
# a sequential residual, saved by `save_pretrained` and exported by the command; and a tiny model whose parallel
# residual ties its two layer norms (gpt-neox's `gpt_j_tied`), through `export_onnx`.
def _command(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "labml_nn.neox.onnx_export", *map(str, args)],
                            capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "demo"
    result = _command(DEMO_CHECKPOINT, out, "--fp16-weights", "--with-attentions")
    return NeoXModel(*LayerLoader(DEMO_CHECKPOINT, progress=False).load()).eval(), out, result


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    hf = make_tiny_hf_model(use_parallel_residual=False, num_hidden_layers=3)
    hf.save_pretrained(folder / "hf")
    write_tiny_tokenizer(folder / "hf" / "tokenizer.json", hf.config.vocab_size)
    _command(folder / "hf", folder / "out", "--with-attentions")
    return NeoXModel(*LayerLoader(folder / "hf", progress=False).load()).eval(), folder / "out", hf


@pytest.fixture(scope="module", params=["demo", "sequential", "tied"])
def exported(request, tmp_path_factory):
    if request.param != "tied":
        return request.getfixturevalue(request.param)[:2]
    model = our_model_from_hf(make_tiny_hf_model(num_hidden_layers=3), tied_layernorms=True)
    out = tmp_path_factory.mktemp("onnx") / "tied"
    # Its weights go to `model.onnx_data`, as a model over 1.5 GB's would, so that the tests run that path too
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_ABOVE", 0)
        export_onnx(model, out, with_attentions=True)
    return model, out


def _prompt(model: NeoXModel, length: int = 9, seed: int = 3):
    r"""Two rows, the second left-padded by 3."""
    ids = torch.randint(2, model[0].config.n_vocab, (2, length), generator=torch.Generator().manual_seed(seed))
    return ids, torch.tensor([0, 3])


# ## Logits and greedy tokens
def test_logits_match_ours_with_padding_then_cached_steps(exported):
    model, folder = exported
    config = model[0].config
    ids, padding = _prompt(model)
    graph = OrtDecoder(folder, config)
    cache = KVCache(64, padding=padding)
    gen = torch.Generator().manual_seed(4)
    # The prompt, then steps of 1, 3 and 1 tokens: a step of several tokens after a cache needs the shifted
    # triangle of the mask
    for n_new in (None, 1, 3, 1):
        if n_new is not None:
            ids = torch.randint(2, config.n_vocab, (2, n_new), generator=gen)
        with torch.no_grad():
            ours = model(ids, cache)
        got = graph.start(ids, padding) if n_new is None else graph.step(ids)
        assert got["logits"].shape == tuple(ours.shape)
        assert np.abs(got["logits"] - ours.numpy()).max() <= CLOSE
        assert got["present.0.key"].shape[2] == cache.offset


def test_fifty_greedy_tokens_with_the_cache_are_ours(exported):
    model, folder = exported
    ids, padding = _prompt(model)
    graph = OrtDecoder(folder, model[0].config)
    cache = KVCache(ids.shape[1] + 50, padding=padding)
    ours_ids, graph_ids = [], []
    with torch.no_grad():
        ours, got = model(ids, cache), graph.start(ids, padding)["logits"]
        for _ in range(50):
            ours_next = ours[:, -1].argmax(-1, keepdim=True)
            graph_next = torch.from_numpy(got[:, -1].argmax(-1))[:, None]
            ours_ids.append(ours_next)
            graph_ids.append(graph_next)
            ours, got = model(ours_next, cache), graph.step(graph_next)["logits"]
    assert torch.equal(torch.cat(ours_ids, 1), torch.cat(graph_ids, 1))


# ## Attention probabilities
#
# Ours, computed here: the hook catches what each layer's `query_key_value` makes, `[B, T, 3C]`; the layer's own
# `RotaryEmbedding` (`model.py`) rotates the queries and keys for each row's padding; the probabilities and the mask
# (a query sees earlier real keys, and its own slot) are written out in float64.
def _our_attention(model: NeoXModel, ids: torch.Tensor, padding: torch.Tensor) -> list:
    config, caught = model[0].config, []
    hooks = [layer.attention.query_key_value.register_forward_hook(lambda m, i, o: caught.append(o))
             for layer in model[1:-2]]
    try:
        with torch.no_grad():
            model(ids, KVCache(ids.shape[1], padding=padding))
    finally:
        for h in hooks:
            h.remove()
    batch, n = ids.shape
    slot = torch.arange(n)
    causal, own = slot[None, :] <= slot[:, None], slot[None, :] == slot[:, None]
    mask = (causal & (slot[None, None, :] >= padding[:, None, None])) | own
    result = []
    for layer, qkv in zip(model[1:-2], caught):
        qkv = qkv.view(batch, n, config.n_heads, 3, config.d_head)
        qk = layer.attention.rotary_emb(qkv[:, :, :, :2], 0, padding).double()
        q, k = qk[:, :, :, 0].transpose(1, 2), qk[:, :, :, 1].transpose(1, 2)
        scores = (q @ k.transpose(-1, -2) / config.d_head ** 0.5).masked_fill(~mask[:, None], float("-inf"))
        result.append(torch.softmax(scores, -1))
    return result


def test_attention_probabilities_are_softmax_of_our_queries_and_keys(exported):
    model, folder = exported
    config = model[0].config
    ids, padding = _prompt(model, length=11)
    expected = _our_attention(model, ids, padding)
    # The whole prompt at once, and the same prompt fed as 8 tokens and then 3 from the cache: the last rows
    graph = OrtDecoder(folder, config)
    whole = graph.start(ids, padding)
    graph.start(ids[:, :8], padding)
    cached = graph.step(ids[:, 8:])
    for i in range(config.n_layers):
        assert whole[f"attentions.{i}"].shape == (2, config.n_heads, 11, 11)
        assert np.abs(whole[f"attentions.{i}"] - expected[i].numpy()).max() <= CLOSE
        assert np.abs(cached[f"attentions.{i}"] - expected[i][:, :, 8:].numpy()).max() <= CLOSE
    # They are probabilities: each row sums to 1, and no query looks at a later key or at padding
    assert np.allclose(whole["attentions.0"].sum(-1), 1, atol=1e-5)
    assert (whole["attentions.0"][1, :, 3:, :3] == 0).all()
    assert (np.triu(whole["attentions.0"][0], k=1) == 0).all()


def test_exporting_leaves_the_callers_model_alone(exported):
    model, _ = exported
    assert all(type(layer.attention) is Attention for layer in model[1:-2])


# ## The folder
def test_the_demo_folder_is_what_hugging_faces_tools_load(demo):
    model, folder, result = demo
    config = model[0].config
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "onnx", "tokenizer.json",
                                                         "tokenizer_config.json"]
    hf = json.loads((folder / "config.json").read_text())
    assert (hf["model_type"], hf["num_hidden_layers"], hf["num_attention_heads"], hf["hidden_size"],
            hf["vocab_size"]) == ("gpt_neox", config.n_layers, config.n_heads, config.d_model, config.n_vocab)
    assert json.loads((folder / "tokenizer_config.json").read_text()) == {}
    assert (folder / "tokenizer.json").read_bytes() == (DEMO_CHECKPOINT / "20B_tokenizer.json").read_bytes()
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["past_key_values.3.value"] == ["batch_size", config.n_heads, "past_sequence_length", config.d_head]
    assert inputs["attention_mask"] == ["batch_size", "total_sequence_length"]
    assert outputs["logits"] == ["batch_size", "sequence_length", config.n_vocab]
    assert outputs["present.0.key"][2] == outputs["attentions.0"][3] == "total_sequence_length"
    assert len(inputs) == 3 + 2 * config.n_layers and len(outputs) == 1 + 3 * config.n_layers
    # fp16 storage: about 2 bytes a parameter, where fp32 takes 4; and it rounds nothing, since every weight of the
    # demo is an fp16 value (which is why its logits above match ours to 1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    assert (folder / "onnx" / "model.onnx").stat().st_size < 2.1 * n_params
    assert all(torch.equal(p.half().float(), p) for p in model.parameters())
    # Nothing of the machine that exported it: no paths, no Python stacks
    graph = (folder / "onnx" / "model.onnx").read_bytes()
    assert str(Path(onnx_export.__file__).parent).encode() not in graph and b"stack_trace" not in graph
    assert "Wrote" in result.stdout


def test_the_command_exports_a_transformers_checkpoint_that_matches_transformers(sequential):
    model, out, hf = sequential
    ids = torch.randint(0, hf.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(5))
    got = OrtDecoder(out, model[0].config).start(ids, torch.tensor([0, 0]))
    with torch.no_grad():
        expected = hf(ids).logits
    assert np.abs(got["logits"] - expected.numpy()).max() <= TOLERANCE
    assert (out / "tokenizer.json").read_bytes() == (out.parent / "hf" / "tokenizer.json").read_bytes()
    assert not list(out.parent.glob("out.tmp-*"))


def test_weights_over_the_limit_go_to_model_onnx_data(exported):
    model, folder = exported
    data = folder / "onnx" / "model.onnx_data"
    if folder.name == "tied":
        assert data.stat().st_size >= 0.95 * 4 * sum(p.numel() for p in model.parameters())
    else:
        assert not data.exists()


def test_without_attentions_the_graph_gives_logits_and_cache_only(exported):
    model, _ = exported
    n = model[0].config.n_layers
    graph_model = GraphModel(model, with_attentions=False)
    with torch.no_grad():
        outputs = graph_model(*_example_inputs(graph_model, model[0].config))
    assert len(outputs) == 1 + 2 * n


def test_the_command_refuses_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main([str(DEMO_CHECKPOINT), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main(["no/such/folder/here", str(tmp_path / "x")]) == 2
