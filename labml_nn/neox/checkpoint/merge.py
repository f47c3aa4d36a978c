r"""
# Merging tensor-parallel ranks, and splitting them again

gpt-neox trains large models with *tensor parallelism*: each of $N$ GPUs ("ranks") holds a slice of every large
matrix, and the slices are saved separately. To run the model on one device we put the slices back together.
How depends on how each matrix was cut, and the cut follows from where the rank's communication happens.

Let a linear layer compute $y = x W^\top + b$ with $W$ of shape `[out, in]`.

* **Column parallel** (`query_key_value`, `dense_h_to_4h`, and the vocabulary of `word_embeddings` and
  `final_linear`): rank $r$ holds the rows $W_r$ and bias $b_r$ of a contiguous block of outputs, so

    $$W = \begin{bmatrix} W_0 \\ \vdots \\ W_{N-1} \end{bmatrix}, \qquad b = [b_0, \dots, b_{N-1}]$$

    and merging concatenates on dim 0. For `query_key_value` each block is a group of whole heads (the output is
    viewed as `[H, 3 D]`), so concatenation keeps the heads in order.

* **Row parallel** (`attention.dense`, `dense_4h_to_h`): rank $r$ holds the columns $W_r$ that read its slice
  $x_r$ of the input, and the ranks add their partial products:

    $$y = \sum_r x_r W_r^\top + b, \qquad W = [W_0, \dots, W_{N-1}]$$

    Merging concatenates on dim 1. The bias depends on *when* it is added:

    * with the **parallel residual** of the 20B model and Pythia, $x + \text{attn}(\text{ln}_1(x)) +
      \text{mlp}(\text{ln}_2(x))$, gpt-neox saves one all-reduce per layer by letting every rank add its own
      copy $b_r$ of the bias before the single sum: $y = \sum_r (x_r W_r^\top + b_r)$. The effective bias is
      $\sum_r b_r$, so merging **sums** (as gpt-neox's own `convert_neox_to_hf.py` does);

    * with the **sequential residual**, the all-reduce comes first and each rank then adds the same full bias,
      $y = \sum_r x_r W_r^\top + b$: the bias is *replicated*, and summing would multiply it by $N$. We treat
      it like the layer norms below. (gpt-neox's converter sums in both cases; we do not follow it there.)

* **Replicated** (the layer norms and the final `norm`): every rank holds the whole tensor. The copies receive
  the same gradients, but not bit-identical ones, and after 150,000 steps in fp16 they differ by about $10^{-3}$
  in a 20B-class model. We average them (or take rank 0 with `replicated="first"`) and *record* how far apart
  they were, since the choice measurably moves evaluation scores.

* `rotary_emb.inv_freq` is a constant every rank computes the same way; we take rank 0, and the reader checks it
  against the config and drops it (our model computes it).

## Where gpt-neox's own converter is wrong, and we are not

gpt-neox ships `tools/ckpts/convert_neox_to_hf.py` to make a transformers folder. Checked against gpt-neox's
forward pass (May 2026), it is wrong in three places, and our `merge --format hf` is right in all three:

* the **row-parallel biases with the sequential residual**: gpt-neox adds the full bias once after the
  all-reduce, so the ranks hold copies; its converter sums them (and `convert_hf_to_sequential.py` divides
  them by $N$ on the way back), giving $N$ times the bias. We average the copies (above);
* **`bias_gelu_fusion: true`** means the tanh GELU, but the converter writes `hidden_act: gelu`, the exact one.
  On our demo model (`labml_nn/neox/demo`, 4 $\times$ 128 random tokens, fp32) transformers then differs from
  gpt-neox's maths by up to $9.4 \times 10^{-3}$ in the logits; with the `gelu_fast` we write, by
  $4.8 \times 10^{-6}$;
* it writes **`eos_token_id: 2`**, but the end-of-text token of the 20B and Pythia tokenizer is id 0 (id 2 is
  an ordinary token), so transformers' generation would not stop where the model ends a document. We write 0.

`tests/test_checkpoint_convert.py` and `tests/test_checkpoint_merge.py` hold each of the three.

## Splitting

Splitting, for writing a checkpoint with $N$ ranks, applies the inverse rules. For the summed biases there are
many splits with the right sum; we give rank 0 the whole bias and the other ranks zeros, because then the sum
is exact in any precision ($b + 0 = b$), where $b / N$ would round.
"""

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from .files import CheckpointError
from .layouts import RankTensors
from .parts import Part

INV_FREQ = "attention.rotary_emb.inv_freq"

