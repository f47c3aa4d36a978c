r"""
LoRA trains on several processes as the rest of fine-tuning does (`trainer.py`): two CPU processes (gloo), each
with half of every global batch, under `DistributedDataParallel` and under FSDP's `fully_shard`, give the losses
and the adapters one process gives on the whole batch; FSDP's shards gather back into whole `LoRALinear`s.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_distributed import CONFIG, data, free_port

from labml_nn.neox.model import build_layers
from labml_nn.neox.training.lora import LoRAConfig, add_lora, lora_layers
from labml_nn.neox.training.trainer import Trainer, TrainingConfig, gather_full_modules

STEPS = 3
TOLERANCE = 1e-5


def run(strategy):
    torch.manual_seed(0)
    layers = build_layers(CONFIG)
    add_lora(layers, LoRAConfig(rank=4, alpha=8))
    train, valid = data()
    config = TrainingConfig(steps=STEPS, batch_size=4, learning_rate=1e-2, warmup_steps=1, grad_clip=0.5)
    trainer = Trainer(layers, train, valid, config, distributed=strategy, track=False)
    losses = [trainer.train_step()["loss.train"] for _ in range(STEPS)]
    if strategy == "fsdp":
        layers = gather_full_modules(layers)
    adapters = [t.detach().cpu().clone() for _, _, lora in lora_layers(layers)
                for t in (lora.lora_A.weight, lora.lora_B.weight)]
    return {"losses": losses, "valid": trainer.validate(), "adapters": adapters}


def _worker(rank: int, world_size: int, port: int, out_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {"ddp": run("ddp"), "fsdp": run("fsdp")}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_file = str(tmp_path_factory.mktemp("dist") / "results.pt")
    mp.spawn(_worker, args=(2, free_port(), out_file), nprocs=2, join=True)
    return torch.load(out_file, weights_only=True)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lora_on_two_processes_gives_the_adapters_of_one(two_process_results, strategy):
    one, two = run(None), two_process_results[strategy]
    assert one["losses"][-1] != one["losses"][0]
    assert len(two["adapters"]) == len(one["adapters"]) == 2 * 4 * CONFIG.n_layers
    assert two["losses"] == pytest.approx(one["losses"], abs=TOLERANCE)
    assert two["valid"] == pytest.approx(one["valid"], abs=TOLERANCE)
    assert max((a - b).abs().max().item() for a, b in zip(one["adapters"], two["adapters"])) < TOLERANCE
    # The adapters trained (B left zero)
    assert all(b.abs().max() > 0 for b in one["adapters"][1::2])
