r"""
Training with several processes uses PyTorch's own engines, `DistributedDataParallel` and FSDP's `fully_shard`.
Here two CPU processes (gloo) each take half of every global batch, and must give the same losses, the same
validation loss and the same weights as one process on the whole batch. Both engines are tested in one pair of
processes, because starting processes is the slow part.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.model import build_layers
from labml_nn.neox.training.text_dataset import TokenWindows
from labml_nn.neox.training.trainer import Trainer, TrainingConfig, gather_full_modules

CONFIG = NeoXConfig(n_layers=2, d_model=32, n_heads=4, n_vocab=64, n_ctx=32, rotary_pct=0.5,
                    parallel_residual=True, activation="gelu_tanh")
STEPS = 3
TOLERANCE = 1e-5


def tiny_layers(train_biases_only: bool):
    torch.manual_seed(0)
    layers = build_layers(CONFIG)
    if train_biases_only:
        for m in layers:
            for name, p in m.named_parameters():
                p.requires_grad_(name.endswith("bias"))
    return layers


def data():
    ids = torch.randint(0, CONFIG.n_vocab, (3000,), generator=torch.Generator().manual_seed(1))
    return TokenWindows(ids[:2500], 16), TokenWindows(ids[2500:], 16)


def run(strategy, train_biases_only=False):
    layers = tiny_layers(train_biases_only)
    train, valid = data()
    config = TrainingConfig(steps=STEPS, batch_size=4, learning_rate=1e-2, warmup_steps=1, grad_clip=0.5)
    trainer = Trainer(layers, train, valid, config, distributed=strategy, track=False)
    losses = [trainer.train_step()["loss.train"] for _ in range(STEPS)]
    valid_loss = trainer.validate()
    if strategy == "fsdp":
        layers = gather_full_modules(layers)
    weights = []
    for m in layers:
        for name, p in m.named_parameters():
            w = p.detach().cpu().clone()
            # The key biases of the features that rotary leaves alone have a gradient of exactly zero in exact
            # arithmetic (adding the same number to every score of a query does not change its softmax), so
            # what they receive is rounding noise, which Adam, dividing by the noise's own size, turns into a
            # full step. They differ between any two summation orders; we leave them out of the comparison.
            if name == "attention.query_key_value.bias":
                w.view(CONFIG.n_heads, 3, CONFIG.d_head)[:, 1, CONFIG.d_rotary:] = 0
            weights.append(w)
    return {"losses": losses, "valid": valid_loss, "weights": weights}


def _worker(rank: int, world_size: int, port: int, out_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {"ddp": run("ddp"), "fsdp": run("fsdp"), "fsdp_biases": run("fsdp", train_biases_only=True)}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_file = str(tmp_path_factory.mktemp("dist") / "results.pt")
    mp.spawn(_worker, args=(2, free_port(), out_file), nprocs=2, join=True)
    return torch.load(out_file, weights_only=True)


def assert_same(one, two):
    assert two["losses"] == pytest.approx(one["losses"], abs=TOLERANCE)
    assert two["valid"] == pytest.approx(one["valid"], abs=TOLERANCE)
    assert max((a - b).abs().max().item() for a, b in zip(one["weights"], two["weights"])) < TOLERANCE


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_give_the_loss_and_weights_of_one(two_process_results, strategy):
    one = run(None)
    # The run must actually train, or equal weights would prove nothing
    assert one["losses"][-1] != one["losses"][0]
    assert_same(one, two_process_results[strategy])


def test_fsdp_with_frozen_weights_trains_only_the_biases_like_one_process(two_process_results):
    one = run(None, train_biases_only=True)
    assert_same(one, two_process_results["fsdp_biases"])
