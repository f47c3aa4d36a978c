r"""
# Evaluating a checkpoint from the command line

```
python -m labml_nn.neox.evaluation [--checkpoint DIR|ORG/NAME] [--revision REV] [--tokenizer FILE]
       [--tasks lambada_openai,hellaswag,piqa,winogrande | shakespeare_cloze,shakespeare_text]
       [--int8] [--int8-threshold 6] [--int8-implementation bitsandbytes|reference]
       [--dtype fp16] [--device cuda] [--batch-size 8] [--max-length N] [--limit N]
       [--output results.json] [--lambada-file lambada_test.jsonl] [--text-file held_out.txt ...]
       [--offline] [--trust-pickle] [--bootstrap-iters N]
```

`--help` explains each option.

## How to run

The published GPT-NeoX-20B table (LAMBADA, HellaSwag, PIQA, WinoGrande, as in the GPT-NeoX paper) on one
GPU with 48 GB or more, from the 20B slim weights:

```
python -m labml_nn.neox.evaluation --checkpoint 20B_checkpoints --dtype fp16 --device cuda \
       --output neox20b_fp16.json
python -m labml_nn.neox.evaluation --checkpoint 20B_checkpoints --int8 --device cuda \
       --output neox20b_int8.json
```

Without internet, give lm-eval's LAMBADA file with `--lambada-file`: `lambada_openai` is then read from it
(task `lambada_openai_local`, see `tasks.py`) and nothing touches the network. `--text-file` adds `text_local`,
the perplexity and bits per byte of your own held-out text. The other tasks download their data from the
Hugging Face Hub the first time (or read it from the `datasets` cache with `--offline`).

## What it prints

Loading progress, lm-eval's progress bars, then a table of each task's metrics with their standard errors. The
figures below are the fp16 GPT-NeoX-20B results published for the annotated implementation on nn.labml.ai, what
the first command above should come close to (gpt-neox itself: accuracy 0.7211, perplexity 3.6760); the 20B
evaluation was not run in this project, which had no GPU:

```
task                  metric       value    stderr
lambada_openai_local  perplexity   3.6375   ...
lambada_openai_local  acc          0.7204   0.0063
```

(The accuracy's standard error is the binomial one over 5,153 passages, $\sqrt{0.72 \cdot 0.28 / 5153}$; the
perplexity's is bootstrapped, `--bootstrap-iters` times.)

The demo model, trained on Shakespeare only, scores nothing on LAMBADA's modern fiction (accuracy 0). Two tasks
that ship with the package measure it in its own domain, on three plays it never saw (`tasks.py`):

```
python -m labml_nn.neox.evaluation --tasks shakespeare_cloze,shakespeare_text
```

and, with `--output`, the same results with lm-eval's task configs and this run's settings as JSON.
"""

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

from labml_nn.neox.evaluation.tasks import LAMBADA_TASK, LOCAL_TASKS, TEXT_TASK, offline, write_local_tasks
from labml_nn.neox.cli import (DTYPES, ArgumentParser, DataError, UsageError, add_model_args, announce_source,
                               check_model_args, quiet_bitsandbytes, run_command)

