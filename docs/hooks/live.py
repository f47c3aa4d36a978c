r"""
# The live widgets, and the demo model they run, placed at build time

The site's live parts (`docs/javascripts/live/`) are widgets that bring a section of code to life: generation
beside `sample_next`, the tokenizer beside `tokenizer.py`, attention beside `Attention.forward`, the memory
calculator beside the model's sizes. As a figure does (`figures.py`), a widget names the module and the symbol it
sits beside, and the hook puts it in a row of its own above that section; a page of `docs/` places one with a line
`<!--live:generate-->`. Each widget is a `<div class="neox-live" data-widget="...">` holding one sentence for
readers without JavaScript; `main.js` replaces that sentence with the widget.

What the widgets run is built here, not committed:

* **the demo model as ONNX**, exported by `labml_nn/neox/onnx_export.py` (fp16 weights, computed in fp32, with
  the attention probabilities for the attention widget) into `live/demo/` of the site: `config.json`,
  `tokenizer.json`, `tokenizer_config.json`, `onnx/model.onnx`. Exporting takes tens of seconds, so the folder
  is cached outside the repository, in `docs-live-model/` of the folder where our commands write
  (`~/.cache/labml-nn-neox`, or `$LABML_NN_NEOX_HOME`; beside the figures' cache), keyed by a hash of the
  files it is made from;
* **the table of model sizes** for the memory calculator, `live/memory.json`, from `labml_nn/neox/memory.py`, so
  that the page's numbers are Python's.

ONNX Runtime Web and the tokenizer library are vendored in `docs/assets/` (`scripts/vendor_js.py`), so a build
needs no npm and no network: `pip install -e ".[docs]"` (which brings `onnx` and `onnxscript` for the export)
is enough. A project without the demo or the exporter (the tests' fixture site) gets no model and no widget that
needs one.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import figures

log = logging.getLogger("mkdocs.hooks.annotate")

DEMO = "labml_nn/neox/demo"
CACHE_NAME = "docs-live-model"
SITE_FOLDER = "live/demo"

# name (the widget's module, `docs/javascripts/live/<name>.js`), where it sits, and whether it needs the model
WIDGETS = [
    dict(name="generate", module="labml_nn/neox/generation.py", symbol="sample_next", needs="model"),
    dict(name="tokenize", module="labml_nn/neox/tokenizer.py", symbol="encode", needs="model"),
    dict(name="attention", module="labml_nn/neox/model.py", symbol="Attention.attend", needs="model"),
    dict(name="memory", module="labml_nn/neox/model.py", symbol="NeoXModel", needs="memory"),
    dict(name="memory", module="labml_nn/neox/memory.py", symbol="fits", needs="memory"),
]

NO_SCRIPT = {
    "generate": "A live demo goes here: the demo model generating from your prompt, in this browser, with the "
                "next-token distribution moving as you move the temperature and top-p. It needs JavaScript.",
    "tokenize": "A live tokenizer goes here: your text as the demo's BPE tokens and ids. It needs JavaScript.",
    "attention": "A live map goes here: the demo model's attention on your sentence, any layer and head. It "
                 "needs JavaScript; the figure above shows the same maps on a line of Macbeth.",
    "memory": "A memory calculator goes here: weights, key-value cache and activations of Pythia and "
              "GPT-NeoX-20B at any batch and context. It needs JavaScript.",
}


def widget_html(name: str) -> str:
    return (f'<div class="neox-live" data-widget="{name}" data-search-exclude>'
            f'<p class="neox-live-note">{html.escape(NO_SCRIPT[name])}</p></div>')


# ## The demo as ONNX, exported once and cached

# How the demo is exported; the cache key holds these and the files the export reads
EXPORT = dict(with_attentions=True, weights_dtype="fp16")


def _cache_key(root: Path) -> str:
    digest = hashlib.sha256(repr(sorted(EXPORT.items())).encode())
    for name in (DEMO, "labml_nn/neox/onnx_export.py", "labml_nn/neox/model.py", "labml_nn/neox/config.py",
                 "labml_nn/neox/loader.py"):
        path = root / name
        for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if p.is_file() and "__pycache__" not in p.parts:
                digest.update(p.relative_to(root).as_posix().encode())
                digest.update(p.read_bytes())
    return digest.hexdigest()[:16]


def export_demo(root: Path) -> tuple[Path | None, str | None]:
    """The exported demo folder (from the cache, or exported now), or None and why (a problem is a warning)."""
    if not (root / DEMO).is_dir() or not (root / "labml_nn/neox/onnx_export.py").is_file():
        log.info("live model: no demo checkpoint or no onnx_export.py in this project; no live model")
        return None, None
    from labml_nn.neox.cli import output_home
    folder = output_home(CACHE_NAME) / _cache_key(root)
    if (folder / "onnx" / "model.onnx").is_file():
        return folder, None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "labml_nn" or m.startswith("labml_nn.")]:
        del sys.modules[name]
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        import torch
        from labml_nn.neox.loader import LayerLoader
        from labml_nn.neox.model import NeoXModel
        from labml_nn.neox.onnx_export import export_onnx

        model = NeoXModel(*LayerLoader(root / DEMO, dtype=torch.float32, device="cpu").load()).eval()
        log.info("live model: exporting the demo to ONNX (cached in " + str(folder.parent) + ")")
        export_onnx(model, partial, tokenizer_path=root / DEMO / "20B_tokenizer.json", **EXPORT)
    except Exception as e:  # the site builds without its live model, and says why
        shutil.rmtree(partial, ignore_errors=True)
        return None, (f"live model: exporting the demo to ONNX failed ({type(e).__name__}: {e}); the widgets that "
                      f"run the model are left out. `pip install -e \".[docs]\"` brings onnx and onnxscript.")
    for old in folder.parent.glob("*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.rename(folder)
    return folder, None


def memory_table(root: Path) -> tuple[str | None, str | None]:
    r"""
    `live/memory.json`, the calculator's numbers, all from `memory.py`: for each of `KNOWN_MODELS` its parameters,
    its weights' bytes in each dtype, and the bytes of the key-value cache and of the activations for one token of
    one sequence (both are that times `batch * tokens` in `kv_cache_bytes` and `activation_bytes`); and `GPUS`. The
    page multiplies and adds; it restates no size and no formula.
    """
    if not (root / "labml_nn/neox/memory.py").is_file():
        log.info("live model: no labml_nn/neox/memory.py in this project; no memory calculator")
        return None, None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import importlib

        memory = importlib.import_module("labml_nn.neox.memory")
        dtypes = ["fp32", "fp16", "int8"]
        models = {name: {"parameters": memory.parameter_count(config), "n_ctx": config.n_ctx,
                         "weights": {d: memory.weight_bytes(config, d) for d in dtypes},
                         "kv_cache_per_token": {d: memory.kv_cache_bytes(config, 1, 1, d) for d in dtypes},
                         "activations_per_token": {d: memory.activation_bytes(config, 1, 1, d) for d in dtypes}}
                  for name, config in memory.KNOWN_MODELS.items()}
        return json.dumps({"dtypes": dtypes, "models": models, "gpus": memory.GPUS, "GB": memory.GB}), None
    except Exception as e:
        return None, f"live model: labml_nn/neox/memory.py gave no table ({type(e).__name__}: {e})"


# ## Placing the widgets

def prepare(root: Path, modules) -> dict:
    demo, problem = export_demo(root)
    table, table_problem = memory_table(root)
    available = {"model": demo is not None, "memory": table is not None}
    by_path = {m.path: m for m in modules}
    placed: dict = {}
    problems = [p for p in (problem, table_problem) if p]
    for spec in WIDGETS:
        module = by_path.get(spec["module"])
        if module is None or not available[spec["needs"]]:
            continue
        anchor = figures._anchor(module, spec["symbol"])
        if anchor is None:
            problems.append(f"live widget {spec['name']}: {spec['module']} has no `{spec['symbol']}` any more; "
                            f"point it at the symbol it brings to life (docs/hooks/live.py, WIDGETS)")
            continue
        placed.setdefault(spec["module"], {}).setdefault(anchor, []).append(spec["name"])
    return {"demo": demo, "memory": table, "available": available, "placed": placed, "problems": problems}


def add_files(files, config, live: dict) -> None:
    from mkdocs.structure.files import File

    for problem in live["problems"]:
        log.warning(problem)
    if live["demo"] is not None:
        for path in sorted(live["demo"].rglob("*")):
            if path.is_file():
                uri = f"{SITE_FOLDER}/{path.relative_to(live['demo']).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    if live["memory"] is not None:
        files.append(File.generated(config, "live/memory.json", content=live["memory"]))


def module_page(html_text: str, module_path: str, live: dict) -> str:
    """Each widget of the module in a row of its own above the section it brings to life."""
    for anchor, names in live["placed"].get(module_path, {}).items():
        row = "".join(f'<div class="neox-live-row">{widget_html(n)}</div>' for n in names)
        html_text = re.sub(r'(<div class="ann-section[^"]*" id="' + re.escape(anchor) + '")',
                           lambda m: row + m.group(1), html_text, count=1)
    return html_text


_MARK = re.compile(r"(?:<p>)?<!--live:(\w+)-->(?:</p>)?")


def docs_page(html_text: str, live: dict, where: str) -> str:
    """A page of `docs/` places a widget with a line `<!--live:NAME-->`."""
    def replace(match):
        name = match.group(1)
        spec = next((s for s in WIDGETS if s["name"] == name), None)
        if spec is None:
            log.warning(f"{where}: <!--live:{name}--> names no widget (docs/hooks/live.py, WIDGETS)")
            return ""
        return widget_html(name) if live["available"][spec["needs"]] else ""

    return _MARK.sub(replace, html_text)
