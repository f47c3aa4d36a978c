r"""
# Annotated side-by-side pages, generated at build time

An mkdocs hook (registered under `hooks:` in `mkdocs.yml`). On every build it

* reads every `.py` file of `labml_nn/neox/` (recursively) and of `samples/`, splits each into sections of
  prose (a docstring or a run of `#` comments, rendered as Markdown) and the code that prose explains, and adds
  one generated page per module (`File.generated`, nothing is written into `docs/`);
* adds one API reference page per module with public classes or functions (`::: labml_nn.neox.model.X`
  blocks, rendered by mkdocstrings), cross-linked both ways with the annotated page;
* builds the navigation (home, package, samples, API reference), mirroring the package's folders;
* appends a list of every module page to the home page, and unlinks links of the home page's module map that
  point at modules which do not exist yet.

Python is read with `tokenize` and `ast`, never with regular expressions, so a `#` inside a string, a string
that looks like a comment, or closing triple quotes on a line of text cannot be mistaken for prose. The code
column is highlighted with Pygments once per file (so multi-line strings are coloured correctly) and carries
the real source line numbers.

The parser (`parse`) has no mkdocs dependency; `tests/test_docs_site.py` tests it directly.
"""

from __future__ import annotations

import ast
import html
import inspect
import io
import logging
import os
import posixpath
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.annotate")

# What gets pages: (folder relative to the repository root, recursive?)
SOURCE_ROOTS = (("labml_nn/neox", True), ("samples", False))
API_PREFIX = "reference"


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Section:
    """One block of prose (Markdown) and the source lines (1-based numbers) of the code beside it."""
    prose: str = ""
    code: list[int] = field(default_factory=list)
    # `Class.method` when the prose is a class/def docstring (or starts with one)
    qualname: str | None = None
    # dotted path below the module, for the API reference; None when the object is not public
    api_path: str | None = None
    anchor: str = ""
    # the first source line of the section, prose included
    first_line: int = 0


@dataclass
class Annotated:
    intro: str
    sections: list[Section]
    lines: list[str]
    syntax_error: str | None = None


@dataclass
class _Docstring:
    start: int          # first line of the string literal
    end: int            # last line of the string literal
    header_start: int   # first decorator, or the `def`/`class` line; 0 for the module docstring
    text: str
    qualname: str | None
    api_path: str | None


# A comment on line 1 or 2 that declares the encoding (PEP 263), or that is a tool's pragma, is code, not prose.
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")
_PRAGMA = re.compile(r"^#\s*(noqa|type:|pragma|fmt:|pylint:|isort:|mypy:|ruff:|pyright:)")


def _docstrings(tree: ast.Module, lines: list[str]) -> list[_Docstring]:
    """Docstrings of the module, and of every class and function (nested ones too) that can be shown as prose."""
    found: list[_Docstring] = []

    def clean_literal(expr: ast.expr) -> bool:
        # Only whitespace before the literal and nothing but whitespace after it: otherwise the line holds code
        # too (`def f(): "doc"`, `"doc"; x = 1`) and stays in the code column.
        before = lines[expr.lineno - 1][: expr.col_offset]
        after = lines[expr.end_lineno - 1][expr.end_col_offset:]
        return before.strip() == "" and after.strip() == ""

    def docstring_expr(node) -> ast.expr | None:
        body = getattr(node, "body", None)
        if not body or not isinstance(body[0], ast.Expr):
            return None
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and clean_literal(value):
            return value
        return None

    def visit(node, qual: list[str], api: list[str] | None):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
                child_qual = qual + [name]
                if api is None or (name.startswith("_") and name != "__init__"):
                    child_api = None
                elif name == "__init__":
                    # merged into its class on the API page
                    child_api = api
                else:
                    child_api = api + [name]
                expr = docstring_expr(child)
                if expr is not None:
                    header = min([d.lineno for d in child.decorator_list] + [child.lineno])
                    found.append(_Docstring(expr.lineno, expr.end_lineno, header,
                                            inspect.cleandoc(expr.value), ".".join(child_qual),
                                            ".".join(child_api) if child_api else None))
                # members of a function are not on the API page; members of a class are
                visit(child, child_qual, child_api if isinstance(child, ast.ClassDef) and child_api else None)
            elif isinstance(child, (ast.If, ast.Try, ast.With, ast.For, ast.While, ast.AsyncWith, ast.AsyncFor)):
                # `if TYPE_CHECKING:` blocks, `try: import x` fallbacks: definitions inside are not public API
                visit(child, qual, None)
            elif hasattr(ast, "TryStar") and isinstance(child, ast.TryStar):
                visit(child, qual, None)
            elif hasattr(ast, "Match") and isinstance(child, ast.Match):
                visit(child, qual, None)
            elif isinstance(child, (ast.match_case,) if hasattr(ast, "match_case") else ()):
                visit(child, qual, None)
            elif isinstance(child, ast.ExceptHandler):
                visit(child, qual, None)

    module_expr = docstring_expr(tree)
    if module_expr is not None:
        found.append(_Docstring(module_expr.lineno, module_expr.end_lineno, 0,
                                inspect.cleandoc(module_expr.value), None, None))
    visit(tree, [], [])
    return found


