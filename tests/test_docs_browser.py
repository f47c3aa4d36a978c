"""
The website in a real browser: headless Chromium, driven over the Chrome DevTools Protocol.

The built site is served on 127.0.0.1 (a `http.server` in a thread, on a free port). Chromium is started with
`--remote-debugging-pipe`, so the protocol runs over two pipes (file descriptors 3 and 4 of the browser) with no
websocket library. Pages are opened at 1280, 1400 and 1440 px (prose beside code) and at 390 and 420 px (a phone:
prose above code); screenshots go to `$NEOX_TEST_ARTIFACTS/docs/` (the temporary folder by default). At 1280 px
and wider, no code block of an annotated page may scroll sideways and no display formula may be clipped; the site
must also work opened from disk.

Skipped when no Chromium binary is installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs_site import ROOT, build_site  # noqa: E402  (shares the session's built sites)

pytestmark = pytest.mark.browser

# Screenshots for a person to look at, outside the repository: `$NEOX_TEST_ARTIFACTS/docs`, or the system's
# temporary folder
ARTIFACTS = Path(os.environ.get("NEOX_TEST_ARTIFACTS")
                 or Path(tempfile.gettempdir()) / "labml-nn-neox-test-artifacts") / "docs"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe` (JSON messages ended by NUL)."""

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="neox-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def give_pipes_as_fds_3_and_4():
            # move both ends above 4 first, so that neither dup2 overwrites the other
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        preexec_fn=give_pipes_as_fds_3_and_4, close_fds=False,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 20.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for_event(self, method: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    def open_tab(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                             session=False)
        self.session = attached["sessionId"]
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Runtime.enable")

    def set_width(self, width: int, height: int = 900):
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})

    def goto(self, url: str):
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        navigation = self.send("Page.navigate", {"url": url})
        if "loaderId" in navigation:
            # a new document (a change of the #fragment only loads nothing)
            self.wait_for_event("Page.loadEventFired")
        # fonts (KaTeX's) loaded, then one more frame so that layout has settled
        self.evaluate("document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => r(1))))")

    def evaluate(self, expression: str, timeout: float = 20.0):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False):
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.evaluate("[document.documentElement.scrollWidth, Math.min(document.documentElement.scrollHeight, 6000)]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@functools.cache
def _serve(site: Path) -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def browser():
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium binary (apt-get install -y chromium)")
    b = Browser(binary)
    try:
        b.send("Browser.getVersion", session=False, timeout=30)
        b.open_tab()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def real_url():
    return _serve(build_site("real"))


@pytest.fixture(scope="module")
def fixture_url():
    return _serve(build_site("fixture"))


# Bounding boxes of the prose and the code of the first section that has both, in CSS pixels.
BOXES = """(() => {
  const section = document.querySelector('.ann-section:not(.ann-no-prose):not(.ann-no-code)');
  if (!section) return null;
  section.scrollIntoView();
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const prose = [...section.querySelector('.ann-docs').children].filter(e => !e.classList.contains('ann-tools'));
  return {prose: box(prose[0]), code: box(section.querySelector('.ann-code pre')),
          page: document.documentElement.scrollWidth, viewport: window.innerWidth};
})()"""

# Text outside rendered maths, code and scripts, in which raw LaTeX would be a bug.
VISIBLE_TEXT = """(() => {
  const skip = n => n.closest && n.closest('.katex, .arithmatex, pre, code, script, style, svg');
  const walker = document.createTreeWalker(document.querySelector('article') || document.body, NodeFilter.SHOW_TEXT);
  let text = '';
  while (walker.nextNode()) { const p = walker.currentNode.parentElement; if (!skip(p)) text += walker.currentNode.data; }
  return text;
})()"""


def _check_layout(browser: Browser, url: str, name: str):
    browser.set_width(1400)
    browser.goto(url)
    wide = browser.evaluate(BOXES)
    browser.screenshot(ARTIFACTS / f"{name}-1400.png")
    assert wide, f"{url}: no section with prose and code"
    prose, code = wide["prose"], wide["code"]
    assert prose["right"] <= code["left"] + 1, f"wide: prose should stand left of the code: {wide}"
    assert prose["top"] < code["bottom"] and code["top"] < prose["bottom"], f"wide: side by side: {wide}"
    assert wide["page"] <= wide["viewport"] + 1, f"wide: the page scrolls sideways: {wide}"

    browser.set_width(420)
    browser.goto(url)
    narrow = browser.evaluate(BOXES)
    browser.screenshot(ARTIFACTS / f"{name}-420.png")
    prose, code = narrow["prose"], narrow["code"]
    assert code["top"] >= prose["bottom"] - 1, f"narrow: code should come below the prose: {narrow}"
    assert narrow["page"] <= narrow["viewport"] + 1, f"narrow: the page scrolls sideways: {narrow}"


def test_fixture_module_side_by_side_when_wide_and_stacked_when_narrow(browser, fixture_url):
    _check_layout(browser, f"{fixture_url}/labml_nn/neox/tricky.html", "fixture-tricky")


def test_real_module_pages_side_by_side_and_stacked(browser, real_url):
    site = build_site("real")
    for name in ("model", "config"):
        if (site / "labml_nn" / "neox" / f"{name}.html").is_file():
            _check_layout(browser, f"{real_url}/labml_nn/neox/{name}.html", f"real-{name}")


def test_maths_is_rendered_by_katex(browser, fixture_url, real_url):
    browser.set_width(1400)
    for url, name in ((f"{fixture_url}/labml_nn/neox/tricky.html", "fixture-tricky"), (f"{real_url}/", "real-home")):
        browser.goto(url)
        counts = browser.evaluate("""({
            katex: document.querySelectorAll('.katex').length,
            display: document.querySelectorAll('.katex-display').length,
            errors: document.querySelectorAll('.katex-error').length,
            unrendered: [...document.querySelectorAll('.arithmatex')].filter(e => !e.querySelector('.katex')).length,
            besideCode: document.querySelectorAll('.ann-docs .katex').length})""")
        assert counts["katex"] >= 3 and counts["display"] >= 1, f"{name}: {counts}"
        assert counts["errors"] == 0 and counts["unrendered"] == 0, f"{name}: {counts}"
        if name.startswith("fixture"):
            assert counts["besideCode"] >= 1, "maths in the prose beside the code"
        text = browser.evaluate(VISIBLE_TEXT)
        for raw in ("$$", "\\frac", "\\begin{", "\\theta"):
            assert raw not in text, f"{name}: raw {raw!r} visible"
        # the KaTeX fonts were loaded from the site
        fonts = browser.evaluate("[...document.fonts].filter(f => f.family.includes('KaTeX') && f.status == 'loaded').length")
        assert fonts >= 1


def test_no_request_leaves_the_machine(browser, fixture_url, real_url):
    browser.events.clear()
    browser.set_width(1400)
    pages = [f"{real_url}/", f"{fixture_url}/labml_nn/neox/tricky.html",
             f"{fixture_url}/reference/labml_nn/neox/tricky.html", f"{fixture_url}/samples/demo.html"]
    for url in pages:
        browser.goto(url)
    # search: the index is fetched and searched locally
    browser.evaluate("""(() => { const i = document.querySelector('.md-search__input');
        i.focus(); i.value = 'tricky'; i.dispatchEvent(new Event('input', {bubbles: true})); return 1; })()""")
    deadline = time.monotonic() + 10
    results = 0
    while time.monotonic() < deadline and not results:
        time.sleep(0.2)
        results = browser.evaluate("document.querySelectorAll('.md-search-result__item').length")
    browser.screenshot(ARTIFACTS / "search.png")
    assert results >= 1, "the built-in search found nothing"
    urls = browser.requested_urls()
    assert urls
    outside = [u for u in urls if not u.startswith(("http://127.0.0.1:", "data:", "blob:", "about:"))]
    assert not outside, f"requests that leave the machine: {outside}"


def test_copy_button_and_permalinks(browser, fixture_url):
    browser.set_width(1400)
    browser.goto(f"{fixture_url}/labml_nn/neox/tricky.html#src-decorated")
    found = browser.evaluate("""({
        copy: document.querySelectorAll('.ann-code .md-code__button[data-md-type=copy], .ann-code .md-clipboard').length,
        sections: document.querySelectorAll('.ann-section').length,
        permalinks: document.querySelectorAll('.ann-section .ann-permalink').length,
        target: document.querySelector(':target') && document.querySelector(':target').id,
        copied: (() => { const b = document.querySelector('#src-decorated .md-code__button[data-md-type=copy], #src-decorated .md-clipboard');
                         if (!b) return null;
                         const code = document.querySelector(b.getAttribute('data-clipboard-target'));
                         code.setAttribute('data-md-copying', ''); const t = code.innerText.trimEnd(); code.removeAttribute('data-md-copying');
                         return t; })()})""")
    browser.screenshot(ARTIFACTS / "fixture-tricky-target.png")
    assert found["copy"] >= found["sections"] - 2, found
    assert found["permalinks"] == found["sections"], found
    assert found["target"] == "src-decorated", found
    # what the copy button copies is the code, without line numbers
    assert found["copied"] == ("@staticmethod\n@decorator(\n    option=1,  # inside the decorator's brackets\n)\n"
                               "def decorated(x):\n    return x"), found["copied"]


# Per page: code blocks wider than their box, and display formulas wider than theirs (after KaTeX has set an
# over-wide one smaller), or cut without the visible cue of a scrolling formula.
OVERFLOW = """(() => {
  const code = [...document.querySelectorAll('.ann-code pre')].filter(pre => {
    const c = pre.querySelector('code') || pre;
    return c.scrollWidth > c.clientWidth + 1 || pre.scrollWidth > pre.clientWidth + 1;
  }).map(pre => pre.closest('[id]').id);
  const maths = [...document.querySelectorAll('.katex-display')];
  // beside code, a formula must stay in the prose column; elsewhere, on the screen
  const right = m => { const docs = m.closest('.ann-docs'); return docs ? docs.getBoundingClientRect().right : window.innerWidth; };
  const clipped = maths.filter(m => m.scrollWidth > m.clientWidth + 1 || m.getBoundingClientRect().right > right(m) + 1);
  return {code, blocks: document.querySelectorAll('.ann-code pre').length, maths: maths.length,
          clipped: clipped.map(m => m.textContent.slice(0, 40)),
          uncued: clipped.filter(m => !m.classList.contains('ann-math-scrolls')).length,
          sideways: document.documentElement.scrollWidth > window.innerWidth + 1};
})()"""


def _annotated_pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).as_posix().startswith(("reference/", "source/"))
                  and 'class="ann-sections"' in p.read_text(encoding="utf-8"))


