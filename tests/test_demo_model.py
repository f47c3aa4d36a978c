r"""
The demo model that ships in `labml_nn/neox/demo/` (trained by `samples/train_demo.py`): a 2-rank slim-weights
checkpoint, small enough to ship, that loads, gives transformers' logits on the same weights, generates text with
its own tokenizer, has actually learnt Shakespeare (a held-out passage scores far better than the same tokens
shuffled), and whose tensors split into ranks and merge back exactly, as the rank files on disk do by the merge
rules of gpt-neox.
"""

import os
from pathlib import Path

import pytest
import torch

from labml_nn.neox.checkpoint import Part, merge_part, open_checkpoint, split_part
from labml_nn.neox.generation import generate
from labml_nn.neox.loader import LayerLoader
from labml_nn.neox.tokenizer import encode, load_tokenizer
from labml_nn.neox.training.trainer import lm_loss

DEMO = Path(__file__).resolve().parent.parent / "labml_nn" / "neox" / "demo"

# Macbeth, Act V, Scene V: one of the three plays held out from the demo's training (and its tokenizer's)
PASSAGE = """MACBETH.
To-morrow, and to-morrow, and to-morrow,
Creeps in this petty pace from day to day
To the last syllable of recorded time;
And all our yesterdays have lighted fools
The way to dusty death. Out, out, brief candle!
Life's but a walking shadow; a poor player,
That struts and frets his hour upon the stage,
And then is heard no more: it is a tale
Told by an idiot, full of sound and fury,
Signifying nothing.
"""


@pytest.fixture(scope="module")
def demo():
    generator = LayerLoader(DEMO, dtype=torch.float32, progress=False)
    return generator, torch.nn.Sequential(*generator.load())


def test_demo_is_a_two_rank_slim_checkpoint_small_enough_to_ship():
    files = {p.relative_to(DEMO).as_posix() for p in DEMO.rglob("*") if p.is_file()}
    step = (DEMO / "latest").read_text().strip()
    checkpoint = open_checkpoint(DEMO)
    n = checkpoint.config.n_layers
    for index in [0] + [i + 2 for i in range(n)] + [n + 3, n + 4]:
        for rank in (0, 1):
            assert f"{step}/layer_{index:02d}-model_{rank:02d}-model_states.pt" in files
    assert checkpoint.config.tensor_parallel_size == 2
    assert checkpoint.tokenizer_path is not None
    assert sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file()) < 25 * 2 ** 20


def test_demo_tokenizer_has_the_20b_special_tokens_and_fits_the_embedding(demo):
    generator, _ = demo
    tokenizer = load_tokenizer(generator.checkpoint.tokenizer_path)
    assert tokenizer.token_to_id("<|endoftext|>") == 0 and tokenizer.token_to_id("<|padding|>") == 1
    assert tokenizer.get_vocab_size() <= generator.config.n_vocab
    # Byte-level: any text round-trips
    text = "Thou art — naïve? 🎭"
    assert tokenizer.decode(encode(tokenizer, text)) == text


def test_demo_logits_match_transformers_on_the_same_weights(demo):
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from helpers import neox_to_hf

    generator, model = demo
    checkpoint = open_checkpoint(DEMO)
    hf_config = GPTNeoXConfig.from_dict({**generator.config.to_hf_config(), "attn_implementation": "eager"})
    hf = GPTNeoXForCausalLM(hf_config).eval()
    state = neox_to_hf({(part.kind, part.layer): t for part, t in checkpoint.parts()})
    state = {("lm_head.weight" if k == "embed_out.weight" else k): v.float() for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary_emb" in m for m in missing)

    tokenizer = load_tokenizer(generator.checkpoint.tokenizer_path)
    ids = torch.tensor([encode(tokenizer, PASSAGE)])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-3 * theirs.abs().max().item()


def test_demo_has_learnt_shakespeare(demo):
    generator, model = demo
    tokenizer = load_tokenizer(generator.checkpoint.tokenizer_path)
    ids = torch.tensor([encode(tokenizer, PASSAGE)])
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        loss = lm_loss(model(ids[:, :-1]), ids[:, 1:]).item()
        loss_shuffled = lm_loss(model(shuffled[:, :-1]), shuffled[:, 1:]).item()
    # A uniform guess costs ln V = 8.3 nats per token; the same tokens in random order tell the model little
    assert loss < 5.0 and loss < loss_shuffled - 1.5, (loss, loss_shuffled)


def test_demo_generates_text(demo):
    generator, model = demo
    tokenizer = load_tokenizer(generator.checkpoint.tokenizer_path)
    prompt = torch.tensor([encode(tokenizer, "KING.\n")])
    out = generate(model, prompt, 40, temperature=0.8, top_k=40, seed=0)
    text = tokenizer.decode(out[0, prompt.shape[1]:].tolist())
    assert out.shape[1] > prompt.shape[1] and sum(c.isalpha() for c in text) > 20, text


def test_splitting_the_demo_into_ranks_and_merging_is_the_identity():
    checkpoint = open_checkpoint(DEMO)
    parallel_residual = checkpoint.config.parallel_residual
    for part, tensors in checkpoint.parts():
        for n_ranks in (1, 2, 4):
            ranks = split_part(tensors, n_ranks, parallel_residual=parallel_residual)
            merged, _ = merge_part(part, [(f"rank {r}", t) for r, t in enumerate(ranks)],
                                   parallel_residual=parallel_residual)
            assert merged.keys() == tensors.keys()
            assert all(torch.equal(merged[k], tensors[k]) for k in tensors), (part, n_ranks)


def test_demo_rank_files_follow_the_gpt_neox_merge_rules():
    # Read layer 0's two files directly and merge them by the table in NEOX_FACTS (not by our merge code)
    checkpoint = open_checkpoint(DEMO)
    folder = DEMO / (DEMO / "latest").read_text().strip()
    r0, r1 = (torch.load(folder / f"layer_02-model_{r:02d}-model_states.pt", weights_only=True) for r in (0, 1))
    merged = checkpoint.read(Part("layer", 0))
    for name in ("attention.query_key_value.weight", "attention.query_key_value.bias",
                 "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias"):
        assert torch.equal(torch.cat([r0[name], r1[name]], 0), merged[name])
    for name in ("attention.dense.weight", "mlp.dense_4h_to_h.weight"):
        assert torch.equal(torch.cat([r0[name], r1[name]], 1), merged[name])
    for name in ("attention.dense.bias", "mlp.dense_4h_to_h.bias"):
        assert torch.equal((r0[name].double() + r1[name].double()).to(r0[name].dtype), merged[name])
    for name in ("input_layernorm.weight", "post_attention_layernorm.bias"):
        assert torch.equal(r0[name], r1[name]) and torch.equal(r0[name], merged[name])
    # Each rank holds half of the heads, so half of the rows of `query_key_value`
    assert r0["attention.query_key_value.weight"].shape[0] == 3 * checkpoint.config.d_model // 2
