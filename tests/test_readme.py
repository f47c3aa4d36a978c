r"""
Every command block of README.md runs as written: offline, on a CPU, on the demo model.

Each fenced `bash` block runs as one script (`set -e`), each `python` block as one program, from a fresh folder
that holds links to the repository's files (so that `samples/generate.py` and `labml_nn/neox/demo` resolve as
they do in a checkout, and whatever a command writes lands in that folder, not in the repository). Left out:

* lines marked `# needs: ...` (a download, a GPU, or Ctrl-C to stop), which the README says cannot run here;
* the set-up steps of the two commands a newcomer copies (making the virtual environment, `pip install`): CI
  installs the same way, and running the tests from inside the tests would recurse. What those commands run after
  installing (`python samples/generate.py`) is kept.

Long commands get small limits (`LIMITS` below, appended to the line), so the README's numbers stay the ones a
user would use.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Set-up steps, skipped where they stand in an `&&` chain
SETUP = re.compile(r"^(python3? -m venv |\. \S+/activate|pip install |python -m pip install |python -m pytest)")
# A substring of a command, and the arguments appended to it when it runs here
LIMITS = {"labml_nn.neox.evaluation --tasks": "--limit 20", "samples/finetune.py": "--steps 2"}
# What an interactive command reads on its standard input here
STDIN = "ROMEO.\n\n"


def readme_blocks():
    r"""`(language, text)` of each fenced `bash` or `python` block of README.md."""
    return re.findall(r"^```(bash|python)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def runnable(language: str, text: str) -> str:
    if language == "python":
        return text
    lines = []
    for line in text.splitlines():
        if "# needs:" in line:
            continue
        parts = [part.strip() for part in line.split("&&")]
        kept = [part for part in parts if not SETUP.match(part)]
        if not kept:
            continue
        line = " && ".join(kept)
        for what, extra in LIMITS.items():
            if what in line:
                command, _, comment = line.partition("  #")
                line = f"{command.rstrip()} {extra}" + (f"  #{comment}" if comment else "")
        lines.append(line)
    return "\n".join(lines)


BLOCKS = [(language, runnable(language, text)) for language, text in readme_blocks()]
BLOCKS = [(language, text) for language, text in BLOCKS if text.strip()]


def test_readme_has_the_blocks_this_test_runs():
    # The README's generation, API, checkpoint, LLM.int8, evaluation, fine-tuning and website blocks
    assert len(BLOCKS) >= 8, [text.splitlines()[0] for _, text in BLOCKS]
    assert any("python samples/generate.py" == text.splitlines()[0] for _, text in BLOCKS)


@pytest.fixture()
def workdir(tmp_path):
    for entry in ("labml_nn", "samples", "benchmarks", "docs", "mkdocs.yml", "README.md", "pyproject.toml"):
        (tmp_path / entry).symlink_to(ROOT / entry)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("language, text", BLOCKS, ids=[t.splitlines()[0][:60] for _, t in BLOCKS])
def test_readme_block_runs_as_written(language, text, workdir):
    bin_dir = workdir / ".bin"
    bin_dir.mkdir()
    # `python` is this interpreter (a script, not a link: a link would lose the virtual environment), and the
    # environment's other commands (mkdocs) come with it
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               LABML_NN_NEOX_HOME=str(workdir / ".home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               NO_MKDOCS_2_WARNING="1", PYTHONIOENCODING="utf-8")
    command = [sys.executable, "-c", text] if language == "python" else ["bash", "-e", "-c", text]
    done = subprocess.run(command, cwd=workdir, env=env, input=STDIN, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README block failed:\n{text}\n--- stdout\n{done.stdout[-3000:]}\n" \
                                 f"--- stderr\n{done.stderr[-3000:]}"
    assert (done.stdout + done.stderr).strip(), f"README block printed nothing:\n{text}"