def test_no_code_block_scrolls_sideways_and_no_formula_is_clipped_at_1280_and_1440(browser, real_url):
    site = build_site("real")
    pages = _annotated_pages(site) + ["index.html"]
    assert len(pages) >= 10
    for width in (1280, 1440):
        browser.set_width(width)
        bad, blocks, maths = [], 0, 0
        for page in pages:
            browser.goto(f"{real_url}/{page}")
            found = browser.evaluate(OVERFLOW)
            blocks += found["blocks"]
            maths += found["maths"]
            if found["code"] or found["clipped"] or found["sideways"]:
                bad.append(f"{page}: {found}")
        assert blocks > 100 and maths >= 10
        assert not bad, f"at {width} px:\n" + "\n".join(bad)


def test_screenshots_and_a_phone_shows_everything(browser, real_url):
    for width in (1280, 1440, 390):
        browser.set_width(width)
        for page, name in (("index.html", "home"), ("labml_nn/neox/model.html", "model"),
                           ("labml_nn/neox/llm_int8.html", "llm_int8")):
            browser.goto(f"{real_url}/{page}")
            browser.screenshot(ARTIFACTS / f"{name}-{width}.png")
            if name == "model":
                browser.evaluate("document.getElementById('src-RotaryEmbedding').scrollIntoView()")
                browser.screenshot(ARTIFACTS / f"{name}-rope-{width}.png")
            if width == 390:
                found = browser.evaluate(OVERFLOW)
                assert not found["sideways"] and not found["code"], found
                assert found["uncued"] == 0, f"{page}: formulas cut without a cue: {found}"


