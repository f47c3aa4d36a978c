r"""
# Command lines

What every sample and command of this project shares, so that each of them reads as what it does and not as
argument handling, and so that an option or an error means the same in all of them:

* where the demo model is, and where a command writes what the user did not name a place for;
* the one vocabulary of dtypes (`fp32`, `fp16`, `bf16`) and its default;
* the options of every command that loads a model (`--checkpoint`, `--revision`, `--device`, `--dtype`,
  `--trust-pickle`, and `--base` for a LoRA adapter), spelled once in `add_model_args`;
* one convention for errors: a line that says what to do, an exit status, a traceback only when asked for;
* `--help` that states each default once.
"""

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

import torch

# ## The demo model, and where commands write
#
# `DEMO_CHECKPOINT` is the folder of the demo model that ships inside the package (a small GPT-NeoX trained on
# Shakespeare, stored like the 20B slim weights). It is found from this file's location inside the installed
# package, so a sample works from any working directory and from an installed wheel, not only from a clone.
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo"


# `output_home` is the one folder where our commands write what the user did not name a place for: labml's logs
# (`logs/`), figures (`figures/`), a retrained demo model (`models/`). It is never the current folder or the
# installed package.
def output_home(*parts: str) -> Path:
    """`$LABML_NN_NEOX_HOME`, or `~/.cache/labml-nn-neox` (following `$XDG_CACHE_HOME`), joined with `parts`."""
    home = os.environ.get("LABML_NN_NEOX_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        home = Path(cache) / "labml-nn-neox"
    return Path(home).joinpath(*parts)


# ## Dtypes
#
# `DTYPES` is the one vocabulary of dtypes, for every command and for `checkpoint/convert.py`'s
# `merge_checkpoint`. `dtype_name` also takes PyTorch's spellings (`float16`, `half`, `bfloat16`, `float32`), so
# `--dtype float16` and `--dtype fp16` mean the same everywhere; `default_dtype` is the one rule for when
# `--dtype` is not given.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_TORCH_NAMES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def dtype_name(text: str) -> str:
    """`fp16`, `float16` or `half` to `fp16`, and so on; an argparse `type`, with `choices=list(DTYPES)` beside it."""
    return _TORCH_NAMES.get(text.lower(), text.lower())


def default_dtype(device) -> str:
    """fp16 on a GPU, where it halves memory and runs on tensor cores; fp32 on a CPU, where half precision is slow."""
    return "fp16" if str(device).startswith("cuda") else "fp32"


# ## Defaults in `--help`
#
# `HelpFormatter` makes `--help` state each option's default once. argparse's `ArgumentDefaultsHelpFormatter`
# appends `(default: X)` to every option, which reads badly when the help already says what happens by default
# ("the demo model") or when the default is `None` and the option simply means "not given".
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append `(default: X)` only where the help text does not speak of its default and X says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return help_text
        return super()._get_help_string(action)


# ## The options of a command that loads a model
#
# One place spells them, so that `--checkpoint` means the same in generation, LLM.int8, fine-tuning and
# evaluation: `--checkpoint` (a folder or a Hub name; the demo model by default), `--revision`, `--device`,
# `--dtype` and `--trust-pickle`. A command says only what differs: whether a checkpoint must be given
# (fine-tuning has no sensible default) and what the dtype is used for. `check_model_args` then fills in the
# defaults that depend on each other.
def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False,
                   dtype_help: str = "the parameters' dtype"):
    default = "" if required else " (default: the demo model inside the installed package)"
    parser.add_argument("--checkpoint", type=Path, default=None, required=required,
                        help="checkpoint folder (the 20B slim weights, a gpt-neox checkpoint or a Hugging Face "
                             f"GPT-NeoX folder), or a Hugging Face Hub name such as EleutherAI/pythia-160m{default}")
    parser.add_argument("--revision", default=None,
                        help="with a Hub name as --checkpoint: its revision, e.g. one of Pythia's training steps, "
                             "step3000")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs: cpu, cuda or cuda:N (default: cuda when PyTorch sees a GPU)")
    parser.add_argument("--dtype", type=dtype_name, choices=list(DTYPES), default=None,
                        help=f"{dtype_help} (default: fp16 on CUDA, fp32 on a CPU; float16, bfloat16 and float32 "
                             f"are accepted too)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow DeepSpeed checkpoint files that pickle arbitrary objects (only files you trust)")
    parser.add_argument("--base", default=None,
                        help="when --checkpoint is a LoRA adapter (peft's adapter_config.json + "
                             "adapter_model.safetensors): the base model to put it on, a folder or Hub name "
                             "(default: the base_model_name_or_path its adapter_config.json names)")


# When the checkpoint was a LoRA adapter, the user is told which adapter went on which base, and who chose the
# base (`checkpoint/adapters.py`); on standard error, so that the command's output stays its own.
def announce_source(checkpoint):
    import sys
    if getattr(checkpoint, "source_note", None):
        print(f"Loading {checkpoint.source_note}", file=sys.stderr)


