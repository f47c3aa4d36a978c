r"""
Prompts of different lengths in one batch: left padding, with the padding counts in the KV cache, gives every
row the logits it has alone (the rotary positions start at each row's first real token, and no query sees a
padding key), and greedy tokens equal transformers' batched `generate` with left padding and an attention mask.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from labml_nn.neox.generation import generate, left_pad  # noqa: E402
from labml_nn.neox.model import KVCache  # noqa: E402
from helpers import (attention_mutations, make_attention_sensitive_hf_model, make_tiny_hf_model,  # noqa: E402
                     our_model_from_hf, random_ids)

# Three prompts of 3, 11 and 7 tokens: the padding is 8, 0 and 4
LENGTHS = (3, 11, 7)


def uneven_prompts(vocab: int, seed: int = 21):
    ids = random_ids(vocab, batch=len(LENGTHS), length=max(LENGTHS), seed=seed)
    return [ids[row, :n].tolist() for row, n in enumerate(LENGTHS)]


def test_left_pad_puts_padding_before_each_prompt():
    ids, padding = left_pad([[5, 6], [7, 8, 9, 10], [11]], pad_id=1)
    assert ids.tolist() == [[1, 1, 5, 6], [7, 8, 9, 10], [1, 1, 1, 11]]
    assert padding.tolist() == [2, 0, 3]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[5], []])


@pytest.mark.parametrize("parallel_residual", [True, False])
def test_each_padded_row_has_its_unbatched_logits(parallel_residual):
    # The prompt in two chunks (the second needs the shifted triangle with padding), then 6 single tokens;
    # each row's logits at its real positions must equal a pass over that row alone, without a cache
    hf = make_tiny_hf_model(seed=22, use_parallel_residual=parallel_residual)
    model = our_model_from_hf(hf)
    prompts = uneven_prompts(hf.config.vocab_size)
    follow = random_ids(hf.config.vocab_size, batch=len(LENGTHS), length=6, seed=23)
    ids, padding = left_pad(prompts, pad_id=5)
    with torch.no_grad():
        cache = KVCache(max_len=ids.shape[1] + 6, padding=padding)
        pieces = [model(ids[:, :6], cache), model(ids[:, 6:], cache)]
        pieces += [model(follow[:, t:t + 1], cache) for t in range(6)]
        batched = torch.cat(pieces, dim=1)
        assert torch.isfinite(batched).all()
        for row, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt + follow[row].tolist()]))[0]
            got = batched[row, int(padding[row]):]
            assert got.shape == alone.shape
            assert (got - alone).abs().max().item() < 1e-5


def test_the_padding_id_does_not_matter():
    hf = make_tiny_hf_model(seed=24)
    model = our_model_from_hf(hf)
    prompts = uneven_prompts(hf.config.vocab_size, seed=25)
    ids_a, padding = left_pad(prompts, pad_id=0)
    ids_b, _ = left_pad(prompts, pad_id=77)
    with torch.no_grad():
        a = model(ids_a, KVCache(ids_a.shape[1], padding=padding))
        b = model(ids_b, KVCache(ids_b.shape[1], padding=padding))
    real = torch.arange(ids_a.shape[1])[None, :] >= padding[:, None]
    assert torch.equal(a[real], b[real])


def test_greedy_tokens_equal_transformers_batched_generate_with_left_padding(monkeypatch):
    # On a model whose greedy tokens depend on attention; checked at the end
    hf = make_attention_sensitive_hf_model(seed=26)
    model = our_model_from_hf(hf)
    prompts = uneven_prompts(hf.config.vocab_size, seed=27)
    ids, padding = left_pad(prompts, pad_id=0)
    attention_mask = (torch.arange(ids.shape[1])[None, :] >= padding[:, None]).long()
    expected = hf.generate(ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=20,
                           min_new_tokens=20, pad_token_id=0)
    got = generate(model, ids, 20, temperature=0.0, eos_token_id=None, padding=padding)
    assert torch.equal(got, expected)
    # And each row's new tokens are those it generates alone
    for row, prompt in enumerate(prompts):
        alone = generate(model, torch.tensor([prompt]), 20, eos_token_id=None)
        assert torch.equal(got[row, ids.shape[1]:], alone[0, len(prompt):])
    for name, mutate in attention_mutations():
        with monkeypatch.context() as patch:
            mutate(patch)
            wrong = generate(our_model_from_hf(hf), ids, 20, temperature=0.0, eos_token_id=None, padding=padding)
            assert not torch.equal(wrong, expected), name
