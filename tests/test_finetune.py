r"""
Fine-tuning (`training/finetune.py`): exactly the chosen tensors change (biases, FFN, all), the trained tensors
round-trip through their safetensors file, a fine-tuned model written as a checkpoint reloads with identical
logits (also after merging the trained tensors into the base checkpoint), and `samples/finetune.py` run end to
end on a tiny checkpoint writes a folder that loads.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_tokenizer
from labml_nn.neox.checkpoint import CheckpointError
from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.loader import LayerLoader
from labml_nn.neox.model import NeoXModel, build_layers
from labml_nn.neox.training.finetune import (apply_trained, load_trained, merge_into_checkpoint, save_trained,
                                          select_trainable, write_checkpoint)
from labml_nn.neox.training.text_dataset import TokenWindows
from labml_nn.neox.training.trainer import Trainer, TrainingConfig

REPO = Path(__file__).resolve().parent.parent
CONFIG = NeoXConfig(n_layers=2, d_model=32, n_heads=4, n_vocab=384, n_ctx=64, rotary_pct=0.25,
                    parallel_residual=True, activation="gelu_tanh")


def tiny_text(n_sentences: int = 400) -> str:
    rng = random.Random(0)
    nouns, verbs = ["king", "queen", "fool", "ghost", "sword", "crown"], ["sees", "loves", "fears", "takes"]
    return "\n".join(f"The {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}."
                     for _ in range(n_sentences))


def tiny_layers(seed: int = 0):
    torch.manual_seed(seed)
    layers = build_layers(CONFIG)
    # Fresh layer norms are all ones and zeros; perturb them so that a norm that is not restored shows
    with torch.no_grad():
        for m in layers:
            for name, p in m.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    return layers


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    path = tmp_path / "base"
    tokenizer = write_tiny_tokenizer(tmp_path / "20B_tokenizer.json", 300)
    write_checkpoint(path, tiny_layers(), tensor_parallel_size=2, tokenizer_path=tokenizer)
    return path


def random_ids(seed: int = 0, batch: int = 8, length: int = 16) -> torch.Tensor:
    return torch.randint(2, CONFIG.n_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def fine_tune(layers, train: str, steps: int = 3):
    select_trainable(layers, train)
    data = TokenWindows(random_ids(1, 1, 2000)[0], 16)
    Trainer(layers, data, None, TrainingConfig(steps=steps, batch_size=4, learning_rate=1e-2), track=False).train()
    return layers


def named_tensors(layers) -> dict:
    return {f"{i}.{n}": p.detach().clone() for i, m in enumerate(layers) for n, p in m.named_parameters()}


# ## What trains
@pytest.mark.parametrize("train", ["biases", "ffn", "all"])
def test_only_the_chosen_tensors_change(train):
    layers = tiny_layers()
    before = named_tensors(layers)
    fine_tune(layers, train)
    after = named_tensors(layers)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {"biases": {k for k in before if k.endswith("bias")},
                "ffn": {k for k in before if ".mlp." in k},
                "all": set(before)}[train]
    assert changed == expected


def test_biases_include_every_linear_and_norm_bias_and_nothing_else():
    layers = tiny_layers()
    keys = set(select_trainable(layers, "biases"))
    assert "1.attention.query_key_value.bias" in keys and "3.norm.bias" in keys
    assert "1.post_attention_layernorm.bias" in keys
    assert all(k.endswith(".bias") for k in keys)
    # The readout has no bias
    assert not any(k.startswith("4.") for k in keys)


def test_bitfit_on_bf16_weights_trains_fp32_biases_under_autocast():
    # How a large model is fine-tuned: frozen weights in half precision, fp32 copies of what trains
    layers = [m.to(torch.bfloat16) for m in tiny_layers()]
    select_trainable(layers, "biases")
    frozen = layers[1].attention.query_key_value.weight
    frozen_before = frozen.detach().clone()
    data = TokenWindows(random_ids(1, 1, 2000)[0], 16)
    trainer = Trainer(layers, data, None, TrainingConfig(steps=3, batch_size=4, learning_rate=1e-2,
                                                         precision="bf16"), track=False)
    bias_before = layers[1].attention.query_key_value.bias.detach().clone()
    trainer.train()
    assert frozen.dtype == torch.bfloat16 and torch.equal(frozen, frozen_before)
    assert all(p.dtype == torch.float32 for m in layers for p in m.parameters() if p.requires_grad)
    assert not torch.equal(layers[1].attention.query_key_value.bias, bias_before)


# ## The file of trained tensors
def test_trained_tensors_round_trip_through_safetensors(tmp_path):
    tuned = fine_tune(tiny_layers(), "biases")
    path = save_trained(tmp_path / "ft.safetensors", tuned, "biases", CONFIG)
    tensors, metadata = load_trained(path)
    assert metadata["train"] == "biases" and all(k.endswith("bias") for k in tensors)
    base = tiny_layers()
    apply_trained(base, tensors, metadata)
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(NeoXModel(*base)(ids), NeoXModel(*tuned)(ids))


def test_trained_tensors_of_another_model_are_refused(tmp_path):
    tuned = fine_tune(tiny_layers(), "biases", steps=1)
    path = save_trained(tmp_path / "ft.safetensors", tuned, "biases", CONFIG)
    tensors, metadata = load_trained(path)
    other = build_layers(CONFIG.with_updates(d_model=64))
    with pytest.raises(ValueError, match="d_model=32"):
        apply_trained(other, tensors, metadata)
    with pytest.raises(ValueError, match="shape"):
        apply_trained(other, tensors)


# ## Complete checkpoints
def load(path) -> list:
    return list(LayerLoader(path, progress=False).load())


@pytest.mark.parametrize("tp", [1, 2])
def test_fine_tuned_checkpoint_reloads_with_identical_logits(tmp_path, tp):
    tuned = fine_tune(tiny_layers(), "all")
    write_checkpoint(tmp_path / "out", tuned, tensor_parallel_size=tp)
    ids = random_ids()
    with torch.no_grad():
        expected = NeoXModel(*tuned)(ids)
        reloaded = NeoXModel(*load(tmp_path / "out"))(ids)
    # fp32 throughout; merging the ranks of a row-parallel bias adds zeros, so this is exact up to summation order
    assert (reloaded - expected).abs().max().item() < 1e-5


def test_merging_trained_tensors_into_the_base_checkpoint(tiny_checkpoint, tmp_path):
    tuned = fine_tune(load(tiny_checkpoint), "biases")
    trained = save_trained(tmp_path / "ft.safetensors", tuned, "biases", CONFIG)
    merge_into_checkpoint(tiny_checkpoint, trained, tmp_path / "merged")
    merged = LayerLoader(tmp_path / "merged", progress=False)
    assert merged.config.tensor_parallel_size == 2 and merged.checkpoint.tokenizer_path is not None
    ids = random_ids()
    with torch.no_grad():
        assert (NeoXModel(*merged.load())(ids) - NeoXModel(*tuned)(ids)).abs().max().item() < 1e-5


def test_an_existing_folder_is_not_overwritten_by_default(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        write_checkpoint(tmp_path / "out", tiny_layers())
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    # Nothing half-written is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ## The sample, end to end
def test_finetune_sample_writes_a_checkpoint_that_loads(tiny_checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(tiny_text())
    out = tmp_path / "tuned"
    result = subprocess.run([sys.executable, str(REPO / "samples" / "finetune.py"), "--checkpoint",
                             str(tiny_checkpoint), "--text", str(text), "--steps", "3", "--out", str(out),
                             "--batch-size", "4", "--seq-len", "16", "--lr", "1e-2", "--device", "cpu",
                             "--log-dir", str(tmp_path / "logs")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Training biases" in result.stdout and "Wrote" in result.stdout
    base, tuned = load(tiny_checkpoint), LayerLoader(out, progress=False)
    assert tuned.config.tensor_parallel_size == 2
    assert (out / "finetuned.safetensors").is_file() and (out / "20B_tokenizer.json").is_file()
    tuned = list(tuned.load())
    # The biases moved, the weights did not
    changed = {k for k, v in named_tensors(base).items() if not torch.equal(v, named_tensors(tuned)[k])}
    assert changed and all(k.endswith("bias") for k in changed)


def test_an_output_path_that_is_a_file_is_refused_with_a_message(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(CheckpointError, match="is a file"):
        write_checkpoint(tmp_path / "out", tiny_layers())
    assert (tmp_path / "out").read_text() == "a file"
