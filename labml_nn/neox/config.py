r"""
# The model's configuration

Every GPT-NeoX model, from Pythia-70M to 20B, is the same program with different numbers. `NeoXConfig` holds
them, read from a **gpt-neox YAML config** (`configs/20B.yml`; `num_layers` or `num-layers`, absent keys take
gpt-neox's defaults) or a **Hugging Face `config.json`** (Pythia; transformers 4.x or 5.x spellings).
`model.py` depends on nothing else of ours.

## The numbers of the 20B model

| field | 20B | meaning |
|---|---|---|
| `n_layers` | 44 | transformer layers |
| `d_model` | 6144 | hidden size $C = H \cdot D$ |
| `n_heads` | 64 | attention heads $H$, so $D = 96$ |
| `d_ff` | 24576 | FFN hidden size, $4C$ |
| `n_vocab` | 50432 | rows of the embedding $V$: 50,277 tokens padded to a multiple of 256 (128 $\times$ 2 ranks) |
| `rotary_pct` | 0.25 | fraction of each head's $D$ features that are rotated (24 of 96) |
| `parallel_residual` | true | $x + \text{attn}(\text{ln}_1(x)) + \text{mlp}(\text{ln}_2(x))$ |
| `activation` | `gelu_tanh` | `bias_gelu_fusion: true` fuses the tanh approximation of GELU |

## Every key that changes what a model computes

A key we do not read is an effect we silently drop, so every model key of gpt-neox and of transformers is
**read**, **refused** (a `ConfigError` naming it, when its value asks for something `model.py` does not compute)
or **irrelevant** to a trained model's outputs; `tests/test_config.py` fails when one is missing here.

<details markdown="1">
<summary>The keys of gpt-neox and of transformers, one by one</summary>

| gpt-neox key | status | what it does |
|---|---|---|
| `num_layers`, `hidden_size`, `num_attention_heads`, `layernorm_epsilon`, `seq_length`, `max_position_embeddings` | read | the sizes |
| `intermediate_size`, `expansion_factor`, `mlp_multiple_of` | read | the FFN width (`_neox_ffn_width`) |
| `rotary_pct`, `rotary_emb_base` | read | rotary fraction and base (default 1.0 and 10000) |
| `gpt_j_residual`, `gpt_j_tied` | read | parallel residual; both branches reading `input_layernorm` |
| `activation`, `bias_gelu_fusion` | read | exact or tanh GELU; gated and other activations refused |
| `model_parallel_size`, `make_vocab_size_divisible_by` | read | ranks to merge; the padded $V$, read from the embedding's rows |
| `no_weight_tying` | read | must be true: NeoX checkpoints have their own readout |
| `pos_emb`, `norm`, `attention_config` | refused | unless `rotary`, `layernorm`, and global (or flash) attention |
| `num_kv_heads` | read | equal to the heads is plain multi-head attention; fewer (grouped-query) refused |
| `use_qk_layernorm`, `use_bias_in_attn_linear`, `use_bias_in_mlp`, `use_bias_in_norms` | refused | unless false, true, true, true |
| `sliding_window_width`, `soft_prompt_tuning`, `output_layer_parallelism`, `te_layernorm_mlp`, `te_mha` | refused | unless unset, disabled, `column`, false, false |
| `num_unique_layers`, `param_sharing_style` | refused | when layers share weights |
| `use_mup`, `mup_init_scale`, `mup_attn_temp`, `mup_output_temp`, `mup_embedding_mult`, `mup_rp_embedding_mult`, `mup_width_scale` | refused | muP's multipliers, when `use_mup` is true (its `init_scale` is only initialisation) |
| `moe_num_experts`, `num_experts` | refused | above 1 |
| `rms_norm_epsilon`, `scalenorm_epsilon`, `rpe_num_buckets`, `rpe_max_distance`, `opt_pos_emb_offset`, `sparsity_config`, `gmlp_attn_dim`, `use_flashattn_swiglu`, `mamba_selective_scan_fusion`, `mamba_causal_conv_fusion`, `mamba_inner_func_fusion`, `mamba_selective_fp32_params`, `mamba_use_bias_in_conv`, `mamba_use_bias_in_linears`, `dim_att`, `head_size`, `ffn_dim` | irrelevant | used only by a norm, position embedding, layer type or activation refused above |
| `layernorm_fusion`, `rmsnorm_fusion`, `scaled_upper_triang_masked_softmax_fusion`, `scaled_masked_softmax_fusion`, `bias_dropout_fusion`, `rope_fusion`, `fused_kernels_build_path`, `attention_softmax_in_fp32`, `apply_query_key_layer_scaling`, `te_columnparallel`, `te_rowparallel`, `te_fp8_format`, `te_fp8_wgrad`, `te_fp8_amax_history_len`, `te_fp8_amax_compute_algo`, `te_fp8_margin`, `te_fp8_mha` | irrelevant | kernels and training precision: the same maths computed another way (layer scaling divides the logits by the layer number and the softmax multiplies it back) |
| `precision`, `fp16_lm_cross_entropy`, `init_method`, `output_layer_init_method`, `init_method_std`, `use_cpu_initialization`, `rotary_save_freqs_buffer`, `hidden_dropout`, `attention_dropout`, `serve_model_weights`, `weight_server_port`, `online_dataserver_ips`, `online_dataserver_ports` | irrelevant | training only: dtype, initialisation, dropout, serving |

| transformers key | status | what it does |
|---|---|---|
| `num_hidden_layers`, `hidden_size`, `num_attention_heads`, `intermediate_size`, `vocab_size`, `max_position_embeddings`, `layer_norm_eps`, `use_parallel_residual`, `hidden_act` | read | the sizes, residual and GELU |
| `eos_token_id` | read | one id, or a list of ids any of which ends generation |
| `rope_parameters`, `rope_scaling`, `rotary_pct`, `rotary_emb_base` | read | with transformers' defaults and precedence (`_hf_rotary`); types `default`, `linear` and `dynamic` |
| `tie_word_embeddings` | read | the readout is the embedding's matrix, unless the file holds a readout of its own (as transformers does) |
| `model_type`, `attention_bias` | refused | unless `gpt_neox`, true |
| `attention_dropout`, `hidden_dropout`, `classifier_dropout`, `initializer_range`, `use_cache`, `bos_token_id`, `pad_token_id`, `is_decoder` | irrelevant | training, caching and other heads |

</details>
"""

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Tuple

