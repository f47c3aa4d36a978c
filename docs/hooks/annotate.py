r"""
# Annotated side-by-side pages, generated at build time

An mkdocs hook (registered under `hooks:` in `mkdocs.yml`). On every build it

* reads every `.py` file of `labml_nn/neox/` (recursively) and of `samples/`, splits each into sections of
  prose (a docstring or a run of `#` comments, rendered as Markdown) and the code that prose explains, and adds
  one generated page per module (`File.generated`, nothing is written into `docs/`);
* adds one API reference page per module with public classes or functions (`::: labml_nn.neox.model.X`
  blocks, rendered by mkdocstrings), cross-linked both ways with the annotated page;
* builds the navigation, every page's Next/Previous and the home page's map from the one reading path in
  `mkdocs.yml` (`reading_path.py`), each page labelled with its own title;
* links mentions of our modules, classes and functions in prose to the sections that explain them, and says
  at the top of each page which modules it builds on (`crosslinks.py`);
* links each section's line range to the site's own copy of the source (`source/<path>.html`), or to the
  repository when `repo_url` is set;
* draws the figures (`figures.py`) and places each beside the code it illustrates;
* cleans the search index (`search_index.py`).

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
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

# mkdocs loads a hook as a lone file; its sibling modules are imported from the hook's own folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crosslinks  # noqa: E402
import figures  # noqa: E402
import reading_path  # noqa: E402
import render  # noqa: E402
import search_index  # noqa: E402

log = logging.getLogger("mkdocs.hooks.annotate")

# What gets pages: (folder relative to the repository root, recursive?)
SOURCE_ROOTS = (("labml_nn/neox", True), ("samples", False))
API_PREFIX = "reference"
SOURCE_PREFIX = "source"
# pages taller than this many sections get an outline (the table of contents, in the navigation sidebar)
OUTLINE_MIN_SECTIONS = 12


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

    @property
    def title(self) -> str:
        """The page's own title, from its docstring's `# Heading` (the file's path when it has none)."""
        return _title(self)[0].strip("`")

    @property
    def source_page(self) -> str:
        """The site's plain copy of the file, with line anchors: `source/labml_nn/neox/model.py.md`."""
        return f"{SOURCE_PREFIX}/{self.path}.md"


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
    # long pages keep their outline (Material shows it in the navigation sidebar, `toc.integrate`);
    # annotated pages rank above API pages in search
    hide = "" if len(module.annotated.sections) >= OUTLINE_MIN_SECTIONS else "hide:\n  - toc\n"
    parts = [
        f"---\n{hide}search:\n  boost: 2\n---\n",
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


def api_markdown(module: Module) -> str:
    parts = ["---\nsearch:\n  boost: 0.5\n---\n", f"# `{module.dotted}`\n", "<!--ann-api-meta-->\n"]
    for name in module.members:
        parts.append(f"::: {module.dotted}.{name}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# mkdocs events
# ---------------------------------------------------------------------------------------------------------------

# what `on_config` learns about the sources, for the later events
_state: dict = {"modules": [], "by_page": {}, "by_api": {}, "by_source": {}, "by_path": {}}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _source_url(config, module: Module, page, files, start: int | None = None, end: int | None = None) -> str:
    """
    Where "source" and a section's line range link to: the repository when `repo_url` is set (GitHub's
    `/blob/<branch>/<path>#L<a>-L<b>`), otherwise the site's own plain copy of the file, at line `start`.
    """
    repo = (config.repo_url or "").rstrip("/")
    if not repo:
        return render.url(page, files, module.source_page, f"L{start}" if start else "")
    branch = (config.extra or {}).get("source_branch", "main")
    url = f"{repo}/blob/{branch}/{module.path}"
    if start:
        url += f"#L{start}" + (f"-L{end}" if end and end != start else "")
    return url


def source_markdown(module: Module) -> str:
    """The plain page of a file: every line, highlighted and numbered, each with its anchor `#L<n>`."""
    return (f"---\nsearch:\n  exclude: true\nhide:\n  - toc\n---\n# `{module.path}`\n\n"
            "<!--ann-source-meta-->\n\n<!--ann-source-->\n")


def on_config(config):
    root = _root(config)
    modules = load_modules(root)
    _state["modules"] = modules
    _state["by_page"] = {m.page: m for m in modules}
    _state["by_api"] = {m.api_page: m for m in modules if m.api_page}
    _state["by_source"] = {m.source_page: m for m in modules}
    _state["by_path"] = {m.path: m for m in modules}
    _state["xref"] = crosslinks.build_index(modules)
    known = {m.path for m in modules}
    _state["builds_on"] = {m.path: crosslinks.imports(m, known) for m in modules}
    _state["figures"] = figures.place(root, modules)

    # the reading path: checked now, reported in `on_files` (where a warning fails `--strict`)
    docs_dir = Path(config.docs_dir)
    docs_pages = sorted(p.relative_to(docs_dir).as_posix() for p in docs_dir.glob("*.md") if p.name != "index.md")
    stops, problems = reading_path.read(config.extra)
    existing = [m.path for m in modules] + docs_pages
    _state["path_problems"] = problems + reading_path.check(stops, existing)
    stops = reading_path.ordered(stops, existing)
    _state["stops"] = stops
    _state["page_of"] = {m.path: m.page for m in modules}
    _state["title_of"] = {m.path: m.title for m in modules}
    for page in docs_pages:
        first = (docs_dir / page).read_text(encoding="utf-8").lstrip().split("\n", 1)[0]
        _state["title_of"][page] = first[2:].strip() if first.startswith("# ") else page
    if not config.nav:
        nav: list = [{"Home": "index.md"}]
        nav += reading_path.nav(stops, _state["page_of"], _state["title_of"])
        api = [{m.dotted.removeprefix("labml_nn.neox.") or m.dotted: m.api_page} for m in modules if m.api_page]
        if api:
            nav.append({"API reference": api})
        config.nav = nav
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for problem in _state["path_problems"]:
        log.warning(problem)
    by_path = {m.path: m for m in _state["modules"]}
    for m in _state["modules"]:
        files.append(File.generated(config, m.page, content=module_markdown(m, by_path)))
        files.append(File.generated(config, m.source_page, content=source_markdown(m)))
        if m.api_page:
            files.append(File.generated(config, m.api_page, content=api_markdown(m)))
    figures.add_files(files, config, _state["figures"])
    return files


_MAP_MARK = "<!--reading-path-->"
# Links of the home page to generated pages that do not exist (in a project without that module) become text.
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:labml_nn|samples|reference)/[^)\s#]+\.md)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    """The home page's map of the modules is the reading path, written where `<!--reading-path-->` stands."""
    if page.file.src_uri != "index.md":
        return markdown
    pages = {f.src_uri for f in files}
    markdown = _MD_LINK.sub(lambda m: m.group(0) if m.group(2) in pages else m.group(1), markdown)
    first_sentence = {m.path: re.split(r"(?<=[.:])\s", _title(m)[1].replace("\n", " "), maxsplit=1)[0]
                      for m in _state["modules"]}
    listing = reading_path.home_map(_state["stops"], _state["page_of"], _state["title_of"], first_sentence)
    if _MAP_MARK not in markdown:
        log.warning(f"index.md: no {_MAP_MARK} line; the map of the reading path goes at the end of the page")
        return markdown.rstrip() + "\n\n" + listing
    return markdown.replace(_MAP_MARK, listing, 1)


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
    state = _state
    state.setdefault("urls", {})[src] = page.url
    module = state["by_page"].get(src)
    if module is not None:
        def source_url(start, end):
            return _source_url(config, module, page, files, start, end)
        return render.module_page(html_text, module, state, page, files, source_url, _check_maths)
    module = state["by_api"].get(src) or state["by_source"].get(src)
    if module is not None and src == module.api_page:
        return render.api_page(html_text, module, page, files,
                               lambda start, end: _source_url(config, module, page, files, start, end))
    if module is not None:
        return render.source_page(html_text, module, page, files)
    _check_maths(html_text, src)
    # the home page and the other pages of docs/ link our code too
    linked, _ = crosslinks.link_code(
        html_text, state["xref"],
        lambda t: render.url(page, files, state["by_path"][t.path].page, t.anchor or ""), ("", None))
    return linked


def on_post_build(config):
    search_index.clean(config, _state)
