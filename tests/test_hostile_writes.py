r"""
The hostile battery, round 2 (issue 23): what a command writes, it builds aside and publishes complete; it never
replaces what it reads, the current folder or a folder holding files it did not write; and the downloader vouches
only for what it checked.

Each case runs a command as a user runs it (its `main(argv)`) and judges it as `test_hostile.py` does: the exit
status, one line `error: ...` naming the file or argument, no traceback, and on disk, that nothing partial is left
and nothing that was there is lost. The download cases use a server on 127.0.0.1 that honours `Range: bytes=A-B`.
"""

import json
import os
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, write_tiny_tokenizer  # noqa: E402
from test_hostile import (call, finetune_sample, generate_sample, judge, leftovers, load_sample, slim,  # noqa: E402,F401
                          slim_source, tiny)
from labml_nn.neox.checkpoint.__main__ import main as checkpoint_main  # noqa: E402


# ## What the cases look at (the checkpoints and samples are round 1's fixtures, imported above)
def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes, to show that nothing in it changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def merge(src, out, capsys, *extra):
    return call(checkpoint_main, ["merge", src, out, "--format", "hf", *extra], capsys)


# ## Case 1: `--prompt-file p.txt --output p.txt` never empties the prompts (also through a link, and with
# `--overwrite`)
@pytest.mark.parametrize("how", ["same", "link", "overwrite"])
def test_generate_output_that_is_the_prompt_file_is_refused(generate_sample, slim_source, tmp_path, capsys, how):
    prompts = tmp_path / "p.txt"
    prompts.write_text("ROMEO.\nJULIET.\n")
    output, extra = prompts, []
    if how == "link":
        output = tmp_path / "link.txt"
        output.symlink_to(prompts)
        extra = ["--overwrite"]
    if how == "overwrite":
        extra = ["--overwrite"]
    rc, err = call(generate_sample.main, ["--checkpoint", slim_source, "--prompt-file", prompts, "--output", output,
                                          "--max-new-tokens", "2", "--device", "cpu", *extra], capsys)
    judge(rc, err, 1, "--output", "reads")
    assert prompts.read_text() == "ROMEO.\nJULIET.\n" and leftovers(tmp_path, prompts) == []


# ## Case 2: an existing `--output` is refused without `--overwrite`; a run that fails leaves it as it was; a run
# that succeeds with `--overwrite` replaces it whole
def test_generate_existing_output_needs_overwrite(generate_sample, slim_source, tmp_path, capsys):
    prompts, output = tmp_path / "p.txt", tmp_path / "results.jsonl"
    prompts.write_text("ROMEO.\n")
    output.write_text("my earlier results\n")
    argv = ["--checkpoint", slim_source, "--prompt-file", prompts, "--output", output, "--max-new-tokens", "2",
            "--device", "cpu", "--temperature", "0"]
    judge(*call(generate_sample.main, argv, capsys), 1, output, "--overwrite")
    assert output.read_text() == "my earlier results\n"
    assert call(generate_sample.main, argv + ["--overwrite"], capsys)[0] == 0
    assert json.loads(output.read_text())["prompt"] == "ROMEO." and leftovers(tmp_path, output) == []


@pytest.mark.parametrize("failure", ["nan_weights", "interrupted"])
def test_generate_failing_run_leaves_the_old_output(generate_sample, tiny, tmp_path, capsys, monkeypatch, failure):
    checkpoint = tmp_path / "model"
    model = make_tiny_hf_model(vocab_size=320, max_position_embeddings=48)
    if failure == "nan_weights":
        with torch.no_grad():
            model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[0, 0] = float("nan")
    else:
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(generate_sample, "complete", interrupted)
    model.save_pretrained(checkpoint)
    write_tiny_tokenizer(checkpoint / "tokenizer.json", 300)
    prompts, output = tmp_path / "p.txt", tmp_path / "results.jsonl"
    prompts.write_text("ROMEO.\n")
    output.write_text("my earlier results\n")
    rc, err = call(generate_sample.main, ["--checkpoint", checkpoint, "--prompt-file", prompts, "--output", output,
                                          "--overwrite", "--max-new-tokens", "2", "--device", "cpu"], capsys)
    assert rc == (1 if failure == "nan_weights" else 130), err
    assert output.read_text() == "my earlier results\n" and leftovers(tmp_path, output) == []


