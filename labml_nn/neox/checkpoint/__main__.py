r"""
# The command line

```
python -m labml_nn.neox.checkpoint download [DEST] [--base-url URL] [--verify]
python -m labml_nn.neox.checkpoint merge SRC OUT --format hf|neox [--revision REV] [--mlp-names dense|linear]
                                         [--replicated average|first]
                                         [--dtype fp16|bf16|fp32] [--report R.json]
                                         [--warn-above 1e-3] [--trust-pickle] [--max-shard-mb 1024]
                                         [--overwrite]
```

`download` fetches the 20B slim weights (`download.py`); `merge` writes a single-rank copy of any checkpoint,
in gpt-neox's layout or Hugging Face's (`convert.py`). `--help` on either explains every option.

Errors follow the convention of every command here (`cli.py`): a wrong argument exits with status 2, a
file or value that is not what it should be (a `CheckpointError`) with status 1, each as one line `error: ...`
that says what to do; `--debug` prints the traceback too.
"""

# The command line is thin: each command calls one function of the package, which does the work and raises a
# `CheckpointError` whose message says what went wrong and what to do.
import argparse
import sys
from typing import List, Optional

from .convert import WARN_ABOVE, format_report, merge_checkpoint
from .download import BASE_URL, default_dir, download_20b, verify_20b
from .files import CheckpointError
from ..cli import DTYPES, ArgumentParser, dtype_name, run_command

