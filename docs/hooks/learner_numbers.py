r"""
# Numbers a learner asks for, computed when the site is built

Two things, both computed by the project's own code at build time, so that no page can disagree with it:

* **the memory table**: where a page holds `<!--memory-table-->` (the memory page, the home page) it gets a
  table of every published model's parameters, weights in fp16 and LLM.int8, key-value cache and the smallest
  card that holds it, from `labml_nn/neox/memory.py`; `<!--memory:NAME-->` in a page of `docs/` is one figure
  of it (`<!--memory:20b-fp16-->` is "41.1 GB");
* **"Check yourself"**: two or three questions at the end of each page of the core path, with folded answers.
  The questions are all here, in `QUESTIONS` (page → question → the function that computes its answer); a
  page that does not exist (yet) gets none.
"""

from __future__ import annotations

import functools
from pathlib import Path

MB = 10 ** 6
GB = 10 ** 9


def _memory():
    from labml_nn.neox import memory
    return memory


def _three(x: float) -> str:
    """Three significant figures, without an exponent: 41.1, 2.21, 0.0369."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def gb(n: int) -> str:
    """Bytes as the site writes them: GB ($10^9$ bytes), three significant figures."""
    return f"{_three(n / GB)} GB"


def mb(n: int) -> str:
    return f"{_three(n / MB)} MB"


def _20b():
    return _memory().KNOWN_MODELS["gpt-neox-20b"]


# The single figures `<!--memory:NAME-->` stands for
def figures() -> dict[str, str]:
    m, c = _memory(), _20b()
    return {
        "20b-params": f"{m.parameter_count(c):,}",
        "20b-params-billions": f"{m.parameter_count(c) / 1e9:.2f} billion",
        "20b-fp16": gb(m.weight_bytes(c, "fp16")),
        "20b-int8": gb(m.weight_bytes(c, "int8")),
        "20b-kv-token": mb(m.kv_cache_bytes(c, 1, 1, "fp16")),
        "20b-kv-2048": gb(m.kv_cache_bytes(c, 1, 2048, "fp16")),
    }


def _smallest_card(config, dtype: str) -> str:
    m = _memory()
    for name, size in sorted(m.GPUS.items(), key=lambda item: item[1]):
        if m.fits(config, name, dtype, batch=1, tokens=config.n_ctx):
            return name
    for n in (2, 4, 8):
        if m.fits(config, max(m.GPUS, key=m.GPUS.get), dtype, batch=1, tokens=config.n_ctx, n_gpus=n):
            return f"{n} × {max(m.GPUS, key=m.GPUS.get)}"
    return "more than 8 cards"


def memory_table() -> str:
    m = _memory()
    rows = ["| model | parameters | fp16 | LLM.int8 | cache a token (fp16) | cache, 2,048 tokens | "
            "smallest card, fp16 | smallest card, int8 |",
            "|---|---:|---:|---:|---:|---:|---|---|"]
    for name, c in m.KNOWN_MODELS.items():
        rows.append(f"| {name} | {m.parameter_count(c):,} | {gb(m.weight_bytes(c, 'fp16'))} | "
                    f"{gb(m.weight_bytes(c, 'int8'))} | {mb(m.kv_cache_bytes(c, 1, 1))} | "
                    f"{gb(m.kv_cache_bytes(c, 1, 2048))} | {_smallest_card(c, 'fp16')} | {_smallest_card(c, 'int8')} |")
    return ("\n".join(rows) + "\n\nA card holds a model when the weights, a full 2,048-token cache and the "
            "activations of a forward pass over it (`inference_bytes`, batch 1) fit in its memory; GB is $10^9$ "
            "bytes.\n")


def substitute(markdown: str) -> str:
    """Replace the memory markers of a page's Markdown with the computed table and figures."""
    if "<!--memory" not in markdown:
        return markdown
    markdown = markdown.replace("<!--memory-table-->", memory_table())
    for name, value in figures().items():
        markdown = markdown.replace(f"<!--memory:{name}-->", value)
    return markdown


# ---------------------------------------------------------------------------------------------------------------
# Check yourself
# ---------------------------------------------------------------------------------------------------------------

def _meta_model(config):
    """Our model, built on the meta device (shapes only, no memory), as a list of modules."""
    import torch
    from labml_nn.neox.model import build_layers
    with torch.device("meta"):
        return build_layers(config)


