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
* places the live widgets and builds the demo model they run (`live.py`);
* computes the numbers a learner asks for (memory, "Check yourself") from our code (`learner_numbers.py`);
* cleans the search index (`search_index.py`).

The sources are read by `source_parser.py` (prose and code, with `tokenize` and `ast`); the HTML of the pages
is made by `render.py`. This file holds the pages' Markdown and the mkdocs events that tie the pieces together.
"""

from __future__ import annotations

import html
import logging
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# mkdocs loads a hook as a lone file; its sibling modules are imported from the hook's own folder
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crosslinks  # noqa: E402
import figures  # noqa: E402
import live  # noqa: E402
import learner_numbers  # noqa: E402
import reading_path  # noqa: E402
import render  # noqa: E402
import search_index  # noqa: E402
# the parser's names, also for the tests, which load this file as the hook
from source_parser import Annotated, Section, highlight_lines, parse, public_members  # noqa: E402,F401

log = logging.getLogger("mkdocs.hooks.annotate")

# What gets pages: (folder relative to the repository root, recursive?)
SOURCE_ROOTS = (("labml_nn/neox", True), ("samples", False))
API_PREFIX = "reference"
SOURCE_PREFIX = "source"
# pages taller than this many sections get an outline (the table of contents, in the navigation sidebar)
OUTLINE_MIN_SECTIONS = 12


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
    if _state.get("numbers"):
        parts.append(learner_numbers.check_yourself(module.path))
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
    _state["live"] = live.prepare(root, modules)
    # "Check yourself" and the memory figures come from `memory.py`: only in a project that has it
    _state["numbers"] = "labml_nn/neox/memory.py" in {m.path for m in modules}

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
    live.add_files(files, config, _state["live"])
    return files


_MAP_MARK = "<!--reading-path-->"
# Links of the home page to generated pages that do not exist (in a project without that module) become text.
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:labml_nn|samples|reference)/[^)\s#]+\.md)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    """
    The memory figures (`<!--memory...-->`, `learner_numbers.py`) on every page; on the home page, the map of the
    modules, the reading path, written where `<!--reading-path-->` stands.
    """
    if _state.get("numbers"):
        markdown = learner_numbers.substitute(markdown)
        if page.file.src_uri not in _state["by_page"]:
            # a page of docs/ on the core path ends with its questions too (module pages get theirs in Markdown)
            markdown = markdown.rstrip() + "\n\n" + learner_numbers.check_yourself(page.file.src_uri)
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
        html_text = render.module_page(html_text, module, state, page, files, source_url, _check_maths)
        return live.module_page(html_text, module.path, state["live"])
    module = state["by_api"].get(src) or state["by_source"].get(src)
    if module is not None and src == module.api_page:
        return render.api_page(html_text, module, page, files,
                               lambda start, end: _source_url(config, module, page, files, start, end))
    if module is not None:
        return render.source_page(html_text, module, page, files)
    _check_maths(html_text, src)
    html_text = live.docs_page(html_text, state["live"], src)
    # the home page and the other pages of docs/ link our code too
    linked, _ = crosslinks.link_code(
        html_text, state["xref"],
        lambda t: render.url(page, files, state["by_path"][t.path].page, t.anchor or ""), ("", None))
    return linked


def on_post_build(config):
    search_index.clean(config, _state)
