r"""
# From Markdown pages to side-by-side HTML

`annotate.py` writes each module's page as Markdown with markers (`<!--ann-section:3-->`) between the sections'
prose; mkdocs turns that into HTML, and this module turns the HTML into the page: each section a row, its prose
on the left (with a permalink, its line range and its API link), its code on the right with the real line
numbers. It also renders the plain source pages (`source/<path>.html`), links the prose's mentions of our code
(`crosslinks.py`) and places the figures (`figures.py`).

A code line is a block of its own (`<span class="ann-line" id="L42" style="--i:8">`), so that a line too long for
the column wraps under itself, indented past the line's own indentation (CSS, `--i` is the indentation in
characters), and the line numbers stay beside the lines they number.
"""

from __future__ import annotations

import ast
import html
import re
import textwrap

import crosslinks
import figures


def url(page, files, src_uri: str, anchor: str = "") -> str:
    """The href from `page` to the page built from `src_uri`, at `anchor`."""
    from mkdocs.utils import get_relative_url

    target = files.get_file_from_path(src_uri)
    return get_relative_url(target.url, page.url) + (f"#{anchor}" if anchor else "")


def code_lines(module, numbers) -> str:
    rows = []
    previous = None
    for ln in numbers:
        gap = " ann-gap" if previous is not None and ln != previous + 1 else ""
        line = module.annotated.lines[ln - 1]
        indent = len(line) - len(line.lstrip(" "))
        rows.append(f'<span class="ann-line{gap}" id="L{ln}" data-ln="{ln}" style="--i:{indent}">'
                    f"{module.highlighted[ln - 1]}</span>")
        previous = ln
    return '<div class="highlight"><pre><code>' + "".join(rows) + "</code></pre></div>"


def _section_tools(module, section, page, files, source_url) -> str:
    tools = [f'<a class="ann-permalink" href="#{section.anchor}" title="Link to this section">¶</a>']
    if section.code:
        first, last = section.code[0], section.code[-1]
        label = f"L{first}" + (f"–{last}" if last != first else "")
        tools.append(f'<a class="ann-source" href="{html.escape(source_url(first, last))}" '
                     f'title="These lines in the source file">{label}</a>')
    if section.api_path and module.api_page:
        ident = f"{module.dotted}.{section.api_path}"
        tools.append(f'<a class="ann-api" href="{url(page, files, module.api_page, ident)}" '
                     f'title="{html.escape(ident)} in the API reference">API</a>')
    return '<div class="ann-tools" data-search-exclude>' + "".join(tools) + "</div>"


_SECTION_MARK = re.compile(r"(?:<p>)?<!--ann-section:(\d+)-->(?:</p>)?")


def _links(module, state, page, files, title_of) -> str:
    """`Builds on` and `Used by`: the package's modules this one imports, and those that import it."""
    def link(path):
        target = state["by_path"][path]
        return f'<a href="{url(page, files, target.page)}">{html.escape(title_of[path])}</a>'

    parts = []
    builds_on = state["builds_on"].get(module.path, [])
    if builds_on:
        parts.append("Builds on " + ", ".join(link(p) for p in builds_on))
    used_by = [p for p, deps in state["builds_on"].items() if module.path in deps]
    if used_by:
        parts.append(("used by " if parts else "Used by ") + ", ".join(link(p) for p in used_by))
    return ('<p class="ann-builds-on" data-search-exclude>' + "; ".join(parts) + ".</p>") if parts else ""


def _imports_prose(module, section, state, page, files) -> str:
    """
    Prose for a block of imports that has none: what it brings in, our modules linked. (An import block is
    otherwise an empty prose cell at the top of every page.)
    """
    try:
        tree = ast.parse(textwrap.dedent("\n".join(module.annotated.lines[n - 1] for n in section.code)))
    except SyntaxError:
        return ""
    if not tree.body or not all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in tree.body):
        return ""
    outside = []
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top and top != "labml_nn" and not getattr(node, "level", 0) and top not in outside:
                outside.append(top)
    # (a module imports from the package at its top, so what it builds on is what this block imports)
    ours = state["builds_on"].get(module.path, [])
    parts = []
    if outside:
        parts.append(", ".join(f"<code>{html.escape(n)}</code>" for n in outside))
    if ours:
        links = [f'<a href="{url(page, files, state["by_path"][p].page)}">{html.escape(state["title_of"][p])}</a>'
                 for p in ours]
        parts.append("from this project " + ", ".join(links))
    return f'<p class="ann-imports">Imports: {"; ".join(parts)}.</p>' if parts else ""