def _prose_comment_lines(source: str, lines: list[str], code_only: set[int]) -> dict[int, str]:
    """
    Line number -> comment text (without the `#` and one space) for every comment that stands on its own line,
    outside brackets, and is not a shebang, an encoding declaration or a tool's pragma.
    Comments at the end of a code line, and comments inside a bracketed expression, stay in the code.
    """
    result: dict[int, str] = {}
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.OP:
            if tok.string in "([{":
                depth += 1
            elif tok.string in ")]}":
                depth = max(0, depth - 1)
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        if depth or row in code_only or lines[row - 1][:col].strip():
            continue
        text = tok.string
        if row == 1 and text.startswith("#!"):
            continue
        if row <= 2 and _CODING.match(text):
            continue
        if _PRAGMA.match(text):
            continue
        text = text[1:]
        if text.startswith(" "):
            text = text[1:]
        result[row] = text.rstrip()
    return result


def parse(source: str) -> Annotated:
    """Split Python source into an introduction (the module docstring) and sections of prose beside code."""
    source = source.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    lines = source.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n = len(lines)
    try:
        tree = ast.parse(source)
        docs = _docstrings(tree, lines)
    except SyntaxError as e:
        return Annotated("", [Section(code=list(range(1, n + 1)), anchor="src-L1", first_line=1)], lines,
                         syntax_error=f"{e.msg} (line {e.lineno})")

    intro = ""
    doc_line: dict[int, _Docstring] = {}
    header_at: dict[int, _Docstring] = {}
    header_lines: set[int] = set()
    for d in docs:
        for ln in range(d.start, d.end + 1):
            doc_line[ln] = d
        if d.header_start == 0:
            intro = d.text
        else:
            header_at[d.header_start] = d
            header_lines.update(range(d.header_start, d.start))
    # lines inside a docstring, and the decorator/signature lines above one, are never prose comments
    comments = _prose_comment_lines(source, lines, header_lines | set(doc_line))

    sections: list[Section] = []
    current: Section | None = None

    def start(prose: str, first_line: int, d: _Docstring | None = None) -> Section:
        s = Section(prose=prose, first_line=first_line)
        if d is not None:
            s.qualname, s.api_path = d.qualname, d.api_path
        sections.append(s)
        return s

    ln = 1
    while ln <= n:
        if ln in header_at:
            d = header_at[ln]
            if current is not None and current.prose and not current.code:
                # a comment block right above a documented def: one section, the comment then the docstring
                current.prose = current.prose + "\n\n" + d.text
                current.qualname, current.api_path = d.qualname, d.api_path
            else:
                current = start(d.text, ln, d)
        if ln in doc_line:
            ln = doc_line[ln].end + 1
            continue
        if ln in comments and ln not in header_at:
            # a run of comment lines; blank lines between comment lines are paragraph breaks
            block: list[str] = []
            first = ln
            while ln <= n and ln not in header_at:
                if ln in comments:
                    block.append(comments[ln])
                    ln += 1
                elif not lines[ln - 1].strip():
                    nxt = ln
                    while nxt <= n and not lines[nxt - 1].strip():
                        nxt += 1
                    if nxt <= n and nxt in comments and nxt not in header_at:
                        block.append("")
                        ln = nxt
                    else:
                        break
                else:
                    break
            text = inspect.cleandoc("\n".join(block))
            if current is not None and current.prose and not current.code and current.qualname is None:
                current.prose += "\n\n" + text
            else:
                current = start(text, first)
            continue
        if current is None:
            if not lines[ln - 1].strip():
                ln += 1
                continue
            current = start("", ln)
        if current.code and current.code[-1] != ln - 1 and not lines[ln - 1].strip():
            # a blank line right after skipped lines (a docstring) only pads the gap
            ln += 1
            continue
        current.code.append(ln)
        ln += 1

    # blank lines at either end of a code column are noise
    for s in sections:
        while s.code and not lines[s.code[0] - 1].strip():
            s.code.pop(0)
        while s.code and not lines[s.code[-1] - 1].strip():
            s.code.pop()
    sections = [s for s in sections if s.prose or s.code]

    used: set[str] = set()
    for s in sections:
        base = f"src-{s.qualname}" if s.qualname else f"src-L{s.first_line}"
        anchor, i = base, 2
        while anchor in used:
            anchor, i = f"{base}-{i}", i + 1
        used.add(anchor)
        s.anchor = anchor
    return Annotated(intro, sections, lines)