# ## The rules
#
# How each tensor's ranks combine: `("concat", dim)` concatenates on `dim`; `"row_bias"` is summed with the
# parallel residual and treated as replicated with the sequential one (see above); `"replicated"` is averaged,
# or taken from rank 0, with its divergence recorded; `"first"` takes rank 0.
RULES = {
    "word_embeddings.weight": ("concat", 0),
    "final_linear.weight": ("concat", 0),
    "attention.query_key_value.weight": ("concat", 0),
    "attention.query_key_value.bias": ("concat", 0),
    "mlp.dense_h_to_4h.weight": ("concat", 0),
    "mlp.dense_h_to_4h.bias": ("concat", 0),
    "attention.dense.weight": ("concat", 1),
    "mlp.dense_4h_to_h.weight": ("concat", 1),
    "attention.dense.bias": "row_bias",
    "mlp.dense_4h_to_h.bias": "row_bias",
    "input_layernorm.weight": "replicated",
    "input_layernorm.bias": "replicated",
    "post_attention_layernorm.weight": "replicated",
    "post_attention_layernorm.bias": "replicated",
    "norm.weight": "replicated",
    "norm.bias": "replicated",
    INV_FREQ: "first",
}

# The tensors each kind of part must have, in the order they are saved
PART_TENSORS = {
    "embedding": ["word_embeddings.weight"],
    "layer": ["input_layernorm.weight", "input_layernorm.bias",
              "attention.query_key_value.weight", "attention.query_key_value.bias",
              "attention.dense.weight", "attention.dense.bias",
              "post_attention_layernorm.weight", "post_attention_layernorm.bias",
              "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias",
              "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias"],
    "norm": ["norm.weight", "norm.bias"],
    "readout": ["final_linear.weight"],
}
OPTIONAL = {"layer": [INV_FREQ]}


# ## Two spellings of the MLP
#
# gpt-neox PR #1212 (September 2024) renamed the MLP's two linear layers, `mlp.dense_h_to_4h` to `mlp.linear1`
# and `mlp.dense_4h_to_h` to `mlp.linear2`: the same tensors, cut the same way. Every checkpoint trained since
# then uses the new names, and gpt-neox loads strictly, so each checkpoint only loads under its own spelling.
# The reader renames to the old spelling, the one `model.py` and Hugging Face use, and remembers which it saw;
# `merge --format neox` writes the source's spelling back.
MLP_SPELLINGS = {"dense": ("mlp.dense_h_to_4h.", "mlp.dense_4h_to_h."), "linear": ("mlp.linear1.", "mlp.linear2.")}


def mlp_spelling(names) -> str:
    """`"linear"` when the tensor names use gpt-neox's spelling since PR #1212, else `"dense"`."""
    linear = MLP_SPELLINGS["linear"]
    return "linear" if any(n.startswith(linear) for n in names) else "dense"


def respell_mlp(tensors: Dict[str, torch.Tensor], to: str) -> Dict[str, torch.Tensor]:
    """The same tensors with the MLP's names in the spelling `to` (`"dense"` or `"linear"`)."""
    frm = "linear" if to == "dense" else "dense"
    out = {}
    for name, t in tensors.items():
        for old, new in zip(MLP_SPELLINGS[frm], MLP_SPELLINGS[to]):
            if name.startswith(old):
                name = new + name[len(old):]
        if name in out:
            raise CheckpointError(f"both spellings of `{name}` (mlp.dense_* and mlp.linear*) are present; the "
                                  f"file mixes two checkpoints.")
        out[name] = t
    return out


def rule(name: str, parallel_residual: bool):
    r = RULES[name]
    if r == "row_bias":
        return "sum" if parallel_residual else "replicated"
    return r


# ## Divergence of replicated tensors
@dataclass
class Divergence:
    r"""
    How far apart the $N$ copies $x^{(0)}, \dots, x^{(N-1)}$ of a replicated tensor are. Element by element,
    the spread is $s_i = \max_r x^{(r)}_i - \min_r x^{(r)}_i$ (the largest difference between any two ranks)
    and the magnitude $m_i = \max_r |x^{(r)}_i|$; we keep

    $$\text{max\_abs} = \max_i s_i, \qquad \text{max\_rel} = \max_{i : m_i > 0} s_i / m_i$$

    (an element with $m_i = 0$ is zero on every rank and has $s_i = 0$).
    """
    part: Part
    name: str
    max_abs: float
    max_rel: float
    n_ranks: int

    # For the JSON report, the part as two plain fields: `"part": "layer", "layer": 5`
    def to_dict(self) -> dict:
        return {"part": self.part.kind, "layer": self.part.layer,
                **{k: v for k, v in asdict(self).items() if k != "part"}}


# The divergence of one replicated tensor, computed in float64, which holds the difference of two fp16 or fp32
# numbers exactly
def divergence(part: Part, name: str, copies: Sequence[torch.Tensor]) -> Divergence:
    x = torch.stack([c.to(torch.float64) for c in copies])
    spread = x.max(0).values - x.min(0).values
    magnitude = x.abs().max(0).values
    relative = torch.where(magnitude > 0, spread / magnitude.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(spread))
    return Divergence(part, name, float(spread.max()), float(relative.max()), len(copies))


# The mean of the copies. We add in float64 and round once at the end: $N$ fp16 numbers (or fp32 numbers of
# similar size, as the copies of one tensor are) add exactly in float64, so the result is the correctly rounded
# mean, and identical copies give back exactly the same tensor.
def average(copies: Sequence[torch.Tensor]) -> torch.Tensor:
    total = torch.stack([c.to(torch.float64) for c in copies]).sum(0)
    return (total / len(copies)).to(copies[0].dtype)


