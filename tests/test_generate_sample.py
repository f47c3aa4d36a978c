r"""
`samples/generate.py`, run as a user runs it: a subprocess, on a tiny two-rank checkpoint with a tiny
byte-level BPE tokenizer (trained here in milliseconds, so that no file from outside the repository is needed).
"""

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, write_slim_from_hf, write_tiny_tokenizer  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "generate.py"
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "ckpt"
    hf = make_tiny_hf_model(vocab_size=320, max_position_embeddings=48)
    write_slim_from_hf(hf, path, tp=2, tokenizer=False)
    write_tiny_tokenizer(path / "20B_tokenizer.json", 300)
    return path


def run(*args, stdin: str = "") -> subprocess.CompletedProcess:
    # As a user runs it: a fresh interpreter, standard output and error captured (so not a terminal)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, str(SAMPLE), *map(str, args)], capture_output=True, text=True,
                          input=stdin, env=env, timeout=120)


@pytest.fixture(scope="module")
def sample():
    # The same script imported, for the tests that need no fresh interpreter (each subprocess pays for
    # importing torch)
    spec = importlib.util.spec_from_file_location("generate_sample", SAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_explains_the_options(sample, capsys):
    assert sample.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--prompt-file", "--batch-size", "--interactive", "--temperature", "--top-k",
                   "--top-p", "--seed", "--max-new-tokens", "--device", "--dtype", "demo"):
        assert option in out


def test_greedy_output_is_what_generate_gives_and_the_speed_is_reported(checkpoint):
    # The sample's text must be the decoding of `generate`'s tokens on the same checkpoint
    from labml_nn.neox.generation import generate
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    model = torch.nn.Sequential(*LayerLoader(checkpoint, progress=False).load())
    ids = torch.tensor([encode(tokenizer, "JULIET: O")])
    out = generate(model, ids, 10, temperature=0.0)[0, ids.shape[1]:].tolist()
    if 0 in out:
        out = out[:out.index(0)]
    expected = "JULIET: O" + tokenizer.decode(out)

    result = run("--checkpoint", checkpoint, "--prompt", "JULIET: O", "--max-new-tokens", 10, "--temperature", 0)
    assert result.returncode == 0, result.stderr
    # Standard output is not a terminal here, so it holds only the text (no progress bar)
    assert result.stdout == expected + "\n"
    assert "tokens/s" in result.stderr and "loaded" in result.stderr


def test_a_seed_repeats_a_sample_and_no_prompt_generates_unconditionally(sample, checkpoint, capsys):
    args = ["--checkpoint", str(checkpoint), "--max-new-tokens", "16", "--seed", "7", "--temperature", "1.0"]
    assert sample.main(args) == 0
    first = capsys.readouterr()
    assert sample.main(args) == 0
    assert capsys.readouterr().out == first.out
    assert sample.main(args[:-3] + ["8", "--temperature", "1.0"]) == 0
    assert capsys.readouterr().out != first.out
    assert "prompt of 0 tokens" in first.err


def test_prompt_file_gives_clean_json_lines(sample, checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO:\nJULIET: O\n\nthe sun\n")
    result = run("--checkpoint", checkpoint, "--prompt-file", prompts, "--max-new-tokens", 5, "--seed", 0)
    assert result.returncode == 0, result.stderr
    # Nothing but JSON on standard output: no progress bars, no ANSI codes
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["ROMEO:", "JULIET: O", "the sun"]
    assert all(1 <= r["new_tokens"] <= 5 for r in records)

    out = tmp_path / "out.jsonl"
    assert sample.main(["--checkpoint", str(checkpoint), "--prompt-file", str(prompts), "--output", str(out),
                        "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert [json.loads(line)["completion"] for line in out.read_text().splitlines()] == \
           [r["completion"] for r in records]


def test_a_batch_of_uneven_prompts_completes_as_one_at_a_time(sample, checkpoint, tmp_path):
    # Greedy: three prompts of different token counts in batches of 2 and 1 give the JSON lines of batches of 1
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ROMEO: what light\nO\nthe sun is the east and\n")
    outputs = {}
    for batch_size in (1, 2):
        out = tmp_path / f"out{batch_size}.jsonl"
        assert sample.main(["--checkpoint", str(checkpoint), "--prompt-file", str(prompts), "--output", str(out),
                            "--max-new-tokens", "8", "--temperature", "0", "--batch-size", str(batch_size)]) == 0
        outputs[batch_size] = [json.loads(line) for line in out.read_text().splitlines()]
    keys = ("prompt", "completion", "prompt_tokens", "new_tokens")
    assert [[r[k] for k in keys] for r in outputs[2]] == [[r[k] for k in keys] for r in outputs[1]]
    assert len({r["prompt_tokens"] for r in outputs[1]}) == 3


def test_interactive_answers_each_prompt_until_an_empty_line(sample, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO:\nthe sun\n\n"))
    assert sample.main(["--checkpoint", str(checkpoint), "--interactive", "--max-new-tokens", "4"]) == 0
    result = capsys.readouterr()
    assert "ROMEO:" in result.out and "the sun" in result.out
    assert result.err.count("tokens/s") == 2


def test_bad_input_fails_with_a_message_not_a_traceback(sample, checkpoint, tmp_path, capsys):
    # `main` returns 2 and prints one line for errors the user can fix (a traceback would end the test)
    assert sample.main(["--checkpoint", str(tmp_path / "nowhere"), "--prompt", "hi"]) == 2
    missing = capsys.readouterr().err
    assert "nowhere" in missing and "--checkpoint" in missing

    assert sample.main(["--checkpoint", str(checkpoint), "--prompt", "ROMEO " * 60]) == 2
    assert "context is 48" in capsys.readouterr().err

    assert sample.main(["--checkpoint", str(checkpoint), "--prompt-file", str(tmp_path / "none.txt")]) == 2
    assert "none.txt" in capsys.readouterr().err


# On a GPU the sample decodes through the compiled static step (`static_decoding.py`) unless `--no-cuda-graph`;
# where that cannot run, it says why in one line and decodes with the model as it is. (Here, a model on the CPU.)
def test_without_a_cuda_graph_the_sample_says_why_in_one_line_and_goes_on(sample, capsys):
    from helpers import our_model_from_hf

    model = our_model_from_hf(make_tiny_hf_model())
    assert sample.prepare_for_gpu_or_say_why(model) is model
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[decoding without a CUDA graph: the model is on cpu")
    assert sample.main(["--help"]) == 0 and "--no-cuda-graph" in capsys.readouterr().out
