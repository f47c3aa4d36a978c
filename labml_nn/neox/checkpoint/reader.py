r"""
# Opening a checkpoint

`open_checkpoint(path)` is the one door into the weights. It fetches a Hub name and revision (`hub.py`),
recognises the layout (`layouts.py`), finds the config and the tokenizer beside the weights, opens the layout
for that config (which checks that every file the config implies is there), and returns a `Checkpoint` whose
`read(part)` gives one part of the model (`parts.py`) merged to a single rank (`merge.py`), its MLP always named
`mlp.dense_h_to_4h` / `mlp.dense_4h_to_h`:

```python
ckpt = open_checkpoint("20B_checkpoints")
ckpt.config                      # NeoXConfig, n_vocab and tensor_parallel_size filled from the files
ckpt.read(Part("embedding"))     # {"word_embeddings.weight": [V, C]}
ckpt.read(Part("layer", 5))      # {"input_layernorm.weight": [C], ..., "mlp.dense_4h_to_h.bias": [C]}
ckpt.read(Part("norm")), ckpt.read(Part("readout"))
ckpt.divergence                  # what the replicated tensors read so far looked like across ranks
```

Everything that can be checked without reading the weights is checked when the checkpoint is opened, so a
missing file fails in a second rather than after forty minutes of merging. What needs the weights (a corrupt
file, a missing tensor, a shape that disagrees with the config) fails in `read`, naming the file, the tensor
and the config key to fix.
"""

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..config import ConfigError, NeoXConfig, read_config_text
from .files import CheckpointError
from .layouts import Layout, Location, find_layout
from .merge import INV_FREQ, Divergence, merge_part, mlp_spelling, respell_mlp
from .parts import Part, all_parts
from .sources import find_tokenizer, folder_kind, resolve_checkpoint