def public_members(source: str) -> list[str]:
    """Top-level classes and functions defined in the module that the API reference documents."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    defined = [n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    exported = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            try:
                exported = set(ast.literal_eval(node.value))
            except ValueError:
                exported = None
    return [name for name in defined if not name.startswith("_") and (exported is None or name in exported)]


# ---------------------------------------------------------------------------------------------------------------
# Highlighting
# ---------------------------------------------------------------------------------------------------------------

def highlight_lines(lines: list[str]) -> list[str]:
    """HTML of each source line, highlighted with Pygments over the whole file, using Pygments' short classes."""
    from pygments.lexers import PythonLexer
    from pygments.token import STANDARD_TYPES

    def css(ttype) -> str:
        while ttype not in STANDARD_TYPES:
            ttype = ttype.parent
        return STANDARD_TYPES[ttype]

    out: list[list[str]] = [[]]
    lexer = PythonLexer(stripnl=False, ensurenl=True)
    for ttype, value in lexer.get_tokens("\n".join(lines) + "\n"):
        cls = css(ttype)
        for i, part in enumerate(value.split("\n")):
            if i:
                out.append([])
            if part:
                text = html.escape(part, quote=False)
                out[-1].append(f'<span class="{cls}">{text}</span>' if cls else text)
    return ["".join(parts) for parts in out[: len(lines)]]


# ---------------------------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Module:
    path: str              # source path relative to the repository root, `labml_nn/neox/model.py`
    page: str              # generated page, `labml_nn/neox/model.md`
    api_page: str | None   # `reference/labml_nn/neox/model.md`, None when nothing public (or a sample)
    dotted: str            # `labml_nn.neox.model`
    annotated: Annotated
    highlighted: list[str]
    members: list[str]


def _discover(root: Path) -> list[str]:
    found = []
    for folder, recursive in SOURCE_ROOTS:
        base = root / folder
        if not base.is_dir():
            continue
        pattern = "**/*.py" if recursive else "*.py"
        for p in base.glob(pattern):
            if "__pycache__" in p.parts or not p.is_file():
                continue
            found.append(p.relative_to(root).as_posix())

    return sorted(found, key=lambda p: (0 if p.startswith("labml_nn") else 1, _sort_parts(p)))


def _sort_parts(path: str):
    parts = path.split("/")
    folders, name = parts[:-1], parts[-1]
    rank = {"__init__.py": "0", "__main__.py": "1"}.get(name, "2" + name)
    return [("1", f) for f in folders] + [("0", rank)]


def _has_init_files(root: Path, path: str) -> bool:
    folders = path.split("/")[:-1]
    return all((root.joinpath(*folders[: i + 1]) / "__init__.py").is_file() for i in range(len(folders)))


def _page_for(path: str) -> str:
    stem = path[:-3]
    if stem.endswith("/__init__"):
        return stem[: -len("/__init__")] + "/index.md"
    return stem + ".md"


def _dotted(path: str) -> str:
    stem = path[:-3]
    if stem.endswith("/__init__"):
        stem = stem[: -len("/__init__")]
    return stem.replace("/", ".")