# ## Merging one part
def merge_part(part: Part, ranks: List[RankTensors], *, parallel_residual: bool,
               replicated: str = "average") -> Tuple[Dict[str, torch.Tensor], List[Divergence]]:
    r"""
    Merge the tensors of one part from all ranks into one unpartitioned dictionary.
    Returns the tensors (with `attention.rotary_emb.inv_freq` when the files have it) and the divergence
    records of the replicated tensors.
    """
    _check_names(part, ranks)
    _check_tensors(part, ranks)
    merged, records = {}, []
    for name in PART_TENSORS[part.kind] + [n for n in OPTIONAL.get(part.kind, []) if n in ranks[0][1]]:
        copies = [tensors[name] for _, tensors in ranks]
        _check_same_shape(name, ranks, copies)
        how = rule(name, parallel_residual)
        if len(copies) == 1:
            merged[name] = copies[0]
        elif how == "first":
            # A copy, not rank 0's tensor itself: that is a view into rank 0's memory-mapped file, and keeping
            # it would keep the whole file mapped (and its pages resident) for as long as the model lives
            merged[name] = copies[0].clone()
        elif how == "sum":
            # Summed in float64 too, for the same reason as the average
            merged[name] = torch.stack([c.to(torch.float64) for c in copies]).sum(0).to(copies[0].dtype)
        elif how == "replicated":
            record = divergence(part, name, copies)
            records.append(record)
            same = record.max_abs == 0 and all(c.dtype == copies[0].dtype for c in copies)
            merged[name] = copies[0].clone() if same or replicated == "first" else average(copies)
        else:
            merged[name] = torch.cat(copies, dim=how[1])
    return merged, records


# A tensor we have no rule for means a model we do not build: a gated MLP (GeGLU/SwiGLU), experts,
# another norm. Writing it out without that tensor would give a wrong model, so we stop.
def _check_names(part: Part, ranks: List[RankTensors]):
    known = set(PART_TENSORS[part.kind]) | set(OPTIONAL.get(part.kind, []))
    for source, tensors in ranks:
        unknown = sorted(set(tensors) - known)
        if unknown:
            raise CheckpointError(
                f"{source}: unexpected tensor(s) {unknown} in {part}. The merge rules cover "
                f"dense GPT-NeoX layers only (no GeGLU/SwiGLU, mixture-of-experts, ALiBi or other norms); "
                f"refusing to write a model that would silently compute something else.")
        for name in PART_TENSORS[part.kind]:
            if name not in tensors:
                raise CheckpointError(f"{source}: tensor `{name}` of {part} is missing. The "
                                      f"file is incomplete or from another architecture; re-download it.")


# Every value must be a floating-point tensor with at least one dimension: a number, a string or a 0-dim tensor in
# a layer file, or integer weights, are a damaged or foreign file, and would otherwise fail far from here.
def _check_tensors(part: Part, ranks: List[RankTensors]):
    for source, tensors in ranks:
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() == 0 or not t.is_floating_point():
                what = (f"a {type(t).__name__}" if not isinstance(t, torch.Tensor) else
                        f"a 0-dim tensor" if t.dim() == 0 else f"a {t.dtype} tensor")
                raise CheckpointError(f"{source}: `{name}` of {part} is {what}, not a "
                                      f"floating-point weight tensor. The file is damaged or was not written by "
                                      f"gpt-neox; re-create it from its source.")


def _check_same_shape(name: str, ranks: List[RankTensors], copies: List[torch.Tensor]):
    for (source, _), c in zip(ranks, copies):
        if c.shape != copies[0].shape:
            raise CheckpointError(f"`{name}` has shape {list(c.shape)} in {source} but {list(copies[0].shape)} in "
                                  f"{ranks[0][0]}: the ranks come from different checkpoints.")


# ## Splitting one part
def split_part(tensors: Dict[str, torch.Tensor], n_ranks: int, *, parallel_residual: bool
               ) -> List[Dict[str, torch.Tensor]]:
    r"""
    The inverse of `merge_part`: the $N$ dictionaries that merge back to exactly `tensors`.
    """
    ranks: List[Dict[str, torch.Tensor]] = [{} for _ in range(n_ranks)]
    for name, t in tensors.items():
        how = rule(name, parallel_residual)
        if isinstance(how, tuple):
            if t.shape[how[1]] % n_ranks:
                raise CheckpointError(f"cannot split `{name}` of shape {list(t.shape)} into {n_ranks} equal "
                                      f"parts on dim {how[1]}; choose a tensor-parallel size that divides it.")
            # `.clone()` so each rank's file stores its own slice, not the whole underlying tensor
            pieces = [p.clone() for p in torch.chunk(t, n_ranks, dim=how[1])]
        elif how == "sum":
            pieces = [t] + [torch.zeros_like(t) for _ in range(n_ranks - 1)]
        else:
            pieces = [t] * n_ranks
        for r in range(n_ranks):
            ranks[r][name] = pieces[r]
    return ranks