# ## The opened checkpoint
#
# What `open_checkpoint` returns: the layout, the config (completed from the files), the tokenizer's path, and
# the divergence records of the replicated tensors merged so far.
class Checkpoint:
    def __init__(self, layout: Layout, config: NeoXConfig, config_source: str, tokenizer_path: Optional[Path],
                 replicated: str, check_rotary: bool):
        self.layout = layout
        self.config = config
        self.config_source = config_source
        self.tokenizer_path = tokenizer_path
        self.replicated = replicated
        self.check_rotary = check_rotary
        # One record per replicated tensor, kept by `(part, name)` so that reading a part twice does not count it
        # twice
        self._divergence: Dict[Tuple[Part, str], Divergence] = {}
        self._mlp_names: Optional[str] = None
        # A LoRA adapter read over this base (`adapters.py`), merged into each layer's weights by `read` while
        # `merge_adapter` is true; `source_note` says which adapter and which base, and who chose the base
        self.adapter = None
        self.merge_adapter = True
        self.source_note: Optional[str] = None

    # Whether the readout is the embedding's matrix itself (tied, and no readout of its own in the files)
    @property
    def readout_is_embedding(self) -> bool:
        return self.config.tie_word_embeddings and not self.layout.has_readout()

    @property
    def divergence(self) -> List[Divergence]:
        """The divergence records of the replicated tensors read so far, in the order they were read."""
        return list(self._divergence.values())

    def parts(self) -> Iterator[Tuple[Part, Dict[str, torch.Tensor]]]:
        """Stream `(part, tensors)` one part at a time, in the model's order: the input the writers take."""
        for part in all_parts(self.config.n_layers):
            yield part, self.read(part)

    # ## Reading one part
    def read(self, part: Part) -> Dict[str, torch.Tensor]:
        r"""
        One part, merged. The shapes are checked against the config with $C$ = `d_model`, $F$ = `d_ff`,
        $V$ = `n_vocab`, so a config that disagrees with the weights is caught here and not as a strange
        error (or strange text) inside the model.
        """
        part.check(self.config.n_layers)
        # Tied embeddings (`tie_word_embeddings`): the readout is the embedding's matrix, unless the files hold a
        # readout of their own, which transformers then uses untied (and so do we)
        if part.kind == "readout" and self.config.tie_word_embeddings and not self.layout.has_readout():
            return {"final_linear.weight": self.read(Part("embedding"))["word_embeddings.weight"]}
        ranks = self.layout.load(part)
        if part.kind == "layer":
            ranks = [(source, respell_mlp(tensors, "dense")) for source, tensors in
                     self._note_spelling(ranks, part)]
        merged, records = merge_part(part, ranks, parallel_residual=self.config.parallel_residual,
                                     replicated=self.replicated)
        self._divergence.update({(r.part, r.name): r for r in records})
        sources = ", ".join(sorted({s for s, _ in ranks}))
        inv_freq = merged.pop(INV_FREQ, None)
        if inv_freq is not None and self.check_rotary:
            self._check_inv_freq(inv_freq, sources, part)
        for name, tensor in merged.items():
            self._check_shape(part, name, tensor, sources)
        if self.adapter is not None and self.merge_adapter and part.kind == "layer":
            merged = self.adapter.merge_into(part.layer, merged)
        return merged

    # The MLP's spelling (`merge.MLP_SPELLINGS`) of the layers read so far; two layers that disagree mean two
    # checkpoints mixed in one folder.
    def _note_spelling(self, ranks, part: Part):
        for source, tensors in ranks:
            spelling = mlp_spelling(tensors)
            if self._mlp_names is not None and spelling != self._mlp_names:
                raise CheckpointError(f"{source}: {part} names its MLP `mlp.{spelling}*` but "
                                      f"earlier layers `mlp.{self._mlp_names}*`; the folder mixes two checkpoints.")
            self._mlp_names = spelling
        return ranks

    @property
    def mlp_names(self) -> str:
        r"""
        How the source spells the MLP: `"dense"` (`mlp.dense_h_to_4h`, gpt-neox before September 2024 and
        Hugging Face) or `"linear"` (`mlp.linear1`, gpt-neox since). `read` always returns `"dense"` names.
        """
        if self._mlp_names is None:
            self.read(Part("layer", 0))
        return self._mlp_names

    # The shape of each merged tensor in terms of $C$, $3C$, $F$ and $V$; layer norms and biases not listed are `[C]`
    SHAPES = {"word_embeddings.weight": ("V", "C"), "final_linear.weight": ("V", "C"),
              "attention.query_key_value.weight": ("3C", "C"), "attention.query_key_value.bias": ("3C",),
              "attention.dense.weight": ("C", "C"), "mlp.dense_h_to_4h.weight": ("F", "C"),
              "mlp.dense_h_to_4h.bias": ("F",), "mlp.dense_4h_to_h.weight": ("C", "F")}

    def _check_shape(self, part: Part, name, tensor, sources):
        c = self.config
        sizes = {"C": c.d_model, "3C": 3 * c.d_model, "F": c.d_ff, "V": c.n_vocab}
        symbols = self.SHAPES.get(name, ("C",))
        expected = [sizes[s] for s in symbols]
        if list(tensor.shape) == expected:
            return
        # Which key of the config decides the dimension that disagrees, as the layout's config format spells it
        keys = self.layout.config_keys
        keys = {"V": keys["n_vocab"], "C": keys["d_model"], "3C": keys["d_model"], "F": keys["d_ff"]}
        bad = next((s for s, e, f in zip(symbols, expected, tensor.shape) if e != f), symbols[0])
        raise CheckpointError(
            f"`{name}` of {part} ({sources}) has shape {list(tensor.shape)} after merging "
            f"{c.tensor_parallel_size} rank(s), but the config ({self.config_source}) implies {expected} "
            f"({' x '.join(symbols)}). Fix `{keys[bad]}` in the config, or use the config this checkpoint was "
            f"trained with.")

    # The stored `inv_freq` must be the $\theta_i = b^{-2i/d}$, $0 \le i < d/2$, that the config implies ($d$ the
    # rotated features per head): its length checks `rotary_pct`, its values the base $b$.
    def _check_inv_freq(self, inv_freq: torch.Tensor, sources: str, part: Part):
        d = self.config.d_rotary
        expected = 1.0 / self.config.rotary_base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        key_pct, key_base = self.layout.config_keys["rotary_pct"], self.layout.config_keys["rotary_base"]
        if inv_freq.shape != expected.shape:
            raise CheckpointError(
                f"`{INV_FREQ}` of {part} ({sources}) has {inv_freq.numel()} frequencies, so "
                f"the model rotates {2 * inv_freq.numel()} features per head, but the config ({self.config_source}) "
                f"says {d} ({key_pct} = {self.config.rotary_pct} of head size {self.config.d_head}). Fix `{key_pct}`.")
        if not torch.allclose(inv_freq.to(torch.float64), expected, rtol=5e-3, atol=1e-7):
            raise CheckpointError(
                f"`{INV_FREQ}` of {part} ({sources}) does not match rotary base "
                f"{self.config.rotary_base} from the config ({self.config_source}). Fix `{key_base}`.")


