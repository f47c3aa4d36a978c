r"""
What the site's figures draw is what the code does. The residual figure is drawn from `TransformerLayer.forward`
traced with `torch.fx` (`docs/hooks/figure_makers.py`, `layer_graph`): every addition of the traced layer takes
the residual stream (the layer's input or an earlier addition) as an input, for both residual forms, and the
figure draws every edge of that graph where it can be seen, a skip connection around the boxes it skips rather
than through them.
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))
sys.path.insert(0, str(ROOT / "tests"))
figure_makers = pytest.importorskip("figure_makers")


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel residual", "sequential residual"])
def test_each_addition_of_the_traced_layer_takes_the_residual_stream(parallel):
    nodes, edges = figure_makers.layer_graph(parallel)
    adds = [n for n, (label, _) in nodes.items() if label == "+"]
    assert len(adds) == 2
    stream = {"x"} | set(adds)
    for add in adds:
        inputs = [a for a, b in edges if b == add]
        assert len(inputs) == 2, (add, inputs)
        # one input is the residual stream, the other a branch (attention or the FFN)
        assert sum(a in stream for a in inputs) == 1, (add, inputs)
        assert any(nodes[a][0] in ("Attn", "FFN") for a in inputs), (add, inputs)
    # the layer's output is the last addition, and in the sequential form the FFN reads the first one (through LN2)
    assert [a for a, b in edges if b == "output"] == [adds[-1]]
    if not parallel:
        assert ("add", "post_attention_layernorm") in edges


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel residual", "sequential residual"])
def test_every_edge_is_drawn_and_none_hides_behind_a_box(parallel):
    nodes, edges = figure_makers.layer_graph(parallel)
    position = figure_makers.layout(nodes)
    routes = figure_makers.routes(nodes, edges, position)
    assert set(routes) == set(edges)
    half_w, half_h = figure_makers.BOX
    for (a, b), points in routes.items():
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            for t in [i / 50 for i in range(51)]:
                x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
                for other in nodes:
                    if other in (a, b):
                        continue
                    ox, oy = position[other]
                    assert not (abs(x - ox) < half_w and abs(y - oy) < half_h), \
                        f"edge {a} -> {b} passes behind {other}"
    if not parallel:
        # the two skip connections of the sequential layer go around the chain
        assert len(routes["x", "add"]) > 2 and len(routes["add", "add_1"]) > 2


# ## The numbers a page prints are the numbers its code computes

def test_the_tensor_parallel_page_prints_what_its_code_computes_and_draws_its_figures():
    import json
    import re

    import torch
    from test_docs_site import _page_html, build_site

    from labml_nn.neox import tensor_parallel as tp
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    site = build_site("real")
    page = _page_html(site, "labml_nn/neox/tensor_parallel.py").read_text(encoding="utf-8")
    assert "{{" not in page
    for name in ("tp-cuts", "tp-qkv-layout", "tp-all-reduce", "tp-wrong-ways"):
        assert f'id="figure-{name}"' in page, name
    shown = re.findall(r'<span class="ann-value"[^>]*>([^<]+(?:<sup>[^<]+</sup>)?)</span>', page)
    demo = ROOT / "labml_nn" / "neox" / "demo"
    ids = torch.tensor([encode(load_tokenizer(demo), figure_makers.SHAKESPEARE)])
    found = tp.errors(*tp.ranks_of_checkpoint(demo), ids)
    for key in ("qkv_chunk", "qkv_concat", "bias_average"):
        assert f"{found[key]['max_abs']:.2g}" in shown, (key, found[key], shown)
        assert f"{found[key]['top1_changed']:.0%}" in shown, (key, found[key], shown)
    mantissa, exponent = f"{found['right']['max_abs']:.1e}".split("e")
    assert f"{mantissa} × 10<sup>{int(exponent)}</sup>" in shown
    # and the speed figure's caption reads the benchmark's own numbers
    runs = json.loads((ROOT / "benchmarks/results/decode.json").read_text(encoding="utf-8"))["runs"]
    decoding = _page_html(site, "labml_nn/neox/cpu_decoding.py").read_text(encoding="utf-8")
    assert 'id="figure-decode-speed"' in decoding and "{{" not in decoding
    assert f">{runs[1]['floor_tokens_per_s']:g}</span> tokens/s" in decoding


def test_a_value_no_code_computes_is_a_warning(caplog):
    import logging

    import figures

    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.annotate"):
        text = figures.fill_values("error {{known}}, {{unknown}}", {"known": "3.1"}, "page.py:12")
    assert "3.1" in text and "{{unknown}}" in text
    assert any("no computed value `unknown`" in r.message for r in caplog.records)
