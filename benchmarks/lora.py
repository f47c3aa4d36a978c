r"""
# Fine-tuning benchmark: LoRA against BitFit and the FFNs, at equal steps

The demo model (`labml_nn/neox/demo/`) fine-tuned three ways on the three plays its training left out (*Julius
Caesar*, *Macbeth*, *Twelfth Night*, `labml_nn/neox/evaluation/data/shakespeare_held_out.jsonl`), as
`samples/finetune.py` does it: the plays as one token sequence (an end-of-text token after each), the last 10%
held out, windows of 256 tokens, 8 windows a step, AdamW with warm-up and cosine schedule, each method at its
default peak learning rate (`samples/finetune.py`'s `DEFAULT_LR`), the same steps and the same batches:

* `biases`: BitFit, every bias;
* `ffn`: the feed-forward networks, weights and biases;
* `lora`: rank 8, alpha 16, dropout 0.05, all four linear layers of every transformer layer (`training/lora.py`).

For each, one row: **bits per byte** of the held-out tenth before and after (total nats over its windows / ln 2 /
the UTF-8 bytes of the tokens scored, an end-of-text token counting one byte), the **trainable parameters**, the
**peak memory** of the process (its maximum resident set, which includes Python and PyTorch, about 300 MiB; each
method runs in a process of its own) and the **optimizer's state**, and the **seconds per step** (median over
the steps after the first).

## How to run

```
python benchmarks/lora.py                 # 40 steps each, fp32 on the CPU (a few minutes)
python benchmarks/lora.py --steps 50 --device cuda
```

It prints one markdown row per method, the table recorded in `benchmarks/RESULTS.md`.
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
METHODS = ("biases", "ffn", "lora")


def held_out(tokenizer, seq_len: int):
    from labml_nn.neox.evaluation.tasks import DATA_DIR
    from labml_nn.neox.training.text_dataset import TokenWindows, split_train_valid, tokenize_documents
    lines = (DATA_DIR / "shakespeare_held_out.jsonl").read_text().splitlines()
    ids = tokenize_documents(tokenizer, [json.loads(line)["text"] for line in lines if line.strip()])
    train_ids, valid_ids = split_train_valid(ids, 0.1, seq_len)
    valid = TokenWindows(valid_ids, seq_len)
    # The bytes of the tokens the validation scores: every window's targets
    scored = valid_ids[1:1 + len(valid) * seq_len].tolist()
    n_bytes = len(tokenizer.decode([t for t in scored if t != 0]).encode("utf-8")) + scored.count(0)
    return TokenWindows(train_ids, seq_len), valid, n_bytes


def bits_per_byte(model, valid, n_bytes: int, batch_size: int) -> float:
    from labml_nn.neox.training.trainer import evaluate
    total, _ = evaluate(model, valid, batch_size)
    return total / math.log(2) / n_bytes


def run_one(method: str, steps: int, device: str, seed: int) -> dict:
    from labml_nn.neox.cli import DEMO_CHECKPOINT
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.tokenizer import load_tokenizer
    from labml_nn.neox.training.finetune import count_parameters, select_trainable
    from labml_nn.neox.training.lora import LoRAConfig, add_lora
    from labml_nn.neox.training.trainer import Trainer, TrainingConfig
    sys.path.insert(0, str(REPO / "samples"))
    from finetune import DEFAULT_LR

    torch.manual_seed(seed)
    loader = LayerLoader(DEMO_CHECKPOINT, dtype=torch.float32, device=device, progress=False)
    modules = list(loader.load())
    if method == "lora":
        add_lora(modules, LoRAConfig(rank=8, alpha=16, dropout=0.05))
    else:
        select_trainable(modules, method)
    trained, total = count_parameters(modules)
    tokenizer = load_tokenizer(loader.checkpoint.tokenizer_path)
    train, valid, n_bytes = held_out(tokenizer, 256)
    config = TrainingConfig(steps=steps, batch_size=8, learning_rate=DEFAULT_LR[method], seed=seed)
    trainer = Trainer(modules, train, valid, config, track=False)
    before = bits_per_byte(trainer.model, valid, n_bytes, 8)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    after = bits_per_byte(trainer.model, valid, n_bytes, 8)
    optimizer_bytes = sum(t.numel() * t.element_size() for state in trainer.optimizer.state.values()
                          for t in state.values() if torch.is_tensor(t))
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": method, "before": before, "after": after, "trained": trained, "total": total,
            "peak_mib": peak / 2 ** 20, "optimizer_mib": optimizer_bytes / 2 ** 20,
            "seconds_per_step": statistics.median(times[1:] or times), "steps": steps,
            "valid_tokens": len(valid) * 256, "valid_bytes": n_bytes}


def main():
    parser = argparse.ArgumentParser(description="LoRA against BitFit and FFN fine-tuning of the demo model on "
                                                 "the held-out plays, at equal steps")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each method")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches and of LoRA's initialisation")
    parser.add_argument("--one", choices=METHODS, help="run one method in this process and print its row as JSON "
                                                       "(how the benchmark runs each method)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.device, args.seed)))
        return
    rows = []
    for method in METHODS:
        # Each method in a process of its own, so that its peak memory is its own
        out = subprocess.run([sys.executable, __file__, "--one", method, "--steps", str(args.steps), "--device",
                              args.device, "--seed", str(args.seed)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    memory = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS"
    print(f"| method | bits/byte before | after {args.steps} steps | trainable parameters | {memory} | "
          f"optimizer state | s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['before']:.4f} | {r['after']:.4f} | {r['trained']:,} "
              f"({r['trained'] / r['total']:.2%}) | {r['peak_mib']:.0f} MiB | {r['optimizer_mib']:.2f} MiB | "
              f"{r['seconds_per_step']:.3f} |")
    print(f"\n{rows[0]['valid_tokens']:,} held-out tokens, {rows[0]['valid_bytes']:,} bytes; "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
