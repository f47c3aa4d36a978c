"""
Tests of the built website: pages, links, the reading path, figures and search (the parser behind the pages
is tested in `test_docs_parser.py`, the pages in a browser in `test_docs_browser.py`).

The site is built twice, once per session (`build_site`, shared with `test_docs_browser.py`):

* `"real"`: this repository, exactly as `mkdocs build --strict` builds it;
* `"fixture"`: the same `mkdocs.yml`, hook and `docs/`, but with the package and samples replaced by the
  fixed sources in `tests/fixtures/docs/project/`, so that checks of layout and maths do not depend on what
  the package's modules happen to contain.
"""

from __future__ import annotations

import atexit
import functools
import html as html_lib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PROJECT = ROOT / "tests" / "fixtures" / "docs" / "project"
TRICKY = FIXTURE_PROJECT / "labml_nn" / "neox" / "tricky.py"


def load_hook():
    """`docs/hooks/annotate.py` as a module (it is not inside a package)."""
    if "docs_hook_annotate" in sys.modules:
        return sys.modules["docs_hook_annotate"]
    spec = importlib.util.spec_from_file_location("docs_hook_annotate", ROOT / "docs" / "hooks" / "annotate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_hook_annotate"] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------
# Building the site
# ---------------------------------------------------------------------------------------------------------------

def _source_modules(root: Path) -> list[str]:
    package = sorted(p.relative_to(root).as_posix() for p in (root / "labml_nn" / "neox").rglob("*.py")
                     if "__pycache__" not in p.parts)
    samples = sorted(p.relative_to(root).as_posix() for p in (root / "samples").glob("*.py"))
    return package + samples


def _page_html(site: Path, module_path: str) -> Path:
    """The built page of a module (`use_directory_urls: false`: files, not folders, so that file:// works)."""
    stem = module_path[:-3]
    if stem.endswith("/__init__"):
        stem = stem[: -len("__init__")] + "index"
    return site / f"{stem}.html"


