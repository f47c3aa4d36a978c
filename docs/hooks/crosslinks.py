r"""
# Links between pages, made from the code's own symbols

Prose mentions our modules, classes and functions as code: `KVCache`, `LayerLoader`, `config.py`,
`cpu_decoding.py`, `Checkpoint.parts()`. Nobody keeps a list of what these should link to: the index below is
built at every build from the sources themselves (`ast`), so a class that moves to another file is linked to its
new home, and a renamed one stops being linked.

* **Symbols.** Every public top-level class and function, and every public method as `Class.method`, points to
  the section of the annotated page whose code holds its `class`/`def` line. A name defined in two modules is
  ambiguous and is not linked.
* **Files.** A module is found by its path, by any tail of it that names one file only (`model.py`,
  `cpu_decoding.py`, `checkpoint/`), or by its dotted name (`labml_nn.neox.cpu_decoding`).
* **Imports.** What a module imports from the package is what it builds on; the page says so at its top.

Only inline code in prose is linked (not code blocks, not headings, not text already inside a link), and a
section does not link to itself.
"""

from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    path: str            # source path of the module, `labml_nn/neox/model.py`
    anchor: str | None   # the section, `src-Attention`; None for the top of the page


def _defined(tree: ast.Module) -> list[tuple[str, int]]:
    """(qualified name, line of its `def`/`class`) of public top-level definitions and of their public methods."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            found.append((node.name, node.lineno))
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.name.startswith("_"):
                        found.append((f"{node.name}.{member.name}", member.lineno))
    return found


def _section_at(module, line: int) -> str | None:
    for section in module.annotated.sections:
        if line in section.code:
            return section.anchor
    return None


def build_index(modules) -> dict[str, Target]:
    """Name as written in prose -> where it is explained. Ambiguous names are left out."""
    candidates: dict[str, set[Target]] = {}

    def add(name: str, target: Target):
        candidates.setdefault(name, set()).add(target)

    for m in modules:
        # files: every tail of the path, the folder of a package, the dotted name
        parts = m.path.split("/")
        for i in range(len(parts)):
            add("/".join(parts[i:]), Target(m.path, None))
        if parts[-1] == "__init__.py":
            folder = parts[:-1]
            for i in range(len(folder)):
                add("/".join(folder[i:]) + "/", Target(m.path, None))
        if m.path.startswith("labml_nn/"):
            add(m.dotted, Target(m.path, None))
        try:
            tree = ast.parse("\n".join(m.annotated.lines))
        except SyntaxError:
            continue
        for name, line in _defined(tree):
            if m.path.startswith("labml_nn/") or name not in ("main",):
                add(name, Target(m.path, _section_at(m, line)))
    # a name defined in a sample and in the package means the package's
    index = {}
    for name, targets in candidates.items():
        package = {t for t in targets if t.path.startswith("labml_nn/")}
        chosen = package if package and len(targets) > 1 else targets
        if len(chosen) == 1:
            index[name] = next(iter(chosen))
    return index


def imports(module, known: set[str]) -> list[str]:
    """Source paths of the package's modules that `module` imports, in the order of first import."""
    try:
        tree = ast.parse("\n".join(module.annotated.lines))
    except SyntaxError:
        return []
    here = module.dotted if module.path.endswith("__init__.py") else module.dotted.rpartition(".")[0]
    found: list[str] = []

    def add(dotted: str):
        for candidate in (dotted.replace(".", "/") + ".py", dotted.replace(".", "/") + "/__init__.py"):
            if candidate in known and candidate != module.path and candidate not in found:
                found.append(candidate)
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                # `from labml_nn.neox.checkpoint import merge` imports a module; `import X` from one is a name
                if not add(f"{base}.{alias.name}"):
                    add(base)
    return found


_CODE = re.compile(r"<code>([^<]{2,80})</code>")
# regions whose inline code is not linked: links, headings, code blocks, maths, the hook's own tools
_SKIP = re.compile(r"<a\b.*?</a>|<h[1-6]\b.*?</h[1-6]>|<pre\b.*?</pre>|<(span|div) class=\"arithmatex\">.*?</\1>",
                   re.S)


def _lookup(text: str, index: dict[str, Target]) -> Target | None:
    text = html.unescape(text).strip()
    name = re.sub(r"\(.*\)$", "", text) if re.fullmatch(r"[\w.]+\(.*\)", text) else text
    return index.get(name)


def link_code(html_text: str, index: dict[str, Target], url_of, here: tuple[str, str | None]) -> tuple[str, set[str]]:
    """
    Wrap inline code that names one of our symbols or files in a link. `url_of(target)` gives the href;
    `here` is (module path, section anchor) of the text, which is not linked to itself. Returns the new HTML and
    the module paths linked to.
    """
    linked: set[str] = set()

    def replace(match):
        target = _lookup(match.group(1), index)
        if target is None or (target.path == here[0] and target.anchor in (here[1], None)):
            return match.group(0)
        linked.add(target.path)
        return f'<a class="ann-xref" href="{url_of(target)}">{match.group(0)}</a>'

    out, last = [], 0
    for skip in _SKIP.finditer(html_text):
        out.append(_CODE.sub(replace, html_text[last:skip.start()]))
        out.append(skip.group(0))
        last = skip.end()
    out.append(_CODE.sub(replace, html_text[last:]))
    return "".join(out), linked