# What `merge --help` prints before the options: what SRC may be, how each kind of tensor is merged, and the
# promise that a failed merge leaves nothing behind.
MERGE_HELP = """\
Merge a gpt-neox checkpoint's tensor-parallel ranks into a single-rank checkpoint.

SRC may be the GPT-NeoX-20B slim weights (`latest` + global_stepN/layer_XX-model_RR-model_states.pt), a
gpt-neox run in the sequential layout (mp_rank_RR_model_states.pt), or a Hugging Face folder, with any number
of ranks, or a Hugging Face Hub name (EleutherAI/pythia-160m) with --revision (step3000). gpt-neox's MLP names
from before (mlp.dense_h_to_4h) and since September 2024 (mlp.linear1) are both read; --format neox writes the
source's unless --mlp-names says otherwise. The config is read from SRC/configs/*.yml (or config.json), the
tokenizer is copied if present.

Column-parallel weights are concatenated, row-parallel weights concatenated on their input dimension, their
biases summed (parallel residual) or treated as replicated (sequential residual). Replicated tensors (layer
norms) are averaged or taken from rank 0, and how far apart their copies were is reported: a table of the
worst tensors, all of them in --report, and a warning above --warn-above.

The output is written to OUT.tmp-XXXX beside OUT and renamed at the end: on failure, Ctrl-C, SIGTERM or SIGHUP,
OUT does not exist and OUT.tmp-XXXX is removed (after a SIGKILL, by the next merge to OUT). A folder that appears
at OUT meanwhile is never touched: the merge stops and keeps both. --overwrite replaces an existing OUT (and
R.json) only when the merge succeeds, and never SRC (nor through a link), the current folder or a folder above
it, or a folder holding files no checkpoint holds (see labml_nn/neox/checkpoint/atomic.py).
"""


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0, 1 for a data error, 2 for a usage error)."""
    return run_command(_run, argv)


def _run(argv: List[str]) -> int:
    parser = ArgumentParser(prog="python -m labml_nn.neox.checkpoint",
                                     description="Download, merge and convert GPT-NeoX checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)

    # `merge SRC OUT --format hf|neox`: where from, where to and in which layout; then how to treat the tensors
    # every rank holds a copy of, an optional dtype, a report of how far apart those copies were, and the limits
    # (pickles to trust, shard size) that only matter for some checkpoints.
    merge = commands.add_parser("merge", help="merge tensor-parallel ranks into one (gpt-neox or HF format)",
                                description=MERGE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument("src", help="checkpoint folder (pipeline, sequential or Hugging Face layout), or a Hugging "
                                   "Face Hub name such as EleutherAI/pythia-160m")
    merge.add_argument("--revision", default=None, help="with a Hub name: its revision, e.g. step3000")
    merge.add_argument("--base", default=None,
                       help="when SRC is a LoRA adapter (peft's format): the base model to merge it into (default: "
                            "the one its adapter_config.json names)")
    merge.add_argument("--mlp-names", choices=["dense", "linear"], default=None,
                       help="neox: spell the MLP mlp.dense_h_to_4h/dense_4h_to_h (gpt-neox before Sept. 2024) or "
                            "mlp.linear1/linear2 (gpt-neox since); default: as the source spells it")
    merge.add_argument("out", help="output folder; must not exist unless --overwrite")
    merge.add_argument("--format", choices=["hf", "neox"], required=True,
                       help="hf: a transformers GPTNeoXForCausalLM folder (config.json, safetensors, "
                            "tokenizer.json); neox: gpt-neox's layout with model_parallel_size 1")
    merge.add_argument("--replicated", choices=["average", "first"], default="average",
                       help="how to merge replicated tensors (layer norms): average the ranks (default) or take "
                            "rank 0")
    merge.add_argument("--dtype", type=dtype_name, choices=list(DTYPES), default=None,
                       help="cast the weights (default: keep the stored dtype, fp16 for the 20B model; float16, "
                            "bfloat16 and float32 are accepted too)")
    merge.add_argument("--report", metavar="R.json", default=None,
                       help="write the divergence of every replicated tensor across ranks to this JSON file")
    merge.add_argument("--warn-above", type=float, default=WARN_ABOVE,
                       help=f"warn when replicated copies differ by more than this absolute amount (default "
                            f"{WARN_ABOVE:g}, about one fp16 rounding step near 1)")
    merge.add_argument("--trust-pickle", action="store_true",
                       help="allow DeepSpeed files to unpickle arbitrary Python objects; only for files you "
                            "trust (loading them can run code)")
    merge.add_argument("--max-shard-mb", type=int, default=1024,
                       help="hf: start a new safetensors shard past this size (default 1024 MB, about one 20B "
                            "layer; the merge holds one shard in memory)")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace OUT and R.json if they exist (only on success; never SRC, the current folder, "
                            "or a folder holding other files than a checkpoint's)")

    # `download [DEST]`: the 20B slim weights over HTTP, resumable, into a folder that `merge` and the loader read.
    download = commands.add_parser("download", help="download the GPT-NeoX-20B slim weights (resumable)",
                                   description="Download the GPT-NeoX-20B slim weights (about 41 GB: both "
                                               "tensor-parallel ranks, config, tokenizer). Interrupted downloads "
                                               "resume from NAME.part; complete files are skipped. Each file's "
                                               "SHA-256 is recorded in DEST/SHA256SUMS as it completes. A file "
                                               "found in DEST without a recorded SHA-256 is compared with the "
                                               "server (size, sampled bytes) and fetched again if they differ.")
    download.add_argument("dest", nargs="?", default=None, help=f"destination folder (default {default_dir()})")
    download.add_argument("--base-url", default=BASE_URL, help="where the slim weights are served")
    download.add_argument("--verify", action="store_true",
                          help="download nothing: recompute every file's SHA-256 and compare it with the one "
                               "recorded in DEST/SHA256SUMS when the file completed; a file we did not download "
                               "ourselves fails, named")

    # Run the command. An error of ours is expected (a missing file, a wrong layout): it is a `CheckpointError`
    # whose message names the file and the fix, and `run_command` prints it as one line with exit status 1.
    args = parser.parse_args(argv)
    if args.command == "download":
        if args.verify:
            problems = verify_20b(args.dest)
            if problems:
                raise CheckpointError(f"{len(problems)} file(s) failed verification:\n  " + "\n  ".join(problems))
            print(f"Every file in {args.dest or default_dir()} matches its recorded SHA-256")
            return 0
        # labml draws its bars with terminal escape codes, so only on a terminal
        path = download_20b(args.dest, base_url=args.base_url, progress=sys.stdout.isatty())
        print(f"Downloaded to {path}")
        return 0
    if args.max_shard_mb < 1:
        parser.error(f"--max-shard-mb {args.max_shard_mb} must be at least 1")
    if not args.warn_above >= 0:
        parser.error(f"--warn-above {args.warn_above} must be a number >= 0")
    report = merge_checkpoint(args.src, args.out, format=args.format, replicated=args.replicated,
                              dtype=args.dtype, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
                              report=args.report, warn_above=args.warn_above,
                              max_shard_bytes=args.max_shard_mb * 1024 ** 2, revision=args.revision,
                              mlp_names=args.mlp_names, base=args.base,
                              progress=sys.stdout.isatty())
    print(format_report(report))
    if report["non_finite"]:
        names = report["non_finite"]
        print(f"warning: {len(names)} tensor(s) of {args.src} hold NaN or infinite values ({', '.join(names[:3])}"
              f"{', ...' if len(names) > 3 else ''}); they were merged as they are, so the merged model computes "
              f"NaN. The source is damaged or its training diverged: check it, or merge an earlier step.",
              file=sys.stderr)
    print(f"Wrote {args.out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