@functools.cache
def build_site(kind: str) -> Path:
    """Build the site once per test session into a temporary folder; returns the folder."""
    if shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    tmp = Path(tempfile.mkdtemp(prefix=f"neox-docs-{kind}-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if kind == "real":
        project = ROOT
    else:
        # the real machinery (config, hook, docs) over fixed sources
        project = tmp / "project"
        project.mkdir()
        # the fixture's own reading path, in place of the real one
        config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
        config["extra"]["reading_path"] = yaml.safe_load((FIXTURE_PROJECT / "reading_path.yml").read_text())
        (project / "mkdocs.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (project / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
        for name in ("labml_nn", "samples"):
            (project / name).symlink_to(FIXTURE_PROJECT / name, target_is_directory=True)
    site = tmp / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                            cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


@pytest.fixture(scope="session")
def real_site() -> Path:
    return build_site("real")


@pytest.fixture(scope="session")
def fixture_site() -> Path:
    return build_site("fixture")


class _Page(HTMLParser):
    """Collects, from one HTML page, what the checks need: text outside maths and code, resources, sections."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, set[str]]] = []
        self.plain_text: list[str] = []      # text outside .arithmatex, code, pre, script, style, svg
        self.resources: list[tuple[str, str]] = []   # (tag, url) of scripts, stylesheets, images, icons
        self.sections = 0
        self.sections_with_prose_and_code = 0
        self.arithmatex = 0

    def _skipping(self) -> bool:
        for tag, classes in self.stack:
            if tag in ("code", "pre", "script", "style", "svg", "textarea") or "arithmatex" in classes:
                return True
        return False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if tag == "script" and attrs.get("src"):
            self.resources.append((tag, attrs["src"]))
        if tag == "link" and ({"stylesheet", "icon", "preload", "modulepreload"} & set((attrs.get("rel") or "").split())):
            self.resources.append((tag, attrs.get("href", "")))
        if tag in ("img", "source", "iframe", "video", "audio") and attrs.get("src"):
            self.resources.append((tag, attrs["src"]))
        if "ann-section" in classes:
            self.sections += 1
            if "ann-no-prose" not in classes and "ann-no-code" not in classes:
                self.sections_with_prose_and_code += 1
        if "arithmatex" in classes:
            self.arithmatex += 1
        if tag not in self.VOID:
            self.stack.append((tag, classes))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if not self._skipping():
            self.plain_text.append(data)


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _external(url: str) -> bool:
    return bool(re.match(r"^(https?:)?//", url.strip(), re.I))


RAW_LATEX = re.compile(r"\$\$|\\frac|\\begin\{|\\end\{|\\sqrt|\\theta|\\operatorname|\\left|\\right")


# ---------------------------------------------------------------------------------------------------------------
# The built site
# ---------------------------------------------------------------------------------------------------------------

def test_every_module_and_sample_has_a_page(real_site):
    modules = _source_modules(ROOT)
    assert modules, "no modules found"
    missing = [m for m in modules if not _page_html(real_site, m).is_file()]
    assert not missing, f"modules without an annotated page: {missing}"


def test_every_module_page_shows_sections_of_code_with_real_line_numbers(real_site):
    for module in _source_modules(ROOT):
        text = _page_html(real_site, module).read_text(encoding="utf-8")
        source_lines = (ROOT / module).read_text(encoding="utf-8").splitlines()
        if not any(s.code for s in load_hook().parse("\n".join(source_lines)).sections):
            continue  # a docstring-only `__init__.py`
        lines = re.findall(r'<span class="ann-line[^"]*" id="L\d+" data-ln="(\d+)" style="--i:\d+">(.*?)</span>'
                           r'(?=<span class="ann-line|</code>)', text)
        assert lines, f"{module}: no code lines on its page"
        for number, line_html in lines:
            shown = html_lib.unescape(re.sub(r"<[^>]+>", "", line_html))
            assert shown == source_lines[int(number) - 1].expandtabs(4), f"{module}: line {number} differs"


def test_fixture_pages_have_sections_with_prose_beside_code(fixture_site):
    page = parse_page(fixture_site / "labml_nn" / "neox" / "tricky.html")
    assert page.sections >= 10
    assert page.sections_with_prose_and_code >= 8
    sample = parse_page(fixture_site / "samples" / "demo.html")
    assert sample.sections_with_prose_and_code >= 1
    text = (fixture_site / "samples" / "demo.html").read_text(encoding="utf-8")
    assert "How to run" in text and "What it prints" in text


def test_real_module_pages_have_sections_with_prose_beside_code(real_site):
    pages = [parse_page(_page_html(real_site, m)) for m in _source_modules(ROOT)]
    assert sum(p.sections_with_prose_and_code for p in pages) >= 1


@pytest.mark.parametrize("kind", ["real", "fixture"])
def test_no_raw_latex_outside_math(kind):
    site = build_site(kind)
    bad = {}
    for path in site.rglob("*.html"):
        text = "".join(parse_page(path).plain_text)
        found = sorted(set(RAW_LATEX.findall(text)))
        if found:
            bad[str(path.relative_to(site))] = found
    assert not bad, f"LaTeX left as plain text (outside .arithmatex): {bad}"


def test_fixture_maths_is_marked_for_katex_in_intro_and_in_side_by_side_prose(fixture_site):
    text = (fixture_site / "labml_nn" / "neox" / "tricky.html").read_text(encoding="utf-8")
    intro = text[text.index('class="ann-intro"'):text.index('class="ann-sections"')]
    assert intro.count('class="arithmatex"') >= 3, "inline, display and align maths of the module docstring"
    assert r"\begin{align}" in intro
    assert re.search(r'<div class="ann-docs">.*?<span class="arithmatex">\\\(\\theta_i = b\^\{-2i/d\}\\\)</span>',
                     text, re.S), "maths in a docstring beside its code"


@pytest.mark.parametrize("kind", ["real", "fixture"])
def test_no_external_resources(kind):
    site = build_site(kind)
    bad = []
    for path in site.rglob("*.html"):
        for tag, url in parse_page(path).resources:
            if _external(url):
                bad.append(f"{path.relative_to(site)}: <{tag}> {url}")
    for path in site.rglob("*.css"):
        for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", path.read_text(encoding="utf-8", errors="replace")):
            if _external(url):
                bad.append(f"{path.relative_to(site)}: url({url})")
        assert "@import" not in path.read_text(encoding="utf-8", errors="replace") or path.name.startswith("main")
    assert not bad, "resources loaded from outside the site:\n" + "\n".join(bad)


def test_katex_fonts_are_vendored(real_site):
    css = (real_site / "assets" / "katex" / "katex.min.css").read_text(encoding="utf-8")
    fonts = re.findall(r"url\(([^)]+)\)", css)
    assert fonts and all(f.endswith(".woff2") for f in fonts)
    for font in fonts:
        assert (real_site / "assets" / "katex" / font).is_file(), font


def test_pages_link_to_api_reference_and_back(fixture_site):
    page = (fixture_site / "labml_nn" / "neox" / "tricky.html").read_text(encoding="utf-8")
    assert 'href="../../reference/labml_nn/neox/tricky.html#labml_nn.neox.tricky.Outer.Inner.value"' in page
    api = (fixture_site / "reference" / "labml_nn" / "neox" / "tricky.html").read_text(encoding="utf-8")
    assert 'id="labml_nn.neox.tricky.Outer"' in api
    assert 'href="../../../labml_nn/neox/tricky.html#src-Outer.Inner.value"' in api
    assert "_private" not in api


def test_source_links_open_the_sites_own_copy_without_a_repository(fixture_site):
    # mkdocs.yml sets no repo_url: a section's line range opens the plain source page at its first line
    page = (fixture_site / "labml_nn" / "neox" / "tricky.html").read_text(encoding="utf-8")
    assert re.search(r'<a class="ann-source" href="../../source/labml_nn/neox/tricky\.py\.html#L38"[^>]*>L38–44</a>',
                     page)
    source = (fixture_site / "source" / "labml_nn" / "neox" / "tricky.py.html").read_text(encoding="utf-8")
    lines = TRICKY.read_text(encoding="utf-8").splitlines()
    assert all(f'id="L{n}"' in source for n in range(1, len(lines) + 1))
    assert "github.com" not in page and "your-org" not in page


def test_source_links_go_to_the_repository_when_one_is_configured():
    from types import SimpleNamespace

    hook = load_hook()
    module = SimpleNamespace(path="labml_nn/neox/tricky.py")
    config = SimpleNamespace(repo_url="https://example.org/owner/name/", extra={"source_branch": "dev"})
    assert hook._source_url(config, module, None, None, 38, 44) == \
        "https://example.org/owner/name/blob/dev/labml_nn/neox/tricky.py#L38-L44"


def test_every_sample_page_says_how_to_run_it_and_what_it_prints(real_site):
    for sample in sorted((ROOT / "samples").glob("*.py")):
        text = (real_site / "samples" / f"{sample.stem}.html").read_text(encoding="utf-8")
        intro = text[text.find('class="ann-intro"'):]
        for heading in ("How to run", "What it prints"):
            assert re.search(rf"<h\d[^>]*>{heading}", intro), (
                f"samples/{sample.name}: its module docstring needs a '## {heading}' section")


def test_home_page_lists_every_module_page(real_site):
    text = (real_site / "index.html").read_text(encoding="utf-8")
    for module in _source_modules(ROOT):
        assert f"<code>{module}</code>" in text, module


# ---------------------------------------------------------------------------------------------------------------
# Links, the reading path, figures and search
# ---------------------------------------------------------------------------------------------------------------

def _hrefs(path: Path) -> list[str]:
    return re.findall(r'<(?:a|link)\b[^>]*\bhref="([^"]*)"|<(?:img|script)\b[^>]*\bsrc="([^"]*)"', path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", ["real", "fixture"])
def test_every_internal_link_opens_a_page_and_its_anchor(kind):
    site = build_site(kind)
    ids: dict[Path, set[str]] = {}
    dead, placeholders, checked = [], [], 0
    for path in sorted(site.rglob("*.html")):
        if path.name == "404.html":
            continue  # served from any folder, so its links are absolute on purpose
        for href in ("".join(pair) for pair in _hrefs(path)):
            if "your-org" in href or "example.com" in href:
                placeholders.append(f"{path.relative_to(site)}: {href}")
            if re.match(r"^([a-z][a-z0-9+.-]*:|//)", href, re.I) or not href:
                continue
            target_path, _, anchor = html_lib.unescape(href).partition("#")
            target = (path.parent / target_path).resolve() if target_path else path
            checked += 1
            if not target.is_file():
                dead.append(f"{path.relative_to(site)}: {href} (no such file)")
                continue
            if anchor and target.suffix == ".html":
                if target not in ids:
                    ids[target] = set(re.findall(r'\bid="([^"]+)"', target.read_text(encoding="utf-8")))
                if anchor not in ids[target]:
                    dead.append(f"{path.relative_to(site)}: {href} (no id {anchor!r})")
    assert checked > 100
    assert not dead, f"{len(dead)} dead links of {checked}:\n" + "\n".join(dead[:20])
    assert not placeholders, "placeholder links:\n" + "\n".join(placeholders[:10])


def _next_chain(site: Path) -> list[str]:
    """Pages in the order of their Next links, starting at the home page."""
    chain, page = [], site / "index.html"
    while page is not None and len(chain) < 500:
        chain.append(page.relative_to(site).as_posix())
        found = re.search(r'<a href="([^"]+)" class="md-footer__link md-footer__link--next"', page.read_text(encoding="utf-8"))
        page = (page.parent / found.group(1)).resolve() if found else None
    return chain


def test_navigation_and_next_links_follow_the_reading_path(real_site):
    path = load_hook().reading_path.read(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["extra"])[0]
    expected = ["index.html"] + [(_page_html(real_site, s.path) if s.path.endswith(".py") else real_site / s.path.replace(".md", ".html"))
                                 .relative_to(real_site).as_posix() for s in path]
    chain = _next_chain(real_site)
    assert chain[: len(expected)] == expected
    assert all(p.startswith("reference/") for p in chain[len(expected):]), "after the path: the API reference only"
    # each page is labelled with its own title, in the navigation and the browser's tab
    model = _page_html(real_site, "labml_nn/neox/model.py").read_text(encoding="utf-8")
    assert "<title>GPT-NeoX model - The annotated GPT-NeoX</title>" in model
    assert "<title>__init__.py" not in (real_site / "labml_nn" / "neox" / "index.html").read_text(encoding="utf-8")


def test_the_reading_path_names_the_line_to_add_or_remove():
    rp = load_hook().reading_path
    stops, problems = rp.read({"reading_path": {"The model": ["labml_nn/neox/model.py", {"labml_nn/neox/gone.py": "x"}]}})
    assert not problems
    found = rp.check(stops, ["labml_nn/neox/model.py", "labml_nn/neox/hub.py"])
    assert any("`labml_nn/neox/gone.py` does not exist; remove the line `- labml_nn/neox/gone.py: x`" in p for p in found)
    assert any("labml_nn/neox/hub.py exists but is not on the reading path: add the line `- labml_nn/neox/hub.py:" in p
               and "after the line `- labml_nn/neox/model.py`" in p for p in found)


def test_a_module_missing_from_the_reading_path_fails_the_strict_build(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(FIXTURE_PROJECT, project, symlinks=True)
    (project / "labml_nn" / "neox" / "extra.py").write_text('"""# Extra\n\nNot on the path."""\nX = 1\n')
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["extra"]["reading_path"] = yaml.safe_load((FIXTURE_PROJECT / "reading_path.yml").read_text())
    (project / "mkdocs.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (project / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=project, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "labml_nn/neox/extra.py exists but is not on the reading path: add the line" in result.stderr + result.stdout


def test_home_page_map_follows_the_reading_path_and_says_where_to_start(real_site):
    text = (real_site / "index.html").read_text(encoding="utf-8")
    map_ = text[text.index('id="a-map-of-the-modules"'):]
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    stops = load_hook().reading_path.read(config["extra"])[0]
    positions = [map_.index(f"<code>{s.path}</code>") for s in stops if s.path.endswith(".py")]
    assert positions == sorted(positions)
    assert 'href="labml_nn/neox/model.html"' in text and "start with the" in text


def test_prose_links_our_symbols_from_the_code_itself(real_site):
    hook = load_hook()
    modules = hook.load_modules(ROOT)
    index = hook.crosslinks.build_index(modules)
    # every public class of the package is found where it is defined, whatever file that is
    for m in modules:
        for name in hook.public_members("\n".join(m.annotated.lines)):
            if name in index and m.path.startswith("labml_nn/"):
                assert index[name].path == m.path, name
    assert index["NeoXConfig"].path == "labml_nn/neox/config.py"
    assert index["config.py"].path == "labml_nn/neox/config.py"
    model = _page_html(real_site, "labml_nn/neox/model.py").read_text(encoding="utf-8")
    assert re.search(r'<a class="ann-xref" href="config.html#src-NeoXConfig"><code>NeoXConfig</code></a>', model)
    # most annotated pages link to two or more other annotated pages
    pages = {m.path: _page_html(real_site, m.path) for m in modules}
    linking = 0
    for path, page in pages.items():
        text = page.read_text(encoding="utf-8")
        article = text[text.index("<article"):text.index("</article>")]  # not the navigation
        targets = {(page.parent / href).resolve() for href in
                   re.findall(r'<a (?:class="ann-xref" )?href="([^"#:]+\.html)(?:#[^"]*)?"', article)}
        linking += len(targets & {p.resolve() for p in pages.values()} - {page.resolve()}) >= 2
    assert linking >= 0.6 * len(pages), f"only {linking} of {len(pages)} pages link to two or more others"


def test_figures_are_drawn_and_placed_beside_their_code(real_site):
    makers = load_hook().figures.figure_makers
    for spec in makers.FIGURES:
        page = _page_html(real_site, spec["module"]).read_text(encoding="utf-8")
        found = re.search(rf'<figure class="ann-figure[^"]*" id="figure-{spec["name"]}"><a href="([^"]+)"[^>]*>'
                          rf'<img src="\1" alt="([^"]+)"[^>]*>', page)
        assert found, f"figure {spec['name']} is not on {spec['module']}'s page"
        svg = (_page_html(real_site, spec["module"]).parent / found.group(1)).read_text(encoding="utf-8")
        assert "<svg" in svg and svg.count("<path") + svg.count("<use") + svg.count("<image") >= 5, spec["name"]
    assert len(makers.FIGURES) >= 7


def test_search_index_has_no_latex_finds_code_and_ranks_annotated_pages_first(real_site):
    import json

    index = json.loads((real_site / "search" / "search_index.json").read_text(encoding="utf-8"))
    docs = index["docs"]
    raw = [d["location"] for d in docs if re.search(r"\\\(|\\\[|\\begin\{|\\frac|\$\$", d["text"])]
    assert not raw, f"LaTeX in search previews: {raw[:5]}"
    assert any("scaled_dot_product_attention" in d["text"] and d["location"].startswith("labml_nn/neox/model.html#")
               for d in docs), "identifiers of the code column are findable"
    boosts = {d["location"].split("#")[0]: d.get("boost", 1) for d in docs}
    assert boosts["labml_nn/neox/model.html"] > boosts["reference/labml_nn/neox/model.html"]
    assert not any(d["location"].startswith("source/") for d in docs)


def test_a_figure_whose_symbol_is_gone_fails_the_build(monkeypatch):
    hook = load_hook()
    spec = dict(name="gone", module="labml_nn/neox/tricky.py", symbol="Gone.method", make=None, depends=(),
                alt="a figure", caption="a caption")
    monkeypatch.setattr(hook.figures.figure_makers, "FIGURES", [spec])
    found = hook.figures.place(FIXTURE_PROJECT, hook.load_modules(FIXTURE_PROJECT))
    assert found["placed"] == {}
    assert found["problems"] == ["figure gone: labml_nn/neox/tricky.py has no `Gone.method` any more; point the "
                                 "figure at the symbol it illustrates (docs/hooks/figure_makers.py, FIGURES)"]