def module_page(html_text: str, module, state, page, files, source_url, check_maths) -> str:
    title_of = state["title_of"]
    meta = [f'<span class="ann-meta-path">{html.escape(module.path)}</span>',
            f'<a href="{html.escape(source_url(None, None))}">source</a>']
    if module.api_page:
        meta.append(f'<a href="{url(page, files, module.api_page)}">API reference</a>')
    html_text = html_text.replace(
        "<!--ann-meta-->", '<p class="ann-meta" data-search-exclude>' + " · ".join(meta) + "</p>"
        + _links(module, state, page, files, title_of), 1)

    def xref(fragment: str, anchor: str | None) -> str:
        linked, _ = crosslinks.link_code(
            fragment, state["xref"],
            lambda t: url(page, files, state["by_path"][t.path].page, t.anchor or ""), (module.path, anchor))
        return linked

    head, _, tail = html_text.partition("<!--ann-end-->")
    tail = tail.removeprefix("</p>")
    pieces = _SECTION_MARK.split(head)
    check_maths(pieces[0], f"{module.path}, the module docstring")
    values = state["figures"]["values"].get(module.path, {})
    out = [figures.fill_values(xref(pieces[0], None), values, f"{module.path}, the module docstring")]
    placed = state["figures"]["placed"].get(module.path, {})
    for index, prose in zip(pieces[1::2], pieces[2::2]):
        section = module.annotated.sections[int(index)]
        check_maths(prose, f"{module.path}:{section.first_line}")
        prose = figures.fill_values(xref(prose.strip(), section.anchor), values,
                                    f"{module.path}:{section.first_line}")
        if not section.prose and section.code:
            prose = _imports_prose(module, section, state, page, files)
        for figure in placed.get(section.anchor, []):
            drawn = figures.figure_html(figure, url(page, files, figure.src_uri), values)
            if figure.wide:
                out.append(f'<div class="ann-figure-row">{drawn}</div>')
            else:
                prose += drawn
        classes = "ann-section" + ("" if prose else " ann-no-prose")
        classes += "" if section.code else " ann-no-code"
        code = f'<div class="ann-code">{code_lines(module, section.code)}</div>' if section.code else ""
        out.append(f'<div class="{classes}" id="{section.anchor}">'
                   f'<div class="ann-docs">{_section_tools(module, section, page, files, source_url)}'
                   f"{prose}</div>{code}</div>")
    body = "".join(out)
    first = body.find('<div class="ann-section')
    if first >= 0:
        body = body[:first] + '<div class="ann-sections">' + body[first:] + "</div>"
    return body + tail


def api_page(html_text: str, module, page, files, source_url) -> str:
    meta = [f'<a href="{url(page, files, module.page)}">Annotated source of <code>{html.escape(module.path)}</code></a>',
            f'<a href="{html.escape(source_url(None, None))}">source</a>']
    html_text = html_text.replace("<!--ann-api-meta-->",
                                  '<p class="ann-meta" data-search-exclude>' + " · ".join(meta) + "</p>", 1)
    # after each documented object's heading, a link back to the section that explains it
    for section in module.annotated.sections:
        if not section.api_path:
            continue
        ident = f"{module.dotted}.{section.api_path}"
        pattern = re.compile(r'(<h(\d) id="' + re.escape(ident) + r'"[^>]*>.*?</h\2>)', re.S)
        link = (f'<p class="ann-backlink"><a href="{url(page, files, module.page, section.anchor)}">'
                f"Read it annotated</a></p>")
        html_text = pattern.sub(lambda m: m.group(1) + link, html_text, count=1)
    return html_text


def source_page(html_text: str, module, page, files) -> str:
    meta = (f'<p class="ann-meta" data-search-exclude><a href="{url(page, files, module.page)}">'
            f"{html.escape(module.title)}</a>: the same file, annotated</p>")
    html_text = re.sub(r"(?:<p>)?<!--ann-source-meta-->(?:</p>)?", lambda _: meta, html_text, count=1)
    code = f'<div class="ann-code ann-source-file">{code_lines(module, range(1, len(module.annotated.lines) + 1))}</div>'
    return re.sub(r"(?:<p>)?<!--ann-source-->(?:</p>)?", lambda _: code, html_text, count=1)
