r"""
# The model as an ONNX graph

To run the model where PyTorch is not (a web page, a phone, a C++ program), we write it down as an
[ONNX](https://onnx.ai) graph: a file that lists every operation of one forward pass (matrix products, layer
norms, a softmax) with the weights inside it, which any ONNX runtime executes. ONNX Runtime Web runs such a
graph in the browser in WebAssembly, and that is how the demo model runs on this site's pages.

```python
from labml_nn.neox.onnx_export import export_onnx
export_onnx(model, "demo-onnx", tokenizer_path="20B_tokenizer.json",  # model: a NeoXModel
            with_attentions=True, weights_dtype="fp16")
```

or from the shell, for any checkpoint folder or Hub name:

```
python -m labml_nn.neox.onnx_export labml_nn/neox/demo demo-onnx --fp16-weights --with-attentions
```

**What is in the folder.** We write what Hugging Face's tools write for a GPT-NeoX model (`optimum`'s exporter,
and what `transformers.js` loads), so the folder runs there too. `tests/test_onnx_export.py` runs it with
`onnxruntime` in Python; transformers.js 4.3 in Node, loading the demo's folder with `from_pretrained`, generated
the same 50 greedy tokens as our model on three prompts (checked by hand, since it needs npm):

```
config.json               the transformers GPTNeoX config (checkpoint/write.py's writer)
tokenizer.json            the tokenizer, as it came with the checkpoint
tokenizer_config.json     {} (transformers.js insists that it exists)
onnx/model.onnx           the graph
```

**The graph's inputs and outputs** (`N` = 0 ... L-1 the layers; `P` the tokens already in the cache):

| name | shape | what |
|---|---|---|
| `input_ids` | `[B, T]` int64 | the new tokens |
| `attention_mask` | `[B, P + T]` int64 | 1 for a real token, 0 for (left) padding, over the past and the new tokens |
| `position_ids` | `[B, T]` int64 | each new token's position: its count of real tokens before it |
| `past_key_values.N.key`, `.value` | `[B, H, P, D]` float32 | layer `N`'s cache; `P = 0` on the first call |
| `logits` (output) | `[B, T, V]` float32 | |
| `present.N.key`, `.value` (outputs) | `[B, H, P + T, D]` float32 | the cache for the next call |
| `attentions.N` (outputs, only `with_attentions`) | `[B, H, T, P + T]` float32 | the softmax probabilities |

**The attention probabilities are extra outputs of the same graph**, `onnx/model.onnx`, not a second graph.
They are what the site's attention figure draws: which earlier tokens each head of each layer looks at, for the
reader's own sentence. A second graph would hold a second copy of the weights, doubling what a reader downloads;
extra outputs cost only copying them out (for one new token, `H` rows of `P + T` numbers per layer). A runtime
that does not ask for them (transformers.js reads `logits` and `present.*` by name) is not bothered by them.
Without `with_attentions` the graph has no such outputs.

**Calling it.** The first call takes the prompt, `T` tokens, with an empty cache (`P = 0`, tensors of shape
`[B, H, 0, D]`), `attention_mask` all ones (or 0 on each row's left padding) and `position_ids` $0 \dots T-1$
(for a padded row, counted from its first real token; padding gets 0). The next token is the argmax, or a sample,
of `logits[:, -1]`. Each later call takes that one token, the `present.*` of the call before as
`past_key_values.*`, the mask grown by a 1, and the next position. This is the loop `generation.py` runs with a
`KVCache`, and the one transformers.js runs for any decoder.

Everything here is a thin layer over `model.py`: the graph runs the model's own modules, and only attention
is written again, because the graph passes its cache, positions and mask as tensors (below). We export through
PyTorch's own exporter rather than Hugging Face's `optimum`, which exports transformers' classes, not ours (and,
at the time of writing, does not install beside transformers 5).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from labml_nn.neox.model import Attention, Embedding, FinalNorm, NeoXModel, ReadoutLayer, TransformerLayer


# The ONNX names of the cache, as Hugging Face's exporters write them for GPT-NeoX
def past_names(n_layers: int) -> List[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def present_names(n_layers: int) -> List[str]:
    return [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def attention_names(n_layers: int) -> List[str]:
    return [f"attentions.{i}" for i in range(n_layers)]


# ## The cache as tensors
#
# In PyTorch the cache is an object, `KVCache`, that the layers write into: an offset (a Python integer) says
# where the new keys go. A graph has no objects and no Python integers that change from call to call: everything
# that changes is an input or an output. So the cache of each layer enters as two tensors `[B, H, P, D]` and
# leaves, with the new tokens' keys and values appended, as two tensors `[B, H, P + T, D]`; the caller feeds the
# outputs of one call as the inputs of the next. The offset becomes `P`, a dimension of those tensors, and the
# padding of each row becomes `attention_mask`. `_GraphState` carries these through one forward pass, the way
# a `KVCache` does through `NeoXModel.forward`, and collects what each layer's attention returns.
class _GraphState:
    def __init__(self, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Sequence[torch.Tensor]):
        self.attention_mask = attention_mask
        self.position_ids = position_ids
        self.past = past
        self.presents: List[torch.Tensor] = []
        self.attentions: List[torch.Tensor] = []


class GraphAttention(nn.Module):
    r"""
    ## Attention, with positions, mask and cache as tensors

    The same maths as `model.py`'s `Attention`, on its own weights (`query_key_value`, `dense`, the rotary
    angles $\theta$), with three differences:

    * **Positions are given**, `position_ids` `[B, T]`, instead of computed from an offset and a row's padding.
      The rotation angles are $m \theta_i$ for each token's position $m$, computed directly rather than
      looked up in a table, so any position works without a table length baked into the graph.
    * **The mask comes from `attention_mask`** `[B, S]`, `S = P + T`: the query in slot $P + i$ may see key slot
      $j$ when $j \le P + i$ and `attention_mask[b, j]` is 1. As in `model.py`, every query also sees its own slot,
      so that a query on padding has a key to look at and computes finite numbers nobody reads.
    * **The softmax is written out**, $\operatorname{softmax}(QK^\top / \sqrt{D} + M)$, instead of PyTorch's fused
      kernel, because its result, the attention probabilities, is what the site's attention figure shows.
      ONNX Runtime fuses these few nodes itself where it can.
    """

    def __init__(self, attention: Attention):
        super().__init__()
        self.layer_idx = attention.layer_idx
        self.n_heads = attention.n_heads
        self.d_head = attention.d_head
        self.query_key_value = attention.query_key_value
        self.dense = attention.dense
        self.rotary_emb = attention.rotary_emb

    # The angles $m \theta_i$ for positions `[B, T]`, each twice (once for each feature of its pair), as rows
    # `[B, T, 1, 1, d]` that broadcast over the heads and over queries and keys; then `RotaryEmbedding.rotate`,
    # $x \odot \cos(m\theta) + x' \odot \sin(m\theta)$ on the first `d_rotary` features of `x` `[B, T, H, 2, D]`.
    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.rotary_emb.d_rotary == 0:
            return x
        angles = positions.to(torch.float32)[:, :, None] * self.rotary_emb.theta.to(x.device)
        angles = torch.cat((angles, angles), dim=-1)[:, :, None, None, :]
        return self.rotary_emb.rotate(x, angles.cos(), angles.sin())

    def forward(self, x: torch.Tensor, state: _GraphState) -> torch.Tensor:
        batch_size, n_tokens, _ = x.shape
        # `[B, T, 3C]` $\rightarrow$ `[B, T, H, 3, D]`, then queries and keys rotated together
        qkv = self.query_key_value(x).view(batch_size, n_tokens, self.n_heads, 3, self.d_head)
        qk = self.rotate(qkv[:, :, :, :2], state.position_ids)
        q, k = qk[:, :, :, 0].transpose(1, 2), qk[:, :, :, 1].transpose(1, 2)
        v = qkv[:, :, :, 2].transpose(1, 2)

        # The past keys and values `[B, H, P, D]` and the new ones `[B, H, T, D]`: `[B, H, P + T, D]`, which is
        # also this layer's `present`
        past_k, past_v = state.past[2 * self.layer_idx], state.past[2 * self.layer_idx + 1]
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
        state.presents += [k, v]

        # The mask `[B, 1, T, S]`: query slots $P \dots P + T - 1$, key slots $0 \dots S - 1$
        n_keys = k.shape[2]
        query_slot = torch.arange(n_tokens, device=x.device)[:, None] + (n_keys - n_tokens)
        key_slot = torch.arange(n_keys, device=x.device)[None, :]
        real = state.attention_mask[:, None, None, :].bool()
        mask = ((key_slot <= query_slot) & real) | (key_slot == query_slot)

        # $\operatorname{softmax}(QK^\top / \sqrt{D} + M)$, `[B, H, T, S]`, and the values it weighs
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~mask, float("-inf"))
        probabilities = torch.softmax(scores, dim=-1)
        state.attentions.append(probabilities)
        out = probabilities @ v

        # `[B, H, T, D]` $\rightarrow$ `[B, T, C]`, mixed by `dense`
        return self.dense(out.transpose(1, 2).reshape(batch_size, n_tokens, -1))


# ## The model with the cache as inputs and outputs
#
# `GraphModel` holds the modules of a `NeoXModel` and runs them in order, as `NeoXModel.forward` does; each
# transformer layer is a shallow copy of the model's own whose `attention` is a `GraphAttention` on the same
# weights, so the residual (parallel or sequential, tied norms or not) is `TransformerLayer.forward`'s own
# code. The caller's model is not changed. Its `forward` takes the inputs in the order of the graph's inputs
# and returns its outputs in order: `logits`, the `present` tensors, and the attention probabilities when asked.
def _graph_layer(layer: TransformerLayer) -> TransformerLayer:
    graph_layer = TransformerLayer.__new__(TransformerLayer)
    graph_layer.__dict__ = dict(layer.__dict__)
    graph_layer._modules = dict(layer._modules)
    graph_layer._modules["attention"] = GraphAttention(layer.attention)
    return graph_layer


class GraphModel(nn.Module):
    def __init__(self, model: NeoXModel, with_attentions: bool = False):
        super().__init__()
        _check_exportable(model)
        self.n_layers = sum(isinstance(m, TransformerLayer) for m in model)
        self.with_attentions = with_attentions
        self.model = nn.ModuleList(_graph_layer(m) if isinstance(m, TransformerLayer) else m
                                   for m in model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        state = _GraphState(attention_mask, position_ids, past_key_values)
        x = input_ids
        for module in self.model:
            x = module(x, state)
        outputs = (x, *state.presents)
        if self.with_attentions:
            outputs += tuple(state.attentions)
        return outputs


# Only the modules of `model.py`, all of them, in order, can be exported: a model loaded with `filter_layers`
# lacks parts, and an LLM.int8 layer's products are bitsandbytes calls that have no ONNX form.
def _check_exportable(model: NeoXModel):
    kinds = [type(m) for m in model]
    n = len(kinds) - 3
    expected = [Embedding] + [TransformerLayer] * n + [FinalNorm, ReadoutLayer]
    if n < 1 or kinds != expected:
        raise ValueError(f"only a whole NeoXModel of model.py's modules (embedding, layers, final norm, readout) "
                         f"can be exported; this one has {[k.__name__ for k in kinds]}. Load it without "
                         f"filter_layers or LLM.int8")
    for i, m in enumerate(model[1:-2]):
        if m.layer_idx != i:
            raise ValueError(f"layer {i} of the model says it is layer {m.layer_idx}; export a whole model")
        if m.attention.rotary_emb.dynamic:
            raise ValueError("the model uses dynamic RoPE scaling (rope_scaling type dynamic), whose angles change "
                             "with the sequence length; the exported graph computes fixed angles, so it is refused")


# ## Exporting
#
# PyTorch's exporter (`torch.onnx.export(..., dynamo=True)`) runs the forward pass once on example inputs,
# records every operation (`torch.export`), and translates the record to ONNX. (The older exporter, `dynamo=False`,
# traces Python control flow once and freezes its branches.) We must say which dimensions may change from call to
# call: the batch, the new tokens and the past, with `S = P + T` left for the exporter to work out. `torch.export`
# takes a dimension of size 0 or 1 in the example for a constant, so the example has 2 rows, 3 new tokens and 2
# cached ones; the graph then works for any sizes, `P = 0` included.
#
# The dimensions get the names Hugging Face's exports give them, which a reader of the graph (or Netron) sees.
AXIS_NAMES = {"batch_size": "batch_size", "sequence_length": "sequence_length",
              "past_sequence_length": "past_sequence_length",
              "past_sequence_length + sequence_length": "total_sequence_length"}


def _example_inputs(model: "GraphModel", config) -> tuple:
    batch, n_new, n_past = 2, 3, 2
    input_ids = torch.zeros(batch, n_new, dtype=torch.int64)
    attention_mask = torch.ones(batch, n_past + n_new, dtype=torch.int64)
    position_ids = torch.arange(n_past, n_past + n_new).expand(batch, n_new).contiguous()
    past = tuple(torch.zeros(batch, config.n_heads, n_past, config.d_head) for _ in range(2 * model.n_layers))
    return input_ids, attention_mask, position_ids, past


def _dynamic_shapes(n_layers: int) -> tuple:
    Dim = torch.export.Dim
    batch, new, past = Dim("batch_size"), Dim("sequence_length"), Dim("past_sequence_length")
    return ({0: batch, 1: new}, {0: batch, 1: Dim.DYNAMIC}, {0: batch, 1: new},
            tuple({0: batch, 2: past} for _ in range(2 * n_layers)))


# The exporter also records, on every node, where it came from: the PyTorch operation, the module path and the
# Python stack, with the file paths of the machine that exported it. That helps debug the exporter, not use the
# graph; it is 180 kB of the demo's file, and it would make the file differ with the folder it was exported from.
# We drop it.
def _drop_provenance(proto):
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _rename_axes(proto):
    r"""Give every dynamic axis of the graph's inputs and outputs its name from `AXIS_NAMES`."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param:
                total = value.name == "attention_mask" and i == 1
                dim.dim_param = "total_sequence_length" if total else AXIS_NAMES.get(dim.dim_param, dim.dim_param)


