r"""
# Config keys against transformers: what each computes, and what ignoring it would cost

Issue 12 listed config keys that loaded without error and computed something else. This script measures, on
the demo model (`labml_nn/neox/demo/`, trained, so the figures are those of a real model rather than of random
weights), for each key: the largest logit difference between our model and transformers' `GPTNeoXForCausalLM`
on the same weights with the key set, and the difference had the key been ignored (what this project computed
before). Transformers' reading of `config.json` is the reference for the Hugging Face keys; for gpt-neox's
keys the reference is transformers on the equivalent weights (for `gpt_j_tied`, `post_attention_layernorm`
replaced by a copy of `input_layernorm`, which is what gpt-neox computes).

```
python benchmarks/config_keys.py        # about a minute on a CPU
```

It prints one markdown row per key (the table in `benchmarks/RESULTS.md`): fp32, 2 sequences of 300 random
tokens (longer than the demo's 256-token context, so that linear RoPE scaling matters).
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from labml_nn.neox.checkpoint.convert import merge_checkpoint
from labml_nn.neox.loader import LayerLoader
from labml_nn.neox.model import NeoXModel
from labml_nn.neox.cli import DEMO_CHECKPOINT

IDS = torch.randint(0, 4096, (2, 300), generator=torch.Generator().manual_seed(0))


def ours(path) -> torch.Tensor:
    with torch.no_grad():
        return NeoXModel(*LayerLoader(path, progress=False).load())(IDS)


def theirs(path, **state_changes) -> torch.Tensor:
    import transformers
    model = transformers.GPTNeoXForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    if state_changes:
        state = model.state_dict()
        model.load_state_dict({**state, **{k: state[v].clone() for k, v in state_changes.items()}})
    with torch.no_grad():
        return model(IDS).logits


def error(a, b) -> float:
    return (a - b).abs().max().item()


# A copy of the demo (gpt-neox layout) with some YAML keys changed, or of its HF export with `config.json` changed
def neox_copy(tmp: Path, name: str, **keys) -> Path:
    out = tmp / name
    shutil.copytree(DEMO_CHECKPOINT, out)
    config = next((out / "configs").glob("*.yml"))
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **keys}))
    return out


ROTARY_KEYS = ("rope_parameters", "rope_scaling", "rotary_pct", "rotary_emb_base")


def hf_copy(hf: Path, tmp: Path, name: str, **keys) -> Path:
    out = tmp / name
    shutil.copytree(hf, out)
    config = {k: v for k, v in json.loads((hf / "config.json").read_text()).items() if k not in ROTARY_KEYS}
    (out / "config.json").write_text(json.dumps({**config, **keys}))
    return out


def main(argv=None):
    # No options: `--help` says what the script does instead of starting it
    argparse.ArgumentParser(description="For each config key that changes the computation: our logit error "
                                        "against transformers on the demo model, and the error had the key been "
                                        "ignored. Prints a markdown table.").parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    hf = tmp / "hf"
    merge_checkpoint(DEMO_CHECKPOINT, hf, format="hf", dtype="float32", progress=False)
    n_layers = json.loads((hf / "config.json").read_text())["num_hidden_layers"]
    rows = []

    # gpt_j_tied: transformers' equivalent has the first norm in the second's place
    tied = {f"gpt_neox.layers.{i}.post_attention_layernorm.{p}": f"gpt_neox.layers.{i}.input_layernorm.{p}"
            for i in range(n_layers) for p in ("weight", "bias")}
    reference = theirs(hf, **tied)
    rows.append(("`gpt_j_tied: true`", error(ours(neox_copy(tmp, "tied", gpt_j_tied=True)), reference),
                 error(ours(DEMO_CHECKPOINT), reference)))

    # mlp.linear1 / mlp.linear2 (refused before, so no "ignored" figure)
    linear = neox_copy(tmp, "linear")
    for f in (linear / "global_step0").glob("layer_*-model_*-model_states.pt"):
        tensors = torch.load(f, weights_only=True)
        torch.save({k.replace("dense_h_to_4h", "linear1").replace("dense_4h_to_h", "linear2"): v
                    for k, v in tensors.items()}, f)
    reference = theirs(hf)
    rows.append(("`mlp.linear1` / `mlp.linear2` names", error(ours(linear), reference), "refused"))

    # FFN width keys (ignored before: any width but 4C failed, blaming `hidden_size`) and key-value heads equal
    # to the heads (refused before)
    width = neox_copy(tmp, "width", expansion_factor=4, mlp_multiple_of=256)
    rows.append(("`expansion_factor: 4`, `mlp_multiple_of: 256`", error(ours(width), reference), "ignored"))
    rows.append(("`num_kv_heads: 8` (the heads)", error(ours(neox_copy(tmp, "kv", num_kv_heads=8)), reference),
                 "refused"))

    # Rotary keys of config.json; "ignored" is what the old reader took: no scaling, rotary 1.0, rope_parameters
    plain = hf_copy(hf, tmp, "plain", rotary_pct=0.25, rotary_emb_base=10000)
    full = hf_copy(hf, tmp, "full", rotary_pct=1.0, rotary_emb_base=10000)
    cases = [
        ("4.x `rope_scaling: {type: linear, factor: 2}`",
         dict(rotary_pct=0.25, rotary_emb_base=10000, rope_scaling={"type": "linear", "factor": 2.0}), plain),
        ("5.x `rope_parameters: {rope_type: linear, factor: 2}`",
         dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0,
                               "partial_rotary_factor": 0.25}), plain),
        ("no rotary key (transformers: 0.25)", {}, full),
        ("both `rope_scaling` (linear 2) and `rope_parameters`",
         dict(rope_scaling={"type": "linear", "factor": 2.0},
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}), plain),
    ]
    for i, (name, keys, old_reading) in enumerate(cases):
        folder = hf_copy(hf, tmp, f"rotary{i}", **keys)
        reference = theirs(folder)
        rows.append((name, error(ours(folder), reference), error(ours(old_reading), reference)))

    print("| key | ours vs transformers | the key ignored |")
    print("|---|---|---|")
    for name, now, before in rows:
        print(f"| {name} | {now:.2g} | {before if isinstance(before, str) else f'{before:.3g}'} |")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