def _numel(modules) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def _rotary():
    c = _20b()
    return (f"{c.d_rotary} of {c.d_head}: `rotary_pct` {c.rotary_pct} × $D$ = {c.d_head}. The first {c.d_rotary} "
            f"features of each query and key head turn, in {c.d_rotary // 2} pairs (feature $i$ with $i + "
            f"{c.d_rotary // 2}$); the other {c.d_head - c.d_rotary} pass through unchanged, and values are "
            f"never rotated.")


def _shapes_160m():
    c = _memory().KNOWN_MODELS["pythia-160m"]
    return (f"$C$ = {c.d_model}, $H$ = {c.n_heads}, $D$ = {c.d_head}, $L$ = {c.n_layers}, $V$ = {c.n_vocab:,}; "
            f"the feed-forward network is {c.d_ff} wide ($4C$).")


def _pythia_1b():
    m = _memory()
    a, b = m.KNOWN_MODELS["pythia-1b"], m.KNOWN_MODELS["pythia-1.4b"]
    return (f"Pythia-1B has {a.n_layers} layers of {a.n_heads} heads, $D$ = {a.d_head}; Pythia-1.4B "
            f"{b.n_layers} layers of {b.n_heads} heads, $D$ = {b.d_head}. Same $C$ = {a.d_model}, so each layer "
            f"has the same {12 * a.d_model ** 2 + 13 * a.d_model:,} parameters; the heads only cut them "
            f"differently.")


def _d_ff():
    c = _20b()
    return f"{c.d_ff:,}: `d_ff` 0 means $4C$ = 4 × {c.d_model}, filled in by `NeoXConfig.__post_init__`."


def _count_160m():
    m = _memory()
    c = m.KNOWN_MODELS["pythia-160m"]
    counted = _numel(_meta_model(c))
    return (f"{counted:,}, the sum of `numel()` over a Pythia-160M built from this page's modules: embedding "
            f"and readout {c.n_vocab:,} × {c.d_model} each ({c.n_vocab * c.d_model:,}), {c.n_layers} layers of "
            f"$12C^2 + 13C$ = {12 * c.d_model ** 2 + 13 * c.d_model:,}, and the final norm's {2 * c.d_model:,}. "
            f"The embedding and readout are {2 * c.n_vocab * c.d_model / counted:.0%} of this small model.")


def _share_20b():
    m = _memory()
    c = _20b()
    n = m.parameter_count(c)
    layers = c.n_layers * (12 * c.d_model ** 2 + 13 * c.d_model)
    return (f"{layers / n:.1%} of its {n:,} parameters are in the {c.n_layers} transformer layers; the embedding "
            f"and the readout are {2 * c.n_vocab * c.d_model / n:.1%}.")


def _residual():
    c = _20b()
    form = ("the parallel one, $x + \\operatorname{Attn}(\\operatorname{LN}_1(x)) + "
            "\\operatorname{FFN}(\\operatorname{LN}_2(x))$: both branches read the same $x$"
            if c.parallel_residual else "the sequential one")
    return f"`parallel_residual` is {c.parallel_residual} in its config: {form}."


def _kv_20b():
    m, c = _memory(), _20b()
    return (f"$2 \\cdot L \\cdot C$ = 2 × {c.n_layers} × {c.d_model} numbers a token, 2 bytes each in fp16: "
            f"{mb(m.kv_cache_bytes(c, 1, 1))} a token, {gb(m.kv_cache_bytes(c, 1, 2048))} at 2,048 tokens "
            f"(`kv_cache_bytes`).")


def _fits_20b():
    m, c = _memory(), _20b()
    fp16 = m.inference_bytes(c, 1, 2048, "fp16")
    int8 = m.inference_bytes(c, 1, 2048, "int8")
    card80, card40, card24 = "A100 / H100 (80 GB)", "A100 (40 GB)", "RTX 4090 / A10 (24 GB)"
    yes = {True: "yes", False: "no"}
    return (f"fp16 needs {gb(fp16)} with a 2,048-token cache: one 80 GB card, {yes[m.fits(c, card80, 'fp16')]}; "
            f"one 40 GB card, {yes[m.fits(c, card40, 'fp16')]} (two, {yes[m.fits(c, card40, 'fp16', n_gpus=2)]}). "
            f"LLM.int8 needs {gb(int8)}: one 24 GB card, {yes[m.fits(c, card24, 'int8')]}.")


