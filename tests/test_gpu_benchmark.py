r"""
`benchmarks/gpu.py` is written for a CUDA machine that the tests never have; its `--device cpu --tiny` mode runs
the same code paths (decode timing against transformers with the same greedy tokens, the static decoding
step's rows, LLM.int8, fine-tuning under autocast, the evaluation adapter) on tiny shapes, so that the script is known to run before a GPU is
lent. (`test_cli_help.py` checks its help texts.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_tiny_mode_runs_every_section_and_writes_one_table(tmp_path):
    out = tmp_path / "gpu.md"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--output", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["failed"] == []
    sections = {row[0] for row in record["rows"]}
    assert {"decode batch 1", "decode batch 8", "LLM.int8", "fine-tuning", "evaluation"} <= sections
    # Greedy tokens equal transformers' at both batch sizes, and batched generate_until equals one at a time
    decode = [row for row in record["rows"] if row[1] == "decode tokens/s"]
    assert len(decode) == 2 and all("same tokens as transformers: True" in row[4] for row in decode)
    # The static step's rows (uncompiled on a CPU): its tokens are ours, and its compile time is reported
    static = [row for row in record["rows"] if row[1] == "decode tokens/s, static step, eager"]
    assert len(static) == 2 and all("same tokens as ours eager: True" in row[4] for row in static)
    assert sum(row[1].startswith("compile and capture (s)") for row in record["rows"]) == 2
    assert any("same texts as one at a time: True" in row[4] for row in record["rows"])
    table = out.read_text()
    assert table.splitlines()[2].startswith("| section | measure |") and table in result.stdout + "\n"



def _load(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Where greedy tokens differ, the first differing step is judged in fp32: a pick that is fp32's second choice by
# less than the two programs' distance is a near-tie; a pick far down fp32's order is not, and fails the section
def test_differing_tokens_are_judged_by_the_fp32_margin_at_the_first_difference():
    import copy

    import torch
    from helpers import make_tiny_hf_model, our_model_from_hf, random_ids

    gpu, ties = _load("gpu"), _load("fp16_ties")
    hf = make_tiny_hf_model(seed=41)
    ours = our_model_from_hf(hf)
    prompts = random_ids(96, batch=2, length=5)
    tokens = torch.stack([torch.tensor([1, 2, 3, 4])] * 2)
    assert gpu.same_tokens_note("x", tokens, tokens.clone(), prompts, ours, hf, torch.float32) == \
        ("same tokens as x: True", True)
    # Row 1 differs at step 2; the context's fp32 logits order the candidates
    with torch.inference_mode():
        order = ours(torch.cat([prompts[1], tokens[1, :2]])[None])[0, -1].argsort(descending=True)
    far, second = tokens.clone(), tokens.clone()
    tokens[1, 2], far[1, 2], second[1, 2] = order[0], order[40], order[1]
    note, tie = gpu.same_tokens_note("transformers", tokens, far, prompts, ours, hf, torch.float32)
    assert not tie and "1 of 2 rows" in note and "ranks 1/41" in note and "NOT near-ties" in note
    # fp32's first and second choice, with a second model far enough from the first that the margin is within
    # their distance: a near-tie
    shifted = copy.deepcopy(ours)
    with torch.no_grad():
        shifted[-1].final_linear.weight.add_(0.5 * torch.randn_like(shifted[-1].final_linear.weight))
    check = ties.divergence(prompts[1], tokens[1], second[1], ours, ours, shifted, torch.float32)
    assert check["step"] == 2 and check["ranks"] == (1, 2) and check["near_tie"]
    assert check["margin"] > 0 and check["ulp"] == 2.0 ** (torch.tensor(abs(check["top1"])).log2().floor().item() - 23)