def load_modules(root: Path) -> list[Module]:
    modules = []
    for path in _discover(root):
        source = (root / path).read_text(encoding="utf-8")
        annotated = parse(source)
        if annotated.syntax_error:
            log.warning(f"{path}: cannot parse ({annotated.syntax_error}); its page shows the code only")
        is_package = path.startswith("labml_nn/")
        members = public_members(source) if is_package else []
        if members and not _has_init_files(root, path):
            # griffe (behind mkdocstrings) cannot find a module inside a folder without `__init__.py`
            log.info(f"{path}: no API page, a folder above it has no __init__.py")
            members = []
        api_page = f"{API_PREFIX}/{_page_for(path)}" if members else None
        modules.append(Module(path, _page_for(path), api_page, _dotted(path), annotated,
                              highlight_lines(annotated.lines), members))
    return modules


def _title(module: Module) -> tuple[str, str]:
    """(page heading, introduction without that heading): the docstring's `# Heading` if it opens with one."""
    intro = module.annotated.intro.strip()
    first, _, rest = intro.partition("\n")
    if first.startswith("# "):
        return first[2:].strip(), rest.strip()
    return f"`{module.path}`", intro


_LINK = re.compile(r'(?<!!)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)((?:\s+"[^"]*")?)\)')


def rewrite_links(markdown: str, module: Module, modules: dict[str, Module]) -> str:
    """
    Links in prose to other modules, written as the file (`[merge.py](merge.py)`, `../model.py#anchor`), as
    Pycco-style pages (`merge.html`) or as a package folder (`checkpoint/`), point to the module's page.
    A link to a module that does not exist (yet) is shown as its text.
    """
    here = posixpath.dirname(module.path)

    def replace(match):
        text, target, title = match.group(1), match.group(2), match.group(3)
        if re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", target, re.I):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if path.endswith(".html"):
            path = path[: -len(".html")] + ".py"
        elif path.endswith("/") or path in (".", ".."):
            path = path.rstrip("/") + "/__init__.py"
        elif not path.endswith(".py"):
            return match.group(0)
        resolved = posixpath.normpath(posixpath.join(here, path))
        if resolved.endswith("/index.py"):
            resolved = resolved[: -len("index.py")] + "__init__.py"
        target_module = modules.get(resolved)
        if target_module is None:
            log.info(f"{module.path}: the link to {target} points to no module (yet); shown as text")
            return text
        relative = posixpath.relpath(target_module.page, posixpath.dirname(module.page))
        return f"[{text}]({relative}{'#' + anchor if anchor else ''}{title})"

    return _LINK.sub(replace, markdown)


def module_markdown(module: Module, modules: dict[str, Module] | None = None) -> str:
    heading, intro = _title(module)
    modules = modules or {module.path: module}
    parts = [
        "---\nhide:\n  - toc\n---\n",
        f"# {heading}\n",
        "<!--ann-meta-->\n",
    ]
    if module.annotated.syntax_error:
        parts.append(f'!!! warning "This file does not parse"\n    {module.annotated.syntax_error}\n')
    if intro:
        intro = rewrite_links(intro, module, modules)
        parts.append('<div class="ann-intro" markdown="1">\n\n' + intro + "\n\n</div>\n")
    for i, section in enumerate(module.annotated.sections):
        parts.append(f"<!--ann-section:{i}-->\n\n{rewrite_links(section.prose, module, modules)}\n")
    parts.append("<!--ann-end-->\n")
    return "\n".join(parts)


