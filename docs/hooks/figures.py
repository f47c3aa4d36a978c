r"""
# Figures, drawn at build time by the project's own code

Each figure runs our modules (the layer, the rotary embedding, the mask, the demo model, the outlier sample's
recorder and plot) or reads the benchmark's result files, and draws the result with matplotlib as SVG. So a
figure cannot drift from the code: change `RotaryEmbedding` and its figure changes with it.

A figure names the module and the symbol (a class, a function, `Class.method`) it sits beside; the hook puts
it in the prose column of the section whose code holds that symbol's `def`, or in a row of its own above that
section (`wide`). A symbol that no longer exists is a warning, which fails `mkdocs build --strict`.

A page's prose can also print numbers its figures' code computes: `{{name}}` in a comment block is replaced by the
value `name` that a function of `figure_makers.VALUES` gives for that module (the tensor-parallel page's logit
errors). A name no function gives is a warning, so a number cannot silently go missing.

Drawing takes seconds (the demo model, a random model with outliers), so each SVG is cached outside the
repository, in `docs-figures/` of the folder where our commands write (`~/.cache/labml-nn-neox`, or
`$LABML_NN_NEOX_HOME`; `cli.output_home`), keyed by a hash of this file, of `figure_makers.py` and of every file
the figure reads: a warm build only reads the cache.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import figure_makers

log = logging.getLogger("mkdocs.hooks.annotate")


def _cache_folder() -> Path:
    from labml_nn.neox.cli import output_home
    return output_home("docs-figures")


@dataclass
class Figure:
    name: str           # `rope-pairs`: the file is `figures/rope-pairs.svg`
    module: str         # the page it is on, as a source path
    symbol: str         # the class, function or `Class.method` it sits beside
    alt: str            # what the figure shows, for those who cannot see it
    caption: str        # HTML
    wide: bool = False  # a row of its own, across both columns
    svg: str = ""

    @property
    def src_uri(self) -> str:
        return f"figures/{self.name}.svg"


def _cache_key(root: Path, depends: tuple) -> str:
    digest = hashlib.sha256()
    for path in (Path(__file__), *sorted(Path(figure_makers.__file__).parent.glob("figure_makers*.py"))):
        digest.update(path.read_bytes())
    for name in depends:
        for path in sorted((root / name).rglob("*")) if (root / name).is_dir() else [root / name]:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _draw(root: Path, make) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # `mkdocs serve` rebuilds in the same process: drop the package's modules imported for an earlier figure,
    # so that a figure is drawn by the code as it is now, not as it was when the server started
    for name in [m for m in sys.modules if m == "labml_nn" or m.startswith("labml_nn.")]:
        del sys.modules[name]
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "annotated-neox", "font.size": 10,
                         "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False}):
        fig = make(root)
        if isinstance(fig, str):  # SVG some other code already wrote
            return fig
        out = io.StringIO()
        fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    return out.getvalue()


def _anchor(module, symbol: str) -> str | None:
    """The anchor of the section whose code holds `symbol`'s `def`/`class` line (or whose docstring it is)."""
    import ast

    for section in module.annotated.sections:
        if section.qualname == symbol:
            return section.anchor
    tree = ast.parse("\n".join(module.annotated.lines))

    def find(body, names):
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == names[0]:
                return node if len(names) == 1 else find(node.body, names[1:])
        return None

    node = find(tree.body, symbol.split("."))
    if node is None:
        return None
    for section in module.annotated.sections:
        if node.lineno in section.code:
            return section.anchor
    return None


def place(root: Path, modules) -> dict:
    """Draw (or read from the cache) every figure whose module exists: `{module path: {anchor: [Figure]}}`."""
    by_path = {m.path: m for m in modules}
    placed: dict = {}
    problems = []
    for spec in figure_makers.FIGURES:
        figure = Figure(spec["name"], spec["module"], spec["symbol"], spec["alt"], spec["caption"],
                        spec.get("wide", False))
        module = by_path.get(figure.module)
        if module is None:
            log.info(f"figure {figure.name}: {figure.module} is not in this project; not drawn")
            continue
        anchor = _anchor(module, figure.symbol)
        if anchor is None:
            problems.append(f"figure {figure.name}: {figure.module} has no `{figure.symbol}` any more; point the "
                            f"figure at the symbol it illustrates (docs/hooks/figure_makers.py, FIGURES)")
            continue
        cache = _cache_folder() / f"{figure.name}-{_cache_key(root, spec['depends'])}.svg"
        if cache.is_file():
            figure.svg = cache.read_text(encoding="utf-8")
        else:
            try:
                figure.svg = _draw(root, spec["make"])
            except Exception as e:  # a figure that cannot be drawn is reported, the build goes on
                problems.append(f"figure {figure.name} ({figure.module}, {figure.symbol}) could not be drawn: "
                                f"{type(e).__name__}: {e}")
                continue
            cache.parent.mkdir(parents=True, exist_ok=True)
            for old in cache.parent.glob(f"{figure.name}-*.svg"):
                old.unlink()
            cache.write_text(figure.svg, encoding="utf-8")
        placed.setdefault(figure.module, {}).setdefault(anchor, []).append(figure)
    return {"placed": placed, "problems": problems, "values": _values(root, by_path, problems)}


