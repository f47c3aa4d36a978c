r"""
LoRA (`training/lora.py`) and peft's adapter format (`checkpoint/adapters.py`), against peft on transformers'
model as the reference: a fresh adapter is the base model; only $A$ and $B$ train; merging gives the unmerged
logits; an adapter trained by `samples/finetune.py --train lora` loads in peft with our logits (1e-5, fp32); an
adapter made by peft (with non-zero $B$) loads in ours, merged or applied, by folder or Hub name, and `merge`
writes the merged model; what we do not compute is refused by name.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from helpers import make_tiny_hf_model, random_ids, write_tiny_tokenizer  # noqa: E402

from labml_nn.neox.checkpoint import CheckpointError, open_checkpoint  # noqa: E402
from labml_nn.neox.checkpoint.convert import merge_checkpoint  # noqa: E402
from labml_nn.neox.loader import LayerLoader  # noqa: E402
from labml_nn.neox.model import NeoXModel, build_layers  # noqa: E402
from labml_nn.neox.training.lora import LoRAConfig, LoRALinear, add_lora, lora_layers, merge_lora  # noqa: E402
from labml_nn.neox.training.finetune import write_checkpoint  # noqa: E402
from labml_nn.neox.training.text_dataset import TokenWindows  # noqa: E402
from labml_nn.neox.training.trainer import Trainer, TrainingConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
# fp32 logits of ours and of peft on transformers' model, on the same weights and adapter
TOLERANCE = 1e-5


def logits(model, ids):
    with torch.no_grad():
        return model(ids) if isinstance(model, NeoXModel) else model(ids).logits


def tiny_layers(seed=0):
    from labml_nn.neox.config import NeoXConfig
    config = NeoXConfig(n_layers=2, d_model=32, n_heads=4, n_vocab=320, n_ctx=64, rotary_pct=0.25,
                        parallel_residual=True, activation="gelu_tanh")
    torch.manual_seed(seed)
    return build_layers(config)


def train(layers, steps=3, lr=1e-2):
    data = TokenWindows(torch.randint(2, 320, (2000,), generator=torch.Generator().manual_seed(1)), 16)
    Trainer(layers, data, None, TrainingConfig(steps=steps, batch_size=4, learning_rate=lr), track=False).train()


# ## The update
def test_a_fresh_adapter_is_exactly_the_base_model():
    layers = tiny_layers()
    ids = random_ids(320)
    before = logits(NeoXModel(*layers), ids)
    add_lora(layers, LoRAConfig(rank=4, alpha=8, targets=tuple(TARGETS)))
    assert len(list(lora_layers(layers))) == 2 * 4
    assert torch.equal(logits(NeoXModel(*layers), ids), before)


def test_the_adapted_layer_computes_w_plus_alpha_over_r_b_a_in_float64():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 24).double()
    lora = LoRALinear(base, rank=4, alpha=12)
    lora.lora_A.double(), lora.lora_B.double()
    torch.nn.init.normal_(lora.lora_B.weight)
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = x @ (base.weight + 12 / 4 * lora.lora_B.weight @ lora.lora_A.weight).T + base.bias
    assert torch.allclose(lora(x), expected, atol=1e-12)
    assert torch.allclose(lora.merged_weight(), base.weight + 3 * lora.lora_B.weight @ lora.lora_A.weight)


def test_only_a_and_b_train_and_merging_keeps_the_logits():
    layers = tiny_layers()
    frozen = {f"{i}.{n}": p.detach().clone() for i, m in enumerate(layers) for n, p in m.named_parameters()}
    keys = add_lora(layers, LoRAConfig(rank=4, alpha=8, targets=("query_key_value", "dense_4h_to_h")))
    assert all(".lora_A." in k or ".lora_B." in k for k in keys) and len(keys) == 2 * 2 * 2
    train(layers)
    after = {f"{i}.{n}": p for i, m in enumerate(layers) for n, p in m.named_parameters()}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert all(lora.lora_B.weight.abs().max() > 0 for _, _, lora in lora_layers(layers))
    ids = random_ids(320)
    unmerged = logits(NeoXModel(*layers), ids)
    assert merge_lora(layers) == 4 and not list(lora_layers(layers))
    merged = logits(NeoXModel(*layers), ids)
    assert (merged - unmerged).abs().max().item() < TOLERANCE
    # The merged model is `model.py`'s again: its state dict has the checkpoint's names only
    assert not any("lora" in k for m in layers for k in m.state_dict())


# ## Our adapters in peft
@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    r"""A 2-rank gpt-neox checkpoint of a tiny random model with perturbed norms, and its tokenizer."""
    layers = tiny_layers()
    with torch.no_grad():
        for m in layers:
            for name, p in m.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    tokenizer = write_tiny_tokenizer(tmp_path / "20B_tokenizer.json", 300)
    write_checkpoint(tmp_path / "base", layers, tensor_parallel_size=2, tokenizer_path=tokenizer)
    return tmp_path / "base"


def run(*args, timeout=180):
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=REPO)
    return result


def test_an_adapter_trained_by_the_sample_loads_in_peft_with_our_logits(tiny_checkpoint, tmp_path):
    from transformers import GPTNeoXForCausalLM
    text = tmp_path / "text.txt"
    text.write_text("The king sees the queen. The fool fears the ghost. The sword takes the crown.\n" * 60)
    adapter = tmp_path / "adapter"
    result = run(REPO / "samples" / "finetune.py", "--checkpoint", tiny_checkpoint, "--text", text, "--steps", "4",
                 "--out", adapter, "--batch-size", "4", "--seq-len", "16", "--lr", "1e-2", "--device", "cpu",
                 "--train", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1",
                 "--log-dir", tmp_path / "logs")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Training lora" in result.stdout and "Wrote the LoRA adapter" in result.stdout
    assert sorted(p.name for p in adapter.iterdir()) == ["20B_tokenizer.json", "adapter_config.json",
                                                        "adapter_model.safetensors"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_checkpoint.resolve()) and config["r"] == 4

    # The base as transformers reads it (our merge code writes it), and peft's adapter on it
    merge_checkpoint(tiny_checkpoint, tmp_path / "base_hf", format="hf", progress=False)
    hf = GPTNeoXForCausalLM.from_pretrained(tmp_path / "base_hf").eval()
    ids = random_ids(320, length=16)
    base_logits = logits(hf, ids)
    theirs = logits(peft.PeftModel.from_pretrained(hf, adapter).eval(), ids)
    ours = logits(NeoXModel(*LayerLoader(adapter, progress=False).load()), ids)
    # The adapter trained: it moves the logits far more than the tolerance
    assert (theirs - base_logits).abs().max().item() > 100 * TOLERANCE
    assert (ours - theirs).abs().max().item() < TOLERANCE

    # generate.py takes the adapter where a checkpoint goes, and says which base it used
    result = run(REPO / "samples" / "generate.py", "--checkpoint", adapter, "--prompt", "The king",
                 "--max-new-tokens", "3", "--temperature", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LoRA adapter" in result.stderr and "base_model_name_or_path" in result.stderr


# ## peft's adapters in ours
@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    r"""
    An adapter made by peft on a tiny random transformers model (all four targets, rsLoRA off), with $B$ set to
    random numbers as if trained; the base saved as a Hugging Face folder that the adapter names.
    """
    root = tmp_path_factory.mktemp("peft")
    base = make_tiny_hf_model(seed=3, vocab_size=320)
    base.save_pretrained(root / "base")
    write_tiny_tokenizer(root / "base" / "tokenizer.json", 300)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                      task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(root / "adapter")
    config_path = root / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(root / "base")
    config_path.write_text(json.dumps(config))
    ids = random_ids(320, length=16)
    return root, logits(model.eval(), ids), ids


@pytest.mark.parametrize("mode", ["merge", "apply"])
def test_a_peft_adapter_loads_merged_or_applied_with_peft_logits(peft_adapter, mode):
    root, expected, ids = peft_adapter
    loader = LayerLoader(root / "adapter", adapter=mode, progress=False)
    assert "named by its adapter_config.json" in loader.checkpoint.source_note
    modules = list(loader.load())
    assert bool(list(lora_layers(modules))) == (mode == "apply")
    assert (logits(NeoXModel(*modules), ids) - expected).abs().max().item() < TOLERANCE


def test_the_base_can_be_given_instead_of_the_one_the_adapter_names(peft_adapter, tmp_path):
    root, expected, ids = peft_adapter
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes((root / "adapter" / "adapter_model.safetensors").read_bytes())
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "Nobody/nothing"}))
    loader = LayerLoader(adapter, base=root / "base", progress=False)
    assert "given with --base" in loader.checkpoint.source_note
    assert (logits(NeoXModel(*loader.load()), ids) - expected).abs().max().item() < TOLERANCE
    # Without --base, the base it names is reported with the adapter, not as "No checkpoint found"
    with pytest.raises(CheckpointError, match="LoRA adapter over the base model Nobody/nothing"):
        open_checkpoint(adapter)
    config["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="names no base model.*--base"):
        open_checkpoint(adapter)


def test_merge_writes_the_adapter_merged_into_its_base(peft_adapter, tmp_path):
    from transformers import GPTNeoXForCausalLM
    root, expected, ids = peft_adapter
    result = run("-m", "labml_nn.neox.checkpoint", "merge", root / "adapter", tmp_path / "merged", "--format", "hf")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Merging LoRA adapter" in result.stderr
    merged = GPTNeoXForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(merged, ids) - expected).abs().max().item() < TOLERANCE


def test_the_evaluation_loads_an_adapter(peft_adapter):
    import argparse
    from labml_nn.neox.evaluation.__main__ import load_model
    root, expected, ids = peft_adapter
    args = argparse.Namespace(checkpoint=root / "adapter", dtype="fp32", device="cpu", int8=False, int8_threshold=6.0,
                              int8_implementation="reference", trust_pickle=False, revision=None, base=None,
                              tokenizer=None)
    model, tokenizer, _ = load_model(args)
    assert (logits(model, ids) - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "`use_dora: true`"),
    ({"rank_pattern": {"dense": 2}}, "`rank_pattern"),
    ({"modules_to_save": ["embed_out"]}, "`modules_to_save"),
    ({"peft_type": "IA3"}, "only LoRA adapters"),
])
def test_what_we_do_not_compute_is_refused_by_name(peft_adapter, tmp_path, change, message):
    root, _, _ = peft_adapter
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes((root / "adapter" / "adapter_model.safetensors").read_bytes())
    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(adapter)


def test_an_adapter_loads_by_hub_name_and_revision(peft_adapter, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from test_hub import add_to_hub_cache
    root, expected, ids = peft_adapter
    cache = tmp_path / "cache"
    files = {n: (root / "adapter" / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
    add_to_hub_cache(cache, "someone/pythia-tiny-lora", "v1", files, hashlib.sha1(b"v1").hexdigest())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loader = LayerLoader("someone/pythia-tiny-lora", revision="v1", progress=False)
    assert (logits(NeoXModel(*loader.load()), ids) - expected).abs().max().item() < TOLERANCE


def test_an_adapter_folder_without_its_tensors_is_named_as_an_incomplete_adapter(peft_adapter, tmp_path):
    root, _, _ = peft_adapter
    (tmp_path / "adapter_config.json").write_bytes((root / "adapter" / "adapter_config.json").read_bytes())
    with pytest.raises(CheckpointError, match="LoRA adapter's adapter_config.json but not its tensors") as error:
        open_checkpoint(tmp_path)
    assert "No checkpoint found" not in str(error.value)