# ## Opening
def open_checkpoint(path: "str | Path", *, trust_pickle: bool = False, replicated: str = "average",
                    check_rotary: bool = True, revision: Optional[str] = None,
                    base: "str | Path | None" = None) -> Checkpoint:
    r"""
    Open a checkpoint folder in any of the three layouts; raise `CheckpointError` saying what is wrong otherwise.
    `path` may also be a Hugging Face Hub name such as `EleutherAI/pythia-160m`, with a `revision` such as
    `step3000` (`hub.py`); an existing folder always wins over a name.

    * `trust_pickle`: allow DeepSpeed files to unpickle arbitrary objects (only for files you trust).
    * `replicated`: `"average"` the copies of replicated tensors across ranks, or take the `"first"`.
    * `check_rotary`: compare the stored `rotary_emb.inv_freq` with the config's rotary settings.
    * `base`: when `path` is a LoRA adapter (peft's format, `adapters.py`), the base model to put it on instead
      of the one its `adapter_config.json` names.
    """
    if replicated not in ("average", "first"):
        raise CheckpointError(f"replicated={replicated!r}: choose 'average' or 'first'.")
    folder = resolve_checkpoint(path, revision)
    if folder_kind(folder) == "incomplete_adapter":
        raise CheckpointError(f"{folder} holds a LoRA adapter's adapter_config.json but not its tensors "
                              f"(adapter_model.safetensors): copy or download the whole adapter folder.")
    if folder_kind(folder) == "peft_adapter":
        return _open_adapter(folder, base, trust_pickle=trust_pickle, replicated=replicated,
                             check_rotary=check_rotary)
    if base is not None:
        raise CheckpointError(f"{path} is a model, not a LoRA adapter; a base model ({base}) is for adapters only. "
                              f"Drop --base.")

    # Find the files, read the config that came with them, then open the layout for that config: opening checks
    # every file the config implies, and takes the tensor-parallel degree from the config or the files, whichever
    # is larger, so that a rank whose files are all missing is reported rather than silently skipped.
    location = find_layout(folder)
    config, source = _read_config(location)
    layout = location.open(config, trust_pickle)

    # The vocabulary is padded to a multiple of `make_vocab_size_divisible_by` $\times$ the rank count, and
    # gpt-neox's YAML does not hold the result: the embedding's rows tell us. (With `mmap`, reading the shape does
    # not read the tensor.)
    rows = layout.embedding_rows()
    if 0 in rows:
        _refuse_misplaced_embedding(layout)
    n_vocab = sum(rows)
    if config.n_vocab and rows and config.n_vocab != n_vocab:
        key = layout.config_keys["n_vocab"]
        raise CheckpointError(f"The config ({source}) says `{key}: {config.n_vocab}` but word_embeddings.weight "
                              f"has {n_vocab} rows across {layout.n_ranks} rank(s). Fix `{key}`.")
    config = config.with_updates(tensor_parallel_size=layout.n_ranks, n_vocab=config.n_vocab or n_vocab)
    return Checkpoint(layout, config, source, _find_tokenizer(location), replicated, check_rotary)


