"""
Tiny GPT-NeoX checkpoints for tests, in every layout the checkpoint package reads.

    model = make_tiny_hf_model(num_hidden_layers=3)                 # also what every test of the model uses
    slim = write_slim_from_hf(model, tmp_path / "ckpt", tp=2, layout="pipeline", replicated_noise=1e-3)
    reference = load_hf_state_dict(slim.merged_hf_state_dict("average"))   # what a correct merge must equal

These helpers split the weights themselves (the way gpt-neox's own converters do, row-parallel biases as
b / N shares) instead of calling `labml_nn.neox.checkpoint.split_part`, so a test of the reader does not use
the code under test to build its input.
"""

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch

# The real GPT-NeoX files (the 20B tokenizer and config, LAMBADA) are not part of the repository. When a folder
# `shared/data` sits beside the checkout (or `NEOX_SHARED_DATA` names one), the tests about those files use it;
# otherwise they are skipped, all with the same reason. No other test reads anything outside the repository.
SHARED_DATA = Path(os.environ.get("NEOX_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    return SHARED_DATA / name


def needs_shared_file(name: str):
    r"""
    Mark a test about a real GPT-NeoX file: it runs when `shared/data/NAME` is there and is skipped otherwise.
    It is also marked `shared_data`, so that CI can run these tests apart (`pytest -m shared_data`).
    """
    reason = f"shared/data/{name} is absent (set NEOX_SHARED_DATA to a folder holding it)"
    skip = pytest.mark.skipif(not shared_file(name).is_file(), reason=reason)
    return lambda test: pytest.mark.shared_data(skip(test))


# A small text to train test tokenizers on
TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name.\n") * 4


def write_tiny_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    r"""
    A tokenizer that fits a model of `vocab_size` ids, written to `path`, with GPT-NeoX's special tokens
    (`<|endoftext|>` = 0, `<|padding|>` = 1). With 258 ids or more it is a byte-level BPE like the 20B tokenizer,
    trained on `TEXT` in milliseconds; below that (the byte alphabet alone takes 256 ids) it maps characters to ids,
    the printable ASCII characters that fit, with `<|padding|>` for any other.
    """
    import string
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|padding|>"]
    if vocab_size >= 258:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator([TEXT], trainer)
    else:
        chars = (" \n" + string.ascii_letters + string.digits + string.punctuation)[:vocab_size - len(specials)]
        vocab = {token: i for i, token in enumerate(specials + list(chars))}
        tokenizer = Tokenizer(models.BPE(vocab, [], unk_token="<|padding|>"))
        tokenizer.add_special_tokens(specials)
        tokenizer.decoder = decoders.Fuse()
    path = Path(path)
    tokenizer.save(str(path))
    return path

ROW_BIASES = ("attention.dense.bias", "mlp.dense_4h_to_h.bias")
REPLICATED = ("input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight",
              "post_attention_layernorm.bias", "norm.weight", "norm.bias")
COLUMN = ("word_embeddings.weight", "final_linear.weight", "attention.query_key_value.weight",
          "attention.query_key_value.bias", "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")
ROW = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")


# ## The tiny model
#
# Every test that needs a small GPT-NeoX starts from this one builder: a random transformers
# `GPTNeoXForCausalLM` (float32, eager attention, vocabulary and heads divisible by 4 ranks), small enough to run in
# milliseconds. Every parameter, layer norms and biases included, is drawn at random (norm weights near 1, the
# rest of scale `scale`, 0.1 by default), so that a swapped, missing or wrongly merged tensor changes the logits,
# and activations are large enough that the two GELUs give visibly different outputs. A test that needs attention
# to depend strongly on positions, or wider logits, raises `scale`. `our_model_from_hf` copies its weights into
# `build_layers(config)` by hand, through the name mapping of `hf_to_parts`.
def make_tiny_hf_model(seed: int = 0, *, scale: float = 0.1, rotary_pct: float = 0.25, rope_theta: float = 10000.0,
                       **overrides):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    values = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=256, hidden_act="gelu_fast", max_position_embeddings=64,
                  rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                   "partial_rotary_factor": rotary_pct},
                  use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5,
                  eos_token_id=0, bos_token_id=0, attn_implementation="eager")
    values.update(overrides)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**values)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    return model


