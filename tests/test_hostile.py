r"""
The hostile battery: bad input, faults and signals, each met with a message, never with a traceback, a partial
output or a deleted file that was not ours.

One case per row of issue 13 (and the cases added since), run through the commands as a user runs them (their
`main(argv)`, or a subprocess where a signal or a hang is the point). Every case asserts the exit status (2 for a
wrong argument, 1 for a bad file or value), that the one line `error: ...` names the file, key or argument at
fault, that no traceback is printed, and where a command writes, that nothing partial is left and nothing foreign
deleted. The download cases use a server on 127.0.0.1 (`test_checkpoint_download.Server`) that can omit
`Content-Length`, cut bodies, change a file between requests and answer 206 without `Content-Range`.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from helpers import make_tiny_hf_model, write_slim_from_hf, write_tiny_tokenizer  # noqa: E402
from labml_nn.neox.checkpoint.__main__ import main as checkpoint_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "LABML_NN_NEOX_DEBUG": ""}


# ## How a case is judged
def call(main, argv, capsys):
    """Run a command's `main(argv)`; returns its exit status (or "raised") and what it printed on stderr."""
    extra = ""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) or e.code is None else 1
        extra = "" if isinstance(e.code, int) or e.code is None else f"{e.code}\n"
    except BaseException:  # noqa: BLE001 (a traceback is what the battery looks for)
        rc, extra = "raised", traceback.format_exc()
    return rc, capsys.readouterr().err + extra


def judge(rc, err, want, *names):
    assert rc == want, f"exit status {rc}, wanted {want}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "bug of ours" not in err, err[-3000:]
    assert "error: " in err, err[-3000:]
    for name in names:
        assert str(name) in err, f"{name!r} not named in:\n{err[-3000:]}"


def leftovers(folder: Path, out: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(out.name + "."))