# The four tasks of the published GPT-NeoX-20B table
DEFAULT_TASKS = "lambada_openai,hellaswag,piqa,winogrande"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m labml_nn.neox.evaluation",
                            description="Evaluate a GPT-NeoX checkpoint with lm-eval 0.4.")
    add_model_args(parser)
    parser.add_argument("--tokenizer", help="tokenizers JSON file (default: the one in the checkpoint folder)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"comma-separated lm-eval tasks (default: {DEFAULT_TASKS}, the published 20B table); "
                             f"shakespeare_cloze and shakespeare_text ship with the package and need no download")
    parser.add_argument("--int8", action="store_true", help="convert the transformer layers to LLM.int8")
    parser.add_argument("--int8-threshold", type=float, default=6.0, help="LLM.int8 outlier threshold")
    parser.add_argument("--int8-implementation", choices=("bitsandbytes", "reference"), default="bitsandbytes",
                        help="bitsandbytes' Linear8bitLt, or the plain PyTorch Int8Linear of llm_int8.py")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="requests scored together in one forward pass (more is faster and takes more memory)")
    parser.add_argument("--max-length", type=int, help="context length (default: the model's, n_ctx)")
    parser.add_argument("--limit", type=float, help="only the first N documents of each task (or a fraction < 1)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists (never a file this run reads)")
    parser.add_argument("--lambada-file", help="read lambada_openai from this local lambada_test.jsonl")
    parser.add_argument("--text-file", nargs="+", help="held-out text (.txt files or one .jsonl) for text_local")
    parser.add_argument("--offline", action="store_true", help="never reach the network (datasets' cache only)")
    parser.add_argument("--bootstrap-iters", type=int, default=1000,
                        help="bootstrap resamples for the standard errors of perplexities (lm-eval's default is "
                             "100000, which takes minutes on LAMBADA)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


# ## Checks before the model is loaded
#
# Loading the 20B model takes minutes; a wrong number, a missing file or a misspelt task must cost a second.
# The checkpoint, device and dtype are checked as every command checks them (`cli.check_model_args`); the task
# names against lm-eval's index in `evaluate`, also before the model is loaded.
def check_args(parser: ArgumentParser, args: argparse.Namespace):
    check_model_args(parser, args)
    for name, least in (("batch_size", 1), ("max_length", 1), ("bootstrap_iters", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name.replace('_', '-')} {value} must be at least {least}")
    if args.limit is not None and not 0 < args.limit < float("inf"):
        parser.error(f"--limit {args.limit} must be a positive number of documents (or a fraction < 1)")
    if not 0 < args.int8_threshold < float("inf"):
        parser.error(f"--int8-threshold {args.int8_threshold} must be a positive number")
    for flag, paths in (("--lambada-file", [args.lambada_file] if args.lambada_file else []),
                        ("--text-file", args.text_file or []), ("--tokenizer", [args.tokenizer] if args.tokenizer
                                                                  else [])):
        for path in paths:
            if not Path(path).is_file():
                parser.error(f"{flag} {path} is not a file")
    if args.output and not Path(args.output).absolute().parent.is_dir():
        parser.error(f"--output {args.output}: the folder {Path(args.output).parent} does not exist; create it")
    # The rule of every command that writes (`checkpoint/atomic.py`), checked before the model loads
    if args.output:
        from labml_nn.neox.checkpoint.atomic import check_target
        check_target(args.output, overwrite=args.overwrite, folder=False, name="--output", reads=_reads(args))


def _reads(args: argparse.Namespace) -> list:
    return [args.checkpoint, args.tokenizer, args.lambada_file, *(args.text_file or [])]


def resolve_tasks(args: argparse.Namespace) -> List[str]:
    r"""
    The task names to run. With `--lambada-file`, `lambada_openai` means the same task read from that file;
    `--text-file` adds `text_local`. A local task without its file is an error that says which flag to give.
    """
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks and not args.text_file:
        raise UsageError(f"--tasks {args.tasks!r} names no task; give comma-separated task names, such as "
                         f"{DEFAULT_TASKS} or shakespeare_cloze,shakespeare_text")
    if args.lambada_file:
        tasks = [LAMBADA_TASK if t == "lambada_openai" else t for t in tasks]
    if args.text_file and TEXT_TASK not in tasks:
        tasks.append(TEXT_TASK)
    if LAMBADA_TASK in tasks and not args.lambada_file:
        raise UsageError(f"{LAMBADA_TASK} reads a local file: give its path with --lambada-file")
    if TEXT_TASK in tasks and not args.text_file:
        raise UsageError(f"{TEXT_TASK} reads local text: give the files with --text-file")
    return tasks


def load_model(args: argparse.Namespace):
    r"""
    The model, layer by layer (`LayerLoader`), and its tokenizer. LLM.int8 layers are made right after each
    layer is loaded, so the fp16 model never has to fit on the GPU whole.
    """
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.model import NeoXModel
    from labml_nn.neox.tokenizer import check_vocabulary, find_tokenizer, load_tokenizer

    dtype = DTYPES[args.dtype]
    loader = LayerLoader(args.checkpoint, dtype=dtype, device=args.device, is_llm_int8=args.int8,
                               llm_int8_threshold=args.int8_threshold,
                               llm_int8_implementation=args.int8_implementation, trust_pickle=args.trust_pickle,
                               revision=getattr(args, "revision", None), base=getattr(args, "base", None))
    announce_source(loader.checkpoint)
    model = NeoXModel(*loader.load())
    tokenizer_path = args.tokenizer or getattr(loader.checkpoint, "tokenizer_path", None) \
        or find_tokenizer(args.checkpoint)
    if tokenizer_path is None:
        raise DataError(f"No tokenizer found in {args.checkpoint}: pass --tokenizer path/to/20B_tokenizer.json")
    tokenizer = load_tokenizer(tokenizer_path)
    try:
        check_vocabulary(tokenizer, loader.config.n_vocab, tokenizer_path)
    except ValueError as e:
        raise DataError(str(e)) from None
    return model, tokenizer, dtype


def evaluate(args: argparse.Namespace) -> dict:
    tasks = resolve_tasks(args)
    # A Hub name is fetched (or found in the cache) before anything goes offline
    from labml_nn.neox.checkpoint.sources import resolve_checkpoint
    args.checkpoint, args.revision = str(resolve_checkpoint(args.checkpoint, args.revision)), None
    # Local tasks alone need no network; say so before `datasets` is imported, for the whole evaluation
    only_local = all(t in LOCAL_TASKS for t in tasks)
    with offline() if args.offline or only_local else nullcontext():
        return _evaluate(args, tasks, only_local)


def _evaluate(args: argparse.Namespace, tasks: List[str], only_local: bool) -> dict:
    import lm_eval
    from labml_nn.neox.evaluation import EvalHarnessAdapter
    from labml_nn.neox.evaluation.tasks import task_manager

    limit = None if args.limit is None else (args.limit if args.limit < 1 else int(args.limit))
    with tempfile.TemporaryDirectory() as task_dir:
        try:
            write_local_tasks(task_dir, lambada_file=args.lambada_file, text_files=args.text_file)
        except ValueError as e:
            raise DataError(str(e)) from None
        manager = task_manager(task_dir, include_defaults=not only_local)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise UsageError(f"--tasks: unknown task(s) {', '.join(unknown)}; see `lm-eval ls tasks`, or the local "
                             f"tasks {', '.join(sorted(LOCAL_TASKS))}")
        model, tokenizer, _ = load_model(args)
        adapter = EvalHarnessAdapter(model, tokenizer, batch_size=args.batch_size, max_length=args.max_length)
        started = time.time()
        try:
            results = lm_eval.simple_evaluate(model=adapter, tasks=tasks, limit=limit, task_manager=manager,
                                              log_samples=False, bootstrap_iters=args.bootstrap_iters)
        except ConnectionError as e:
            raise DataError(f"{e}. A task's data is neither in the `datasets` cache nor reachable. Run once with "
                             f"internet (without --offline) to cache it, or use the local tasks (--lambada-file, "
                             f"--text-file).") from None
    results["run"] = {"checkpoint": str(args.checkpoint), "dtype": args.dtype,
                      "int8": args.int8, "int8_threshold": args.int8_threshold if args.int8 else None,
                      "int8_implementation": args.int8_implementation if args.int8 else None,
                      "device": args.device, "batch_size": args.batch_size, "max_length": adapter.max_length,
                      "limit": limit, "seconds": round(time.time() - started, 1),
                      "lm_eval": getattr(lm_eval, "__version__", "unknown")}
    return results


def format_table(results: dict) -> str:
    """One row per task and metric: value and standard error."""
    rows = [("task", "metric", "value", "stderr")]
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filter_name = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append((task, metric, _number(value), _number(stderr)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value if value is not None else "")


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    quiet_bitsandbytes()
    if args.int8 and args.int8_implementation == "bitsandbytes":
        from labml_nn.neox.llm_int8 import bitsandbytes_problem
        problem = bitsandbytes_problem(str(args.device).split(":")[0])
        if problem is not None:
            print(f"note: {problem}; using the plain PyTorch implementation instead (--int8-implementation "
                  f"reference)", file=sys.stderr)
            args.int8_implementation = "reference"
    results = evaluate(args)
    print(format_table(results))
    if args.output:
        keep = {k: results[k] for k in ("results", "versions", "n-shot", "n-samples", "configs", "run")
                if k in results}
        from labml_nn.neox.checkpoint.atomic import atomic_file
        with atomic_file(args.output, overwrite=args.overwrite, name="--output", reads=_reads(args)) as f:
            f.write(json.dumps(keep, indent=2, default=str))
        print(f"Results written to {args.output}")
    return results


# The command: every error becomes one line and an exit status (`cli.py`)
def command(argv: Optional[List[str]] = None) -> int:
    def run(arguments) -> int:
        main(arguments)
        return 0
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(command())