def test_figures_are_rendered_with_alt_text(browser, real_url):
    site = build_site("real")
    pages = sorted({p for p in _annotated_pages(site) if 'class="ann-figure' in (site / p).read_text(encoding="utf-8")})
    browser.set_width(1280)
    shown = 0
    for page in pages:
        browser.goto(f"{real_url}/{page}")
        figures = browser.evaluate("""Promise.all([...document.querySelectorAll('.ann-figure img')].map(img =>
            img.decode().then(() => [img.alt, img.naturalWidth, img.getBoundingClientRect().width],
                              () => [img.alt, 0, 0])))""")
        for alt, natural, width in figures:
            assert alt and natural > 0 and width > 150, (page, alt, natural, width)
            shown += 1
    assert shown >= 7


def test_the_site_works_from_disk(browser):
    site = build_site("real")
    browser.set_width(1280)
    browser.goto((site / "index.html").as_uri())
    href = browser.evaluate("[...document.querySelectorAll('article a')].find(a => a.getAttribute('href') == "
                            "'labml_nn/neox/model.html').href")
    browser.goto(href)
    found = browser.evaluate("({title: document.title, url: location.href, "
                             "sections: document.querySelectorAll('.ann-section').length})")
    browser.screenshot(ARTIFACTS / "from-disk-model-1280.png")
    assert found["url"].startswith("file://") and found["url"].endswith("neox/model.html"), found
    assert found["title"].startswith("GPT-NeoX model") and found["sections"] > 10, found