# ## fp16 storage, fp32 arithmetic
#
# A browser downloads the graph before it can run it, and the weights are nearly all of it. Storing them in fp16
# halves the download; computing in fp16 in WebAssembly would be slower (no fp16 arithmetic there) and less
# accurate. So with `weights_dtype="fp16"` each weight is stored in fp16 and goes through a `Cast` to fp32 before
# its first use: the graph computes exactly what the fp32 graph computes on the rounded weights. ONNX Runtime
# folds a `Cast` of a constant when it loads the graph, so the casts cost nothing per call. For weights that
# already are fp16 values (the demo model was trained and saved in fp16, like GPT-NeoX-20B) nothing is lost at
# all; other weights are rounded to fp16. Only the model's parameters are stored in fp16: the biases and norms
# under their own names, and the matrices, which the exporter stores transposed (`x W^\top` becomes a `MatMul`
# with $W^\top$) under names of its own (`val_268`); the model has no other matrix among its constants. The
# rotary angles $\theta$ and the small integer constants stay as they are.
def _store_in_fp16(proto, parameter_names: set):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    casts, kept = [], []
    for tensor in proto.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and (tensor.name in parameter_names or len(tensor.dims) == 2):
            half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name + ".fp16")
            casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT,
                                          name=tensor.name + ".cast"))
            kept.append(half)
        else:
            kept.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    nodes = casts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