def _values(root: Path, by_path: dict, problems: list) -> dict:
    """`{module path: {name: text}}` from `figure_makers.VALUES`, cached like the figures."""
    import json

    values: dict = {}
    for spec in figure_makers.VALUES:
        if spec["module"] not in by_path:
            continue
        name = spec["make"].__name__
        cache = _cache_folder() / f"values-{name}-{_cache_key(root, spec['depends'])}.json"
        if cache.is_file():
            found = json.loads(cache.read_text(encoding="utf-8"))
        else:
            try:
                found = _compute(root, spec["make"])
            except Exception as e:
                problems.append(f"values {name} ({spec['module']}) could not be computed: {type(e).__name__}: {e}")
                continue
            cache.parent.mkdir(parents=True, exist_ok=True)
            for old in cache.parent.glob(f"values-{name}-*.json"):
                old.unlink()
            cache.write_text(json.dumps(found, indent=1), encoding="utf-8")
        values.setdefault(spec["module"], {}).update(found)
    return values


def _compute(root: Path, make) -> dict:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "labml_nn" or m.startswith("labml_nn.")]:
        del sys.modules[name]
    return {k: str(v) for k, v in make(root).items()}


_VALUE = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


def fill_values(text: str, values: dict, where: str) -> str:
    """`{{name}}` in a page's prose replaced by its computed value; an unknown name is a warning."""
    def one(m):
        if m.group(1) in values:
            return f'<span class="ann-value" title="computed while building the site">{values[m.group(1)]}</span>'
        log.warning(f"{where}: no computed value `{m.group(1)}` (docs/hooks/figure_makers*.py, VALUES)")
        return m.group(0)
    return _VALUE.sub(one, text)


def add_files(files, config, figures: dict) -> None:
    from mkdocs.structure.files import File

    for problem in figures["problems"]:
        log.warning(problem)
    for by_anchor in figures["placed"].values():
        for placed in by_anchor.values():
            for figure in placed:
                files.append(File.generated(config, figure.src_uri, content=figure.svg))


def figure_html(figure: Figure, src: str, values: dict | None = None) -> str:
    # the caption's `{{name}}` are the module's computed values; its `$...$` is marked for KaTeX as arithmatex
    # marks the pages' maths
    caption = fill_values(figure.caption, values or {}, f"figure {figure.name}'s caption")
    caption = re.sub(r"\$([^$]+)\$", lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', caption)
    width = legible_width(figure.svg)
    style = f' style="min-width: {width}px"' if width else ""
    return (f'<figure class="ann-figure{" ann-figure-wide" if figure.wide else ""}" id="figure-{figure.name}">'
            f'<a href="{src}" title="Open the figure on its own"><img src="{src}" alt="{html.escape(figure.alt)}"'
            f"{style}></a><figcaption>{caption}</figcaption></figure>")


# ## Text that stays legible
#
# An SVG in an `<img>` is scaled to the width it is shown at, its text with it: text of $f$ units in a figure
# $W$ units wide, shown $w$ px wide, is $f w / W$ px tall. So the smallest text reads at 10 px or more when
# $w \ge 10 W / f_{\min}$, plus the image's padding (`annotate.css`). The figure is never shown narrower than
# that: on a narrow screen it keeps that width and scrolls sideways in its own box (`figures.js` marks it, and
# the caption says so), where shrinking it would make the text unreadable.
MIN_TEXT_PX = 10
PADDING_PX = 12


def legible_width(svg: str) -> int:
    view = re.search(r'viewBox="[-\d.]+ [-\d.]+ ([\d.]+) [\d.]+"', svg)
    sizes = [float(m) for m in re.findall(r"font-size:\s*([\d.]+)px", svg)]
    sizes += [float(m) for m in re.findall(r"font:[^;\"]*?([\d.]+)px", svg)]
    if not view or not sizes:
        return 0
    return math.ceil(MIN_TEXT_PX * float(view.group(1)) / min(sizes)) + PADDING_PX
