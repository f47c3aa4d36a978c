r"""
# Reading a Python file as prose and code

The parser behind every annotated page. `parse` splits a module's source into an introduction (its docstring)
and sections: a block of prose (a docstring or a run of `#` comments, Markdown) and the source lines of the code
it explains. `highlight_lines` colours the code with Pygments.

Python is read with `tokenize` and `ast`, never with regular expressions, so a `#` inside a string, a string
that looks like a comment, or closing triple quotes on a line of text cannot be mistaken for prose. The code
is highlighted once per file (so multi-line strings are coloured correctly), then cut into lines.

Nothing here depends on mkdocs; `tests/test_docs_parser.py` tests it directly.
"""

from __future__ import annotations

import ast
import html
import inspect
import io
import re
import tokenize
from dataclasses import dataclass, field


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