# The smallest text of each figure as the browser shows it. A figure is an SVG in an `<img>`, scaled to the width
# it is shown at: text of `f` units (the SVG's own, matplotlib writes them as `font-size: 10px`) in an SVG whose
# viewBox is `W` units wide, shown `w` CSS px wide (the image's box less its padding), is `f * w / W` px tall.
FIGURE_TEXT = """Promise.all([...document.querySelectorAll('.ann-figure')].map(async figure => {
  const img = figure.querySelector('img'), box = figure.querySelector('a');
  await img.decode().catch(() => null);
  const svg = new DOMParser().parseFromString(await (await fetch(img.src)).text(), 'image/svg+xml').documentElement;
  const sizes = [];
  for (const e of svg.querySelectorAll('*')) {
    const style = (e.getAttribute('style') || '') + ';font-size:' + (e.getAttribute('font-size') || '');
    for (const m of style.matchAll(/font(?:-size)?:[^;]*?([0-9.]+)px/g)) sizes.push(parseFloat(m[1]));
  }
  const css = getComputedStyle(img);
  const shown = img.getBoundingClientRect().width - parseFloat(css.paddingLeft) - parseFloat(css.paddingRight);
  return {id: figure.id, texts: sizes.length, smallest: Math.min(...sizes) * shown / svg.viewBox.baseVal.width,
          scrolls: box.scrollWidth > box.clientWidth + 1, cue: figure.classList.contains('ann-figure-scrolls'),
          page: document.documentElement.scrollWidth > window.innerWidth + 1};
}))"""


def test_every_figure_s_text_is_at_least_10_px_at_1280_and_390(browser, real_url):
    site = build_site("real")
    pages = sorted({p for p in _annotated_pages(site) if 'class="ann-figure' in (site / p).read_text(encoding="utf-8")})
    for width in (1280, 390):
        browser.set_width(width)
        measured, bad = 0, []
        for page in pages:
            browser.goto(f"{real_url}/{page}")
            for found in browser.evaluate(FIGURE_TEXT):
                measured += 1
                where = f"{page} {found['id']} at {width} px"
                if not found["texts"] or found["smallest"] < 10 - 0.05:
                    bad.append(f"{where}: smallest text {found['smallest']:.1f} px ({found['texts']} sizes)")
                if found["page"]:
                    bad.append(f"{where}: the page scrolls sideways")
                # on a wide screen every figure fits its column; on a phone a figure too wide to shrink scrolls in
                # its own box, and says so
                if width == 1280 and found["scrolls"]:
                    bad.append(f"{where}: wider than its column")
                if found["cue"] != found["scrolls"]:
                    bad.append(f"{where}: scrolls {found['scrolls']} but its cue is {found['cue']}")
        assert measured >= 11
        assert not bad, "\n".join(bad)
    browser.set_width(390)
    browser.goto(f"{real_url}/labml_nn/neox/tensor_parallel.html#figure-tp-qkv-layout")
    browser.screenshot(ARTIFACTS / "tensor-parallel-figure-390.png")


# ---------------------------------------------------------------------------------------------------------------
# Code blocks in prose, the sidebar's title and its outline (issue 24)
# ---------------------------------------------------------------------------------------------------------------

# Code blocks outside the annotated code: which scroll sideways, and whether those carry the cue
PROSE_CODE = """(() => [...document.querySelectorAll('article pre > code')].filter(c => !c.closest('.ann-code'))
  .filter(c => c.scrollWidth > c.clientWidth + 1)
  .map(c => ({where: (c.closest('[id]') || {}).id, cued: c.classList.contains('ann-code-scrolls'),
              mask: getComputedStyle(c).maskImage || getComputedStyle(c).webkitMaskImage || 'none'})))()"""


