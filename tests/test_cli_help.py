r"""
Every option of every command says what it does in `--help`: the samples, the two package CLIs and the
benchmarks. Each script's parser is caught as its `parse_args` is called (nothing runs), and each of its options,
those of subcommands included, must have a help text. Every `--dtype` speaks one vocabulary, `cli.DTYPES`, and
takes PyTorch's spellings too.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("samples/*.py"), *ROOT.glob("benchmarks/*.py")])
MODULES = ["labml_nn.neox.checkpoint.__main__", "labml_nn.neox.evaluation.__main__", "labml_nn.neox.onnx_export"]


# A BaseException, so that a command's `run_command` (which turns every Exception into a message) lets it through
class _Caught(BaseException):
    def __init__(self, parser):
        self.parser = parser


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _catch_parser(monkeypatch, run) -> argparse.ArgumentParser:
    def parse_args(self, args=None, namespace=None):
        raise _Caught(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_args)
    monkeypatch.setattr(sys, "argv", ["prog", "--help"])
    with pytest.raises(_Caught) as caught:
        run()
    return caught.value.parser


def _load_script(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem + "_under_test", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _command_parser(target, monkeypatch) -> argparse.ArgumentParser:
    if target.endswith(".py"):
        module = _load_script(target)
    else:
        module = importlib.import_module(target)
    # The script's own `parse_args` if it has one (not one it imported), else its `main`
    run = getattr(module, "parse_args", None)
    if run is None or run.__module__ != module.__name__:
        run = module.main
    return _catch_parser(monkeypatch, lambda: run([]) if run.__code__.co_argcount else run())


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_every_option_has_help(target, monkeypatch):
    parser = _command_parser(target, monkeypatch)
    missing = [f"{p.prog}: {'/'.join(a.option_strings)}" for p in _parsers(parser) for a in p._actions
               if a.option_strings and a.help in (None, "") and not isinstance(a, argparse._HelpAction)]
    assert not missing, f"options without help text: {missing}"


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_every_dtype_option_speaks_one_vocabulary(target, monkeypatch):
    from labml_nn.neox.cli import DTYPES, dtype_name
    parser = _command_parser(target, monkeypatch)
    for action in (a for p in _parsers(parser) for a in p._actions if "--dtype" in a.option_strings):
        assert set(action.choices) <= set(DTYPES) and action.type is dtype_name, f"{target}: {action.choices}"
        assert [action.type(name) for name in ("float16", "half", "BF16", "float32")] == ["fp16", "fp16", "bf16",
                                                                                         "fp32"]