# ## Case 4: `merge SRC SRC --overwrite`, directly or through a link, never replaces its source
@pytest.mark.parametrize("how", ["same", "src_through_link", "out_inside_src"])
def test_merge_never_replaces_its_source(slim, tmp_path, capsys, how):
    before = snapshot(slim)
    src, out = slim, slim
    if how == "src_through_link":
        src = tmp_path / "link"
        src.symlink_to(slim)
    if how == "out_inside_src":
        out = slim / "global_step10"
    judge(*merge(src, out, capsys, "--overwrite"), 1, "reads")
    assert snapshot(slim) == before and leftovers(out.parent, out) == []


@pytest.mark.parametrize("how", ["same", "overwrite"])
def test_finetune_never_replaces_its_checkpoint(finetune_sample, slim, tmp_path, capsys, how):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 40)
    before = snapshot(slim)
    judge(*call(finetune_sample.main, ["--checkpoint", slim, "--text", text, "--out", slim, "--device", "cpu",
                                       "--steps", "1", "--log-dir", tmp_path / "logs",
                                       *(["--overwrite"] if how == "overwrite" else [])], capsys), 1, "--out")
    assert snapshot(slim) == before and leftovers(tmp_path, slim) == []


# ## Case 5: never the current folder or a folder above it
@pytest.mark.parametrize("target", [".", ".."])
def test_merge_never_replaces_the_current_folder(slim_source, tmp_path, capsys, monkeypatch, target):
    here = tmp_path / "project" / "work"
    here.mkdir(parents=True)
    (here / "notes.txt").write_text("the user's")
    monkeypatch.chdir(here)
    judge(*merge(slim_source, target, capsys, "--overwrite"), 1, "current folder")
    assert (here / "notes.txt").read_text() == "the user's"
    assert sorted(os.listdir(tmp_path / "project")) == ["work"] and sorted(os.listdir(tmp_path)) == ["project"]


# ## A folder holding what we did not write is refused, even with `--overwrite`; an earlier output is replaced
def test_overwrite_refuses_a_folder_of_foreign_files(slim, tmp_path, capsys):
    out = tmp_path / "out"
    assert merge(slim, out, capsys)[0] == 0
    (out / "notes.txt").write_text("the user's")
    (out / "src").mkdir()
    judge(*merge(slim, out, capsys, "--overwrite"), 1, "notes.txt", "src/")
    assert (out / "notes.txt").read_text() == "the user's" and leftovers(tmp_path, out) == []
    # Our own earlier output, and nothing else, is replaced
    (out / "notes.txt").unlink()
    (out / "src").rmdir()
    assert merge(slim, out, capsys, "--overwrite")[0] == 0 and leftovers(tmp_path, out) == []


# ## `merge --report`: a report that cannot be written leaves no OUT; an existing one needs `--overwrite`
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_merge_report_to_a_full_disk_leaves_no_out(slim, tmp_path, capsys):
    out = tmp_path / "out"
    judge(*merge(slim, out, capsys, "--report", "/dev/full"), 1, "--report")
    assert not out.exists() and leftovers(tmp_path, out) == []