def api_markdown(module: Module, opts: str = "") -> str:
    parts = [f"# `{module.dotted}`\n", "<!--ann-api-meta-->\n"]
    for name in module.members:
        parts.append(f"::: {module.dotted}.{name}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# mkdocs events
# ---------------------------------------------------------------------------------------------------------------

_state: dict = {"modules": [], "by_page": {}, "by_api": {}}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _source_url(config, path: str, start: int | None = None, end: int | None = None) -> str | None:
    repo = (config.repo_url or "").rstrip("/")
    if not repo:
        return None
    branch = (config.extra or {}).get("source_branch", "main")
    url = f"{repo}/blob/{branch}/{path}"
    if start:
        url += f"#L{start}" + (f"-L{end}" if end and end != start else "")
    return url


def on_config(config):
    modules = load_modules(_root(config))
    _state["modules"] = modules
    _state["by_page"] = {m.page: m for m in modules}
    _state["by_api"] = {m.api_page: m for m in modules if m.api_page}

    package = [m for m in modules if m.path.startswith("labml_nn/")]
    samples = [m for m in modules if m.path.startswith("samples/")]

    def tree(mods: list[Module], prefix: str) -> list:
        items: list = []
        folders: dict[str, list[Module]] = {}
        for m in mods:
            rel = m.path[len(prefix):]
            if "/" in rel:
                folders.setdefault(rel.split("/")[0], []).append(m)
            else:
                items.append({rel: m.page})
        for name, sub in folders.items():
            items.append({f"{name}/": tree(sub, f"{prefix}{name}/")})
        return items

    if not config.nav:
        docs_dir = Path(config.docs_dir)
        extra_pages = sorted(p.relative_to(docs_dir).as_posix() for p in docs_dir.glob("*.md") if p.name != "index.md")
        nav: list = [{"Home": "index.md"}] + extra_pages
        if package:
            nav.append({"Package": tree(package, "labml_nn/neox/")})
        if samples:
            nav.append({"Samples": [{m.path.split("/")[-1]: m.page} for m in samples]})
        api = [{m.dotted.removeprefix("labml_nn.neox.") or m.dotted: m.api_page} for m in modules if m.api_page]
        if api:
            nav.append({"API reference": api})
        config.nav = nav
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    by_path = {m.path: m for m in _state["modules"]}
    for m in _state["modules"]:
        files.append(File.generated(config, m.page, content=module_markdown(m, by_path)))
        if m.api_page:
            files.append(File.generated(config, m.api_page, content=api_markdown(m)))
    return files


# Links in the home page's module map to generated pages that do not exist (yet) become plain text.
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:labml_nn|samples|reference)/[^)\s#]+\.md)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    pages = {f.src_uri for f in files}

    def unlink(match):
        if match.group(2) in pages:
            return match.group(0)
        log.info(f"index.md: {match.group(2)} does not exist yet; its link is shown as plain text")
        return f"{match.group(1)} *(not written yet)*"

    markdown = _MD_LINK.sub(unlink, markdown)
    listing = ["", "## Every module page", "",
               "Generated from the source tree at build time, so nothing is missed.", ""]
    for m in _state["modules"]:
        depth = m.path.count("/") - (2 if m.path.startswith("labml_nn/") else 1)
        line = f"{'    ' * depth}* [`{m.path}`]({m.page})"
        if m.api_page:
            line += f" · [API]({m.api_page})"
        listing.append(line)
    return markdown.rstrip() + "\n" + "\n".join(listing) + "\n"


def _url(page, files, src_uri: str, anchor: str = "") -> str:
    from mkdocs.utils import get_relative_url

    target = files.get_file_from_path(src_uri)
    return get_relative_url(target.url, page.url) + (f"#{anchor}" if anchor else "")


def _code_html(module: Module, section: Section) -> str:
    rows = []
    previous = None
    for ln in section.code:
        gap = " ann-gap" if previous is not None and ln != previous + 1 else ""
        rows.append(f'<span class="ann-line{gap}" data-ln="{ln}">{module.highlighted[ln - 1]}</span>')
        previous = ln
    return ('<div class="ann-code"><div class="highlight"><pre><code>' + "\n".join(rows) +
            "\n</code></pre></div></div>")


def _section_tools(module: Module, section: Section, page, files, config) -> str:
    tools = [f'<a class="ann-permalink" href="#{section.anchor}" title="Link to this section">¶</a>']
    if section.code:
        url = _source_url(config, module.path, section.code[0], section.code[-1])
        if url:
            label = f"L{section.code[0]}" + (f"–{section.code[-1]}" if section.code[-1] != section.code[0] else "")
            tools.append(f'<a class="ann-source" href="{html.escape(url)}" title="These lines on the source host">'
                         f"{label}</a>")
    if section.api_path and module.api_page:
        ident = f"{module.dotted}.{section.api_path}"
        tools.append(f'<a class="ann-api" href="{_url(page, files, module.api_page, ident)}" '
                     f'title="{html.escape(ident)} in the API reference">API</a>')
    return '<div class="ann-tools" data-search-exclude>' + "".join(tools) + "</div>"


