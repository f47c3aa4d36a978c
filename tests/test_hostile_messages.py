r"""
The hostile battery, round 2 (issue 23): every predictable mistake gets one line that names the file, key or
argument and says what to do, with exit status 1 for bad data and 2 for a wrong argument; "a bug of ours" is kept
for real bugs. Also: a missing optional part is named before any work, a model and a tokenizer that are not a pair
are refused, the CPU kernel loads from a read-only cache, output is fit for a pipe, and Ctrl-C in the interactive
mode ends only the generation it interrupts.

Each case fails on the code before issue 23 (the closing note of the issue has the table). Cases run the commands
as a user does: their `main(argv)`, or a subprocess where a closed pipe, closed standard output, raw bytes on
standard input or a missing module is the point. A module is hidden from a subprocess with a `sitecustomize.py`
that sets `sys.modules[name] = None`, which makes `import name` fail as when it is not installed.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, write_slim_from_hf, write_tiny_tokenizer  # noqa: E402
from test_hostile import call, judge  # noqa: E402  (how a case is judged, as in round 1)
# round 1's fixtures: the tiny model, a Hugging Face folder of it, the samples as modules
from test_hostile import finetune_sample, generate_sample, hf, tiny  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "labml_nn" / "neox" / "demo"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "LABML_NN_NEOX_DEBUG": "",
       "PYTHONIOENCODING": "utf-8"}


def hide_modules(tmp_path: Path, *names: str) -> dict:
    """The environment of a subprocess in which `import NAME` fails as if NAME were not installed."""
    shim = tmp_path / "hide"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names))
    return {**ENV, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}


def sample_command(name: str, *argv) -> list:
    return [sys.executable, str(ROOT / "samples" / f"{name}.py"), *map(str, argv)]


@pytest.fixture(scope="module")
def slim(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("messages") / "slim"
    write_slim_from_hf(tiny, path, tp=2, tokenizer=False)
    write_tiny_tokenizer(path / "20B_tokenizer.json", 300)
    return path


# ## Generation: files, values and input that are not what they should be
def test_prompt_file_that_is_not_utf8(generate_sample, slim, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xff\xfe\x00binary\n")
    judge(*call(generate_sample.main, ["--checkpoint", slim, "--prompt-file", prompts], capsys), 1,
          "--prompt-file", prompts, "UTF-8")


def test_prompt_file_that_is_a_folder(generate_sample, slim, tmp_path, capsys):
    judge(*call(generate_sample.main, ["--checkpoint", slim, "--prompt-file", tmp_path], capsys), 2,
          "--prompt-file", "is a folder")


def test_interactive_input_that_is_not_utf8(slim):
    # A binary file piped into the interactive mode: its line gets an error, the next prompt is answered
    done = subprocess.run(sample_command("generate", "--checkpoint", slim, "--interactive", "--max-new-tokens", "2",
                                         "--temperature", "0"),
                          input=b"\xff\xfe\x80 binary\nhello\n", capture_output=True, env=ENV, timeout=120)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, err
    assert "not UTF-8" in err and "bug of ours" not in err and "Traceback" not in err, err
    assert err.count("new tokens") == 1, err  # the second prompt generated


def test_ctrl_c_during_an_interactive_generation_ends_only_that_generation(generate_sample, slim, capsys,
                                                                          monkeypatch):
    prompts = iter(["first", "second", ""])
    monkeypatch.setattr("builtins.input", lambda _="": next(prompts))
    real_complete, calls = generate_sample.complete, []

    def interrupted_once(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_complete(*args, **kwargs)

    monkeypatch.setattr(generate_sample, "complete", interrupted_once)
    rc, err = call(generate_sample.main, ["--checkpoint", slim, "--interactive", "--max-new-tokens", "2"], capsys)
    assert rc == 0, err
    assert calls == ["first", "second"], err
    assert "generation stopped" in err and "new tokens" in err, err


def test_temperature_too_small_for_fp32(generate_sample, slim, capsys):
    # 1e-45 passes the check (it is positive); dividing the logits by it overflowed to NaN probabilities.
    # The limit of a temperature going to 0 is greedy decoding, which is what it gives now.
    rc, err = call(generate_sample.main, ["--checkpoint", slim, "--prompt", "ROMEO", "--temperature", "1e-45",
                                          "--max-new-tokens", "4"], capsys)
    assert rc == 0, err
    assert "error" not in err, err


def test_sampling_with_a_tiny_temperature_is_greedy():
    from labml_nn.neox.generation import sample_next
    logits = torch.randn(3, 50) * 20
    for temperature in (1e-45, 1e-30, 1e-320):
        assert torch.equal(sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(0)),
                           logits.argmax(-1))


@pytest.mark.parametrize("seed", [str(2 ** 70), "-1"])
def test_seed_outside_64_bits(generate_sample, slim, capsys, seed):
    judge(*call(generate_sample.main, ["--checkpoint", slim, "--prompt", "hi", "--seed", seed,
                                       "--max-new-tokens", "2"], capsys), 2, "--seed")


def test_seed_outside_64_bits_in_finetuning(finetune_sample, slim, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 100)
    judge(*call(finetune_sample.main, ["--checkpoint", slim, "--text", text, "--out", tmp_path / "out",
                                       "--seed", str(2 ** 70)], capsys), 2, "--seed")


@pytest.mark.parametrize("name,argv", [("llm_int8", ["--max-new-tokens", "2"]), ("train_demo", ["--out", "demo"])])
def test_seed_outside_64_bits_in_the_other_samples(slim, tmp_path, name, argv):
    done = subprocess.run(sample_command(name, *argv, "--seed", str(2 ** 70)), capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=120)
    judge(done.returncode, done.stderr, 2, "--seed")


def test_standard_output_closed(slim):
    done = subprocess.run(" ".join(sample_command("generate", "--checkpoint", slim, "--max-new-tokens", "2"))
                          + " >&-", shell=True, capture_output=False, stderr=subprocess.PIPE, env=ENV, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "standard output is closed" in err and "bug of ours" not in err and "Traceback" not in err, err


def test_a_closed_pipe_ends_quietly(slim):
    # `generate.py | head -1`, made deterministic: the reader is gone before the first word is written
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(sample_command("generate", "--checkpoint", slim, "--prompt", "ROMEO",
                                             "--max-new-tokens", "5"),
                              stdout=write_end, stderr=subprocess.PIPE, env=ENV, timeout=120)
    finally:
        os.close(write_end)
    err = done.stderr.decode()
    assert done.returncode == 141, err
    assert "error" not in err.lower() and "Broken pipe" not in err, err


def test_head_reads_one_line_quietly(slim):
    done = subprocess.run(" ".join(sample_command("generate", "--checkpoint", slim, "--prompt", "ROMEO",
                                                  "--max-new-tokens", "40", "--temperature", "0"))
                          + " | head -c 1", shell=True, capture_output=True, env=ENV, timeout=120)
    assert "Broken pipe" not in done.stderr.decode() and "error" not in done.stderr.decode(), done.stderr.decode()


# ## The API: ids and padding are checked where they enter
@pytest.fixture(scope="module")
def model(tiny):
    from helpers import our_model_from_hf
    return our_model_from_hf(tiny)


@pytest.mark.parametrize("bad_id", [320, 10 ** 6, -1])
def test_token_ids_outside_the_vocabulary(model, bad_id):
    from labml_nn.neox.generation import generate
    with pytest.raises(ValueError, match=f"token id {bad_id}.*vocabulary 0 .. 319"):
        generate(model, torch.tensor([[5, bad_id, 7]]), 3)


@pytest.mark.parametrize("padding", [[3, 0], [5, 0], [-1, 0]])
def test_padding_that_leaves_a_row_no_token(model, padding):
    from labml_nn.neox.generation import generate
    with pytest.raises(ValueError, match="padding"):
        generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 3, padding=torch.tensor(padding))


# ## A config nested 100,000 deep
def test_config_json_nested_too_deep(hf, tmp_path, capsys):
    from labml_nn.neox.checkpoint.__main__ import main as checkpoint_main
    (hf / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    judge(*call(checkpoint_main, ["merge", hf, tmp_path / "out", "--format", "hf"], capsys), 1, "config.json",
          "nested")


def test_config_yaml_nested_too_deep(slim, tmp_path, capsys):
    from labml_nn.neox.checkpoint.__main__ import main as checkpoint_main
    src = Path(shutil.copytree(slim, tmp_path / "src"))
    (src / "configs" / "tiny.yml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    judge(*call(checkpoint_main, ["merge", src, tmp_path / "out", "--format", "hf"], capsys), 1, "tiny.yml",
          "nested")


# ## Fine-tuning's text
def test_finetuning_text_that_is_not_utf8(finetune_sample, slim, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_bytes(b"caf\xe9 " * 200)
    judge(*call(finetune_sample.main, ["--checkpoint", slim, "--text", text, "--out", tmp_path / "out"], capsys),
          1, "--text", text, "UTF-8")
    assert not (tmp_path / "out").exists()


def test_finetuning_text_too_short_for_one_window(finetune_sample, slim, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("short")
    judge(*call(finetune_sample.main, ["--checkpoint", slim, "--text", text, "--out", tmp_path / "out"], capsys),
          1, "--text", "too few")


def test_finetuning_hint_runs_from_where_the_user_is(finetune_sample, slim, tmp_path, capsys, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks? " * 60)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc = finetune_sample.main(["--checkpoint", str(slim), "--text", str(text), "--out", "ft", "--steps", "1",
                               "--seq-len", "16", "--batch-size", "2", "--log-dir", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    assert rc == 0, out
    hint = out.split("generate with: ")[1].split()
    assert hint[0] == "python" and hint[2] == "--checkpoint", hint
    assert Path(hint[1]).is_file(), f"{hint[1]} is not a file seen from {elsewhere}"
    assert (Path(hint[3]) / "latest").is_file()


# ## Evaluation's arguments and files
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed")


@needs_lm_eval
@pytest.mark.parametrize("tasks", [",", "", " , "])
def test_evaluation_tasks_naming_nothing(tasks, capsys):
    from labml_nn.neox.evaluation.__main__ import command
    judge(*call(command, ["--tasks", tasks], capsys), 2, "--tasks")


@needs_lm_eval
def test_evaluation_empty_held_out_text(tmp_path, capsys):
    from labml_nn.neox.evaluation.__main__ import command
    empty = tmp_path / "held_out.txt"
    empty.write_text("")
    judge(*call(command, ["--tasks", "shakespeare_cloze", "--limit", "2", "--text-file", empty], capsys), 1,
          empty, "empty")


@needs_lm_eval
@pytest.mark.parametrize("line", ['{"text": broken', '["a list"]', '{"txt": "a key misspelt"}'])
def test_evaluation_malformed_lambada_line(tmp_path, capsys, line):
    from labml_nn.neox.evaluation.__main__ import command
    lambada = tmp_path / "lambada_test.jsonl"
    lambada.write_text('{"text": "a fine first line"}\n{"text": "and a second"}\n' + line + "\n")
    judge(*call(command, ["--tasks", "lambada_openai", "--lambada-file", lambada, "--limit", "1"], capsys), 1,
          lambada, "line 3")


# ## Missing optional parts: one line naming the extra, before any work
def test_evaluation_help_without_lm_eval(tmp_path):
    done = subprocess.run([sys.executable, "-m", "labml_nn.neox.evaluation", "--help"], capture_output=True,
                          text=True, env=hide_modules(tmp_path, "lm_eval"), cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        'error: The evaluation needs lm_eval, which is not installed: pip install -e ".[eval]" in the clone (or pip '
        'install "labml-nn-neox[eval]")'], done.stderr


def test_outlier_sample_without_matplotlib(tmp_path):
    done = subprocess.run(sample_command("llm_int8_outliers", "--output", tmp_path / "o.png"), capture_output=True,
                          text=True, env=hide_modules(tmp_path, "matplotlib"), timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout == "", "it computed before saying what is missing:\n" + done.stdout
    assert 'pip install -e ".[int8]"' in done.stderr and "bug of ours" not in done.stderr, done.stderr


def test_llm_int8_sample_without_bitsandbytes(tmp_path):
    done = subprocess.run(sample_command("llm_int8", "--compare", "--max-new-tokens", "3"), capture_output=True,
                          text=True, env=hide_modules(tmp_path, "bitsandbytes"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "implementation='reference'" not in done.stderr, done.stderr
    assert 'pip install -e ".[int8]"' in done.stderr, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("LLM.int8 ("))
    assert "bitsandbytes" not in header and "reference" in header, header


# ## A model and a tokenizer that are not a pair
def test_tokenizer_far_smaller_than_the_model(generate_sample, tmp_path, capsys):
    # The demo's 4,096-id tokenizer beside a 50,304-id model (Pythia's size): 46,000 ids would print nothing
    model = make_tiny_hf_model(vocab_size=50304, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                               num_hidden_layers=1)
    model.save_pretrained(tmp_path / "m")
    shutil.copy(DEMO / "20B_tokenizer.json", tmp_path / "m" / "tokenizer.json")
    judge(*call(generate_sample.main, ["--checkpoint", tmp_path / "m", "--prompt", "ROMEO", "--device", "cpu"],
                capsys), 1, "tokenizer", "50,304", "--tokenizer")


def test_generated_ids_the_tokenizer_lacks_are_reported(generate_sample, tmp_path, capsys):
    # A 320-id model with a 300-id tokenizer (a normal padding) whose readout always picks id 310
    model = make_tiny_hf_model(vocab_size=320, max_position_embeddings=48)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)
        readout = model.get_output_embeddings().weight
        readout.zero_()
        readout[310] = 1.0
    model.save_pretrained(tmp_path / "m")
    write_tiny_tokenizer(tmp_path / "m" / "tokenizer.json", 300)
    rc, err = call(generate_sample.main, ["--checkpoint", tmp_path / "m", "--prompt", "ROMEO", "--temperature", "0",
                                          "--max-new-tokens", "5", "--device", "cpu"], capsys)
    assert rc == 0, err
    assert "5 of the 5 generated ids (310) are not in the tokenizer" in err, err


# ## The kernel in a read-only cache
#
# A process that cannot write the build folder (a shared cache, a container image). Running as root, a folder's
# mode does not stop us, so the subprocess also refuses, for that folder only, what a non-root user is refused:
# `os.access(..., W_OK)` answers no and opening a file there for writing fails.
READ_ONLY = r"""
import builtins, os, sys
folder = os.environ["READ_ONLY_FOLDER"]
inside = lambda path: os.path.abspath(os.fsdecode(path)).startswith(folder)
real_access, real_open, real_os_open = os.access, builtins.open, os.open
def access(path, mode, *a, **k):
    return False if inside(path) and mode & os.W_OK else real_access(path, mode, *a, **k)
