r"""
# Looking at outlier features

LLM.int8 exists because of a finding about large transformers: a few hidden dimensions carry values far larger
than the rest, in most tokens, and in the inputs of many layers at the same dimension. Vector-wise int8
quantization spends its 255 levels on the largest value of each row, so those dimensions would crush all the
others; LLM.int8 multiplies them in floating point instead (see `labml_nn/neox/llm_int8.py`).

This sample shows where they are in a model. It runs a text through the unquantized model and, with a forward
pre-hook on each of the four linear layers of every transformer layer (`query_key_value`, `dense`,
`dense_h_to_4h`, `dense_4h_to_h`), counts for each input dimension $k$ the tokens $i$ with
$|X_{ik}| \ge \alpha$ (the threshold, 6.0). Those are the columns that `Int8Linear` would take out of the int8
product for that text.

The paper calls a dimension a *systematic* outlier feature when it reaches $\alpha$ in at least 25% of the
layers and in at least 6% of the tokens; such features appear suddenly in models of about 6.7B parameters.
Small models (the demo, Pythia-70M) show few or none, which is why plain int8 works for them.

## How to run

```
python samples/llm_int8_outliers.py                                   # the demo model, a built-in text
python samples/llm_int8_outliers.py --checkpoint ~/data/20B_checkpoints --device cuda --text-file page.txt
python samples/llm_int8_outliers.py --checkpoint pythia-1b --threshold 4 --out pythia-1b-outliers.png
```

## What it prints

A table with a row for each layer and linear layer that has outliers: how many input dimensions reach the threshold
in at least one token, the fraction of tokens that have one, the largest $|X_{ik}|$, and the dimensions hit most
often with the fraction of tokens for each. Then the systematic outlier features by the paper's rule, for the inputs
of `query_key_value` and `dense_h_to_4h` (layer-norm outputs, the same $C$ dimensions in every layer, so a dimension
can be followed through the layers). It saves a figure (`--out`, PNG; by default
`~/.cache/labml-nn-neox/figures/llm_int8_outliers.png`, see `cli.py`'s `output_home`): one panel per linear
layer, a square for each (dimension, layer) that reached the threshold, coloured by the fraction of tokens, and a
panel with the largest input magnitude per layer. The demo model has no outliers at all; `python samples/llm_int8_outliers.py` prints
(after the progress bar)

```
Outlier features of .../labml_nn/neox/demo (4 layers, C = 256) on 256 tokens, threshold 6

| layer | input of | dims >= 6 | tokens with one | max abs | most frequent dims (fraction of tokens) |
|---|---|---|---|---|---|
| - | - | 0 | 0% | - | no input reaches 6 in any of the 4 layers |

Systematic outlier features (>= 6% of tokens in >= 25% of layers):
inputs of query_key_value: none
inputs of dense_h_to_4h: none

Figure saved to /home/you/.cache/labml-nn-neox/figures/llm_int8_outliers.png
```
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from labml_nn.neox.cli import (DTYPES, ArgumentParser, HelpFormatter, add_model_args, check_model_args, output_home,
                               quiet_bitsandbytes, require_extra, run_command, DataError)
# The four linear layers of a transformer layer, by their checkpoint names (those LLM.int8 converts)
from labml_nn.neox.llm_int8 import LINEAR_LAYERS

# The opening of Hamlet's soliloquy (public domain): English prose for any model, and verse for the demo model
TEXT = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life;
For who would bear the whips and scorns of time,
The oppressor's wrong, the proud man's contumely,
The pangs of despised love, the law's delay,
The insolence of office and the spurns
That patient merit of the unworthy takes,
When he himself might his quietus make
With a bare bodkin? who would fardels bear,
To grunt and sweat under a weary life,
But that the dread of something after death,
The undiscover'd country from whose bourn
No traveller returns, puzzles the will
And makes us rather bear those ills we have
Than fly to others that we know not of?
Thus conscience does make cowards of us all;
And thus the native hue of resolution
Is sicklied o'er with the pale cast of thought,
And enterprises of great pith and moment
With this regard their currents turn awry,
And lose the name of action."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Find the outlier features (input dimensions with |x| >= threshold) of each linear layer of a "
                    "GPT-NeoX model on a text; print a table and save a figure.",
        formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument("--text-file", type=Path, default=None,
                        help="text to run through the model (default: the opening of Hamlet's soliloquy)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="use at most this many tokens of the text")
    parser.add_argument("--threshold", type=float, default=6.0, help="the outlier threshold alpha")
    parser.add_argument("--out", "--output", dest="output", type=Path,
                        default=output_home("figures", "llm_int8_outliers.png"),
                        help="where to write the figure (PNG)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (the default figure, in our own folder, is always replaced)")
    args = check_model_args(parser, parser.parse_args(argv))
    # The rule of every command that writes (`checkpoint/atomic.py`): a figure the user named is not replaced
    # unless --overwrite; the default one lives in our own folder (`cli.output_home`) and is
    if args.output == parser.get_default("output"):
        args.overwrite = True
        args.output.parent.mkdir(parents=True, exist_ok=True)
    from labml_nn.neox.checkpoint.atomic import check_target
    check_target(args.output, overwrite=args.overwrite, folder=False, name="--out",
                 reads=[args.checkpoint, args.text_file])
    return args


# ## Recording the inputs of each linear layer
#
# A forward pre-hook sees a module's input before the module runs. For the input $X$ of a linear layer, `[B, T,
# K]`, we keep per dimension $k$ the number of tokens with $|X_{ik}| \ge \alpha$ and the largest $|X_{ik}|$,
# and the number of tokens with at least one such dimension.
class OutlierRecorder:
    def __init__(self, threshold: float):
        self.threshold = threshold
        # (layer index, linear name) -> counts `[K]`, max magnitude `[K]`, tokens with any outlier
        self.counts: Dict[tuple, torch.Tensor] = {}
        self.magnitude: Dict[tuple, torch.Tensor] = {}
        self.any_counts: Dict[tuple, int] = {}
        self.n_tokens = 0
        self.handles = []

    def attach(self, model: nn.Sequential):
        from labml_nn.neox.model import TransformerLayer

        for module in model:
            if not isinstance(module, TransformerLayer):
                continue
            for name in LINEAR_LAYERS:
                linear = module.get_submodule(name)
                self.handles.append(linear.register_forward_pre_hook(self._hook((module.layer_idx, name))))

    def _hook(self, key):
        def hook(module, inputs):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs()
            is_outlier = x >= self.threshold
            counts = is_outlier.sum(dim=0).cpu()
            magnitude = x.amax(dim=0).cpu()
            self.any_counts[key] = self.any_counts.get(key, 0) + int(is_outlier.any(dim=1).sum())
            if key in self.counts:
                self.counts[key] += counts
                self.magnitude[key] = torch.maximum(self.magnitude[key], magnitude)
            else:
                self.counts[key], self.magnitude[key] = counts, magnitude
        return hook

    def detach(self):
        for handle in self.handles:
            handle.remove()


# ## The table
#
# One row per (transformer layer, linear layer) whose input reached the threshold, in the model's order; a
# single row saying so when none did.
def table(recorder: OutlierRecorder, n_layers: int) -> str:
    lines = [f"| layer | input of | dims >= {recorder.threshold:g} | tokens with one | max abs | "
             f"most frequent dims (fraction of tokens) |", "|---|---|---|---|---|---|"]
    for (layer, name), counts in sorted(recorder.counts.items(), key=lambda kv: (kv[0][0],
                                                                                  LINEAR_LAYERS.index(kv[0][1]))):
        hit = counts.nonzero().squeeze(1)
        if hit.numel() == 0:
            continue
        top = sorted(hit.tolist(), key=lambda k: -int(counts[k]))[:5]
        top_text = ", ".join(f"{k} ({int(counts[k]) / recorder.n_tokens:.0%})" for k in top)
        lines.append(f"| {layer} | {name.split('.')[1]} | {hit.numel()} | "
                     f"{_tokens_with_any(recorder, layer, name):.0%} | "
                     f"{float(recorder.magnitude[layer, name].max()):.1f} | {top_text} |")
    if len(lines) == 2:
        lines.append(f"| - | - | 0 | 0% | - | no input reaches {recorder.threshold:g} in any of the {n_layers} layers |")
    return "\n".join(lines)


def _tokens_with_any(recorder, layer, name) -> float:
    return recorder.any_counts.get((layer, name), 0) / max(recorder.n_tokens, 1)


# ## Systematic outlier features, by the paper's rule
def systematic(recorder: OutlierRecorder, n_layers: int) -> str:
    lines = []
    for name in ("attention.query_key_value", "mlp.dense_h_to_4h"):
        # The inputs of these two are layer-norm outputs of width C, the same dimensions in every layer
        frequent = [recorder.counts[layer, name] / recorder.n_tokens >= 0.06 for layer in range(n_layers)
                    if (layer, name) in recorder.counts]
        if not frequent:
            continue
        share = torch.stack(frequent).float().mean(dim=0)
        dims = (share >= 0.25).nonzero().squeeze(1).tolist()
        lines.append(f"inputs of {name.split('.')[1]}: "
                     + (", ".join(f"dim {k} ({share[k]:.0%} of layers)" for k in dims) if dims else "none"))
    return "\n".join(lines)


# ## The figure
#
# Four panels, one per linear layer, with input dimension across and transformer layer up, a square where the
# threshold was reached, larger and brighter for more tokens; a fifth panel with each layer's largest $|X_{ik}|$.
def figure(recorder: OutlierRecorder, n_layers: int, title: str, output: Path, overwrite: bool = True):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter, MaxNLocator

    # Two rows: the four linear layers' inputs, and beside them the largest input per layer; sized so that the
    # text reads at 10 px or more when the website shows it across its page
    height = max(7.0, 4 + 0.15 * n_layers)
    fig = plt.figure(figsize=(11, height), layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.9])
    axes = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(4)]
    scatter = None
    for ax, name in zip(axes, LINEAR_LAYERS):
        width = None
        for layer in range(n_layers):
            counts = recorder.counts.get((layer, name))
            if counts is None:
                continue
            width = counts.numel()
            hit = counts.nonzero().squeeze(1)
            fraction = counts[hit].float() / recorder.n_tokens
            scatter = ax.scatter(hit.numpy(), [layer] * hit.numel(), c=fraction.numpy(), s=20 + 60 * fraction.numpy(),
                                 cmap="viridis", vmin=0, vmax=1, marker="s")
        ax.set_xlim(0, width or 1)
        ax.set_ylim(-0.5, n_layers - 0.5)
        ax.set_title(f"input of {name.split('.')[1]}" + (f" (K = {width})" if width else ""), fontsize=12)
        ax.set_xlabel("input dimension k", fontsize=11)
        ax.set_ylabel("layer", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=axes, location="bottom", shrink=0.6, aspect=40)
        bar.set_label(f"fraction of tokens with |x| >= {recorder.threshold:g}", fontsize=11)
        bar.ax.tick_params(labelsize=10)

    ax = fig.add_subplot(grid[:, 2])
    for name in LINEAR_LAYERS:
        values = [float(recorder.magnitude[layer, name].max()) for layer in range(n_layers)
                  if (layer, name) in recorder.magnitude]
        ax.plot(range(len(values)), values, marker="o", label=name.split(".")[1])
    ax.axhline(recorder.threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {recorder.threshold:g}")
    ax.set_yscale("log")
    # plain numbers on the log axis (10^1's exponent would be set smaller than the text)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer", fontsize=11)
    ax.set_title("largest |x| in the input", fontsize=12)
    ax.tick_params(labelsize=10)
    ax.legend(fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    # Written beside `output` and renamed when complete (`checkpoint/atomic.py`)
    from labml_nn.neox.checkpoint.atomic import atomic_file
    with atomic_file(output, overwrite=overwrite, binary=True, name="--out") as f:
        fig.savefig(f, dpi=110, format=Path(output).suffix.lstrip(".").lower() or "png")
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    from labml_nn.neox.loader import LayerLoader
    from labml_nn.neox.model import NeoXModel
    from labml_nn.neox.tokenizer import encode, load_tokenizer

    args = parse_args(argv)
    # The figure needs matplotlib (the int8 extra): say so before the model is loaded and run, not after
    require_extra("matplotlib", "The outlier figure of samples/llm_int8_outliers.py")
    quiet_bitsandbytes()
    loader = LayerLoader(args.checkpoint, dtype=DTYPES[args.dtype], device=args.device,
                         trust_pickle=args.trust_pickle, revision=args.revision, base=args.base)
    config = loader.config
    if loader.checkpoint.tokenizer_path is None:
        print(f"error: no tokenizer beside {args.checkpoint}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(loader.checkpoint.tokenizer_path)
    try:
        text = args.text_file.read_text(encoding="utf-8") if args.text_file else TEXT
    except UnicodeDecodeError as e:
        raise DataError(f"--text-file {args.text_file} is not UTF-8 text (byte {e.start}); give a text file") from None
    ids = encode(tokenizer, text)[:min(args.max_tokens, config.n_ctx)]
    model = NeoXModel(*loader.load())

    recorder = OutlierRecorder(args.threshold)
    recorder.attach(model)
    with torch.no_grad():
        model(torch.tensor([ids], device=args.device))
    recorder.n_tokens = len(ids)
    recorder.detach()

    print(f"Outlier features of {args.checkpoint} ({config.n_layers} layers, C = {config.d_model}) on "
          f"{len(ids)} tokens, threshold {args.threshold:g}\n")
    print(table(recorder, config.n_layers))
    print("\nSystematic outlier features (>= 6% of tokens in >= 25% of layers):")
    print(systematic(recorder, config.n_layers) or "none")
    title = (f"Outlier features of {args.checkpoint.name or args.checkpoint} on {len(ids)} tokens: inputs with "
             f"|x| >= {args.threshold:g}")
    figure(recorder, config.n_layers, title, args.output, overwrite=args.overwrite)
    print(f"\nFigure saved to {args.output}")
    return 0


if __name__ == "__main__":
    # Every error becomes one line and an exit status (`cli.py`)
    sys.exit(run_command(main))