def hf_to_parts(hf_model) -> list:
    r"""
    The transformers state dict split into our parts, `[(part, layer, state_dict)]`: the transformer layers'
    names are the checkpoint's names after `gpt_neox.layers.N.`; the embedding, final norm and readout are
    renamed.
    """
    state = hf_model.state_dict()
    n_layers = hf_model.config.num_hidden_layers
    parts = [("embedding", None, {"word_embeddings.weight": state["gpt_neox.embed_in.weight"]})]
    for i in range(n_layers):
        prefix = f"gpt_neox.layers.{i}."
        parts.append(("layer", i, {k[len(prefix):]: v for k, v in state.items()
                                   if k.startswith(prefix) and "rotary_emb" not in k
                                   and not k.endswith(("attention.bias", "masked_bias"))}))
    parts.append(("norm", None, {"norm.weight": state["gpt_neox.final_layer_norm.weight"],
                                 "norm.bias": state["gpt_neox.final_layer_norm.bias"]}))
    # transformers 5.x calls the readout `lm_head`, older versions `embed_out` (the name in Pythia's files)
    readout = state["lm_head.weight"] if "lm_head.weight" in state else state["embed_out.weight"]
    parts.append(("readout", None, {"final_linear.weight": readout}))
    return parts


def our_model_from_hf(hf_model, **config_changes):
    """`NeoXModel(*build_layers(config))` holding the transformers model's weights."""
    from labml_nn.neox.config import NeoXConfig
    from labml_nn.neox.model import NeoXModel, build_layers

    config = NeoXConfig.from_hf_config(hf_model.config.to_dict()).with_updates(**config_changes)
    layers = build_layers(config)
    for layer, (_, _, state) in zip(layers, hf_to_parts(hf_model)):
        layer.load_state_dict(state, strict=True)
    return NeoXModel(*layers).eval()


