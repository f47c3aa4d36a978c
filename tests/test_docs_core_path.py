"""
The core path of the built site answers the questions a learner brings to GPT-NeoX (issue 24's twelve), and its
numbers are the ones `memory.py` computes. Each check reads the built pages' text, so a page that loses its answer
fails here. (The site is built once per session, shared with `test_docs_site.py`.)
"""

from __future__ import annotations

import html
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs_site import ROOT, _page_html, build_site  # noqa: E402


def _numbers():
    spec = importlib.util.spec_from_file_location("docs_hook_learner_numbers", ROOT / "docs" / "hooks" / "learner_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _core_paths() -> list[str]:
    path = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["extra"]["reading_path"]
    first = next(iter(path.values()))
    return [e if isinstance(e, str) else next(iter(e)) for e in first]


def _html(site: Path, path: str) -> str:
    page = site / "index.html" if path == "index" else (
        _page_html(site, path) if path.endswith(".py") else site / path.replace(".md", ".html"))
    return page.read_text(encoding="utf-8")


def _text(page_html: str) -> str:
    """The article's text, tags removed, maths kept as its LaTeX source."""
    article = page_html[page_html.find("<article"):page_html.find("</article>")]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", article)))


@pytest.fixture(scope="module")
def core() -> dict[str, str]:
    site = build_site("real")
    pages = {p: _text(_html(site, p)) for p in _core_paths() if (site / "index.html").exists()
             and (_page_html(site, p) if p.endswith(".py") else site / p.replace(".md", ".html")).exists()}
    pages["index"] = _text(_html(site, "index"))
    return pages


def _on_core(core: dict[str, str], *patterns: str) -> list[str]:
    """The core pages whose text matches every pattern (regular expressions, case-insensitive)."""
    return [p for p, text in core.items() if all(re.search(q, text, re.I) for q in patterns)]


def test_the_core_path_is_the_first_group_and_holds_the_model(core):
    paths = _core_paths()
    for needed in ("labml_nn/neox/config.py", "labml_nn/neox/model.py", "labml_nn/neox/memory.py",
                   "labml_nn/neox/generation.py", "labml_nn/neox/llm_int8.py", "labml_nn/neox/training/finetune.py"):
        assert needed in paths
    assert "labml_nn/neox/checkpoint/atomic.py" not in paths and "labml_nn/neox/cpu_gemv.py" not in paths


def test_a_reader_of_the_core_path_can_answer_the_twelve_questions(core):
    n = _numbers().figures()
    questions = {
        "the parallel residual": [r"parallel residual", r"x_l \+ \\operatorname\{Attn\}\(\\operatorname\{LN\}_1\(x_l\)\) "
                                  r"\+ \\operatorname\{FFN\}\(\\operatorname\{LN\}_2\(x_l\)\)"],
        "which features RoPE rotates, and how": [r"rotates? only the first", r"24 of 96|d = 24", r"rotate half"],
        "how the 20B shards merge": [r"concatenate on dim 0", r"concatenate on dim 1", r"\bsum\b", r"average"],
        "the fused query_key_value layout": [r"\[B, T, H, 3, D\]", r"chunk\(3\)"],
        "the KV cache and its size": [r"key-value cache", re.escape(n["20b-kv-token"]), re.escape(n["20b-kv-2048"])],
        "LLM.int8's outliers": [r"outlier", r"threshold", r"int8"],
        "the GELU variant": [r"tanh approximation", r"bias_gelu_fusion"],
        "loading a Pythia step": [r"EleutherAI/pythia-160m", r"revision=\"step\d+\""],
        "BitFit": [r"BitFit", r"biases"],
        "lm-eval's loglikelihood": [r"loglikelihood", r"log-probabilit"],
        "why decoding is memory-bound": [r"memory-bound", r"reads? (?:all )?(?:the )?weights|reading the weights"],
        "memory for 20B on GPUs": [r"gpt-neox-20b", re.escape(n["20b-fp16"]), re.escape(n["20b-int8"]), r"smallest card"],
    }
    unanswered = [q for q, patterns in questions.items() if not _on_core(core, *patterns)]
    assert not unanswered, f"no core page answers: {unanswered}"


def test_every_core_page_ends_with_check_yourself_answers_computed_by_our_code(core):
    numbers = _numbers()
    for path in _core_paths():
        if path in numbers.QUESTIONS and path in core:
            assert "Check yourself" in core[path], path
    # the answers are the code's: Pythia-160M's parameter count, 20B's cache at 2,048 tokens
    from labml_nn.neox import memory
    assert f"{memory.parameter_count(memory.KNOWN_MODELS['pythia-160m']):,}" in core["labml_nn/neox/model.py"]
    assert numbers.gb(memory.kv_cache_bytes(memory.KNOWN_MODELS["gpt-neox-20b"], 1, 2048)) in core["labml_nn/neox/memory.py"]


def test_20b_sizes_agree_everywhere_and_gb_is_said():
    site = build_site("real")
    stale = [p.relative_to(site).as_posix() for p in site.rglob("*.html")
             if re.search(r"\b39 ?GB\b(?!/s)|\b20 billion parameters", _text(p.read_text(encoding="utf-8")))]
    assert not stale, f"pages still giving 20B's old size: {stale}"
    memory_page = _text(_html(site, "labml_nn/neox/memory.py"))
    assert re.search(r"GB means .*10\^9|GB means .*10\^\{?9", memory_page)


def test_the_tensor_parallel_page_draws_its_figures_when_it_exists():
    site = build_site("real")
    page = _page_html(site, "labml_nn/neox/tensor_parallel.py")
    if not (ROOT / "labml_nn" / "neox" / "tensor_parallel.py").exists() or not page.exists():
        pytest.skip("labml_nn/neox/tensor_parallel.py is not in this tree yet")
    text = page.read_text(encoding="utf-8")
    if len((ROOT / "labml_nn" / "neox" / "tensor_parallel.py").read_text(encoding="utf-8").splitlines()) < 5:
        pytest.skip("a local one-line placeholder, not the essay")
    assert text.count('class="ann-figure') >= 2
    assert re.search(r"chunk\(3\)", _text(text))


def test_a_group_of_parts_becomes_nested_sections_and_map_headings():
    spec = importlib.util.spec_from_file_location("docs_hook_reading_path", ROOT / "docs" / "hooks" / "reading_path.py")
    rp = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = rp  # (its dataclass looks itself up there)
    spec.loader.exec_module(rp)
    stops, problems = rp.read({"reading_path": {
        "The core path": ["a.py", {"b.py": "the model"}],
        "Engineering notes": {"Checkpoints": ["c.py"], "Commands": ["d.py"]}}})
    assert not problems
    assert [(s.group, s.part, s.path) for s in stops] == [
        ("The core path", "The core path", "a.py"), ("The core path", "The core path", "b.py"),
        ("Engineering notes", "Checkpoints", "c.py"), ("Engineering notes", "Commands", "d.py")]
    pages = {p: p.replace(".py", ".md") for p in ("a.py", "b.py", "c.py", "d.py")}
    titles = {p: p.upper() for p in pages}
    assert rp.nav(stops, pages, titles) == [
        {"The core path": [{"A.PY": "a.md"}, {"B.PY": "b.md"}]},
        {"Engineering notes": [{"Checkpoints": [{"C.PY": "c.md"}]}, {"Commands": [{"D.PY": "d.md"}]}]}]
    home = rp.home_map(stops, pages, titles, {})
    assert home.index("### The core path") < home.index("### Engineering notes") < home.index("#### Checkpoints")
    # a part that is neither a list nor a mapping of lists is named
    assert rp.read({"reading_path": {"Engineering notes": {"Checkpoints": "c.py"}}})[1]


def test_next_and_previous_name_the_group_of_the_page_they_lead_to():
    site = build_site("real")
    last_core = _core_paths()[-1]
    page = _html(site, last_core)
    found = re.search(r'md-footer__link--next".*?md-footer__direction">(.*?)</span>\s*</span>', page, re.S)
    assert found and "Engineering notes" in found.group(1), found and found.group(1)
    first = _html(site, _core_paths()[1])
    assert re.search(r'md-footer__link--prev".*?The core path', first, re.S)