# Protocol Buffers cannot serialise a message over 2 GB, so the weights of a larger model (Pythia-1B and up in
# fp32) go to a second file beside the graph, `model.onnx_data`, the name Hugging Face's exports use.
EXTERNAL_DATA_ABOVE = 1536 * 1024 ** 2


def export_graph(model: NeoXModel, path: "str | Path", *, with_attentions: bool = False,
                 weights_dtype: str = "fp32", opset: Optional[int] = None) -> Path:
    r"""
    Write `model` as the ONNX graph described above to the file `path`. The caller's model is not changed; a
    model in fp16 or bf16, on a GPU or in training mode is exported from an fp32 copy on the CPU, in eval mode
    (exact: every fp16 and bf16 value is an fp32 value).
    """
    import onnx

    if weights_dtype not in ("fp32", "fp16"):
        raise ValueError(f"weights_dtype={weights_dtype!r}: choose 'fp32' or 'fp16' (stored in fp16, computed in fp32)")
    if model.training or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()
    graph_model = GraphModel(model, with_attentions).eval()
    config = model[0].config
    n = graph_model.n_layers
    outputs = ["logits"] + present_names(n) + (attention_names(n) if with_attentions else [])
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter warns about its own internals (torchvision's operators, axis renaming); nothing to act on
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph_model, _example_inputs(graph_model, config), dynamo=True,
                                    input_names=["input_ids", "attention_mask", "position_ids"] + past_names(n),
                                    output_names=outputs, dynamic_shapes=_dynamic_shapes(n),
                                    opset_version=opset, verbose=False, optimize=True)
    proto = program.model_proto
    _drop_provenance(proto)
    _rename_axes(proto)
    if weights_dtype == "fp16":
        _store_in_fp16(proto, {name for name, _ in graph_model.named_parameters()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_ABOVE
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=path.name + "_data")
    return path


# ## The folder
#
# `config.json` is the one `write_hf_checkpoint` writes (`NeoXConfig.to_hf_config`): transformers.js reads the
# number of layers, heads and the hidden size from it to make the empty cache of the first call, and
# `eos_token_id` to stop. Tied layer norms (`gpt_j_tied`) have no transformers key, and need none here: the
# graph computes them. The tokenizer is copied as it is.
def export_onnx(model: NeoXModel, out_dir: "str | Path", *, tokenizer_path: "str | Path | None" = None,
                with_attentions: bool = False, weights_dtype: str = "fp32", opset: Optional[int] = None) -> Path:
    r"""
    Write `model` into the folder `out_dir` (created if needed) as `config.json`, `onnx/model.onnx` and, with
    `tokenizer_path`, `tokenizer.json` and `tokenizer_config.json`. Returns the path of the graph. The writer
    writes into the folder it is given; the command below makes the folder appear all at once.
    """
    out = Path(out_dir)
    graph = export_graph(model, out / "onnx" / "model.onnx", with_attentions=with_attentions,
                         weights_dtype=weights_dtype, opset=opset)
    config = model[0].config
    hf = config.with_updates(tied_layernorms=False).to_hf_config()
    hf["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, out / "tokenizer.json")
        (out / "tokenizer_config.json").write_text("{}\n")
    return graph


# ## The command
#
# `python -m labml_nn.neox.onnx_export CHECKPOINT OUT`: load any checkpoint the loader reads (a folder, or a Hub
# name with `--revision`), in fp32 on the CPU, export it into a temporary folder beside `OUT`, and rename that to
# `OUT` once it is complete (`checkpoint/atomic.py`): a failed or interrupted export leaves nothing at `OUT`.
def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0, 1 for a data error, 2 for a usage error)."""
    from labml_nn.neox.cli import run_command
    return run_command(_run, argv)


def _run(argv: List[str]) -> int:
    from labml_nn.neox.checkpoint.atomic import atomic_folder
    from labml_nn.neox.checkpoint.hub import is_hub_name
    from labml_nn.neox.cli import ArgumentParser
    from labml_nn.neox.loader import LayerLoader

    parser = ArgumentParser(prog="python -m labml_nn.neox.onnx_export",
                            description="Export a GPT-NeoX checkpoint to ONNX, with its KV cache as inputs and "
                                        "outputs, in the folder layout of Hugging Face's tools (config.json, "
                                        "tokenizer.json, tokenizer_config.json, onnx/model.onnx), which "
                                        "onnxruntime and transformers.js load.")
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint folder (the 20B slim weights, a gpt-neox checkpoint or a Hugging Face "
                             "GPT-NeoX folder; labml_nn/neox/demo is the demo model), or a Hub name such as "
                             "EleutherAI/pythia-70m")
    parser.add_argument("out", type=Path, help="output folder; must not exist unless --overwrite")
    parser.add_argument("--revision", default=None, help="with a Hub name: its revision, e.g. step3000")
    parser.add_argument("--fp16-weights", action="store_true",
                        help="store the weights in fp16 (half the file) and compute in fp32; exact for weights "
                             "that are fp16 values (the demo model, GPT-NeoX-20B), a rounding otherwise")
    parser.add_argument("--with-attentions", action="store_true",
                        help="also output each layer's attention probabilities, attentions.N [B, H, T, P + T]")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's own)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow DeepSpeed checkpoint files that pickle arbitrary objects (only files you trust)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only on success)")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists() and not is_hub_name(args.checkpoint):
        parser.error(f"checkpoint {args.checkpoint} is neither a folder nor a Hub name such as EleutherAI/pythia-70m")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} already exists; remove it, choose another name, or pass --overwrite")

    start = time.perf_counter()
    loader = LayerLoader(args.checkpoint, revision=args.revision, trust_pickle=args.trust_pickle)
    model = NeoXModel(*loader.load()).eval()
    tokenizer = loader.checkpoint.tokenizer_path
    if tokenizer is None:
        print(f"warning: no tokenizer beside {args.checkpoint}; the folder will hold the model only",
              file=sys.stderr)
    with atomic_folder(args.out, overwrite=args.overwrite) as tmp:
        export_onnx(model, tmp, tokenizer_path=tokenizer, with_attentions=args.with_attentions,
                    weights_dtype="fp16" if args.fp16_weights else "fp32", opset=args.opset)
    size = sum(f.stat().st_size for f in (args.out / "onnx").iterdir())
    print(f"Wrote {args.out} (onnx/model.onnx: {size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