def test_merge_existing_report_needs_overwrite(slim, tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "report.json"
    report.write_text("my notes")
    judge(*merge(slim, out, capsys, "--report", report), 1, "--report", "already exists")
    assert report.read_text() == "my notes" and not out.exists()
    assert merge(slim, out, capsys, "--report", report, "--overwrite")[0] == 0
    assert "tensors" in json.loads(report.read_text()) and leftovers(tmp_path, report) == []


# ## `merge --format hf` on a full disk: one line, exit 1, nothing left (safetensors raises its own error type)
def test_merge_hf_disk_full_is_one_line(slim, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "out"
    judge(*merge(slim, out, capsys), 1, out, "disk is full")
    assert "bug of ours" not in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path, out) == []


# ## A checkpoint with NaN weights is merged, with a warning naming the tensor, and listed in the report
def test_merge_warns_about_nan_weights(tmp_path, capsys):
    model = make_tiny_hf_model(vocab_size=320, max_position_embeddings=48)
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    out, report = tmp_path / "out", tmp_path / "r.json"
    rc, err = merge(tmp_path / "nan", out, capsys, "--report", report)
    assert rc == 0, err
    assert "NaN" in err and "attention.dense.weight of transformer layer 1" in err
    assert json.loads(report.read_text())["non_finite"] == ["attention.dense.weight of transformer layer 1"]


# ## `num_layers: 1000000` is blamed on the config, not on a missing file
def test_too_many_layers_in_the_config_names_the_config(slim, tmp_path, capsys):
    path = slim / "configs" / "tiny.yml"
    values = {k.replace("-", "_"): v for k, v in yaml.safe_load(path.read_text()).items()}
    n_layers, values["num_layers"] = values["num_layers"], 1000000
    path.write_text(yaml.safe_dump(values))
    rc, err = merge(slim, tmp_path / "out", capsys)
    judge(rc, err, 1, "num_layers: 1000000", f"num_layers: {n_layers}")
    assert "Missing" not in err and "Re-download" not in err


# ## Data errors exit 1 in every command: generate on a checkpoint with a missing file, as merge (a file that is
# there but damaged already exits 1 in both)
def test_generate_on_a_damaged_checkpoint_exits_1(generate_sample, slim, capsys):
    path = slim / "global_step10" / "layer_03-model_01-model_states.pt"
    path.unlink()
    judge(*call(checkpoint_main, ["merge", slim, slim.parent / "out", "--format", "hf"], capsys), 1, path.name)
    judge(*call(generate_sample.main, ["--checkpoint", slim, "--prompt", "hi", "--device", "cpu"], capsys), 1,
          path.name)


# ## Every other command that writes follows the rule: evaluation's `--output`, the outliers figure
def test_evaluation_output_is_not_replaced_without_overwrite(slim_source, tmp_path, capsys):
    import labml_nn.neox.evaluation.__main__ as evaluation
    output = tmp_path / "results.json"
    output.write_text("my earlier results")
    judge(*call(evaluation.command, ["--checkpoint", slim_source, "--device", "cpu", "--tasks", "shakespeare_cloze",
                                     "--limit", "2", "--output", output], capsys), 1, "--output", "already exists")
    assert output.read_text() == "my earlier results"
    text = tmp_path / "held_out.txt"
    text.write_text("some held-out text.\n")
    judge(*call(evaluation.command, ["--checkpoint", slim_source, "--device", "cpu", "--tasks", "shakespeare_cloze",
                                     "--text-file", text, "--output", text, "--overwrite"], capsys), 1, "reads")
    assert text.read_text() == "some held-out text.\n"


def test_outliers_figure_is_not_replaced_without_overwrite(slim_source, tmp_path, capsys):
    outliers = load_sample("llm_int8_outliers")
    figure = tmp_path / "mine.png"
    figure.write_bytes(b"my figure")
    from labml_nn.neox.cli import run_command
    judge(*call(lambda argv: run_command(outliers.main, argv), ["--checkpoint", slim_source, "--device", "cpu", "--out", figure], capsys), 1,
          "--out", "already exists")
    assert figure.read_bytes() == b"my figure"


@pytest.mark.parametrize("target", ["state", "out_is_texts"])
def test_train_demo_refuses_before_training(tmp_path, target):
    import subprocess
    import sys
    from test_hostile import ENV, ROOT
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"work{i}.txt").write_text("ROMEO. But soft, what light through yonder window breaks?\n" * 30)
    state = tmp_path / "state.pt"
    state.write_bytes(b"my earlier state")
    argv = ["--texts", texts, "--steps", "1", "--batch-size", "1", "--seq-len", "16", "--vocab-size", "300",
            "--log-dir", tmp_path / "logs"]
    argv += ["--out", tmp_path / "out", "--state", state] if target == "state" else ["--out", texts, "--overwrite"]
    result = subprocess.run([sys.executable, str(ROOT / "samples" / "train_demo.py"), *map(str, argv)],
                            capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    judge(result.returncode, result.stderr, 1, "--state" if target == "state" else "--out")
    assert "step" not in result.stdout and state.read_bytes() == b"my earlier state"
    assert sorted(p.name for p in texts.iterdir()) == ["work0.txt", "work1.txt", "work2.txt"]
    assert not (tmp_path / "out").exists()


# ## Case 3: the downloader vouches only for what it checked
class RangeServer:
    """Serves `tree` with an ETag per file and honours `Range: bytes=A-B` (and `bytes=A-`) with `If-Range`."""

    def __init__(self, tree):
        self.tree = dict(tree)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = server.tree.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                etag = f'"{zlib.crc32(body):08x}-{len(body)}"'
                wanted = self.headers.get("Range")
                if wanted and self.headers.get("If-Range") in (None, etag):
                    first, _, last = wanted.split("=")[1].partition("-")
                    start, end = int(first), min(int(last) if last else len(body) - 1, len(body) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                else:
                    start, end = 0, len(body) - 1
                    self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                self.wfile.write(body[start:end + 1])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


BIG = "global_step150000/layer_05-model_01-model_states.pt"


@pytest.fixture
def server():
    from labml_nn.neox.checkpoint.download import slim_20b_files
    tree = {name: bytes((i * 7 + j) % 251 for j in range(300 + i)) for i, name in enumerate(slim_20b_files())}
    tree[BIG] = bytes((j * 13) % 251 for j in range(300_000))
    s = RangeServer(tree)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def download(dest, server, capsys, *extra):
    return call(checkpoint_main, ["download", dest, "--base-url", server.url, *extra], capsys)


@pytest.mark.parametrize("damage", ["same_size_middle", "same_size_end", "shorter", "empty"])
def test_download_refetches_an_unrecorded_file_that_differs(server, tmp_path, capsys, damage):
    dest = tmp_path / "d"
    assert download(dest, server, capsys)[0] == 0
    (dest / "SHA256SUMS").unlink()
    big = dest / BIG
    body = bytearray(big.read_bytes())
    if damage in ("shorter", "empty"):
        body = body[:-10] if damage == "shorter" else b""
    else:
        where = len(body) // 2 if damage == "same_size_middle" else len(body) - 3
        body[where] ^= 0xFF
    big.write_bytes(bytes(body))
    rc, err = download(dest, server, capsys)
    assert rc == 0 and big.read_bytes() == server.tree[BIG], err
    assert f"{big} does not match the server" in err, err
    rc, err = download(dest, server, capsys, "--verify")
    assert rc == 1 and str(big) not in err and "cannot vouch" not in err and "found on disk" in err, err


def test_download_verify_fails_on_a_file_it_did_not_download(server, tmp_path, capsys):
    dest = tmp_path / "d"
    for name, body in server.tree.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(body)
    rc, said = download(dest, server, capsys)
    assert rc == 0, said
    rc, err = download(dest, server, capsys, "--verify")
    judge(rc, err, 1, *(dest / name for name in server.tree))
    assert "cannot vouch" in said
    # Deleting one and downloading it again makes it one we vouch for
    (dest / BIG).unlink()
    assert download(dest, server, capsys)[0] == 0
    rc, err = download(dest, server, capsys, "--verify")
    assert rc == 1 and str(dest / BIG) not in err and str(dest / "20B_tokenizer.json") in err
