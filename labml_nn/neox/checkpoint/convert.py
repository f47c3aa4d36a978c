r"""
# The merge command: all or nothing

`merge_checkpoint(src, out, format=...)` reads a checkpoint in any layout and tensor-parallel degree and writes
it as one rank, either in gpt-neox's own layout (`format="neox"`, which our loader and gpt-neox both read) or as
a transformers `GPTNeoXForCausalLM` folder (`format="hf"`). It is what
`python -m labml_nn.neox.checkpoint merge` runs.

Two promises make it safe to run on the 41 GB 20B checkpoint:

* **Nothing half-written.** The output is built in a temporary folder beside `out` (`out.tmp-XXXX`, on the same
  file system, so the final step is a rename) and appears under its name only when every part is written
  (`atomic.py`). If anything fails, or the run is interrupted or terminated, the temporary folder is removed,
  `out` does not exist, and the error names the file or tensor at fault. An existing `out` is left alone
  unless `overwrite=True`, and a folder that appears at `out` during the merge is never touched.
* **Memory near one layer.** Parts are read, merged and written one at a time (`Checkpoint.parts()`), with
  the source files memory-mapped.

## The divergence report

Layer norms are replicated on every rank, and their copies drift apart during training. The report lists,
for each replicated tensor, the largest absolute and relative difference between any two ranks (see
`merge.Divergence`), prints the worst few, and warns above `warn_above`.

We set the default threshold at $10^{-3}$ in absolute difference. That is one unit in the last place of an
fp16 number near 1, where layer-norm weights sit ($2^{-10} \approx 0.98 \times 10^{-3}$): below it, the copies
differ by rounding; above it, they have genuinely trained apart, averaging them and taking rank 0 give
different models, and it is worth evaluating both (`--replicated first` vs the default `average`).
"""

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from ..cli import DTYPES, dtype_name
from .atomic import StagedFile, atomic_folder, check_target
from .files import CheckpointError
from .merge import Divergence
from .parts import all_parts
from .reader import open_checkpoint
from .write import write_hf_checkpoint, write_neox_checkpoint

WARN_ABOVE = 1e-3


def merge_checkpoint(src: "str | Path", out: "str | Path", *, format: str, replicated: str = "average",
                     dtype: Optional[str] = None, trust_pickle: bool = False, overwrite: bool = False,
                     report: "str | Path | None" = None, warn_above: float = WARN_ABOVE,
                     max_shard_bytes: int = 1024 ** 3, progress: bool = True, mlp_names: Optional[str] = None,
                     revision: Optional[str] = None, base: "str | Path | None" = None) -> dict:
    r"""
    Merge `src` into a single-rank checkpoint at `out`. Returns the divergence report (also written to
    `report` as JSON when given). `src` may be a Hub name with a `revision` (`hub.py`). With `format="neox"`,
    a LoRA adapter (peft's format) is merged into its base (the one it names, or `base`) and written whole;
    the MLP keeps the source's spelling (`mlp.linear1` or `mlp.dense_h_to_4h`) unless `mlp_names` says otherwise.
    `dtype` is a name of the commands' vocabulary (`cli.DTYPES`: `fp16`, `bf16`, `fp32`) or PyTorch's (`float16`).
    """
    out = Path(out).expanduser().absolute()
    if format not in ("neox", "hf"):
        raise CheckpointError(f"format={format!r}: choose 'neox' (gpt-neox layout) or 'hf' (transformers).")
    if dtype is not None and dtype_name(dtype) not in DTYPES:
        raise CheckpointError(f"dtype={dtype!r}: choose one of {list(DTYPES)}.")
    # Where we write is checked now (`atomic.check_target`: OUT and the report may not replace SRC, the current
    # folder, or what exists without `overwrite`), not after 41 GB are written
    check_target(out, overwrite=overwrite, reads=[src], folder=True)
    if report is not None:
        if not Path(report).expanduser().absolute().parent.is_dir():
            raise CheckpointError(f"--report {report}: the folder {Path(report).parent} does not exist; create it "
                                  f"or choose another path.")
        report_path = check_target(report, overwrite=overwrite, reads=[src], folder=False, name="--report")

    # Opening checks the layout, the config and that every file is present, before anything is written.
    ckpt = open_checkpoint(src, trust_pickle=trust_pickle, replicated=replicated, revision=revision, base=base)
    if ckpt.source_note:
        print(f"Merging {ckpt.source_note}", file=sys.stderr)
    non_finite: List[str] = []
    staged = None
    try:
        with atomic_folder(out, overwrite=overwrite, reads=[src]) as tmp:
            with _disk_full_named(out):
                parts = _note_non_finite(_with_progress(ckpt, progress), non_finite)
                config = ckpt.config.with_updates(tensor_parallel_size=1)
                torch_dtype = DTYPES[dtype_name(dtype)] if dtype else None
                if format == "hf":
                    write_hf_checkpoint(tmp, config, parts, tokenizer_path=ckpt.tokenizer_path, dtype=torch_dtype,
                                        max_shard_bytes=max_shard_bytes)
                else:
                    write_neox_checkpoint(tmp, config, parts, tensor_parallel_size=1,
                                          tokenizer_path=ckpt.tokenizer_path, dtype=torch_dtype,
                                          mlp_names=mlp_names or ckpt.mlp_names)
            result = divergence_report(ckpt.divergence, warn_above, source=str(src), replicated=replicated,
                                       tensor_parallel_size=ckpt.config.tensor_parallel_size)
            result["non_finite"] = non_finite
            # The report is written (and a full disk or `/dev/full` found) before OUT is published, and renamed
            # into place after: a report that cannot be written leaves no OUT
            if report is not None:
                staged = StagedFile(report_path, overwrite=overwrite, label=f"--report {report}")
                staged.write(json.dumps(result, indent=2))
        if staged is not None:
            staged.publish()
    finally:
        if staged is not None:
            staged.discard()
    return result


