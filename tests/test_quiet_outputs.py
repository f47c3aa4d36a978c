r"""
The samples, run as a user runs them from some other folder with their output piped: they write only the files
they were asked to write (or, for what the user named no place for, under `$LABML_NN_NEOX_HOME`), and what they
print is plain text, with no terminal codes and no library notices a user cannot act on.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Terminal escape sequences (colours, cursor movement) and labml's redraw padding
ESCAPE = "\x1b["
NOTICES = ("LABML WARNING", ".labml.yaml", "Not a valid git repository", "kernels-community")


def run_from_elsewhere(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    env = dict(os.environ, HOME=str(home), LABML_NN_NEOX_HOME=str(tmp_path / "neox_home"), HF_HUB_OFFLINE="1",
               PYTHONIOENCODING="utf-8")
    env.pop("XDG_CACHE_HOME", None)
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert ESCAPE not in output and " " * 40 not in output, output[-2000:]
    assert not any(notice in output for notice in NOTICES), output[-2000:]
    return done


def files_under(folder: Path):
    r"""The files written under `folder`, except the libraries' own per-user caches and settings in the home
    folder: matplotlib keeps its font list in `~/.cache/matplotlib`, labml its settings and a list of the folders
    it logged to in `~/.labml` (README says so)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    return [f for f in files if not f.startswith(("home/.cache/", "home/.labml/"))]


def test_piped_generate_from_another_folder_writes_nothing(tmp_path):
    done = run_from_elsewhere(tmp_path, str(ROOT / "samples" / "generate.py"), "--max-new-tokens", "20")
    assert done.stdout.strip()
    assert files_under(tmp_path) == []


def test_piped_generate_writes_only_its_output_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO.\nJULIET.\n")
    run_from_elsewhere(tmp_path, str(ROOT / "samples" / "generate.py"), "--prompt-file", str(prompts),
                       "--output", "results.jsonl", "--max-new-tokens", "10")
    assert files_under(tmp_path) == ["cwd/results.jsonl", "prompts.txt"]


@pytest.mark.slow
def test_outliers_figure_goes_where_out_says_or_to_the_output_home(tmp_path):
    pytest.importorskip("matplotlib")
    script = str(ROOT / "samples" / "llm_int8_outliers.py")
    run_from_elsewhere(tmp_path, script, "--max-tokens", "64", "--out", "figure.png")
    assert files_under(tmp_path) == ["cwd/figure.png"]
    (tmp_path / "cwd" / "figure.png").unlink()
    (tmp_path / "cwd").rmdir()
    run_from_elsewhere(tmp_path, script, "--max-tokens", "64")
    assert files_under(tmp_path) == ["neox_home/figures/llm_int8_outliers.png"]


@pytest.mark.slow
def test_finetune_writes_its_output_and_logs_under_the_output_home(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n" * 40)
    done = run_from_elsewhere(tmp_path, str(ROOT / "samples" / "finetune.py"), "--checkpoint",
                              str(ROOT / "labml_nn" / "neox" / "demo"), "--text", str(text), "--steps", "2",
                              "--seq-len", "32", "--batch-size", "2", "--out", "tuned")
    assert "step 2/2" in done.stdout
    written = files_under(tmp_path)
    assert all(f.startswith(("cwd/tuned/", "neox_home/logs/neox_finetune/")) or f == "text.txt" for f in written), \
        written
    assert any(f.startswith("neox_home/logs/") for f in written) and "cwd/tuned/finetuned.safetensors" in written