# The two GELUs. `gelu_tanh` is the approximation that gpt-neox's fused kernel computes
# (Hugging Face calls it `gelu_fast` or `gelu_new`); `gelu` is the exact one, $x \Phi(x)$.
ACTIVATIONS = ("gelu_tanh", "gelu")


class ConfigError(ValueError):
    """A config file that does not describe a model we can build. The message names the file and the key."""


@dataclass(frozen=True)
class NeoXConfig:
    r"""
    ## The configuration

    The field names are plain English; the comments give the gpt-neox YAML key and the Hugging Face key
    each one is read from.
    """

    # $L$, the number of transformer layers: `num_layers` in the YAML, `num_hidden_layers` in `config.json`.
    n_layers: int
    # The hidden size $C$, `hidden_size` in both files.
    d_model: int
    # The number of attention heads $H$, `num_attention_heads` in both files.
    n_heads: int
    # Rows of the embedding and of the readout, $V$ (`vocab_size` in `config.json`). gpt-neox's own YAML does
    # not hold it: gpt-neox pads the tokenizer's size to a multiple of `make_vocab_size_divisible_by` $\times$
    # the tensor-parallel degree at start-up. Our exports write it as `padded_vocab_size`; when it is 0, the
    # loader fills it from the shape of `word_embeddings.weight`.
    n_vocab: int = 0
    # `intermediate_size` in both. The 20B model and Pythia use $4C$, gpt-neox's default, and their configs
    # do not write it; newer gpt-neox configs may. 0 means $4C$.
    d_ff: int = 0
    # `max_position_embeddings` / `seq_length`: the longest context the model was trained on.
    n_ctx: int = 2048
    # The fraction of each head's $D$ features that rotary embeddings rotate: `rotary_pct` in the YAML,
    # `partial_rotary_factor` (5.x) or `rotary_pct` (4.x) in `config.json`.
    rotary_pct: float = 1.0
    # The base $b$ of the rotation angles $\theta_i = b^{-2i/d}$: `rotary_emb_base` / `rope_theta`.
    rotary_base: float = 10000.0
    # Linear RoPE scaling ("position interpolation"): positions are divided by this factor, so a model
    # fine-tuned this way reads $s$ times its training context. transformers' `rope_scaling` /
    # `rope_parameters` with type `linear` and its `factor`; gpt-neox has no such key. 1 means none.
    rotary_scaling: float = 1.0
    # How `rotary_scaling` scales: `"linear"` (above), or `"dynamic"`, transformers' dynamic NTK scaling, where
    # past `n_ctx` positions the base $b$ grows with the sequence (`model.py`'s `RotaryEmbedding`)
    rotary_scaling_type: str = "linear"
    # The $\epsilon$ of every layer norm: `layernorm_epsilon` / `layer_norm_eps`.
    layer_norm_eps: float = 1e-5
    # Whether attention and the feed-forward network read the same input and are added to the residual
    # together (`gpt_j_residual` / `use_parallel_residual`; true in every published NeoX model).
    parallel_residual: bool = False
    # `gpt_j_tied` in the YAML: with the parallel residual, both branches read `input_layernorm`'s output and
    # `post_attention_layernorm` is left unused, $x + \text{attn}(\text{ln}_1(x)) + \text{mlp}(\text{ln}_1(x))$.
    # (The 20B model has untied norms "due to a bug", as gpt-neox's own comment says; later models may tie them.)
    tied_layernorms: bool = False
    # `bias_gelu_fusion` or `activation` / `hidden_act`, normalised to one of `ACTIVATIONS`
    activation: str = "gelu"
    # `model_parallel_size`: how many tensor-parallel ranks the checkpoint was *written* with.
    # The model itself always runs unpartitioned; only the loader and the merge tool read this.
    tensor_parallel_size: int = 1
    # The end-of-text token, `eos_token_id` in `config.json`; 0 in the 20B tokenizer and in Pythia's.
    eos_token_id: int = 0
    # When `config.json` lists several end-of-text ids (`eos_token_id: [0, 2]`): all of them, any of which ends
    # generation, the first being `eos_token_id`. Empty means `eos_token_id` alone.
    eos_token_ids: Tuple[int, ...] = ()
    # `tie_word_embeddings` in `config.json`: the readout's matrix is the embedding's (gpt-neox's
    # `no_weight_tying: false`). Every published NeoX model has a readout of its own.
    tie_word_embeddings: bool = False

    # Fill the derived default $4C$ and check the numbers fit together. A frozen dataclass still lets
    # `__post_init__` set a field through `object.__setattr__`.
    def __post_init__(self):
        check_values("NeoXConfig", asdict(self), FIELD_KINDS)
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_heads != 0:
            raise ConfigError(f"hidden size {self.d_model} is not a multiple of the {self.n_heads} heads")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.rotary_scaling_type not in ("linear", "dynamic"):
            raise ConfigError(f"rotary_scaling_type {self.rotary_scaling_type!r} is not 'linear' or 'dynamic'")
        # A list (from JSON) becomes a tuple, so that the config stays hashable
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))
        # Rotary embeddings rotate features in pairs, so they need an even number of them (gpt-neox and
        # transformers fail with a shape error deep inside the first forward pass otherwise)
        if self.d_rotary % 2:
            raise ConfigError(f"rotary_pct {self.rotary_pct} of a head's {self.d_head} features is "
                              f"{self.d_rotary}, an odd number; rotary embeddings rotate features in pairs, so "
                              f"choose rotary_pct (or the head size) to make it even")

    # Every id that ends generation
    @property
    def stop_token_ids(self) -> Tuple[int, ...]:
        return self.eos_token_ids or (self.eos_token_id,)

    # The head dimension $D = C / H$
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    # The number of features of each head that rotary embeddings rotate: 24 of 96 for the 20B model.
    @property
    def d_rotary(self) -> int:
        return int(self.d_head * self.rotary_pct)

    def with_updates(self, **changes) -> "NeoXConfig":
        """A copy with some fields changed (the config is frozen so that layers can share it safely)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "NeoXConfig":
        """The inverse of `to_dict`; unknown keys are an error, so a typo never passes silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    # ## Reading a gpt-neox YAML config
    @classmethod
    def from_neox_yaml(cls, source: "str | Path | Mapping[str, Any]") -> "NeoXConfig":
        r"""
        Read a gpt-neox config: a path to a `.yml` file, or the dictionary it parses to.

        gpt-neox accepts `num-layers` and `num_layers` as the same key, so we normalise `-` to `_` first.
        Keys that gpt-neox would take from its defaults take the same defaults here: sequential residual,
        full rotary (`rotary_pct: 1.0`), base 10000, no GELU fusion (exact GELU).

        We refuse what the model in `model.py` does not implement, rather than building a wrong model:
        another position embedding, another norm, another activation, tied embeddings, or mixture-of-experts.
        """
        name, values = _read_keys(source, "YAML")
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        check_values(name, values, NEOX_VALUE_KINDS)

        def get(key, default=None, required=False):
            if key in values and values[key] is not None:
                return values[key]
            if required:
                raise ConfigError(f"{name}: missing key `{key}` (also accepted as `{key.replace('_', '-')}`)")
            return default

        _refuse_unsupported(name, values)
        _refuse_unbuilt_neox_keys(name, values)
        # The 20B config sets `bias_gelu_fusion: true`, which in gpt-neox means the tanh approximation.
        # Without the fusion, gpt-neox's `activation` key (default `gelu`) decides.
        activation = str(get("activation", "gelu"))
        if get("bias_gelu_fusion", False):
            activation = "gelu_tanh"
        activation = _normalise_activation(name, "activation", activation)

        return cls(
            n_layers=int(get("num_layers", required=True)),
            d_model=int(get("hidden_size", required=True)),
            n_heads=int(get("num_attention_heads", required=True)),
            n_vocab=int(get("padded_vocab_size", 0)),
            d_ff=_neox_ffn_width(name, values, int(get("hidden_size", required=True))),
            n_ctx=int(get("max_position_embeddings", get("seq_length", 2048))),
            rotary_pct=float(get("rotary_pct", 1.0)),
            rotary_base=float(get("rotary_emb_base", 10000.0)),
            layer_norm_eps=float(get("layernorm_epsilon", 1e-5)),
            parallel_residual=bool(get("gpt_j_residual", False)),
            # gpt-neox reads `gpt_j_tied` only on the parallel-residual path
            tied_layernorms=bool(get("gpt_j_tied", False)) and bool(get("gpt_j_residual", False)),
            activation=activation,
            tensor_parallel_size=int(get("model_parallel_size", 1)),
        )

    # ## Reading a Hugging Face `config.json`
    @classmethod
    def from_hf_config(cls, source: "str | Path | Mapping[str, Any]") -> "NeoXConfig":
        r"""
        Read a transformers `GPTNeoXConfig`: a path to `config.json` (or its folder), or its dictionary.

        transformers 5.x moved the rotary settings into `rope_parameters`; older files have `rotary_pct` and
        `rotary_emb_base` at the top level, and perhaps a `rope_scaling`. `_hf_rotary` reads them with
        transformers' own defaults and precedence.
        """
        if not isinstance(source, Mapping) and Path(source).is_dir():
            source = Path(source) / "config.json"
        name, values = _read_keys(source, "JSON")
        check_values(name, values, HF_VALUE_KINDS)
        for key in ("rope_scaling", "rope_parameters"):
            check_values(name, values.get(key) or {}, ROPE_VALUE_KINDS, within=f"{key}.")

        model_type = values.get("model_type", "gpt_neox")
        if model_type != "gpt_neox":
            raise ConfigError(f"{name}: model_type is {model_type!r}, not 'gpt_neox'")
        if values.get("attention_bias", True) is False:
            raise ConfigError(f"{name}: attention_bias is false; the NeoX attention layers here have biases")

        rotary_pct, rotary_base, rotary_scaling, rotary_scaling_type = _hf_rotary(name, values)
        eos_ids = _hf_eos_ids(name, values.get("eos_token_id"))

        def get(key, *alternatives, required=False, default=None):
            for k in (key,) + alternatives:
                if values.get(k) is not None:
                    return values[k]
            if required:
                raise ConfigError(f"{name}: missing key `{key}`")
            return default

        return cls(
            n_layers=int(get("num_hidden_layers", required=True)),
            d_model=int(get("hidden_size", required=True)),
            n_heads=int(get("num_attention_heads", required=True)),
            n_vocab=int(get("vocab_size", required=True)),
            d_ff=int(get("intermediate_size", default=0)),
            n_ctx=int(get("max_position_embeddings", default=2048)),
            rotary_pct=rotary_pct,
            rotary_base=rotary_base,
            rotary_scaling=rotary_scaling,
            rotary_scaling_type=rotary_scaling_type,
            layer_norm_eps=float(get("layer_norm_eps", default=1e-5)),
            parallel_residual=bool(get("use_parallel_residual", default=True)),
            activation=_normalise_activation(name, "hidden_act", str(get("hidden_act", default="gelu"))),
            eos_token_id=eos_ids[0],
            eos_token_ids=eos_ids if len(eos_ids) > 1 else (),
            tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
        )

    def to_hf_config(self) -> dict:
        r"""
        The `config.json` of a transformers `GPTNeoXForCausalLM` with the same maths. We write both rotary
        spellings so that transformers 4.x and 5.x read the same settings. Tied layer norms have no
        transformers key: `write_hf_checkpoint` writes a copy of the first norm in the second's place.
        """
        return {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": self.n_vocab,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_ff,
            "hidden_act": "gelu_fast" if self.activation == "gelu_tanh" else "gelu",
            "max_position_embeddings": self.n_ctx,
            "layer_norm_eps": self.layer_norm_eps,
            "use_parallel_residual": self.parallel_residual,
            "rotary_pct": self.rotary_pct,
            "rotary_emb_base": self.rotary_base,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rotary_base,
                                "partial_rotary_factor": self.rotary_pct,
                                **({"rope_type": self.rotary_scaling_type, "factor": self.rotary_scaling}
                                   if self._scaled else {})},
            # transformers 4.x reads scaling from `rope_scaling` (exactly these two keys); 5.x takes
            # `rope_scaling` over `rope_parameters` and then the top-level `rotary_pct` and `rotary_emb_base`
            **({"rope_scaling": {"type": self.rotary_scaling_type, "factor": self.rotary_scaling}}
               if self._scaled else {}),
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": True,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "bos_token_id": self.eos_token_id,
            "eos_token_id": list(self.eos_token_ids) if self.eos_token_ids else self.eos_token_id,
            "use_cache": True,
        }

    # Dynamic scaling with factor 1 is still dynamic: transformers recomputes the base past `n_ctx` (with a
    # factor of 1 the formula leaves it unchanged, but we write what we read)
    @property
    def _scaled(self) -> bool:
        return self.rotary_scaling != 1 or self.rotary_scaling_type != "linear"

    def to_neox_yaml(self) -> dict:
        """The model keys of a gpt-neox YAML config that `from_neox_yaml` reads back to this config."""
        if self._scaled:
            raise ConfigError(f"{self.rotary_scaling_type} RoPE scaling (factor {self.rotary_scaling}) has no "
                              f"gpt-neox config key; write this model in Hugging Face format instead")
        return {
            "num_layers": self.n_layers,
            "hidden_size": self.d_model,
            "num_attention_heads": self.n_heads,
            "seq_length": self.n_ctx,
            "max_position_embeddings": self.n_ctx,
            "norm": "layernorm",
            "pos_emb": "rotary",
            "rotary_pct": self.rotary_pct,
            "rotary_emb_base": self.rotary_base,
            "layernorm_epsilon": self.layer_norm_eps,
            # A model with tied embeddings is written untied, its readout a copy of the embedding (the same logits)
            "no_weight_tying": True,
            "gpt_j_residual": self.parallel_residual,
            "gpt_j_tied": self.tied_layernorms,
            "bias_gelu_fusion": self.activation == "gelu_tanh",
            "activation": "gelu",
            "model_parallel_size": self.tensor_parallel_size,
            "padded_vocab_size": self.n_vocab,
            # Written only when it is not gpt-neox's default, which older gpt-neox versions do not read
            **({"intermediate_size": self.d_ff} if self.d_ff != 4 * self.d_model else {}),
        }