def check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """
    Fill in the defaults of `--checkpoint`, `--dtype` and `--device` that depend on each other (fp16 on a GPU,
    fp32 on a CPU; the demo model when no checkpoint is given), and stop with a usage error the user can act on.
    A checkpoint that is not a folder may be a Hub name (`checkpoint/hub.py`), fetched when the model is loaded.
    """
    from labml_nn.neox.checkpoint.hub import is_hub_name
    on_cuda = str(args.device).startswith("cuda")
    if args.dtype is None:
        args.dtype = default_dtype(args.device)
    if args.checkpoint is None:
        args.checkpoint = DEMO_CHECKPOINT
        if not args.checkpoint.exists():
            parser.error(f"the demo model is not installed at {args.checkpoint}; reinstall the package "
                         f"(pip install -e .) or pass --checkpoint PATH")
    elif not Path(args.checkpoint).exists() and not is_hub_name(args.checkpoint):
        parser.error(f"checkpoint folder {args.checkpoint} does not exist; pass --checkpoint with the folder holding "
                     f"the 20B slim weights, a gpt-neox checkpoint, or a Hugging Face GPT-NeoX model, or a Hub "
                     f"name such as EleutherAI/pythia-160m")
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but PyTorch sees no GPU; use --device cpu")
    return args


# ## Optional parts
#
# The first README command installs what generating with the demo model needs; each other part is an extra of
# `pyproject.toml`. A command that needs one checks for it first, before any work and before `--help` (which
# needs the part's modules to describe it), and says in one line which extra to install, instead of a
# `ModuleNotFoundError` traceback or a failure after minutes of computing. `EXTRAS` maps a module to its extra.
EXTRAS = {"lm_eval": "eval", "bitsandbytes": "int8", "matplotlib": "int8"}


class MissingExtraError(Exception):
    """A module of an optional part is not installed: exit status 1, naming the extra to install."""


def missing_extra(module: str, purpose: str) -> Optional[str]:
    """The one-line message when `module` cannot be imported, else `None` (nothing is imported)."""
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    extra = EXTRAS[module]
    return (f"{purpose} needs {module}, which is not installed: pip install -e \".[{extra}]\" in the clone "
            f"(or pip install \"labml-nn-neox[{extra}]\")")


def require_extra(module: str, purpose: str):
    """Stop with `MissingExtraError` when `module` (a key of `EXTRAS`) cannot be imported."""
    message = missing_extra(module, purpose)
    if message is not None:
        raise MissingExtraError(message)


# bitsandbytes logs two messages that are noise to our users. When imported on a CPU with AVX-512 bf16, it warns
# that it could not load an optional 4-bit kernel package (`kernels`); nothing here uses 4-bit products. And on
# a CPU in fp32, `Linear8bitLt` warns at every call that it rounds its inputs to fp16 before quantizing them to
# int8, which is harmless (`llm_int8.py`). A command calls this before importing bitsandbytes; a library module
# never does, since it changes the logging of the whole process.
class _DropFp16CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def quiet_bitsandbytes():
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropFp16CastWarning) for f in log.filters):
        log.addFilter(_DropFp16CastWarning())


# ## Errors
#
# One convention in every command (`run_command`): a usage error (a wrong or missing argument) exits with status
# 2, a data error (a file, key or value that is not what it should be) with status 1, each as one line
# `error: ...` on standard error that names the argument, file or key and says what to do. A traceback is
# printed only when asked for, with `--debug` or `LABML_NN_NEOX_DEBUG=1`.
class UsageError(Exception):
    """The command was called wrongly (an argument is missing, malformed or contradicts another): exit status 2."""


class DataError(Exception):
    """What the command was given is not what it should be (a file, a key, a value): exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are `UsageError`s, with a `--debug` flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="on an error, print the whole traceback instead of one line (or set "
                               "LABML_NN_NEOX_DEBUG=1)")

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _debugging(argv) -> bool:
    return "--debug" in argv or os.environ.get("LABML_NN_NEOX_DEBUG", "") not in ("", "0")


def run_command(main, argv=None) -> int:
    r"""
    Run a command's `main(argv)` under the convention above and return its exit status: `main`'s own (0 when it
    returns `None`), 2 for a `UsageError`, 1 for a data error (`DataError`, a checkpoint or config error, an
    `OSError` such as a missing file or a full disk), 130 on Ctrl-C, 141 without a word when the program reading
    our output stops reading (`| head`). Any other exception is a bug of ours: one line saying so, exit status 1.
    Use it as `sys.exit(run_command(main))`.
    """
    import sys
    import traceback
    from labml_nn.neox.checkpoint.files import CheckpointError
    from labml_nn.neox.config import ConfigError
    argv = sys.argv[1:] if argv is None else list(argv)
    # Run with standard output closed (`>&-`), Python has no `sys.stdout` at all, and the first `print` or
    # `isatty` would fail as a bug of ours
    if sys.stdout is None:
        print("error: standard output is closed; redirect it to a file or to /dev/null instead", file=sys.stderr)
        return 2
    try:
        status = main(argv)
        return 0 if status is None else int(status)
    except BrokenPipeError:
        # The reader of our output went away (`| head -1`): stop quietly, as Unix tools do, with the status of a
        # process ended by SIGPIPE, 128 + 13. Standard output now points at /dev/null, so that Python's last
        # flush at exit does not fail again.
        _silence_stdout()
        return 141
    except SystemExit as e:
        # argparse's --help, and commands that still stop with a message of their own
        if isinstance(e.code, str):
            print(f"error: {e.code}", file=sys.stderr)
            return 1
        return e.code or 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 (the one place where every error becomes a message)
        if _debugging(argv):
            traceback.print_exc()
        if isinstance(e, UsageError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, (DataError, CheckpointError, ConfigError, MissingExtraError, OSError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"error: an unexpected {type(e).__name__}: {e}. This is a bug of ours: rerun with --debug and "
              f"report the traceback", file=sys.stderr)
        return 1


def _silence_stdout():
    import sys
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