# ## A LoRA adapter over its base
#
# The base is the one the adapter's `adapter_config.json` names (`base_model_name_or_path`, at its `revision`), or
# the caller's `base`, which wins; `source_note` says which was used. The adapter's own tokenizer, if it carries
# one, is preferred to the base's (fine-tuning may have added tokens).
def _open_adapter(folder: Path, base: "str | Path | None", **options) -> Checkpoint:
    from .adapters import read_adapter
    adapter = read_adapter(folder)
    if base is not None:
        base_name, base_revision, chosen = str(base), None, "given with --base (base=)"
    elif adapter.base:
        base_name, base_revision = adapter.base, adapter.base_revision
        chosen = "named by its adapter_config.json, base_model_name_or_path"
    else:
        raise CheckpointError(f"{folder} is a LoRA adapter (peft's format) whose adapter_config.json names no base "
                              f"model (base_model_name_or_path is empty). Pass the base it was trained on with "
                              f"--base (base= in Python).")
    try:
        checkpoint = open_checkpoint(base_name, revision=base_revision, **options)
    except CheckpointError as e:
        raise CheckpointError(f"{folder} is a LoRA adapter over the base model {base_name} ({chosen}), which "
                              f"could not be opened: {e} Pass another base with --base.") from None
    if checkpoint.adapter is not None:
        raise CheckpointError(f"{folder} is a LoRA adapter whose base {base_name} is itself an adapter; merge that "
                              f"one first (python -m labml_nn.neox.checkpoint merge).")
    adapter.check(checkpoint.config, base_name)
    checkpoint.adapter = adapter
    checkpoint.source_note = f"{adapter.describe()} on the base model {base_name} ({chosen})"
    checkpoint.tokenizer_path = find_tokenizer(folder) or checkpoint.tokenizer_path
    return checkpoint


# A file in the embedding's place without `word_embeddings.weight` is another stage's file under the wrong name
# (the readout, say, whose matrix has the same shape); the config is not at fault, so we name the file instead.
def _refuse_misplaced_embedding(layout: Layout):
    for source, tensors in layout.load(Part("embedding")):
        if "word_embeddings.weight" not in tensors:
            raise CheckpointError(f"{source} should hold the embedding (word_embeddings.weight) but holds "
                                  f"{sorted(tensors)[:4]}: it is another stage's file under the embedding's name. "
                                  f"Put the embedding's file in its place.")


# ## The config
#
# A Hugging Face folder holds its `config.json` beside the weights. A gpt-neox checkpoint keeps YAML files in the
# folders the location names (`configs/` beside the weights, or one level up when the user pointed at a
# `global_step...` folder).
def _read_config(location: Location) -> Tuple[NeoXConfig, str]:
    if location.layout.config_format == "huggingface":
        path = location.folder / "config.json"
        try:
            return NeoXConfig.from_hf_config(path), str(path)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None

    # gpt-neox runs are often configured by several YAML files that it merges; so do we, and two files giving
    # one key different values is an error rather than a guess.
    for folder in location.search_folders:
        files = sorted(list(folder.glob("*.yml")) + list(folder.glob("*.yaml")))
        if files:
            break
    else:
        raise CheckpointError(f"No gpt-neox config (*.yml) found in {location.root}/configs/ or {location.root}. "
                              f"Copy the config the model was trained with there (for the 20B model, 20B.yml).")
    import yaml

    values, origin = {}, {}
    for f in files:
        try:
            loaded = yaml.safe_load(read_config_text(f)) or {}
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        except yaml.YAMLError as e:
            raise CheckpointError(f"{f} is not valid YAML: {e}") from None
        except RecursionError:
            raise CheckpointError(f"{f} is nested too deeply to be a config (a config is a flat mapping of "
                                  f"keys); copy the config the model was trained with there.") from None
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{f} does not hold a mapping of config keys (`key: value` lines) but a "
                                  f"{type(loaded).__name__}")
        for key, value in loaded.items():
            k = str(key).replace("-", "_")
            if k in values and values[k] != value:
                raise CheckpointError(f"{origin[k].name} and {f.name} give `{k}` different values "
                                      f"({values[k]!r} and {value!r}); keep one config per model in {folder}.")
            values[k], origin[k] = value, f
    source = ", ".join(str(f) for f in files)
    try:
        return NeoXConfig.from_neox_yaml(files[0] if len(files) == 1 else values), source
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}" if len(files) > 1 else str(e)) from None


def _find_tokenizer(location: Location) -> Optional[Path]:
    # The file names are `tokenizer.py`'s (`20B_tokenizer.json`, then `tokenizer.json`)
    for folder in location.search_folders:
        found = find_tokenizer(folder)
        if found is not None:
            return found
    return None