# A full disk shows up as PyTorch's `enforce fail at inline_container.cc` (from `torch.save`), as safetensors'
# `SafetensorError: ... No space left on device (os error 28)` (an `Exception`, not an `OSError`), or as an
# `OSError` with `ENOSPC`; each becomes a message that says where space ran out. The partial output is removed as
# usual.
@contextmanager
def _disk_full_named(out: Path):
    import errno
    try:
        yield
    except Exception as e:  # noqa: BLE001 (re-raised unless it is a full disk)
        text = str(e)
        full = (getattr(e, "errno", None) == errno.ENOSPC or "No space" in text or "os error 28" in text
                or (isinstance(e, RuntimeError) and "inline_container" in text))
        if not full:
            raise
        raise CheckpointError(f"writing {out}: the disk is full ({type(e).__name__}: {str(e)[:200]}); the partial "
                              f"output was removed. Free some space on {out.parent} or choose another OUT.") from None


# A labml progress bar over the parts; each step reads, merges and hands one part to the writer
def _with_progress(ckpt, progress: bool):
    from labml import monit

    parts = all_parts(ckpt.config.n_layers)
    for part in (monit.iterate("Merge", parts) if progress else parts):
        yield part, ckpt.read(part)


# Tensors holding NaN or infinite values are noted in `non_finite` as they pass: we merge them (a diverged run's
# checkpoint is exactly what one wants to open in transformers to look at) but say so, in the report and, from the
# command, on standard error.
def _note_non_finite(parts, non_finite: List[str]):
    import torch

    for part, tensors in parts:
        non_finite.extend(f"{name} of {part}" for name, t in tensors.items()
                          if t.is_floating_point() and not bool(torch.isfinite(t).all()))
        yield part, tensors


# ## The report
#
# A JSON-ready summary of the divergence records: where the merge came from, the worst absolute and relative
# spread, the tensors above `warn_above`, and every record.
def divergence_report(records: List[Divergence], warn_above: float = WARN_ABOVE, **about) -> dict:
    worst = max(records, key=lambda r: r.max_abs, default=None)
    return {**about, "warn_above": warn_above,
            "n_replicated_tensors": len(records),
            "max_abs": worst.max_abs if worst else 0.0,
            "max_rel": max((r.max_rel for r in records), default=0.0),
            "above_threshold": [r.to_dict() for r in records if r.max_abs > warn_above],
            "tensors": [r.to_dict() for r in records]}


def format_report(report: dict, top: int = 10) -> str:
    """The worst `top` tensors as a small table, and a warning line when any exceeds the threshold."""
    rows = sorted(report["tensors"], key=lambda r: -r["max_abs"])[:top]
    if not rows:
        return "No replicated tensors to compare (the checkpoint has a single tensor-parallel rank)."
    lines = [f"Replicated tensors across {report.get('tensor_parallel_size', '?')} ranks, worst {len(rows)} "
             f"of {report['n_replicated_tensors']} (merged with {report.get('replicated', 'average')}):",
             f"{'part':<10} {'layer':>5}  {'tensor':<34} {'max abs':>10} {'max rel':>10}"]
    for r in rows:
        layer = "" if r["layer"] is None else r["layer"]
        lines.append(f"{r['part']:<10} {layer:>5}  {r['name']:<34} {r['max_abs']:>10.3g} {r['max_rel']:>10.3g}")
    n = len(report["above_threshold"])
    if n:
        lines.append(f"WARNING: {n} replicated tensor(s) differ across ranks by more than {report['warn_above']:g}. "
                     f"Averaging and taking rank 0 give measurably different models; evaluate both "
                     f"(--replicated average / first).")
    return "\n".join(lines)