# ## Helpers
#
# A config file (gpt-neox's YAML, which PyYAML's `safe_load` parses despite its comments and trailing commas, or
# `config.json`) or its dictionary: returns a name for error messages and the keys.
def _read_keys(source, kind: str) -> "tuple[str, dict]":
    if isinstance(source, Mapping):
        return ("config" if kind == "YAML" else "config.json"), dict(source)
    path = Path(source)
    if kind == "YAML":
        import yaml
        parse, syntax_error, shape = yaml.safe_load, yaml.YAMLError, "a mapping of config keys (`key: value` lines)"
    else:
        parse, syntax_error, shape = json.loads, json.JSONDecodeError, "a JSON object of config keys"
    try:
        values = parse(read_config_text(path))
    except syntax_error as e:
        raise ConfigError(f"{path} is not valid {kind}: {e}") from None
    except RecursionError:
        raise ConfigError(_too_deep(path)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} does not hold {shape} but a {type(values).__name__}")
    return str(path), values


# A config nested thousands of levels deep (`[[[[...]]]]`) is no config, and the parsers recurse once per level
def _too_deep(path) -> str:
    return f"{path} is nested too deeply to be a config (a config is a flat mapping of keys); re-download it"


# The many names of the two GELUs across gpt-neox and transformers, mapped to one of `ACTIVATIONS`
def _normalise_activation(name: str, key: str, value: str) -> str:
    value = value.lower()
    if value in ("gelu", "gelu_python"):
        return "gelu"
    if value in ("gelu_fast", "gelu_new", "gelu_tanh", "gelu_pytorch_tanh", "bias_gelu", "fast_gelu"):
        return "gelu_tanh"
    raise ConfigError(f"{name}: `{key}: {value}` is not supported; this implementation has exact and tanh GELU")