_SECTION_MARK = re.compile(r"(?:<p>)?<!--ann-section:(\d+)-->(?:</p>)?")
_END_MARK = re.compile(r"(?:<p>)?<!--ann-end-->(?:</p>)?")


_MATH_OR_CODE = re.compile(r'<(span|div) class="arithmatex">.*?</\1>|<pre\b.*?</pre>|<code\b.*?</code>', re.S)
_RAW_MATH = re.compile(r"\$\$|\\begin\{|\\end\{")


def _check_maths(html_text: str, where: str) -> None:
    """Warn (and so fail `--strict`) when maths escaped arithmatex and would be shown as raw LaTeX."""
    text = html.unescape(re.sub(r"<[^>]+>", "", _MATH_OR_CODE.sub("", html_text)))
    if _RAW_MATH.search(text):
        log.warning(f"{where}: maths shown as raw text ($$ or \\begin outside maths). Write display maths as "
                    "$$...$$ on lines of its own with a blank line before and after (inside a list item, indented "
                    "4 spaces), and inline maths as $...$, in a raw docstring (r\"\"\"...\"\"\").")


def on_page_content(html_text, page, config, files):
    src = page.file.src_uri
    if src not in _state["by_page"]:
        _check_maths(html_text, src)
    module = _state["by_page"].get(src)
    if module is not None:
        return _module_content(html_text, module, page, files, config)
    module = _state["by_api"].get(src)
    if module is not None:
        return _api_content(html_text, module, page, files, config)
    return html_text


def _module_content(html_text, module: Module, page, files, config) -> str:
    meta = [f'<span class="ann-meta-path">{html.escape(module.path)}</span>']
    url = _source_url(config, module.path)
    if url:
        meta.append(f'<a href="{html.escape(url)}">source</a>')
    if module.api_page:
        meta.append(f'<a href="{_url(page, files, module.api_page)}">API reference</a>')
    html_text = html_text.replace("<!--ann-meta-->", '<p class="ann-meta" data-search-exclude>' + " · ".join(meta) + "</p>", 1)

    head, _, tail = html_text.partition("<!--ann-end-->")
    tail = tail.removeprefix("</p>")
    pieces = _SECTION_MARK.split(head)
    out = [pieces[0]]
    _check_maths(pieces[0], f"{module.path}, the module docstring")
    for index, prose in zip(pieces[1::2], pieces[2::2]):
        section = module.annotated.sections[int(index)]
        _check_maths(prose, f"{module.path}:{section.first_line}")
        classes = "ann-section" + ("" if section.prose else " ann-no-prose") + ("" if section.code else " ann-no-code")
        out.append(f'<div class="{classes}" id="{section.anchor}">'
                   f'<div class="ann-docs">{_section_tools(module, section, page, files, config)}{prose.strip()}</div>'
                   f"{_code_html(module, section) if section.code else ''}</div>")
    body = "".join(out)
    first = body.find('<div class="ann-section')
    if first >= 0:
        body = body[:first] + '<div class="ann-sections">' + body[first:] + "</div>"
    return body + tail


def _api_content(html_text, module: Module, page, files, config) -> str:
    meta = [f'<a href="{_url(page, files, module.page)}">Annotated source of <code>{html.escape(module.path)}</code></a>']
    url = _source_url(config, module.path)
    if url:
        meta.append(f'<a href="{html.escape(url)}">source</a>')
    html_text = html_text.replace("<!--ann-api-meta-->", '<p class="ann-meta" data-search-exclude>' + " · ".join(meta) + "</p>", 1)
    # after each documented object's heading, a link back to the section that explains it
    for section in module.annotated.sections:
        if not section.api_path:
            continue
        ident = f"{module.dotted}.{section.api_path}"
        pattern = re.compile(r'(<h(\d) id="' + re.escape(ident) + r'"[^>]*>.*?</h\2>)', re.S)
        link = (f'<p class="ann-backlink"><a href="{_url(page, files, module.page, section.anchor)}">'
                f"Read it annotated</a></p>")
        html_text = pattern.sub(lambda m: m.group(1) + link, html_text, count=1)
    return html_text
