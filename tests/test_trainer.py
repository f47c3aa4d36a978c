r"""
The training loop (`training/trainer.py`) and its data (`training/text_dataset.py`) on tiny random models: windows
are inputs and next-token targets, the loss is the cross-entropy computed independently in float64, the loss falls
within a few steps, the schedule warms up and decays, activation checkpointing and bf16 autocast change nothing
(or little), and layers placed on two GPUs train like layers on one (skipped without two GPUs).
"""

import math

import pytest
import torch

from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.model import NeoXModel, build_layers
from labml_nn.neox.training.text_dataset import TokenWindows, split_train_valid
from labml_nn.neox.training.trainer import (Trainer, TrainingConfig, evaluate, learning_rate,
                                         lm_loss)

CONFIG = NeoXConfig(n_layers=2, d_model=32, n_heads=4, n_vocab=64, n_ctx=32, rotary_pct=0.5,
                    parallel_residual=True, activation="gelu_tanh")


def tiny_layers(seed: int = 0):
    torch.manual_seed(seed)
    return build_layers(CONFIG)


def patterned_ids(n: int = 4000, seed: int = 0) -> torch.Tensor:
    # A learnable sequence: a random "sentence" of 16 tokens repeated with small changes
    gen = torch.Generator().manual_seed(seed)
    sentence = torch.randint(2, CONFIG.n_vocab, (16,), generator=gen)
    ids = sentence.repeat(n // 16 + 1)[:n].clone()
    noise = torch.rand(n, generator=gen) < 0.05
    ids[noise] = torch.randint(2, CONFIG.n_vocab, (int(noise.sum()),), generator=gen)
    return ids


# ## Data
def test_windows_pair_each_input_with_the_next_token_and_cover_every_target_once():
    ids = torch.arange(100)
    windows = TokenWindows(ids, seq_len=8)
    assert len(windows) == (100 - 1) // 8
    targets = []
    for i in range(len(windows)):
        x, y = windows[i]
        assert torch.equal(y, x + 1)
        targets += y.tolist()
    # Every token after the first is a target at most once, in order, with no gaps
    assert targets == list(range(1, 1 + 8 * len(windows)))


def test_validation_split_is_the_end_and_too_short_a_text_says_so():
    train, valid = split_train_valid(torch.arange(1000), 0.1, seq_len=16)
    assert torch.equal(torch.cat([train, valid]), torch.arange(1000)) and len(valid) == 100
    with pytest.raises(ValueError, match="too few"):
        split_train_valid(torch.arange(40), 0.1, seq_len=16)


# ## The loss
def test_loss_is_next_token_cross_entropy_computed_in_float64():
    layers = tiny_layers()
    x, y = TokenWindows(patterned_ids(), 16).batch([0, 3])
    logits = NeoXModel(*layers)(x)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    expected = -log_probs.gather(-1, y[..., None]).mean()
    assert abs(lm_loss(logits, y).item() - expected.item()) < 1e-6


def test_loss_falls_within_a_few_steps():
    layers = tiny_layers()
    data = TokenWindows(patterned_ids(), 16)
    trainer = Trainer(layers, data, data, TrainingConfig(steps=30, batch_size=8, learning_rate=3e-3), track=False)
    before = trainer.validate()
    after = trainer.train()["loss.valid"]
    # From about ln 64 = 4.16 nats (uniform) to well below
    assert abs(before - math.log(CONFIG.n_vocab)) < 0.5
    assert after < before - 1.5, (before, after)


def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    config = TrainingConfig(steps=100, learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    rates = [learning_rate(s, config) for s in range(100)]
    assert rates[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert rates[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert learning_rate(100, config) == pytest.approx(1e-4)
    # Half-way through the cosine the rate is half-way between peak and floor
    assert learning_rate(55, config) == pytest.approx(0.55e-3)


def test_only_parameters_that_require_grad_reach_the_optimizer():
    layers = tiny_layers()
    for p in layers[0].parameters():
        p.requires_grad_(False)
    trainer = Trainer(layers, TokenWindows(patterned_ids(), 16), None, TrainingConfig(steps=1), track=False)
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(layers[0].word_embeddings.weight) not in in_optimizer
    assert in_optimizer == {id(p) for m in layers for p in m.parameters() if p.requires_grad}


# ## Memory savers
def _weights_after_steps(steps: int, **config) -> list:
    layers = tiny_layers()
    trainer = Trainer(layers, TokenWindows(patterned_ids(), 16), None,
                      TrainingConfig(steps=steps, batch_size=4, learning_rate=1e-3, **config), track=False)
    losses = [trainer.train_step()["loss.train"] for _ in range(steps)]
    return losses, [p.detach().clone() for m in layers for p in m.parameters()]


def test_activation_checkpointing_gives_the_same_training():
    losses, weights = _weights_after_steps(3)
    losses_ckpt, weights_ckpt = _weights_after_steps(3, activation_checkpointing=True)
    assert losses == pytest.approx(losses_ckpt, abs=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(weights, weights_ckpt)) < 1e-6


def test_bf16_autocast_trains_close_to_fp32():
    # bf16 keeps 8 bits of mantissa: the first loss agrees to about 1e-2 on this tiny model
    losses, _ = _weights_after_steps(2)
    losses_bf16, weights = _weights_after_steps(2, precision="bf16")
    assert losses_bf16 == pytest.approx(losses, abs=5e-2)
    # The parameters (the master weights) stay in fp32
    assert all(w.dtype == torch.float32 for w in weights)


def test_validation_loss_is_token_weighted_over_all_windows():
    layers = tiny_layers()
    data = TokenWindows(patterned_ids(500), 16)
    total, n_tokens = evaluate(torch.nn.Sequential(*layers), data, batch_size=7)
    x, y = data.batch(range(len(data)))
    with torch.no_grad():
        expected = lm_loss(NeoXModel(*layers)(x), y, reduction="sum").item()
    assert n_tokens == y.numel() and total == pytest.approx(expected, rel=1e-5)


# ## Several GPUs on one machine
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_layers_on_two_gpus_train_like_layers_on_one():
    def run(devices):
        layers = tiny_layers()
        for i, layer in enumerate(layers):
            layer.to(devices[0] if i < len(layers) // 2 else devices[-1])
        trainer = Trainer(layers, TokenWindows(patterned_ids(), 16), None,
                          TrainingConfig(steps=3, batch_size=4, learning_rate=1e-3), track=False)
        losses = [trainer.train_step()["loss.train"] for _ in range(3)]
        return losses, [p.detach().cpu() for m in layers for p in m.parameters()]

    losses_one, weights_one = run(["cuda:0"])
    losses_two, weights_two = run(["cuda:0", "cuda:1"])
    assert losses_one == pytest.approx(losses_two, abs=1e-4)
    assert max((a - b).abs().max().item() for a, b in zip(weights_one, weights_two)) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_grad_scaler_trains_on_cuda():
    layers = [m.cuda() for m in tiny_layers()]
    trainer = Trainer(layers, TokenWindows(patterned_ids(), 16), None,
                      TrainingConfig(steps=20, batch_size=8, learning_rate=3e-3, precision="fp16"), track=False)
    first = trainer.train_step()["loss.train"]
    last = [trainer.train_step()["loss.train"] for _ in range(19)][-1]
    assert last < first - 1.0