def random_ids(vocab: int, batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# fp32 logits of our model and transformers' agree to this on the tiny model; the two GELUs differ by far more
TOLERANCE = 2e-4


def hf_to_neox(hf_state: Dict[str, torch.Tensor], n_layers: int) -> Dict[Tuple[str, Optional[int]], Dict]:
    """`{(part, layer): {slim name: tensor}}` from a transformers state dict."""
    parts = {("embedding", None): {"word_embeddings.weight": hf_state["gpt_neox.embed_in.weight"]},
             ("norm", None): {"norm.weight": hf_state["gpt_neox.final_layer_norm.weight"],
                              "norm.bias": hf_state["gpt_neox.final_layer_norm.bias"]},
             ("readout", None): {"final_linear.weight": hf_state.get("embed_out.weight",
                                                                     hf_state.get("lm_head.weight"))}}
    for i in range(n_layers):
        prefix = f"gpt_neox.layers.{i}."
        parts["layer", i] = {k[len(prefix):]: v for k, v in hf_state.items()
                             if k.startswith(prefix) and "rotary_emb" not in k}
    return parts


def neox_to_hf(parts: Dict[Tuple[str, Optional[int]], Dict]) -> Dict[str, torch.Tensor]:
    out = {}
    for (part, layer), tensors in parts.items():
        for name, t in tensors.items():
            if part == "embedding":
                out["gpt_neox.embed_in.weight"] = t
            elif part == "readout":
                out["embed_out.weight"] = t
            elif part == "norm":
                out["gpt_neox.final_layer_norm." + name[len("norm."):]] = t
            else:
                out[f"gpt_neox.layers.{layer}.{name}"] = t
    return out


def pipeline_index(part: str, layer: Optional[int], n_layers: int) -> int:
    return {"embedding": 0, "norm": n_layers + 3, "readout": n_layers + 4}.get(part, (layer or 0) + 2)


def split_rank(name: str, t: torch.Tensor, tp: int, rank: int, parallel_residual: bool) -> torch.Tensor:
    if name in COLUMN:
        return torch.chunk(t, tp, 0)[rank].clone()
    if name in ROW:
        return torch.chunk(t, tp, 1)[rank].clone()
    if name in ROW_BIASES and parallel_residual:
        return t / tp
    return t.clone()


@dataclass
class TinySlim:
    path: Path
    n_layers: int
    tp: int
    parts: Dict[Tuple[str, Optional[int]], Dict[str, torch.Tensor]]
    # (part, layer, name) -> the copy each rank holds of a replicated tensor
    replicas: Dict[Tuple[str, Optional[int], str], List[torch.Tensor]] = field(default_factory=dict)

    def merged_parts(self, mode: str = "average") -> Dict[Tuple[str, Optional[int]], Dict[str, torch.Tensor]]:
        """What a correct merge gives: the original weights, with replicated tensors averaged (or rank 0's)."""
        out = {k: dict(v) for k, v in self.parts.items()}
        for (part, layer, name), copies in self.replicas.items():
            if mode == "first":
                out[part, layer][name] = copies[0]
            else:
                mean = torch.stack([c.double() for c in copies]).mean(0)
                out[part, layer][name] = mean.to(copies[0].dtype)
        return out

    def merged_hf_state_dict(self, mode: str = "average") -> Dict[str, torch.Tensor]:
        return neox_to_hf(self.merged_parts(mode))


def neox_yaml(hf_config, tp: int) -> str:
    """A gpt-neox config for the tiny model, in gpt-neox's own mixed `-`/`_` spelling."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return "\n".join([
        "# tiny test model", "{",
        f'  "num-layers": {hf_config.num_hidden_layers},', f'  "hidden-size": {hf_config.hidden_size},',
        f'  "num_attention_heads": {hf_config.num_attention_heads},',
        f'  "seq-length": {hf_config.max_position_embeddings},',
        f'  "max_position_embeddings": {hf_config.max_position_embeddings},',
        '  "norm": "layernorm",', '  "pos-emb": "rotary",',
        f'  "rotary_pct": {rope.get("partial_rotary_factor", 1.0)},',
        f'  "rotary_emb_base": {rope.get("rope_theta", 10000.0)},',
        '  "no-weight-tying": true,', f'  "gpt_j_residual": {str(hf_config.use_parallel_residual).lower()},',
        f'  "bias_gelu_fusion": {str(hf_config.hidden_act == "gelu_fast").lower()},',
        f'  "layernorm-epsilon": {hf_config.layer_norm_eps},',
        f'  "model-parallel-size": {tp},', '  "pipe-parallel-size": 1,', "}", ""])


def write_slim_from_hf(hf_model, out: Path, tp: int = 2, layout: str = "pipeline", replicated_noise: float = 0.0,
                       dtype: torch.dtype = torch.float32, tokenizer: bool = True, step: int = 10,
                       seed: int = 1) -> TinySlim:
    r"""
    Write `hf_model` as a gpt-neox checkpoint with `tp` ranks: `layout="pipeline"` (latest, global_stepN/layer
    files, configs/tiny.yml) or `"sequential"` (global_stepN/mp_rank_RR_model_states.pt with the weights under
    `module` and an `argparse.Namespace`, as DeepSpeed saves them). Ranks $r \ge 1$ get Gaussian noise of
    standard deviation `replicated_noise` on their copies of the replicated tensors.
    """
    out = Path(out)
    cfg = hf_model.config
    n_layers = cfg.num_hidden_layers
    state = {k: v.detach().to(dtype) for k, v in hf_model.state_dict().items()}
    parts = hf_to_neox(state, n_layers)
    slim = TinySlim(out, n_layers, tp, parts)
    gen = torch.Generator().manual_seed(seed)
    rope = getattr(cfg, "rope_parameters", None) or {}
    d = int(cfg.hidden_size // cfg.num_attention_heads * rope.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / rope.get("rope_theta", 10000.0) ** (torch.arange(0, d, 2).float() / d)

    ranks: List[Dict[Tuple[str, Optional[int]], Dict[str, torch.Tensor]]] = [{} for _ in range(tp)]
    for (part, layer), tensors in parts.items():
        for r in range(tp):
            shard = {}
            for name, t in tensors.items():
                piece = split_rank(name, t, tp, r, cfg.use_parallel_residual)
                if name in REPLICATED or (name in ROW_BIASES and not cfg.use_parallel_residual):
                    if r > 0 and replicated_noise:
                        piece = (piece + torch.randn(piece.shape, generator=gen) * replicated_noise).to(dtype)
                    slim.replicas.setdefault((part, layer, name), []).append(piece)
                shard[name] = piece
            if part == "layer":
                shard["attention.rotary_emb.inv_freq"] = inv_freq.clone()
            ranks[r][part, layer] = shard

    folder = out / f"global_step{step}"
    folder.mkdir(parents=True)
    (out / "latest").write_text(f"global_step{step}\n")
    (out / "configs").mkdir()
    (out / "configs" / "tiny.yml").write_text(neox_yaml(cfg, tp))
    if tokenizer:
        write_tiny_tokenizer(out / "20B_tokenizer.json", cfg.vocab_size)
    for r in range(tp):
        if layout == "pipeline":
            for (part, layer), shard in ranks[r].items():
                index = pipeline_index(part, layer, n_layers)
                torch.save(shard, folder / f"layer_{index:02d}-model_{r:02d}-model_states.pt")
        elif layout == "sequential":
            module = {f"sequential.{pipeline_index(p, l, n_layers)}.{name}": t
                      for (p, l), shard in ranks[r].items() for name, t in shard.items()}
            torch.save({"module": module, "args": argparse.Namespace(num_layers=n_layers, lr=1e-4),
                        "mp_world_size": tp, "iteration": step, "ds_version": "0.x"},
                       folder / f"mp_rank_{r:02d}_model_states.pt")
        else:
            raise ValueError(f"layout {layout!r}: choose 'pipeline' or 'sequential'")
    return slim


def load_hf_state_dict(state: Dict[str, torch.Tensor], like_model=None, **overrides):
    """A transformers model (config from `like_model`, or a fresh tiny one) with `state` loaded strictly."""
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(like_model.config) if like_model is not None else make_tiny_hf_model(**overrides)
    state = {("lm_head.weight" if k == "embed_out.weight" else k): v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary_emb" in m for m in missing), (missing, unexpected)
    return model.eval()


def hf_logits(model, seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)
    with torch.no_grad():
        return model(ids).logits


def make_attention_sensitive_hf_model(seed: int = 0, **overrides):
    r"""
    A tiny model whose greedy tokens depend on attention. In `make_tiny_hf_model`'s model the argmax is decided by
    each token's own path through the FFNs, so a wrong rotary sign or attention scale leaves greedy tokens as they
    were; here the queries and keys are 4x larger (scores 16x, so attention is sharp and position matters), the
    attention's output 4x larger and the FFN's 4x smaller. `attention_mutations` checks that this holds.
    """
    model = make_tiny_hf_model(seed, **overrides)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.query_key_value.weight.mul_(4)
            layer.attention.dense.weight.mul_(4)
            layer.mlp.dense_4h_to_h.weight.mul_(0.25)
    return model


def attention_mutations():
    r"""
    Two plausible bugs as `(name, patch)` pairs, each `patch(monkeypatch)` applying one to `model.py`: keys and
    queries rotated the wrong way (the sign of $\sin$), and scores scaled by $1/D$ instead of $1/\sqrt{D}$. A test
    that compares tokens checks with them that its model can tell.
    """
    import torch.nn.functional as F
    from labml_nn.neox import model as model_py

    def wrong_rotary_sign(monkeypatch):
        tables = model_py.RotaryEmbedding.tables
        monkeypatch.setattr(model_py.RotaryEmbedding, "tables",
                            lambda self, end, device: (lambda cs: (cs[0], -cs[1]))(tables(self, end, device)))

    def wrong_attention_scale(monkeypatch):
        def attend(self, q, k, v, offset, padding=None):
            return F.scaled_dot_product_attention(q, k, v, scale=1 / q.shape[-1], **self._mask(offset, q.shape[2],
                                                                                              q.device, padding))
        monkeypatch.setattr(model_py.Attention, "attend", attend)

    return [("wrong rotary sign", wrong_rotary_sign), ("wrong attention scale", wrong_attention_scale)]