# gpt-neox can train models that `model.py` does not implement. Building one anyway would load
# without error and then compute something else, so we stop here and say which key is at fault.
def _refuse_unsupported(name: str, values: dict):
    checks = {
        "pos_emb": lambda v: v == "rotary",
        "norm": lambda v: v == "layernorm",
        "activation": lambda v: str(v).lower() in ("gelu", "gelu_fast", "gelu_new", "gelu_tanh"),
        "moe_num_experts": lambda v: int(v) <= 1,
        "num_experts": lambda v: int(v) <= 1,
        "use_bias_in_attn_linear": lambda v: bool(v),
        "use_qk_layernorm": lambda v: not v,
        "attention_config": lambda v: all(_attention_kind(a) in ("global", "flash") for a in v),
    }
    for key, ok in checks.items():
        if values.get(key) is not None and not ok(values[key]):
            raise ConfigError(f"{name}: `{key}: {values[key]}` describes a model this implementation does not "
                              f"build (rotary, LayerNorm, GELU, dense multi-head attention only)")
    # gpt-neox's default is to tie the embedding and the readout; every published NeoX model sets
    # `no_weight_tying: true` and has a separate `final_linear.weight`.
    if not values.get("no_weight_tying", False):
        raise ConfigError(f"{name}: `no_weight_tying` is not true, so gpt-neox would tie the embedding and the "
                          f"readout; this implementation loads untied NeoX checkpoints only. If the checkpoint "
                          f"has a `final_linear.weight`, set `no_weight_tying: true`.")


