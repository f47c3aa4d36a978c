r"""
# The search index, cleaned after the build

Material's search indexes each page's prose, section by section. Two things are wrong with that for this site,
and both are fixed here, on `search/search_index.json`, after the build:

* **Maths is raw LaTeX.** The index holds the maths as the page holds it before KaTeX runs: `\(i + d/2\)`,
  `\[\begin{aligned} ...`. Each formula is turned into plain text that reads in a preview (`θ_i = b^-2i/d`).
* **Code is not searchable.** The code column is not indexed, so a search for `query_key_value` or
  `scaled_dot_product_attention` finds only the prose that mentions it. Each section with code gets an entry
  of its own: the section's first line of code, then the names it uses, pointing at the section.

Annotated pages rank above API pages through each page's `search: boost` (set in its front matter).
"""

from __future__ import annotations

import html
import io
import json
import keyword
import re
import tokenize
from pathlib import Path

_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε", "theta": "θ",
    "lambda": "λ", "mu": "μ", "pi": "π", "sigma": "σ", "tau": "τ", "phi": "φ", "Phi": "Φ", "omega": "ω",
    "Sigma": "Σ", "sum": "Σ", "prod": "Π", "cdot": "·", "times": "×", "le": "≤", "leq": "≤", "ge": "≥",
    "geq": "≥", "ne": "≠", "neq": "≠", "approx": "≈", "infty": "∞", "rightarrow": "→", "to": "→",
    "leftarrow": "←", "odot": "⊙", "top": "ᵀ", "dots": "…", "ldots": "…", "cdots": "…", "in": "∈",
    "mid": "|", "lfloor": "⌊", "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉", "pm": "±", "log": "log", "exp": "exp",
}


def plain_maths(tex: str) -> str:
    """
    A formula (as it stands in the index's HTML) as plain text for a search preview: `\\frac{a}{b}` -> `(a)/(b)`,
    `\\theta` -> `θ`, no braces, no alignment marks.
    """
    tex = html.unescape(tex)
    tex = re.sub(r"\\(begin|end)\{[a-z*]+\}", " ", tex)
    tex = re.sub(r"\\(left|right|big|Big|bigg|Bigg)\b\.?", "", tex)
    tex = re.sub(r"\\(operatorname|text|mathrm|mathbf|mathcal|mathit|textbf|boldsymbol)\s*\{([^{}]*)\}", r"\2", tex)
    for _ in range(3):
        tex = re.sub(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", tex)
        tex = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"√(\1)", tex)
    tex = re.sub(r"\\\\", "; ", tex)
    tex = re.sub(r"\\[,;:! ]|\\q?quad\b", " ", tex)
    tex = re.sub(r"\\([A-Za-z]+)", lambda m: _SYMBOLS.get(m.group(1), m.group(1)), tex)
    tex = tex.replace("&", "").replace("{", "").replace("}", "")
    tex = re.sub(r"\((\w)\)", r"\1", tex)
    return html.escape(re.sub(r"\s+", " ", tex).strip(), quote=False)


_MATHS = re.compile(r"\\\((.*?)\\\)|\\\[(.*?)\\\]|\\begin\{(align\*?|aligned|equation\*?)\}(.*?)\\end\{\3\}", re.S)


def without_latex(text: str) -> str:
    return _MATHS.sub(lambda m: plain_maths(m.group(1) or m.group(2) or m.group(4) or ""), text)


def code_names(lines: list[str]) -> list[str]:
    """The names used in some lines of Python, in order of first use, without keywords and short names."""
    names: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            if tok.type == tokenize.NAME and len(tok.string) > 2 and not keyword.iskeyword(tok.string) \
                    and tok.string not in names:
                names.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        names = sorted(set(re.findall(r"[A-Za-z_]\w{2,}", "\n".join(lines))))
    return names


def clean(config, state) -> None:
    path = Path(config.site_dir) / "search" / "search_index.json"
    if not path.is_file():
        return
    index = json.loads(path.read_text(encoding="utf-8"))
    for doc in index.get("docs", []):
        doc["text"] = without_latex(doc.get("text", ""))
        doc["title"] = without_latex(doc.get("title", ""))
    urls = state.get("urls", {})
    for module in state["modules"]:
        page_url = urls.get(module.page)
        if page_url is None:
            continue
        for section in module.annotated.sections:
            lines = [module.annotated.lines[n - 1] for n in section.code]
            first = next((line.strip() for line in lines if line.strip()), "")
            if not first:
                continue
            where = section.qualname or f"lines {section.code[0]}–{section.code[-1]}"
            index["docs"].append({
                "location": f"{page_url}#{section.anchor}",
                "title": f"{module.title}: {where} (code)",
                "text": f"<code>{html.escape(first)}</code> " + " ".join(code_names(lines)),
            })
    path.write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
