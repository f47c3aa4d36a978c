r"""
Checkpoints by Hugging Face Hub name and revision (`checkpoint/hub.py`), offline: a Hub cache laid out here the
way `huggingface_hub` lays it out (`models--ORG--NAME/refs/REV` holding a commit hash, `snapshots/HASH/FILE`
linking into `blobs/`), with three revisions of a tiny Pythia-style model whose weights differ. Nothing here
touches the network: `HF_HUB_OFFLINE=1` and the cache is in `tmp_path`.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from helpers import make_tiny_hf_model, write_tiny_tokenizer  # noqa: E402

from labml_nn.neox.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from labml_nn.neox.checkpoint import sources  # noqa: E402
from labml_nn.neox.loader import LayerLoader  # noqa: E402
from labml_nn.neox.tokenizer import encode, load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "EleutherAI/pythia-tiny"
# Three training steps: safetensors for the two later ones, only the pickled `.bin` for step0 (as in Pythia's
# oldest revisions); `main` is the last step
REVISIONS = {"step0": 2, "step1": 0, "step2": 1}


def add_to_hub_cache(cache: Path, name: str, revision: str, files: dict, commit: str):
    r"""
    One revision of `name` in a `huggingface_hub` cache: the blobs named by their hash, the snapshot's files as
    relative links to them, and `refs/REV` holding the commit.
    """
    repo = cache / ("models--" + name.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file_name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file_name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / revision).write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    tokenizer = root / "tokenizer.json"
    write_tiny_tokenizer(tokenizer, 300)
    cache, models = root / "cache", {}
    for revision, seed in REVISIONS.items():
        model = make_tiny_hf_model(seed=seed, vocab_size=320, max_position_embeddings=48)
        folder = root / revision
        model.save_pretrained(folder)
        files = {"config.json": (folder / "config.json").read_bytes(), "tokenizer.json": tokenizer.read_bytes()}
        if revision == "step0":
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            torch.save(state, folder / "pytorch_model.bin")
            (folder / "model.safetensors").unlink()
            files["pytorch_model.bin"] = (folder / "pytorch_model.bin").read_bytes()
        else:
            files["model.safetensors"] = (folder / "model.safetensors").read_bytes()
        (folder / "tokenizer.json").write_bytes(tokenizer.read_bytes())
        commit = hashlib.sha1(revision.encode()).hexdigest()
        add_to_hub_cache(cache, NAME, revision, files, commit)
        models[revision] = (model, folder)
    (cache / f"models--{NAME.replace('/', '--')}" / "refs" / "main").write_text(hashlib.sha1(b"step2").hexdigest())
    return cache, models


# `huggingface_hub` copies its environment variables into `huggingface_hub.constants` when it is imported, so
# a test in this process sets both
@pytest.fixture
def offline(hub_cache, monkeypatch):
    cache, _ = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def logits(model, ids):
    with torch.no_grad():
        return model(ids) if isinstance(model, torch.nn.Sequential) else model(ids).logits


IDS = torch.randint(0, 320, (2, 10), generator=torch.Generator().manual_seed(0))


def test_the_revision_asked_for_is_the_one_loaded(hub_cache, offline):
    _, models = hub_cache
    loaded = {}
    for revision in REVISIONS:
        ours = torch.nn.Sequential(*LayerLoader(NAME, revision=revision, progress=False).load())
        loaded[revision] = logits(ours, IDS)
        # The logits of transformers' model of that revision, and only of that one
        for other, (model, _) in models.items():
            close = torch.allclose(loaded[revision], logits(model, IDS), atol=2e-4)
            assert close == (other == revision), (revision, other)
    # `main` is the latest step, and no revision is the default
    main = torch.nn.Sequential(*LayerLoader(NAME, progress=False).load())
    assert torch.equal(logits(main, IDS), loaded["step2"])


def test_a_revision_with_only_pickled_weights_reads_them(hub_cache, offline):
    checkpoint = open_checkpoint(NAME, revision="step0")
    assert (checkpoint.layout.folder / "pytorch_model.bin").is_file()
    assert not (checkpoint.layout.folder / "model.safetensors").exists()


def test_the_tokenizer_of_a_revision_loads_by_name(hub_cache, offline):
    tokenizer = load_tokenizer(NAME, revision="step1")
    assert encode(tokenizer, "ROMEO") == encode(load_tokenizer(hub_cache[1]["step1"][1]), "ROMEO")


@pytest.mark.parametrize("name, revision, message", [
    (NAME, "step7", "EleutherAI/pythia-tiny \\(revision step7\\) is not in the Hugging Face cache"),
    ("EleutherAI/no-such-model", None, "EleutherAI/no-such-model \\(revision main\\)"),
    ("no-such-folder", None, "no-such-folder does not exist, and is not a Hugging Face Hub name"),
])
def test_an_unknown_name_or_revision_fails_naming_it(offline, name, revision, message):
    with pytest.raises(CheckpointError, match=message):
        LayerLoader(name, revision=revision, progress=False)


def test_a_local_folder_wins_over_a_hub_name(hub_cache, offline, tmp_path, monkeypatch):
    # A folder `EleutherAI/pythia-tiny` under the working directory holds step1's weights; the Hub's main is step2
    _, models = hub_cache
    local = tmp_path / NAME
    local.parent.mkdir()
    os.symlink(models["step1"][1], local)
    monkeypatch.chdir(tmp_path)
    ours = torch.nn.Sequential(*LayerLoader(NAME, progress=False).load())
    assert torch.allclose(logits(ours, IDS), logits(models["step1"][0], IDS), atol=2e-4)
    # A revision is for Hub names; with a local folder it is refused rather than ignored
    with pytest.raises(CheckpointError, match="is a local folder; a revision \\(step2\\)"):
        LayerLoader(NAME, revision="step2", progress=False)


def test_only_the_files_we_read_are_fetched(hub_cache, monkeypatch):
    # What `snapshot_download` is asked for: safetensors first, and the pickles only for a revision without them
    _, models = hub_cache
    calls = []

    def snapshot_download(name, revision=None, allow_patterns=None, token=None):
        calls.append(allow_patterns)
        return str(models[revision][1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    sources.resolve_checkpoint(NAME, "step1")
    assert len(calls) == 1 and "model.safetensors" in calls[0] and "pytorch_model.bin" not in calls[0]
    assert {"config.json", "tokenizer.json"} <= set(calls[0])
    calls.clear()
    sources.resolve_checkpoint(NAME, "step0")
    assert len(calls) == 2 and "pytorch_model.bin" in calls[1] and "model.safetensors" not in calls[1]
    calls.clear()
    sources.resolve_checkpoint(NAME, "step1", tokenizer_only=True)
    assert len(calls) == 1 and "tokenizer.json" in calls[0] and "config.json" not in calls[0]


# ## The command lines, by name, offline
#
# Each in a fresh interpreter, as a user runs it, with the cache and offline mode in its environment only.
def run(hub_cache, *args, timeout=180):
    cache, _ = hub_cache
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONIOENCODING="utf-8")
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_generate_by_name_and_revision(hub_cache):
    greedy = ["--prompt", "ROMEO", "--max-new-tokens", "6", "--temperature", "0", "--device", "cpu"]
    texts = {rev: run(hub_cache, REPO / "samples" / "generate.py", "--checkpoint", NAME, "--revision", rev, *greedy)
             for rev in ("step1", "step2")}
    local = run(hub_cache, REPO / "samples" / "generate.py", "--checkpoint", hub_cache[1]["step1"][1], *greedy)
    first_line = lambda out: out.strip().splitlines()[0]  # noqa: E731 (the text; then the speed)
    assert first_line(texts["step1"]) == first_line(local)
    assert texts["step1"] != texts["step2"]


def test_evaluate_by_name_and_revision(hub_cache, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n")
    out = run(hub_cache, "-m", "labml_nn.neox.evaluation", "--checkpoint", NAME, "--revision", "step1",
              "--tasks", "text_local", "--text-file", text, "--device", "cpu", "--batch-size", "2")
    assert "text_local" in out and "word_perplexity" in out


def test_finetune_and_merge_by_name_and_revision(hub_cache, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks? It is the east.\n" * 20)
    tuned = tmp_path / "tuned"
    run(hub_cache, REPO / "samples" / "finetune.py", "--checkpoint", NAME, "--revision", "step0", "--text", text,
        "--steps", "2", "--out", tuned, "--batch-size", "2", "--seq-len", "16", "--device", "cpu",
        "--log-dir", tmp_path / "logs")
    assert LayerLoader(tuned, progress=False).config.n_vocab == 320

    merged = tmp_path / "merged"
    run(hub_cache, "-m", "labml_nn.neox.checkpoint", "merge", NAME, merged, "--revision", "step2", "--format",
        "neox", "--dtype", "float32")
    ours = torch.nn.Sequential(*LayerLoader(merged, progress=False).load())
    assert torch.allclose(logits(ours, IDS), logits(hub_cache[1]["step2"][0], IDS), atol=2e-4)