# `attention_config: [[["global"], 44]]` lists (kinds, count) pairs; this is the first kind of one pair
def _attention_kind(entry) -> str:
    kinds = entry[0] if isinstance(entry, (list, tuple)) else entry
    kind = kinds[0] if isinstance(kinds, (list, tuple)) else kinds
    return str(kind).lower()


# ## Keys whose meaning changed, or that we refuse by name
#
# The rotary settings of a `config.json`, exactly as transformers reads them (4.38 and 5.x agree):
#
# * a non-empty `rope_scaling` (4.x's spelling) **replaces** `rope_parameters` whole, so the base and the
#   fraction then come from the top-level `rotary_emb_base` and `rotary_pct`;
# * absent keys take transformers' defaults for GPT-NeoX: base 10000 and **0.25** of each head rotated (not
#   gpt-neox's 1.0, which is for the YAML);
# * `type` (4.x) or `rope_type` (5.x) `linear` divides the positions by `factor`; `dynamic` grows the base past
#   `max_position_embeddings` (NTK-aware scaling, `model.py`); `default` rotates plainly. The other types
#   (`yarn`, `llama3`, `longrope`, ...) change the frequencies in ways `model.py` does not.
def _hf_rotary(name: str, values: Mapping[str, Any]) -> "tuple[float, float, float, str]":
    key = "rope_scaling" if values.get("rope_scaling") else "rope_parameters"
    rope = values.get(key) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in ("linear", "dynamic"):
        if rope.get("factor") is None:
            raise ConfigError(f"{name}: `{key}` has type {kind} but no `factor`")
        scaling = float(rope["factor"])
    elif kind in ("default", None):
        kind, scaling = "linear", 1.0
    else:
        raise ConfigError(f"{name}: `{key}` has RoPE type {kind!r}; this implementation rotates plainly or with "
                          f"linear or dynamic scaling only. Supporting it would take its frequency formula in "
                          f"RotaryEmbedding (model.py).")
    pct = rope.get("partial_rotary_factor", values.get("rotary_pct", 0.25))
    base = rope.get("rope_theta", values.get("rotary_emb_base", 10000.0))
    return float(pct), float(base), scaling, kind