def _prose_pages(site: Path) -> list[str]:
    # Pages with a code block in prose: every annotated section's code is one `<pre>` in a `class="ann-code"`,
    # so a page with more `<pre>` than those has prose code too (20 of 39 pages; opening only these, once per
    # layout, keeps the test to about a minute instead of three)
    def has_prose_code(text: str) -> bool:
        return text.count("<pre") > text.count('class="ann-code"')
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).as_posix().startswith(("reference/", "source/", "figures/"))
                  and p.name != "404.html" and has_prose_code(p.read_text(encoding="utf-8")))


def test_prose_code_blocks_wrap_when_wide_and_scroll_with_a_cue_on_a_phone(browser, real_url):
    site = build_site("real")
    pages = _prose_pages(site)
    assert "index.html" in pages, pages
    scrolling = []
    for page in pages:
        browser.set_width(1280)
        browser.goto(f"{real_url}/{page}")
        # each page once, looked at at 1280 px and again at 1440 (the same document, re-laid out)
        for width in (1280, 1440):
            browser.set_width(width)
            scrolling += [f"{page} at {width} px: {found['where']}" for found in browser.evaluate(PROSE_CODE)]
    assert not scrolling, "code blocks in prose scroll sideways:\n" + "\n".join(scrolling)
    # On a phone a block keeps its lines and scrolls: faded at the right edge until scrolled to its end
    browser.set_width(390)
    cued = 0
    for page in pages:
        browser.goto(f"{real_url}/{page}")
        for found in browser.evaluate(PROSE_CODE):
            assert found["cued"] and found["mask"] != "none", f"{page}: {found} scrolls without a cue"
            cued += 1
    assert cued > 0, "no code block in prose is wider than a phone: the cue is untested"
    browser.goto(f"{real_url}/index.html")
    ended = browser.evaluate("""(() => { const c = document.querySelector('code.ann-code-scrolls');
        c.scrollLeft = c.scrollWidth; return new Promise(r => setTimeout(() => r(
          [c.classList.contains('ann-code-end'), getComputedStyle(c).maskImage || getComputedStyle(c).webkitMaskImage]), 100)); })()""")
    assert ended[0] and ended[1] == "none", ended


def test_the_sidebar_title_covers_no_entry_scrolled_beneath_it(browser, real_url):
    browser.set_width(1280)
    browser.goto(f"{real_url}/labml_nn/neox/model.html")
    covered = browser.evaluate("""(() => {
      const wrap = document.querySelector('.md-sidebar--primary .md-sidebar__scrollwrap');
      wrap.scrollTop = wrap.scrollHeight / 3;
      const title = document.querySelector('.md-sidebar--primary .md-nav--primary > .md-nav__title').getBoundingClientRect();
      const view = wrap.getBoundingClientRect();
      return [...wrap.querySelectorAll('a.md-nav__link')].map(a => [a.textContent.trim(), a.getBoundingClientRect()])
        .filter(([, r]) => r.height > 0 && r.bottom > view.top && r.top < view.bottom)
        .filter(([, r]) => r.top < title.bottom - 1 && r.bottom > title.top + 1 && title.height > 0)
        .map(([text]) => text);
    })()""")
    assert covered == [], f"the sidebar's title covers {covered}"


def test_the_outline_highlights_the_section_being_read(browser, real_url):
    browser.set_width(1280)
    browser.goto(f"{real_url}/labml_nn/neox/model.html")
    for heading in ("the-key-value-cache", "multi-head-attention", "feed-forward-network", "transformer-layer"):
        # the section's heading a quarter of the way down the window: that section fills the screen
        browser.evaluate(f"""(() => {{ const h = document.getElementById('{heading}');
            window.scrollTo(0, h.getBoundingClientRect().top + window.scrollY - window.innerHeight / 4); return 1; }})()""")
        active = browser.evaluate("""new Promise(r => setTimeout(() => r([...document.querySelectorAll(
            '.md-sidebar--primary .md-nav--secondary a.md-nav__link--active')].map(a => a.getAttribute('href'))), 300))""")
        assert active == [f"#{heading}"], (heading, active)
