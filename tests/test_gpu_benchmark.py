r"""
`benchmarks/gpu.py` is written for a CUDA machine that the tests never have; its `--device cpu --tiny` mode runs
the same code paths (decode timing against transformers with the same greedy tokens, LLM.int8, fine-tuning
under autocast, the evaluation adapter) on tiny shapes, so that the script is known to run before a GPU is
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
    assert all("same tokens: True" in row[4] for row in record["rows"] if row[1] == "decode tokens/s")
    assert any("same texts as one at a time: True" in row[4] for row in record["rows"])
    table = out.read_text()
    assert table.splitlines()[2].startswith("| section | measure |") and table in result.stdout + "\n"

