"""
The site's live model in headless Chromium, held to PyTorch.

The real site is built (`build_site("real")`: the docs hook exports the demo to ONNX, `docs/hooks/live.py`) and
served on 127.0.0.1; the pages' `window.neox` (`docs/javascripts/live/neox.js`) is driven over the DevTools
protocol (`test_docs_browser.py`'s `Browser`) and its answers compared with our PyTorch modules on the same
checkpoint:

* greedy ids: equal to `generation.generate`'s, on three prompts;
* next-token probabilities (the distribution `next_token_distribution` gives, after temperature, top-k, top-p)
  and attention probabilities: within 1e-4 (the site's weights are the demo's fp16 values, computed in fp32);
* nothing large loads before the reader presses a button, and no request goes to any host but the site's own;
* the memory calculator's bytes and GPU counts equal `memory.py`'s;
* every widget works at 390 px (a phone) and at 1280 px, in light and dark mode (screenshots in `live/` beside
  the docs browser test's, outside the repository); opened from disk, each says in one line how to serve the site.

The vendored JavaScript is checked against the lockfile without a browser. Skipped without Chromium.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs_browser import ARTIFACTS as DOCS_ARTIFACTS, Browser, _serve, browser  # noqa: E402,F401  (`browser`: the same fixture)
from test_docs_site import ROOT, build_site  # noqa: E402

ARTIFACTS = DOCS_ARTIFACTS.parent / "live"   # beside the docs browser test's screenshots, outside the repository
DEMO = ROOT / "labml_nn" / "neox" / "demo"
PROMPTS = ["ROMEO:\nBut soft, what light", "To be, or not to be", "KING HENRY:\nOnce more unto the breach, dear"]
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# The vendored files and the lockfile
# ---------------------------------------------------------------------------------------------------------------

def test_vendored_javascript_is_what_the_lockfile_pins():
    sys.path.insert(0, str(ROOT / "scripts"))
    import vendor_js

    manifest = json.loads(vendor_js.MANIFEST.read_text(encoding="utf-8"))
    locked = vendor_js.locked_versions()
    declared = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))["dependencies"]
    assert set(manifest) == set(locked) == set(declared) == set(vendor_js.VENDORED)
    for name, entry in manifest.items():
        assert declared[name] == locked[name] == entry["version"], (
            f"{name}: package.json {declared[name]}, package-lock.json {locked[name]}, vendored {entry['version']}: "
            f"run `npm install && python scripts/vendor_js.py`")
        folder = vendor_js.ASSETS / entry["folder"]
        assert sorted(entry["files"]) == sorted(vendor_js.VENDORED[name][1])
        for file, digest in entry["files"].items():
            assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, (
                f"docs/assets/{entry['folder']}/{file} is not the file vendored from {name} {entry['version']}: "
                f"run `npm ci && python scripts/vendor_js.py`")


# ---------------------------------------------------------------------------------------------------------------
# PyTorch's answers
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.model import NeoXModel
    from labml_nn.neox.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(DEMO)
    model = NeoXModel(*LayerLoader(DEMO, dtype=torch.float32, device="cpu").load()).eval()
    return model, tokenizer


def attention_probabilities(model, ids: torch.Tensor) -> torch.Tensor:
    r"""
    $\operatorname{softmax}(QK^\top/\sqrt{D} + M)$ of every layer and head, `[L, H, T, T]`: `Attention.attend` is
    replaced, for this forward pass, by the formula written out (its inputs are the queries, keys and values
    `Attention.forward` made, rotary embeddings included).
    """
    from labml_nn.neox.model import Attention

    recorded = []

    def attend(self, q, k, v, offset, padding=None):
        n = q.shape[2]
        scores = q @ k.transpose(-1, -2) / self.d_head ** 0.5
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        probs = scores.softmax(-1)
        recorded.append(probs[0])
        return probs @ v

    original = Attention.attend
    Attention.attend = attend
    try:
        with torch.no_grad():
            model(ids)
    finally:
        Attention.attend = original
    return torch.stack(recorded)


# ---------------------------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site():
    site = build_site("real")
    if not (site / "live" / "demo" / "onnx" / "model.onnx").is_file():
        pytest.fail("the built site has no live/demo/onnx/model.onnx: the docs hook did not export the demo "
                    "(see the mkdocs build's log, docs/hooks/live.py)")
    return site


@pytest.fixture(scope="module")
def url(site):
    return _serve(site)


@pytest.fixture(scope="module")
def live_page(browser, url):
    """The generation page, with the model loaded through `window.neox`."""
    browser.set_width(1280)
    browser.goto(f"{url}/labml_nn/neox/generation.html")
    browser.evaluate("neox.generate('a', {max_new_tokens: 1}).then(() => 1)", timeout=120)
    return browser


def test_greedy_ids_equal_pytorch_on_three_prompts(live_page, reference):
    from labml_nn.neox.generation import generate
    from labml_nn.neox.tokenizer import encode

    model, tokenizer = reference
    for prompt in PROMPTS:
        ids = torch.tensor([encode(tokenizer, prompt)])
        expected = generate(model, ids, 40)[0, ids.shape[1]:].tolist()
        page = live_page.evaluate(f"neox.generate({json.dumps(prompt)}, {{max_new_tokens: 40, temperature: 0}})",
                                  timeout=120)
        assert page["ids"] == expected, f"{prompt!r}: page {page['ids']} != PyTorch {expected}"
        assert page["text"] == tokenizer.decode(expected)


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=50, top_p=0.9),
                                      dict(temperature=1.6, top_p=0.5)])
def test_next_token_probabilities_within_1e4_of_pytorch(live_page, reference, settings):
    from labml_nn.neox.generation import next_token_distribution
    from labml_nn.neox.tokenizer import encode

    model, tokenizer = reference
    for prompt in PROMPTS:
        with torch.no_grad():
            logits = model(torch.tensor([encode(tokenizer, prompt)]))[:, -1]
        probs = next_token_distribution(logits, **settings)[0]
        top = probs.topk(10)
        page = live_page.evaluate(f"neox.nextTokenProbabilities({json.dumps(prompt)}, {json.dumps(settings)})",
                                  timeout=60)
        assert len(page) == 10
        page_p = torch.tensor([entry["p"] for entry in page], dtype=torch.float64)
        assert torch.allclose(page_p, top.values.double(), atol=TOLERANCE, rtol=0), (prompt, settings, page)
        # the same tokens, where their probabilities are not tied
        for entry, id_, p in zip(page, top.indices.tolist(), top.values.tolist()):
            assert entry["id"] == id_ or abs(entry["p"] - p) < TOLERANCE, (prompt, settings, page)
            assert entry["token"] == tokenizer.decode([entry["id"]])
        assert all(a["p"] >= b["p"] for a, b in zip(page, page[1:]))


def test_attention_within_1e4_of_pytorch(live_page, reference):
    from labml_nn.neox.tokenizer import encode

    model, tokenizer = reference
    for prompt in PROMPTS:
        ids = torch.tensor([encode(tokenizer, prompt)])
        expected = attention_probabilities(model, ids)
        page = torch.tensor(live_page.evaluate(f"neox.attention({json.dumps(prompt)})", timeout=60))
        assert page.shape == expected.shape, (page.shape, expected.shape)
        assert (page - expected).abs().max() < TOLERANCE, (prompt, (page - expected).abs().max())


# ---------------------------------------------------------------------------------------------------------------
# The widgets, as a reader uses them
# ---------------------------------------------------------------------------------------------------------------

WIDGET_PAGES = [("index.html", "generate"), ("labml_nn/neox/generation.html", "generate"),
                ("labml_nn/neox/tokenizer.html", "tokenize"), ("labml_nn/neox/model.html", "attention"),
                ("labml_nn/neox/model.html", "memory"), ("labml_nn/neox/memory.html", "memory")]

LARGE = (".wasm", ".onnx")

# Presses the widget's button, waits until it shows what it is for, and says what it shows and whether it fits
USE_WIDGET = """(async (name) => {
  const box = document.querySelector(`.neox-live[data-widget="${name}"]`);
  box.scrollIntoView();
  const wait = async (test, what) => {
    for (let i = 0; i < 600; i++) { if (test()) return; await new Promise(r => setTimeout(r, 100)); }
    throw new Error(`${name}: ${what} did not happen`);
  };
  await wait(() => box.querySelector('.neox-widget'), 'the widget mounting');
  const button = box.querySelector('.neox-load');
  if (button) button.click();
  let shown = null;
  if (name === 'generate') {
    await wait(() => !box.querySelector('.neox-run').disabled, 'the model loading');
    await wait(() => box.querySelectorAll('.neox-dist .neox-row').length === 10, 'the distribution');
    const before = box.querySelector('.neox-dist .neox-p').textContent;
    const t = box.querySelector('input[type=range]');
    t.value = 0.3; t.dispatchEvent(new Event('input', {bubbles: true}));
    await wait(() => box.querySelector('.neox-dist .neox-p').textContent !== before, 'the distribution moving');
    box.querySelector('.neox-run').click();
    // the reader moves a slider while the text comes: the distribution's run waits for the generation's step
    await new Promise(r => setTimeout(r, 50));
    t.value = 0.5; t.dispatchEvent(new Event('input', {bubbles: true}));
    await wait(() => box.querySelector('.neox-run').textContent === 'Generate' &&
                     box.querySelector('.neox-output-new').textContent.length > 20, 'generation');
    const status = box.querySelector('.neox-run-row .neox-status').textContent;
    shown = status.endsWith('tokens/s') && box.querySelector('.neox-output-new').textContent;
  } else if (name === 'tokenize') {
    await wait(() => box.querySelectorAll('.neox-chip').length > 5, 'the tokens');
    shown = box.querySelectorAll('.neox-chip').length;
  } else if (name === 'attention') {
    await wait(() => box.querySelector('.neox-heatmap'), 'the heat map');
    const head = box.querySelectorAll('select')[1];
    head.value = '3'; head.dispatchEvent(new Event('change'));
    shown = box.querySelector('.neox-heatmap').querySelectorAll('rect').length;
  } else if (name === 'memory') {
    await wait(() => box.querySelector('table'), 'the table');
    shown = box.querySelectorAll('tbody tr').length;
  }
  box.scrollIntoView();
  window.scrollBy(0, -72);  // below the site's header, for the screenshot
  const r = box.getBoundingClientRect();
  // (the heat map may scroll sideways inside its own box, which must fit)
  const controls = 'input, select, button, textarea, .neox-row, .neox-heatmap-box';
  const inside = [...box.querySelectorAll(controls)].filter(e => {
    const b = e.getBoundingClientRect(); return b.width > 0 && (b.left < r.left - 1 || b.right > r.right + 1); });
  return {shown, left: r.left, right: r.right, viewport: window.innerWidth,
          sideways: document.documentElement.scrollWidth > window.innerWidth + 1,
          overflowing: inside.map(e => e.tagName + '.' + e.className)};
})"""


def _dark(browser: Browser, dark: bool):
    browser.send("Emulation.setEmulatedMedia",
                 {"features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})


def test_nothing_large_loads_before_the_button_and_nothing_leaves_the_site(browser, url):
    browser.send("Network.clearBrowserCache")
    browser.events.clear()
    browser.set_width(1280)
    for page, _ in WIDGET_PAGES:
        browser.goto(f"{url}/{page}")
    before = browser.requested_urls()
    assert not [u for u in before if u.endswith(LARGE)], f"large files loaded before any button: {before}"
    assert any(u.endswith("javascripts/live/main.js") for u in before)
    browser.goto(f"{url}/labml_nn/neox/generation.html")
    found = browser.evaluate(f"({USE_WIDGET})('generate')", timeout=180)
    assert found["shown"]
    urls = browser.requested_urls()
    assert any(u.endswith(".wasm") for u in urls) and any(u.endswith("model.onnx") for u in urls)
    outside = [u for u in urls if not u.startswith((url + "/", "data:", "blob:", "about:"))]
    assert not outside, f"requests to hosts other than the site's own: {outside}"


@pytest.mark.parametrize("width", [390, 1280])
def test_every_widget_is_usable_in_light_and_dark_mode(browser, url, width):
    problems = []
    for dark in (False, True):
        _dark(browser, dark)
        browser.set_width(width)
        for page, name in WIDGET_PAGES:
            browser.goto(f"{url}/{page}")
            # (the emulated preference only counts until the site has stored the reader's choice of palette)
            browser.evaluate(f"document.body.setAttribute('data-md-color-scheme', '{'slate' if dark else 'default'}')")
            found = browser.evaluate(f"({USE_WIDGET})({json.dumps(name)})", timeout=180)
            browser.screenshot(ARTIFACTS / f"{name}-{Path(page).stem}-{width}-{'dark' if dark else 'light'}.png")
            if not found["shown"] or found["sideways"] or found["overflowing"] or found["right"] > width + 1:
                problems.append(f"{page} {name} at {width} px{' dark' if dark else ''}: {found}")
    _dark(browser, False)
    assert not problems, "\n".join(problems)


def test_from_disk_each_widget_says_how_to_serve_the_site(browser, site):
    browser.set_width(1280)
    for page, name in WIDGET_PAGES:
        browser.goto((site / page).as_uri())
        time.sleep(0.2)
        note = browser.evaluate(f"(() => {{ const box = document.querySelector('.neox-live[data-widget={name}]');"
                                f" box.scrollIntoView(); window.scrollBy(0, -72); return box.innerText; }})()")
        browser.screenshot(ARTIFACTS / f"from-disk-{name}-{Path(page).stem}-1280.png")
        assert "mkdocs serve" in note and "python -m http.server" in note and "\n" not in note.strip(), (page, note)


# ---------------------------------------------------------------------------------------------------------------
# The memory calculator against memory.py
# ---------------------------------------------------------------------------------------------------------------

CALCULATE = """(async (model, dtype, batch, tokens) => {
  const box = document.querySelector('.neox-live[data-widget="memory"]');
  for (let i = 0; i < 100 && !box.querySelector('table'); i++) await new Promise(r => setTimeout(r, 100));
  const [m, d] = box.querySelectorAll('select');
  const [b, t] = box.querySelectorAll('input');
  m.value = model; d.value = dtype; b.value = batch; t.value = tokens;
  t.dispatchEvent(new Event('input'));
  const bytes = Object.fromEntries([...box.querySelectorAll('tr[data-part]')].map(r =>
    [r.dataset.part, Number(r.querySelector('[data-bytes]').dataset.bytes)]));
  const gpus = Object.fromEntries([...box.querySelectorAll('tr[data-gpu]')].map(r =>
    [r.dataset.gpu, r.dataset.needed ? Number(r.dataset.needed) : null]));
  return {bytes, gpus};
})"""


def test_memory_calculator_equals_memory_py(browser, url):
    from labml_nn.neox import memory

    browser.set_width(1280)
    browser.goto(f"{url}/labml_nn/neox/model.html")
    cases = [(name, dtype, 1, 2048) for name in memory.KNOWN_MODELS for dtype in ("fp32", "fp16", "int8")]
    cases += [("gpt-neox-20b", "fp16", 8, 2048), ("pythia-70m", "int8", 3, 17), ("pythia-12b", "fp32", 16, 4096),
              ("pythia-1.4b", "fp16", 64, 2048)]
    for name, dtype, batch, tokens in cases:
        config = memory.KNOWN_MODELS[name]
        page = browser.evaluate(f"({CALCULATE})({json.dumps(name)}, {json.dumps(dtype)}, {batch}, {tokens})")
        expected = {"weights": memory.weight_bytes(config, dtype),
                    "kv": memory.kv_cache_bytes(config, batch, tokens, dtype),
                    "activations": memory.activation_bytes(config, batch, tokens, dtype),
                    "total": memory.inference_bytes(config, batch, tokens, dtype)}
        assert page["bytes"] == expected, (name, dtype, batch, tokens)
        assert set(page["gpus"]) == set(memory.GPUS)
        for gpu, needed in page["gpus"].items():
            fits = [memory.fits(name, gpu, dtype, batch, tokens, n_gpus=n) for n in range(1, 9)]
            assert needed == (fits.index(True) + 1 if any(fits) else None), (name, dtype, batch, tokens, gpu)