def load_sample(name: str):
    spec = importlib.util.spec_from_file_location(f"hostile_{name}", ROOT / "samples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ## The checkpoints the cases damage
@pytest.fixture(scope="module")
def tiny():
    return make_tiny_hf_model(vocab_size=320, max_position_embeddings=48)


@pytest.fixture(scope="module")
def slim_source(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "slim"
    write_slim_from_hf(tiny, path, tp=2, tokenizer=False)
    write_tiny_tokenizer(path / "20B_tokenizer.json", 300)
    return path


@pytest.fixture
def slim(slim_source, tmp_path):
    """A fresh copy of a two-rank pipeline checkpoint, to damage."""
    return Path(shutil.copytree(slim_source, tmp_path / "src"))


@pytest.fixture
def hf(tiny, tmp_path):
    """A fresh Hugging Face folder of the same model, with a tokenizer that fits it."""
    path = tmp_path / "hf"
    tiny.save_pretrained(path)
    write_tiny_tokenizer(path / "tokenizer.json", 300)
    return path


def merge(src, out, capsys, *extra):
    return call(checkpoint_main, ["merge", src, out, "--format", "hf", *extra], capsys)


def set_yaml_key(slim: Path, key: str, value):
    path = slim / "configs" / "tiny.yml"
    values = yaml.safe_load(path.read_text())
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values[key] = value
    path.write_text(yaml.safe_dump(values))
    return path


# ## Row 1: a folder that appears at OUT during a merge is never deleted, and ours is kept
#
# A merge slowed down part by part, in a subprocess, so that the test can act while it writes.
SLOW_MERGE = r"""
import sys, time
import labml_nn.neox.checkpoint.convert as convert
original = convert._with_progress
def slow(ckpt, progress):
    for item in original(ckpt, False):
        time.sleep(0.5)
        yield item
convert._with_progress = slow
from labml_nn.neox.checkpoint.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def start_slow_merge(src: Path, out: Path):
    process = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, "merge", str(src), str(out), "--format", "hf"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.parent.glob(out.name + ".tmp-*")):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    tmp = list(out.parent.glob(out.name + ".tmp-*"))
    assert tmp, "the merge never started writing"
    return process, tmp[0]


def case_out_appears_during_merge(slim, tmp_path, capsys):
    out = tmp_path / "out"
    process, tmp = start_slow_merge(slim, out)
    out.mkdir()
    (out / "theirs.txt").write_text("not the merge's")
    _, err = process.communicate(timeout=120)
    judge(process.returncode, err, 1, out, "appeared")
    assert (out / "theirs.txt").read_text() == "not the merge's" and sorted(os.listdir(out)) == ["theirs.txt"]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.tmp-")]
    assert len(kept) == 1 and (kept[0] / "config.json").is_file() and str(kept[0]) in err


# ## Row 2: the downloader finalises only verified files, never splices, never saves an HTML page
@pytest.fixture
def server():
    from test_checkpoint_download import Server
    from labml_nn.neox.checkpoint.download import slim_20b_files
    tree = {name: bytes((i * 7 + j) % 251 for j in range(300 + i)) for i, name in enumerate(slim_20b_files())}
    s = Server(tree)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def download(dest, server, capsys, *extra):
    return call(checkpoint_main, ["download", dest, "--base-url", server.url, *extra], capsys)


def finals(dest: Path):
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and ".part" not in p.name
                  and p.name != "SHA256SUMS")


def case_download_without_length_cut(server, tmp_path, capsys):
    server.mode = "no_length+cut"
    judge(*download(tmp_path / "d", server, capsys), 1, "20B_tokenizer.json", "Content-Length")
    assert finals(tmp_path / "d") == []
    # The next run asks for the rest, learns the size from Content-Range, and completes every file
    server.mode = None
    assert download(tmp_path / "d", server, capsys)[0] == 0
    assert all((tmp_path / "d" / n).read_bytes() == b for n, b in server.tree.items())


def case_download_file_changed_between_requests(server, tmp_path, capsys):
    name = "20B_tokenizer.json"
    server.mode = "cut"
    judge(*download(tmp_path / "d", server, capsys), 1, name)
    server.tree[name] = b"a new version " * 40
    server.mode = None
    assert download(tmp_path / "d", server, capsys)[0] == 0
    assert (tmp_path / "d" / name).read_bytes() == server.tree[name]


def case_download_server_ignores_if_range(server, tmp_path, capsys):
    name = "20B_tokenizer.json"
    server.mode = "cut"
    download(tmp_path / "d", server, capsys)
    server.tree[name] = b"a new version " * 40
    server.mode = "ignore_if_range"
    judge(*download(tmp_path / "d", server, capsys), 1, name)
    assert finals(tmp_path / "d") == []


def case_download_206_without_content_range(server, tmp_path, capsys):
    server.mode = "cut"
    download(tmp_path / "d", server, capsys)
    server.mode = "no_content_range"
    judge(*download(tmp_path / "d", server, capsys), 1, "20B_tokenizer.json", "Content-Range")
    assert finals(tmp_path / "d") == []


def case_download_html_page(server, tmp_path, capsys):
    server.mode = "html"
    judge(*download(tmp_path / "d", server, capsys), 1, "20B_tokenizer.json", "HTML")
    assert finals(tmp_path / "d") == [] and not list((tmp_path / "d").rglob("*.part"))


def case_download_verify(server, tmp_path, capsys):
    dest = tmp_path / "d"
    assert download(dest, server, capsys)[0] == 0
    assert len((dest / "SHA256SUMS").read_text().splitlines()) == len(server.tree)
    assert download(dest, server, capsys, "--verify")[0] == 0
    damaged = dest / "global_step150000" / "layer_05-model_01-model_states.pt"
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    judge(*download(dest, server, capsys, "--verify"), 1, damaged)


# ## Row 3: TERM and HUP clean up; what SIGKILL leaves, the next run removes by its marker
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def case_merge_signalled(slim, tmp_path, capsys, sig):
    out = tmp_path / "out"
    process, _ = start_slow_merge(slim, out)
    process.send_signal(getattr(signal, sig))
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in err and sig in err, err
    assert not out.exists() and leftovers(tmp_path, out) == []


def case_merge_killed_leftover_removed_later(slim, tmp_path, capsys):
    out = tmp_path / "out"
    process, tmp = start_slow_merge(slim, out)
    process.kill()
    process.communicate(timeout=60)
    assert tmp.is_dir()
    # Folders with a similar name but no marker of ours, or the marker of a live process, are not ours to remove
    (tmp_path / "out.tmp-userdata").mkdir()
    (tmp_path / "out.tmp-userdata" / "keep.txt").write_text("mine")
    live = tmp_path / "out.tmp-running"
    live.mkdir()
    (live / ".labml-nn-neox-partial").write_text(json.dumps({"writer": "labml_nn.neox", "host": os.uname()[1],
                                                             "pid": os.getpid()}))
    assert merge(slim, out, capsys)[0] == 0
    assert not tmp.exists() and (tmp_path / "out.tmp-userdata" / "keep.txt").read_text() == "mine" and live.is_dir()


# ## Row 4: the output follows the umask
def case_merge_follows_umask(slim, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert merge(slim, tmp_path / "out", capsys)[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777 == 0o640


# ## Rows 5-7: generation
@pytest.fixture(scope="module")
def generate_sample():
    return load_sample("generate")


@pytest.mark.parametrize("temperature", ["0", "0.8"])
def case_nan_weights_stop_generation(generate_sample, tiny, tmp_path, capsys, temperature):
    bad = make_tiny_hf_model(vocab_size=320, max_position_embeddings=48)
    with torch.no_grad():
        bad.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[0, 0] = float("nan")
    bad.save_pretrained(tmp_path / "nan")
    write_tiny_tokenizer(tmp_path / "nan" / "tokenizer.json", 300)
    judge(*call(generate_sample.main, ["--checkpoint", tmp_path / "nan", "--prompt", "ROMEO", "--max-new-tokens",
                                       "3", "--temperature", temperature, "--device", "cpu"], capsys), 1, "NaN")


@pytest.mark.parametrize("argument,value", [("--temperature", "-1"), ("--temperature", "inf"),
                                            ("--temperature", "nan"), ("--top-k", "0"), ("--top-p", "1.5"),
                                            ("--top-p", "nan"), ("--max-new-tokens", "-1")])
def case_sampling_argument(generate_sample, slim_source, capsys, argument, value):
    judge(*call(generate_sample.main, ["--checkpoint", slim_source, "--prompt", "hi", argument, value], capsys),
          2, argument)


@pytest.mark.parametrize("keyword,value", [("temperature", -1.0), ("top_k", 0), ("top_p", float("nan")),
                                           ("max_new_tokens", -2)])
def case_sampling_argument_in_the_api(keyword, value):
    from labml_nn.neox.generation import generate
    from labml_nn.neox.model import Embedding
    from labml_nn.neox.config import NeoXConfig
    model = [Embedding(NeoXConfig(n_layers=1, d_model=8, n_heads=2, n_vocab=16))]
    arguments = {"max_new_tokens": 3, keyword: value}
    with pytest.raises(ValueError, match=keyword):
        generate(model, torch.zeros(1, 2, dtype=torch.long), **arguments)


def case_tokenizer_larger_than_the_model(generate_sample, hf, capsys):
    write_tiny_tokenizer(hf / "tokenizer.json", 400)
    judge(*call(generate_sample.main, ["--checkpoint", hf, "--prompt", "hi", "--device", "cpu"], capsys), 1,
          "tokenizer", "320")


# ## Row 8: one readout under two names
def case_embed_out_and_lm_head(hf, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    state = load_file(hf / "model.safetensors")
    state["lm_head.weight"] = state["embed_out.weight"].clone()
    save_file(state, hf / "model.safetensors")
    out = tmp_path / "out"
    judge(*merge(hf, out, capsys), 1, "embed_out.weight", "lm_head.weight")
    assert not out.exists() and leftovers(tmp_path, out) == []


# ## Rows 9-10: config values and config files
@pytest.mark.parametrize("key,value", [("num_layers", "four"), ("hidden_size", [256]), ("num_attention_heads", 0),
                                       ("hidden_size", -64), ("seq_length", -5), ("layernorm_epsilon", -1.0),
                                       ("gpt_j_residual", "false"), ("rotary_pct", 1.5)])
def case_config_value(slim, tmp_path, capsys, key, value):
    path = set_yaml_key(slim, key, value)
    out = tmp_path / "out"
    judge(*merge(slim, out, capsys), 1, path.name, key)
    assert not out.exists() and leftovers(tmp_path, out) == []


@pytest.mark.parametrize("content", [b"- a list\n- not a mapping\n", b"num_layers: 2\n# caf\xe9 in Latin-1\n"])
def case_config_file_content(slim, tmp_path, capsys, content):
    (slim / "configs" / "tiny.yml").write_bytes(content)
    judge(*merge(slim, tmp_path / "out", capsys), 1, "tiny.yml")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def case_config_not_a_regular_file(slim, tmp_path, kind):
    path = slim / "configs" / "tiny.yml"
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    result = subprocess.run([sys.executable, "-m", "labml_nn.neox.checkpoint", "merge", str(slim),
                             str(tmp_path / "out"), "--format", "hf"], capture_output=True, text=True, env=ENV,
                            timeout=120, cwd=ROOT)
    judge(result.returncode, result.stderr, 1, "tiny.yml", "regular file")


# ## Row 11: what a layer file holds
@pytest.mark.parametrize("damage", ["number", "zero_dim", "integer"])
def case_layer_file_values(slim, tmp_path, capsys, damage):
    path = slim / "global_step10" / "layer_02-model_00-model_states.pt"
    state = torch.load(path)
    name = "attention.dense.bias"
    state[name] = {"number": 3, "zero_dim": torch.tensor(1.0), "integer": state[name].to(torch.int32)}[damage]
    torch.save(state, path)
    judge(*merge(slim, tmp_path / "out", capsys), 1, name, path.name)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, tmp_path / "out") == []


def case_folder_name_not_utf8(slim_source, tmp_path, capsys):
    src = tmp_path / os.fsdecode(b"ckpt-\xff")
    shutil.copytree(slim_source, src)
    rc, err = merge(src, tmp_path / "out", capsys)
    assert rc == 0 or (rc == 1 and "re-download" not in err.lower() and "Traceback" not in err), err


# ## Row 12: advice that fits the fault: a misplaced file is named, not the config, and not re-downloaded
def case_readout_in_the_embeddings_place(slim, tmp_path, capsys):
    step = slim / "global_step10"
    for rank in (0, 1):
        readout, embedding = (step / f"layer_{i:02d}-model_{rank:02d}-model_states.pt" for i in (6, 0))
        shutil.copy(readout, embedding)
    rc, err = merge(slim, tmp_path / "out", capsys)
    judge(rc, err, 1, "layer_00-model_00-model_states.pt")
    assert "padded_vocab_size" not in err


def case_stray_rank_file(slim, tmp_path, capsys):
    step = slim / "global_step10"
    shutil.copy(step / "layer_02-model_00-model_states.pt", step / "layer_02-model_03-model_states.pt")
    rc, err = merge(slim, tmp_path / "out", capsys)
    judge(rc, err, 1, "layer_02-model_03-model_states.pt")
    assert "download" not in err.lower()


# ## Row 12: Hugging Face files that are not what they claim
def shard(hf: Path):
    """Split `model.safetensors` into two shards with an index, as `save_pretrained` does for large models."""
    from safetensors.torch import load_file, save_file
    state = load_file(hf / "model.safetensors")
    (hf / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: state[n] for n in part}, hf / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def damage_index_list(hf):
    shard(hf)
    (hf / "model.safetensors.index.json").write_text("[]")
    return "model.safetensors.index.json"


def damage_config_list(hf):
    (hf / "config.json").write_text("[1, 2]")
    return "config.json"


def damage_rope_scaling_string(hf):
    config = json.loads((hf / "config.json").read_text())
    config["rope_scaling"] = "linear"
    (hf / "config.json").write_text(json.dumps(config))
    return "rope_scaling"


def damage_bin_holding_a_list(hf):
    (hf / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], hf / "pytorch_model.bin")
    return "pytorch_model.bin"


def damage_weight_map_escapes(hf):
    index = shard(hf)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../outside.safetensors"
    shutil.copy(hf / "model-00001-of-00002.safetensors", hf.parent / "outside.safetensors")
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    return "../outside.safetensors"


def damage_missing_shard(hf):
    shard(hf)
    (hf / "model-00002-of-00002.safetensors").unlink()
    return "model-00002-of-00002.safetensors"


@pytest.mark.parametrize("damage", [damage_index_list, damage_config_list, damage_rope_scaling_string,
                                    damage_bin_holding_a_list, damage_weight_map_escapes, damage_missing_shard],
                         ids=lambda f: f.__name__.removeprefix("damage_"))
def case_hf_folder(hf, tmp_path, capsys, damage):
    named = damage(hf)
    out = tmp_path / "out"
    judge(*merge(hf, out, capsys), 1, named)
    assert not out.exists() and leftovers(tmp_path, out) == []


# ## Row 13: checks before the first expensive step
def case_merge_report_into_missing_folder(slim, tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "no" / "such" / "report.json"
    judge(*merge(slim, out, capsys, "--report", report), 1, "--report", report)
    assert not out.exists() and leftovers(tmp_path, out) == []


@pytest.mark.parametrize("argv,named", [(["--tasks", "shakespeare_clozee"], "shakespeare_clozee"),
                                        (["--tasks", "lambada_openai", "--lambada-file", "missing.jsonl"],
                                         "missing.jsonl"),
                                        (["--tasks", "shakespeare_cloze", "--batch-size", "0"], "--batch-size")])
def case_evaluation_arguments(slim_source, capsys, argv, named):
    import labml_nn.neox.evaluation.__main__ as evaluation
    command = getattr(evaluation, "command", evaluation.main)
    judge(*call(command, ["--checkpoint", slim_source, "--device", "cpu", *argv], capsys), 2, named)


@pytest.fixture(scope="module")
def finetune_sample():
    return load_sample("finetune")


@pytest.mark.parametrize("argv,named", [(["--batch-size", "0"], "--batch-size"), (["--steps", "0"], "--steps"),
                                        (["--seq-len", "1000"], "--seq-len"), (["OUT_IS_A_FILE"], "--out")])
def case_finetune_arguments(finetune_sample, slim_source, tmp_path, capsys, argv, named):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 40)
    out = tmp_path / "tuned"
    if argv == ["OUT_IS_A_FILE"]:
        out.write_text("a file")
        argv = ["--overwrite"]
    judge(*call(finetune_sample.main, ["--checkpoint", slim_source, "--text", text, "--out", out, "--device", "cpu",
                                       "--log-dir", tmp_path / "logs", *argv], capsys), 2, named)
    assert out.is_file() or not out.exists()
    assert leftovers(tmp_path, out) == []


def case_merge_disk_full(slim, tmp_path, capsys, monkeypatch):
    # What `torch.save` raises when the disk fills up part-way through a file
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1500")
    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "out"
    judge(*call(checkpoint_main, ["merge", slim, out, "--format", "neox"], capsys), 1, out, "disk is full")
    assert not out.exists() and leftovers(tmp_path, out) == []


# ## Row 14: one error convention
def case_usage_error_is_one_line_exit_2(capsys):
    judge(*call(checkpoint_main, ["merge", "a", "b", "--format", "safetensors"], capsys), 2, "--format")


def case_traceback_only_when_asked(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    judge(*merge(missing, tmp_path / "out", capsys), 1, "nowhere")
    rc, err = merge(missing, tmp_path / "out", capsys, "--debug")
    assert rc == 1 and "Traceback" in err
    result = subprocess.run([sys.executable, "-m", "labml_nn.neox.checkpoint", "merge", str(missing),
                             str(tmp_path / "out"), "--format", "hf"], capture_output=True, text=True,
                            env={**ENV, "LABML_NN_NEOX_DEBUG": "1"}, timeout=120, cwd=ROOT)
    assert result.returncode == 1 and "Traceback" in result.stderr


# ## The battery
#
# Every `case_*` above, collected into one parametrized test, so that `pytest -k hostile` runs them all and the
# count of cases is the count of parameters.
def _cases():
    cases = []
    for name, function in sorted(globals().items()):
        if name.startswith("case_"):
            marks = getattr(function, "pytestmark", [])
            params = [m for m in marks if m.name == "parametrize"]
            if not params:
                cases.append(pytest.param(function, {}, id=name[5:]))
                continue
            (argnames, values), = [(m.args[0], m.args[1]) for m in params]
            ids = params[0].kwargs.get("ids")
            argnames = [a.strip() for a in argnames.split(",")]
            for i, value in enumerate(values):
                value = value if len(argnames) > 1 else (value,)
                label = ids(value[0]) if callable(ids) else "-".join(str(v) for v in value)
                cases.append(pytest.param(function, dict(zip(argnames, value)), id=f"{name[5:]}[{label}]"))
    return cases


@pytest.mark.parametrize("case,arguments", _cases())
def test_hostile(case, arguments, request):
    import inspect
    wanted = [p for p in inspect.signature(case).parameters if p not in arguments]
    fixtures = {name: request.getfixturevalue(name) for name in wanted}
    case(**fixtures, **arguments)
