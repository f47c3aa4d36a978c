r"""
The copy-out promise of `model.py`, `config.py` and the README: copy exactly those two files into an empty
folder, and they import and run, a forward pass with a KV cache included, with nothing of our package on the
path.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import labml_nn.neox

PACKAGE = Path(labml_nn.neox.__file__).parent

# Run in a fresh interpreter whose path holds the folder (the script's own) and the interpreter's site-packages
# (for torch), without PYTHONPATH (which points at our package while testing) and without the user's site
SCRIPT = r"""
import sys
# Our package may be installed in the interpreter's site-packages (an editable install): make it unimportable,
# as it is on a machine that has only the two files
sys.modules["labml_nn"] = None
import torch
import config, model
cfg = config.NeoXConfig(n_layers=2, d_model=32, n_heads=4, n_vocab=64, n_ctx=32, rotary_pct=0.5)
torch.manual_seed(0)
neox = model.NeoXModel(*model.build_layers(cfg)).eval()
ids = torch.randint(0, 64, (2, 6))
with torch.no_grad():
    full = neox(ids)
    cache = model.KVCache(max_len=6)
    x = neox(ids[:, :4], cache)
    y = neox(ids[:, 4:], cache)
    assert cache.offset == 6
error = (torch.cat([x, y], dim=1) - full).abs().max().item()
assert error < 1e-5, error
print("ok", error)
"""


def test_model_and_config_alone_run_a_cached_forward_pass(tmp_path):
    for name in ("model.py", "config.py"):
        shutil.copy(PACKAGE / name, tmp_path / name)
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-s", "run.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