def open_(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and inside(file) and any(c in mode for c in "wax+"):
        raise PermissionError(13, "Permission denied", os.fsdecode(file))
    return real_open(file, mode, *a, **k)
def os_open(path, flags, *a, **k):
    if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        raise PermissionError(13, "Permission denied", os.fsdecode(path))
    return real_os_open(path, flags, *a, **k)
os.access, builtins.open, os.open = access, open_, os_open
"""

KERNEL_PROBE = "from labml_nn.neox.cpu_gemv import gemv_or_reason; op, reason = gemv_or_reason(); print(reason)"


def kernel_build_folder(extensions: Path) -> Path:
    """The folder PyTorch builds our kernel in when `TORCH_EXTENSIONS_DIR` is `extensions`."""
    from labml_nn.neox.cpu_gemv import KERNEL_NAME
    env = {**ENV, "TORCH_EXTENSIONS_DIR": str(extensions)}
    code = (f"from torch.utils import cpp_extension; "
            f"print(cpp_extension._get_build_directory({KERNEL_NAME!r}, verbose=False))")
    return Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                               check=True).stdout.strip())


def read_only_env(tmp_path: Path, extensions: Path) -> dict:
    shim = tmp_path / "read_only"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(READ_ONLY)
    return {**ENV, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}", "TORCH_EXTENSIONS_DIR": str(extensions),
            "READ_ONLY_FOLDER": str(extensions)}


def test_kernel_built_in_a_read_only_cache_is_loaded(tmp_path):
    from labml_nn.neox.cpu_gemv import KERNEL_NAME, gemv_or_reason
    op, reason = gemv_or_reason()
    if op is None:
        pytest.skip(f"the kernel cannot be built here: {reason}")
    # A copy of this process's build, in a folder of its own, then read-only
    from torch.utils import cpp_extension
    built = Path(cpp_extension._get_build_directory(KERNEL_NAME, verbose=False))
    extensions = tmp_path / "torch_extensions"
    folder = kernel_build_folder(extensions)
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("lock"), dirs_exist_ok=True)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    done = subprocess.run([sys.executable, "-c", KERNEL_PROBE], capture_output=True, text=True,
                          env=read_only_env(tmp_path, extensions), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None", f"the kernel was not loaded: {done.stdout}{done.stderr}"
    assert "Compiling" not in done.stderr, done.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before


def test_kernel_without_a_build_in_a_read_only_cache_names_the_variable(tmp_path):
    extensions = tmp_path / "torch_extensions"
    kernel_build_folder(extensions).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", KERNEL_PROBE], capture_output=True, text=True,
                          env=read_only_env(tmp_path, extensions), timeout=300)
    assert done.returncode == 0, done.stderr
    reason = done.stdout.strip()
    if "Linux on x86-64" in reason or "AVX2" in reason or "no C++ compiler" in reason:
        pytest.skip(f"the kernel cannot be built here: {reason}")
    assert "TORCH_EXTENSIONS_DIR" in reason, reason


# ## Progress bars only on a terminal
def test_merge_into_a_pipe_writes_no_escape_codes(slim, tmp_path):
    done = subprocess.run([sys.executable, "-m", "labml_nn.neox.checkpoint", "merge", str(slim),
                           str(tmp_path / "out"), "--format", "hf"], capture_output=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert b"\x1b[" not in done.stdout and b"\x1b[" not in done.stderr, done.stdout.decode()[-500:]


# ## Build and test outputs stay outside the repository
def test_docs_figure_cache_is_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("LABML_NN_NEOX_HOME", str(tmp_path / "home"))
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "hooks"))
    pytest.importorskip("matplotlib")
    figures = importlib.import_module("figures")
    assert figures._cache_folder() == tmp_path / "home" / "docs-figures"


def test_browser_screenshots_go_outside_the_repository():
    source = (ROOT / "tests" / "test_docs_browser.py").read_text()
    assert "NEOX_TEST_ARTIFACTS" in source
    # no test file (the live model's browser test was one) writes its outputs into the repository
    marker = 'ROOT / "test-' + 'artifacts"'
    writers = [p.name for p in (ROOT / "tests").glob("*.py") if marker in p.read_text()]
    assert not writers, f"{writers} write into the repository's test-artifacts/"


def test_readme_names_every_place_we_write():
    readme = (ROOT / "README.md").read_text()
    for place in ("~/.cache/labml-nn-neox", "~/.cache/torch_extensions", "TORCH_EXTENSIONS_DIR",
                  "~/.cache/huggingface/datasets", "docs-figures", "NEOX_TEST_ARTIFACTS"):
        assert place in readme, place

