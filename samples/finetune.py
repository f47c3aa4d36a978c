r"""
# Fine-tuning GPT-NeoX on your own text

This sample continues training a GPT-NeoX checkpoint on a text file and writes the result as a complete
checkpoint, which `samples/generate.py --checkpoint DIR2` (and anything that reads gpt-neox checkpoints) loads.

It puts together `finetune.py` (choosing what trains: the biases only, the feed-forward networks, or all),
`lora.py` (or low-rank adapters beside the frozen weights),
`text_dataset.py` (the text as windows of tokens, with the last 10% held out for validation) and `trainer.py`
(AdamW, warm-up and cosine schedule, gradient clipping, mixed precision, activation checkpointing).

By default only the **biases** train (BitFit): the rest of the model stays frozen in the dtype it was loaded in,
and the optimiser holds state for a tiny fraction of the parameters. This is how GPT-NeoX-20B can be fine-tuned
on two 48 GB GPUs: `--dtype fp16 --devices cuda:0,cuda:1 --activation-checkpointing` loads the fp16 model spread
over both, with fp32 copies of the biases that train.

## How to run

```
python samples/finetune.py --checkpoint labml_nn/neox/demo --text my_text.txt --steps 200 --out my_model
python samples/generate.py --checkpoint my_model --prompt "To be"
python samples/finetune.py --checkpoint ~/data/20B_checkpoints --text my_text.txt --steps 500 --out neox-ft \
    --dtype fp16 --devices cuda:0,cuda:1 --activation-checkpointing --batch-size 4 --seq-len 1024
python samples/finetune.py --checkpoint labml_nn/neox/demo --text my_text.txt --steps 200 --out my_lora \
    --train lora --lora-rank 8 --lora-alpha 16 --lora-dropout 0.05      # a peft adapter folder
python samples/generate.py --checkpoint my_lora --prompt "To be"      # the adapter on the base it names
torchrun --nproc-per-node 8 samples/finetune.py --checkpoint pythia-1b --text my_text.txt --steps 500 \
    --out pythia-ft --train all --distributed fsdp       # one process per GPU, PyTorch's FSDP
python samples/finetune.py --help
```

The output folder holds the fine-tuned model in the 20B slim-weights layout, with the source's tensor-parallel
degree (1 for a Hugging Face source), its tokenizer and its config, and `finetuned.safetensors`: only the trained
tensors, which `labml_nn.neox.training.finetune.merge_into_checkpoint` puts back into the source checkpoint. The
folder is written beside its final place and renamed when complete, so an interrupted run leaves nothing
half-written.

With `--train lora` the output folder is a LoRA adapter in peft's format instead (`adapter_config.json`, naming the
base checkpoint in `base_model_name_or_path`, and `adapter_model.safetensors`, a few hundred kilobytes for the
demo): every command here loads it where a checkpoint goes, on the base it names (or `--base`), and peft loads it on
transformers' `GPTNeoXForCausalLM` (`checkpoint/adapters.py`). `python -m labml_nn.neox.checkpoint merge ADAPTER OUT
--format hf` writes the merged model.

## What it prints

How many parameters train out of how many and how many tokens the text gave; the validation loss before any
update (step 0); labml's progress line per step (training loss, learning rate, gradient norm), with the validation
loss every `--valid-every` steps and at the end; then the folder written. For example, the demo model's biases
on 200 KB of modern fiction:

```
Training biases: 11,520 of 5,256,704 parameters (0.219%)
63,065 training tokens (246 windows of 256), 7,007 validation tokens
labml logs: /home/you/.cache/labml-nn-neox/logs/neox_finetune/<run uuid>
       0:   loss.valid:  6.30625
      30:   loss.valid:  6.08786 loss.train:  6.22521  2,251ms  0:01m/  0:00m
Wrote ft (2 tensor-parallel rank(s), torch.float16); generate with: python samples/generate.py --checkpoint ft
```
labml also writes the losses to files under `--log-dir`.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import torch

from labml_nn.neox.cli import (DTYPES, ArgumentParser, DataError, UsageError, add_model_args,
                               check_model_args, output_home, run_command)

# The learning rate that suits each choice: biases tolerate (and need) larger steps than whole matrices
DEFAULT_LR = {"biases": 1e-3, "ffn": 1e-4, "all": 1e-4, "lora": 1e-3}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Fine-tune a GPT-NeoX checkpoint on a text file and write a complete checkpoint that "
                    "samples/generate.py loads. By default only the biases train (BitFit).")
    # The model to start from, as every command here chooses it (`cli.add_model_args`); it must be named
    add_model_args(parser, required=True, dtype_help="dtype of the frozen weights and of autocast (trained tensors "
                                                     "are always kept in fp32)")
    parser.add_argument("--text", type=Path, required=True, help="a UTF-8 text file to train on")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write the fine-tuned checkpoint to")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps")
    parser.add_argument("--train", choices=["biases", "ffn", "all", "lora"], default="biases",
                        help="what trains: every bias (BitFit), the feed-forward networks, everything, or LoRA "
                             "adapters (written as a peft adapter folder)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate; None means 1e-3 for biases and lora, 1e-4 for ffn and all")
    parser.add_argument("--lora-rank", type=int, default=8, help="with --train lora: the rank r of each update")
    parser.add_argument("--lora-alpha", type=float, default=16.0,
                        help="with --train lora: alpha; the update is scaled by alpha / r")
    parser.add_argument("--lora-dropout", type=float, default=0.05,
                        help="with --train lora: dropout on the adapters' input while training")
    parser.add_argument("--lora-targets", default="query_key_value,dense,dense_h_to_4h,dense_4h_to_h",
                        help="with --train lora: the linear layers to adapt, comma-separated, from "
                             "query_key_value, dense, dense_h_to_4h, dense_4h_to_h")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per step (over all processes)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per window; None means the model's context length, at most 512")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="the end of the text held out")
    parser.add_argument("--valid-every", type=int, default=0, help="validate every N steps (0: only at the end)")
    parser.add_argument("--devices", default=None,
                        help="comma-separated devices to spread the layers over, for models larger than one GPU")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each layer's activations during backward to save memory")
    parser.add_argument("--distributed", choices=["ddp", "fsdp"], default="ddp",
                        help="under torchrun: replicate the model (ddp) or shard it (fsdp)")
    parser.add_argument("--log-dir", type=Path, default=output_home("logs"), help="where labml writes its logs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (only on success; never --checkpoint, the current folder, "
                             "or a folder holding other files than a checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches' order and sampling")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


# ## Checks before any work
#
# Everything the run needs is checked before the model is loaded, so that a wrong number or path costs a second,
# not a training run: the checkpoint exists (`cli.check_model_args`, which also fills in the dtype), the counts
# are positive, the text is a file, `--out` is a folder we may write.
def check_args(parser: ArgumentParser, args: argparse.Namespace):
    check_model_args(parser, args)
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    if args.seq_len is not None and args.seq_len < 2:
        parser.error(f"--seq-len {args.seq_len} must be at least 2 (a window predicts its tokens after the first)")
    if not 0 <= args.valid_fraction < 1:
        parser.error(f"--valid-fraction {args.valid_fraction} must be in [0, 1)")
    if args.lr is not None and not 0 < args.lr < float("inf"):
        parser.error(f"--lr {args.lr} must be a positive number")
    if not 0 <= args.seed < 2 ** 64:
        parser.error(f"--seed {args.seed} must be between 0 and 2**64 - 1")
    if args.valid_every < 0:
        parser.error(f"--valid-every {args.valid_every} must be 0 (only at the end) or positive")
    if args.train == "lora":
        from labml_nn.neox.training.lora import LoRAConfig
        try:
            args.lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                   targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()))
        except ValueError as e:
            parser.error(f"--train lora: {e} (--lora-rank, --lora-dropout, --lora-targets)")
    if not args.text.is_file():
        parser.error(f"--text {args.text} is not a file; give the UTF-8 text to train on")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file, not a folder; choose a folder to write the checkpoint to")
    # The rule of every command that writes (`checkpoint/atomic.py`): an empty folder is free, a full one is
    # replaced only with --overwrite, and never the checkpoint or the text this run reads, nor the current folder
    from labml_nn.neox.checkpoint.atomic import check_target
    check_target(args.out, overwrite=args.overwrite or (args.out.is_dir() and not any(args.out.iterdir())),
                 reads=[args.checkpoint, args.text], name="--out")


# The written checkpoint is about the size of the model in its stored dtype, plus the trained tensors in fp32.
# A full disk would otherwise show up after training as PyTorch's `enforce fail at inline_container.cc`.
def check_free_space(out: Path, modules, stored_dtype: torch.dtype):
    import shutil
    need = sum(p.numel() for m in modules for p in m.parameters()) * torch.finfo(stored_dtype).bits // 8
    need += sum(p.numel() * 4 for m in modules for p in m.parameters() if p.requires_grad)
    folder = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DataError(f"--out {out}: the checkpoint needs about {need / 2 ** 20:,.0f} MiB but {folder} has "
                        f"{free / 2 ** 20:,.0f} MiB free; free some space or choose another --out")


# ## Processes
#
# `torchrun` starts one process per GPU and tells each its rank through environment variables. Without it,
# this is one process.
def init_distributed(device: torch.device) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    import torch.distributed as dist
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank()


def _finetune(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    from labml_nn.neox.checkpoint import Part
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.tokenizer import check_vocabulary, load_tokenizer
    from labml_nn.neox.training.finetune import count_parameters, save_trained, select_trainable, write_checkpoint
    from labml_nn.neox.training.text_dataset import TokenWindows, split_train_valid, tokenize_file
    from labml_nn.neox.training.trainer import Trainer, TrainingConfig, labml_experiment

    device = torch.device(args.device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = init_distributed(device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    dtype_name = args.dtype
    torch.manual_seed(args.seed)

    # ### The model, with the chosen tensors trainable
    devices = args.devices.split(",") if args.devices else None
    loader = LayerLoader(args.checkpoint, dtype=DTYPES[dtype_name], device=device, devices=devices,
                               trust_pickle=args.trust_pickle, progress=None if rank == 0 else False, revision=args.revision,
                               base=args.base)
    config, checkpoint = loader.config, loader.checkpoint
    if checkpoint.tokenizer_path is None:
        raise DataError(f"{args.checkpoint} has no tokenizer file; copy the model's tokenizer.json there")
    # The dtype the source stores its weights in, which the output keeps
    stored_dtype = next(iter(checkpoint.read(Part("norm")).values())).dtype
    if checkpoint.source_note and rank == 0:
        print(f"Starting from {checkpoint.source_note}")
    modules = list(loader.load())
    if args.train == "lora":
        # LoRA adapters on the targeted linear layers, everything else frozen (`training/lora.py`)
        if checkpoint.adapter is not None:
            raise UsageError(f"--checkpoint {args.checkpoint} is itself a LoRA adapter: merge it into its base first "
                             f"(python -m labml_nn.neox.checkpoint merge), then train a new adapter on that")
        from labml_nn.neox.training.lora import add_lora
        add_lora(modules, args.lora)
    else:
        select_trainable(modules, args.train)
    trained, total = count_parameters(modules)
    if rank == 0:
        print(f"Training {args.train}: {trained:,} of {total:,} parameters ({trained / total:.3%})")

    # ### The text
    #
    # Tokenized whole, its end held out for validation, cut into windows of `--seq-len` tokens (the model's
    # context, at most 512, by default).
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    try:
        check_vocabulary(tokenizer, config.n_vocab, checkpoint.tokenizer_path)
    except ValueError as e:
        raise DataError(str(e)) from None
    seq_len = args.seq_len or min(config.n_ctx, 512)
    if seq_len > config.n_ctx:
        raise UsageError(f"--seq-len {seq_len} is longer than the model's context, {config.n_ctx} tokens; "
                         f"choose at most {config.n_ctx}")
    if args.train != "lora":
        check_free_space(args.out, modules, stored_dtype)
    try:
        train_ids, valid_ids = split_train_valid(tokenize_file(tokenizer, args.text), args.valid_fraction, seq_len)
    except ValueError as e:
        raise DataError(f"--text {args.text}: {e}") from None
    train, valid = TokenWindows(train_ids, seq_len), TokenWindows(valid_ids, seq_len) if len(valid_ids) else None
    if rank == 0:
        print(f"{len(train_ids):,} training tokens ({len(train)} windows of {seq_len}), "
              f"{len(valid_ids):,} validation tokens")

    # ### Training
    #
    # The peak learning rate suits what trains (`DEFAULT_LR`); the precision follows the dtype. Rank 0 tracks the
    # losses in a labml experiment under `--log-dir`.
    training = TrainingConfig(steps=args.steps, batch_size=args.batch_size,
                              learning_rate=args.lr or DEFAULT_LR[args.train], valid_every=args.valid_every,
                              precision=dtype_name, activation_checkpointing=args.activation_checkpointing,
                              seed=args.seed)
    trainer = Trainer(modules, train, valid, training, distributed=args.distributed if distributed else None)
    if rank == 0:
        with labml_experiment("neox_finetune", args.log_dir) as logs:
            print(f"labml logs: {logs}")
            trainer.train()
    else:
        trainer.train()

    # ### Writing the result
    #
    # Rank 0 writes the whole model in the source's layout, rank count and dtype, with the file of trained tensors
    # beside it.
    if distributed and args.distributed == "fsdp":
        # FSDP leaves each rank a shard of every parameter; gather whole tensors (every rank takes part)
        from labml_nn.neox.training.trainer import gather_full_modules
        modules = gather_full_modules(modules)
    if rank == 0 and args.train == "lora":
        # An adapter folder as peft writes one, naming the base it was trained on
        from labml_nn.neox.checkpoint.adapters import save_adapter
        base = str(Path(args.checkpoint).resolve()) if Path(args.checkpoint).exists() else str(args.checkpoint)
        out = save_adapter(args.out, modules, args.lora, base=base, base_revision=args.revision,
                           tokenizer_path=checkpoint.tokenizer_path, overwrite=args.overwrite)
        print(f"Wrote the LoRA adapter {out} (peft's format, base {base}); generate with: python samples/generate.py "
              f"--checkpoint {out}; merge with: python -m labml_nn.neox.checkpoint merge {out} OUT --format hf")
    elif rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            trained_file = save_trained(Path(tmp) / "finetuned.safetensors", modules, args.train, config,
                                        extra={"base": str(checkpoint.layout.root.resolve())})
            out = write_checkpoint(args.out, modules, tensor_parallel_size=config.tensor_parallel_size,
                                   tokenizer_path=checkpoint.tokenizer_path, dtype=stored_dtype,
                                   extra_files=[trained_file], overwrite=args.overwrite,
                                   reads=[checkpoint.layout.root, args.text])
        # The hint names generate.py as seen from where the user is, not from the repository's root
        generate = os.path.relpath(Path(__file__).resolve().parent / "generate.py")
        print(f"Wrote {out} ({config.tensor_parallel_size} tensor-parallel rank(s), {stored_dtype}); "
              f"generate with: python {generate} --checkpoint {out}")
    if distributed:
        import torch.distributed as dist
        dist.destroy_process_group()


# Every error becomes one line and an exit status (2 for a wrong argument, 1 for a bad file or value), see
# `cli.py`
def main(argv: Optional[List[str]] = None) -> int:
    return run_command(_finetune, argv)


if __name__ == "__main__":
    sys.exit(main())