def _hello():
    from labml_nn.neox.tokenizer import encode, load_tokenizer
    tokenizer = load_tokenizer(Path(__file__).resolve().parents[2] / "labml_nn" / "neox" / "demo" / "20B_tokenizer.json")
    ids = encode(tokenizer, "Hello world")
    pieces = [tokenizer.id_to_token(i) for i in ids]
    return (f"With the demo's tokenizer ({tokenizer.get_vocab_size():,} ids, trained for the demo model): "
            f"{len(ids)} ids, `{ids}`, the pieces `{pieces}` (`Ġ` is the space, kept at the start of the word). "
            f"The real 20B tokenizer, with 50,277 ids, knows both words whole: `[12092, 1533]`.")


def _vocab():
    c = _20b()
    multiple = 128 * c.tensor_parallel_size
    tokens = 50277  # ids in 20B_tokenizer.json
    padded = -(-tokens // multiple) * multiple
    return (f"The tokenizer has {tokens:,} ids; gpt-neox pads $V$ to a multiple of "
            f"`make_vocab_size_divisible_by` (128) × {c.tensor_parallel_size} ranks = {multiple}: {padded:,} "
            f"({padded // multiple} × {multiple}), `n_vocab` in 20B's config. No id reaches the extra rows.")


def _kv_growth():
    m = _memory()
    c = m.KNOWN_MODELS["pythia-1.4b"]
    return (f"2 × {c.n_layers} layers × {c.d_model} × 2 bytes = {mb(m.kv_cache_bytes(c, 1, 1))} a token and "
            f"sequence; 8 × 2,048 of them are {gb(m.kv_cache_bytes(c, 8, 2048))}, against "
            f"{gb(m.weight_bytes(c, 'fp16'))} of weights.")


def _memory_bound():
    m, c = _memory(), _20b()
    n, w = m.parameter_count(c), m.weight_bytes(c, "fp16")
    return (f"Each step multiplies every weight once per sequence: {2 * n / 1e9:.0f} GFLOP for 20B at batch 1, "
            f"while reading all {gb(w)} of weights, one multiply-add per 2 bytes read. A GPU does hundreds of "
            f"FLOPs in the time it reads 2 bytes, so the step waits on memory; a batch of $B$ sequences reuses "
            f"each weight read $B$ times.")


def _rank_shapes():
    c = _20b()
    n = c.tensor_parallel_size
    return (f"{c.n_heads // n} of the {c.n_heads} heads each; `query_key_value.weight` is "
            f"`[{3 * c.d_model // n}, {c.d_model}]` on each rank (`[3C/{n}, C]`, its heads' $q, k, v$ together), "
            f"`attention.dense.weight` `[{c.d_model}, {c.d_model // n}]` (`[C, C/{n}]`).")


def _int8():
    m, c = _memory(), _20b()
    int8 = c.n_layers * (4 * c.d_model ** 2 + 2 * c.d_model * c.d_ff)
    return (f"{gb(m.weight_bytes(c, 'int8'))} against {gb(m.weight_bytes(c, 'fp16'))} in fp16 "
            f"({m.weight_bytes(c, 'int8') / m.weight_bytes(c, 'fp16'):.0%}): {int8 / m.parameter_count(c):.1%} of "
            f"the parameters (the four linear weights of each layer) take 1 byte, plus an fp32 step per output "
            f"feature; embedding, readout, norms and biases stay fp16.")


def _outlier_share():
    c = _20b()
    return (f"A product of two int8 numbers is at most 127² = 16,129, and `dense_4h_to_h` sums "
            f"$K$ = {c.d_ff:,} of them: at most {c.d_ff * 127 ** 2:,}, below $2^{{31}}$ = {2 ** 31:,}, so int32 "
            f"holds the sum exactly.")


def _loglikelihood():
    from labml_nn.neox.tokenizer import encode, load_tokenizer
    tokenizer = load_tokenizer(Path(__file__).resolve().parents[2] / "labml_nn" / "neox" / "demo" / "20B_tokenizer.json")
    context, continuation = "The cat sat on the", " mat"
    whole = encode(tokenizer, context + continuation)
    n_ctx = len(encode(tokenizer, context))
    n_cont = len(whole) - n_ctx
    first, last = n_ctx - 1, len(whole) - 2
    where = f"position {first}" if first == last else f"positions {first} to {last}"
    return (f"With the demo's tokenizer the pair is {len(whole)} tokens, {n_ctx} of context and {n_cont} of continuation; the model runs "
            f"on all but the last token, and the log-probability of each continuation token is read from the "
            f"logits one position before it: {where}, summed.")


def _bitfit_count(name: str) -> str:
    from labml_nn.neox.training.finetune import count_parameters, select_trainable
    modules = _meta_model(_memory().KNOWN_MODELS[name])
    select_trainable(modules, "biases", dtype=None)
    trained, total = count_parameters(modules)
    return f"{trained:,} of {total:,} ({trained / total:.3%})"


def _bitfit():
    c = _memory().KNOWN_MODELS["pythia-160m"]
    return (f"{_bitfit_count('pythia-160m')} for Pythia-160M: 11 vectors of $C$ = {c.d_model} a layer (two norms' "
            f"biases, `query_key_value`'s $3C$, `dense`'s $C$, the FFN's $4C$ and $C$), times {c.n_layers}, plus the "
            f"final norm's bias. In 20B: {_bitfit_count('gpt-neox-20b')}.")


def _ffn_share():
    from labml_nn.neox.training.finetune import count_parameters, select_trainable
    modules = _meta_model(_20b())
    select_trainable(modules, "ffn", dtype=None)
    trained, total = count_parameters(modules)
    return f"{trained:,} of {total:,}, {trained / total:.0%}: the FFN is $8C^2$ of a layer's $12C^2$."


def _eval_gpu():
    m, c = _memory(), _20b()
    weights, activations = m.weight_bytes(c, "fp16"), m.activation_bytes(c, 8, 2048, "fp16")
    return (f"Scoring a batch of 8 windows of 2,048 tokens needs the {gb(weights)} of fp16 weights and about "
            f"{gb(activations)} of activations (`activation_bytes`; scoring keeps no cache): {gb(weights + activations)}, "
            f"more than a 40 GB card holds. In LLM.int8 the weights are {gb(m.weight_bytes(c, 'int8'))}.")


QUESTIONS: dict[str, list[tuple[str, object]]] = {
    "labml_nn/neox/__init__.py": [
        ("How many of a 20B head's features does RoPE rotate, and which?", _rotary),
        ("What are C, H, D, L and V of Pythia-160M?", _shapes_160m),
    ],
    "labml_nn/neox/config.py": [
        ("Pythia-1B and Pythia-1.4B share C = 2048. What differs?", _pythia_1b),
        ("20B's YAML does not write the FFN's width. What is d_ff?", _d_ff),
    ],
    "labml_nn/neox/model.py": [
        ("How many parameters has Pythia-160M?", _count_160m),
        ("Where are 20B's parameters?", _share_20b),
        ("Which residual does a 20B layer compute?", _residual),
    ],
    "labml_nn/neox/memory.py": [
        ("How big is 20B's key-value cache at 2,048 tokens, in fp16?", _kv_20b),
        ("Does 20B fit on one 80 GB card? One 40 GB card? In LLM.int8, one 24 GB card?", _fits_20b),
    ],
    "labml_nn/neox/tokenizer.py": [
        ("Into which ids does `Hello world` encode?", _hello),
        ("Why does 20B's embedding have 50,432 rows?", _vocab),
    ],
    "labml_nn/neox/generation.py": [
        ("Pythia-1.4B, batch 8, 2,048 tokens: how big is the key-value cache in fp16?", _kv_growth),
        ("Why is decoding one token at a time memory-bound?", _memory_bound),
    ],
    "labml_nn/neox/tensor_parallel.py": [
        ("Over 20B's two ranks, what does each rank of attention hold?", _rank_shapes),
    ],
    "labml_nn/neox/llm_int8.py": [
        ("How many bytes are 20B's weights in LLM.int8?", _int8),
        ("Why can int32 accumulate an int8 product exactly in 20B's widest layer?", _outlier_share),
    ],
    "labml_nn/neox/evaluation/__init__.py": [
        ("Scoring the continuation ' mat' after 'The cat sat on the': which logits are read?", _loglikelihood),
    ],
    "evaluation.md": [
        ("Why does the fp16 command ask for a GPU of 48 GB or more?", _eval_gpu),
    ],
    "labml_nn/neox/training/finetune.py": [
        ("How many parameters does BitFit (train='biases') train?", _bitfit),
        ("And train='ffn', in 20B?", _ffn_share),
    ],
}


@functools.cache
def check_yourself(path: str) -> str:
    """The page's "Check yourself" as Markdown: folded `??? question` blocks, answers computed now."""
    questions = QUESTIONS.get(path)
    if not questions:
        return ""
    lines = ["## Check yourself", ""]
    for question, answer in questions:
        lines += [f'??? question "{question}"', "", "    " + answer(), ""]
    return "\n".join(lines) + "\n"