# `eos_token_id` is one id or a list of ids (transformers stops on any of them); absent or null means 0, the
# 20B and Pythia tokenizer's end-of-text
def _hf_eos_ids(name: str, value) -> "tuple[int, ...]":
    ids = value if isinstance(value, list) else [0 if value is None else value]
    if not ids or not all(_value_ok("size", i) for i in ids):
        raise ConfigError(f"{name}: `eos_token_id: {value!r}` must be an integer >= 0 or a non-empty list of them; "
                          f"fix it in the file")
    return tuple(int(i) for i in ids)


# The feed-forward width in gpt-neox since PR #1212: `intermediate_size`, or `expansion_factor` $\times C$, or
# $4C$; then `linear1`'s outputs are rounded up to a multiple of $2m$ and `linear2`'s inputs to a multiple of
# $m$, with $m$ = `mlp_multiple_of` (default 1). Without a gate the two must agree, or gpt-neox itself could not
# run the model.
def _neox_ffn_width(name: str, values: Mapping[str, Any], d_model: int) -> int:
    size, factor = values.get("intermediate_size"), values.get("expansion_factor")
    if size and factor:
        raise ConfigError(f"{name}: both `intermediate_size` and `expansion_factor` are set; gpt-neox refuses "
                          f"that too. Keep one.")
    width = int(size) if size else int(float(factor) * d_model) if factor else 4 * d_model
    m = int(values.get("mlp_multiple_of") or 1)
    outputs, inputs = -(-width // (2 * m)) * 2 * m, -(-width // m) * m
    if outputs != inputs:
        raise ConfigError(f"{name}: `mlp_multiple_of: {m}` rounds the feed-forward width {width} to {outputs} "
                          f"outputs of linear1 but {inputs} inputs of linear2; gpt-neox cannot build such a model.")
    return outputs


# gpt-neox keys that change what a trained model computes, which `model.py` does not implement. Each would load
# without error and give other logits, so each is refused by name, with what supporting it would take.
UNBUILT_NEOX_KEYS = {
    "use_mup": (lambda v: not v, "muP multiplies the embedding output by `mup_embedding_mult`, divides the "
                                 "attention logits by D rather than sqrt(D) (times `mup_attn_temp`) and scales "
                                 "the readout by `mup_output_temp` / `mup_width_scale`; supporting it would take "
                                 "those three multipliers in model.py"),
    "sliding_window_width": (lambda v: v is None, "each token then attends to the last N tokens only; supporting "
                                                  "it would take a banded causal mask in Attention"),
    "use_bias_in_mlp": (lambda v: bool(v), "the MLP here has biases; supporting it would take bias=False "
                                           "linear layers in FFN"),
    "use_bias_in_norms": (lambda v: bool(v), "the layer norms here have biases; supporting it would take "
                                             "bias-free LayerNorms"),
    "output_layer_parallelism": (lambda v: v == "column", "the readout would be split on its input dimension "
                                                          "across ranks; supporting it would take a merge rule"),
    "soft_prompt_tuning": (lambda v: not (v or {}).get("enabled", False) if isinstance(v, dict) else not v,
                           "a learned soft prompt is prepended to every input; supporting it would take its "
                           "embedding and the prepending"),
    "te_layernorm_mlp": (lambda v: not v, "TransformerEngine fuses the MLP's layer norm into the MLP under "
                                          "other tensor names"),
    "te_mha": (lambda v: not v, "TransformerEngine's attention stores its weights under other names"),
}


def _refuse_unbuilt_neox_keys(name: str, values: Mapping[str, Any]):
    for key, (ok, why) in UNBUILT_NEOX_KEYS.items():
        if values.get(key) is not None and not ok(values[key]):
            raise ConfigError(f"{name}: `{key}: {values[key]}` is not implemented: {why}.")
    heads, kv_heads = values.get("num_attention_heads"), values.get("num_kv_heads")
    if kv_heads is not None and kv_heads != heads:
        raise ConfigError(f"{name}: `num_kv_heads: {kv_heads}` with {heads} attention heads is grouped-query "
                          f"attention; supporting it would take splitting query_key_value into {heads} query "
                          f"heads and {kv_heads} key/value heads. (num_kv_heads equal to the heads is plain "
                          f"multi-head attention and loads.)")
    layers, unique = values.get("num_layers"), values.get("num_unique_layers")
    if unique is not None and unique != layers:
        raise ConfigError(f"{name}: `num_unique_layers: {unique}` shares weights between the {layers} layers "
                          f"(`param_sharing_style`); supporting it would take reusing layer modules.")


# ## Checking the values
#
# A config file is input from outside: `num_layers: four`, `hidden_size: [256]`, or the *string* `"false"` (true to
# Python's `bool`). Every key we read is checked once, before use; a wrong one names the file, the key, the value
# and what it should be. Numbers written as strings (`"1e-5"`) are accepted when they parse.
#
# What each kind accepts: `count` an integer $\geq 1$, `size` an integer $\geq 0$, `positive` a finite number
# $> 0$, `fraction` a number in $(0, 1]$, `flag` `true` or `false`, `mapping` a `{key: value}` table.
NEOX_VALUE_KINDS = {
    "num_layers": "count", "hidden_size": "count", "num_attention_heads": "count", "padded_vocab_size": "size",
    "intermediate_size": "size", "expansion_factor": "positive", "mlp_multiple_of": "count",
    "max_position_embeddings": "count", "seq_length": "count", "rotary_pct": "fraction",
    "rotary_emb_base": "positive", "layernorm_epsilon": "positive", "gpt_j_residual": "flag", "gpt_j_tied": "flag",
    "bias_gelu_fusion": "flag", "no_weight_tying": "flag", "model_parallel_size": "count",
    "num_kv_heads": "count", "num_unique_layers": "count", "moe_num_experts": "size", "num_experts": "size",
}
HF_VALUE_KINDS = {
    "num_hidden_layers": "count", "hidden_size": "count", "num_attention_heads": "count", "vocab_size": "count",
    "intermediate_size": "size", "max_position_embeddings": "count", "layer_norm_eps": "positive",
    "use_parallel_residual": "flag", "tie_word_embeddings": "flag", "attention_bias": "flag",
    "rotary_pct": "fraction", "rotary_emb_base": "positive",
    "rope_scaling": "mapping", "rope_parameters": "mapping",
}
# Inside `rope_scaling` / `rope_parameters`
ROPE_VALUE_KINDS = {"factor": "positive", "partial_rotary_factor": "fraction", "rope_theta": "positive"}
# The same rules for the fields of `NeoXConfig` itself, for configs built in Python
FIELD_KINDS = {
    "n_layers": "count", "d_model": "count", "n_heads": "count", "n_vocab": "size", "d_ff": "size",
    "n_ctx": "count", "rotary_pct": "fraction", "rotary_base": "positive", "rotary_scaling": "positive",
    "layer_norm_eps": "positive", "parallel_residual": "flag", "tied_layernorms": "flag",
    "tensor_parallel_size": "count", "eos_token_id": "size",
}
WHAT = {"count": "an integer >= 1", "size": "an integer >= 0", "positive": "a finite number > 0",
        "fraction": "a number in (0, 1]", "flag": "true or false (without quotes)", "mapping": "a {key: value} table"}


def _value_ok(kind: str, value) -> bool:
    import math
    if kind == "flag":
        return isinstance(value, bool) or value in (0, 1) and not isinstance(value, (str, float))
    if kind == "mapping":
        return isinstance(value, Mapping)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    if kind in ("count", "size"):
        return number == int(number) and number >= (1 if kind == "count" else 0)
    return number > 0 and (kind != "fraction" or number <= 1)


def check_values(name: str, values: Mapping[str, Any], kinds: Mapping[str, str], within: str = ""):
    """Raise `ConfigError` naming `name` and the key for the first value of `values` that is not of its kind."""
    for key, kind in kinds.items():
        value = values.get(key)
        if value is not None and not _value_ok(kind, value):
            raise ConfigError(f"{name}: `{within}{key}: {value!r}` must be {WHAT[kind]}; fix it in the file")


# Config files are read only when they are regular files of a sane size: a named pipe would block forever and a
# link to `/dev/zero` would fill the memory. They must be UTF-8, as YAML and JSON require.
MAX_CONFIG_BYTES = 16 * 2 ** 20


def read_config_text(path: "str | Path") -> str:
    """The text of the config file `path`, or a `ConfigError` that says what is wrong with the file."""
    import os
    import stat
    path = Path(path)
    try:
        mode, size = os.stat(path).st_mode, os.stat(path).st_size
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror}); check the path and its permissions") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path} is not a regular file (a folder, a pipe or a device); give the config file")
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} has {size:,} bytes; a config is a few kB, so this is not one. Check the path")
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    try:
        return data[:MAX_CONFIG_BYTES].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}); save it as "
                          f"UTF-8") from None
