r"""
Generation: the KV cache gives the same logits as running the whole sequence, greedy decoding gives
transformers' greedy tokens, and the sampling options do what `generation.py` says they do.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from labml_nn.neox.generation import generate, generate_stream, sample_next  # noqa: E402
from labml_nn.neox.model import KVCache  # noqa: E402
from helpers import (attention_mutations, make_attention_sensitive_hf_model, make_tiny_hf_model,  # noqa: E402
                     our_model_from_hf, random_ids)


@pytest.fixture(scope="module")
def hf_and_ours():
    hf = make_tiny_hf_model(seed=3)
    return hf, our_model_from_hf(hf)


# ## The cache

@pytest.mark.parametrize("parallel_residual", [True, False])
def test_cached_logits_equal_one_full_forward(parallel_residual):
    # Feed 20 tokens as a prompt in two chunks (7 + 5, the second chunk needs the shifted causal mask), then
    # one token at a time; every position's logits must equal a single pass over all 20 without a cache.
    hf = make_tiny_hf_model(seed=4, use_parallel_residual=parallel_residual)
    model = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, batch=3, length=20)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(max_len=20)
        pieces = [model(ids[:, :7], cache), model(ids[:, 7:12], cache)]
        pieces += [model(ids[:, t:t + 1], cache) for t in range(12, 20)]
    assert cache.offset == 20
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-5


def test_last_only_gives_the_last_positions_logits(hf_and_ours):
    _, model = hf_and_ours
    ids = random_ids(96, batch=2, length=9)
    with torch.no_grad():
        assert torch.allclose(model(ids, last_only=True), model(ids)[:, -1:], atol=1e-6)


def test_cache_refuses_more_positions_than_it_holds(hf_and_ours):
    _, model = hf_and_ours
    cache = KVCache(max_len=4)
    with pytest.raises(ValueError, match="larger max_len"):
        model(random_ids(96, length=5), cache)


def test_two_generations_share_no_state(hf_and_ours):
    # Interleave two generations step by step; each must give what it gives when run alone
    _, model = hf_and_ours
    a, b = random_ids(96, batch=1, length=6, seed=10), random_ids(96, batch=2, length=3, seed=11)
    alone_a = generate(model, a, 10, eos_token_id=None)
    alone_b = generate(model, b, 10, eos_token_id=None)
    stream_a = generate_stream(model, a, 10, eos_token_id=None)
    stream_b = generate_stream(model, b, 10, eos_token_id=None)
    together_a, together_b = [], []
    for next_a, next_b in zip(stream_a, stream_b):
        together_a.append(next_a)
        together_b.append(next_b)
    assert torch.equal(torch.cat([a, torch.stack(together_a, 1)], 1), alone_a)
    assert torch.equal(torch.cat([b, torch.stack(together_b, 1)], 1), alone_b)
    # And running the first again after the second gives the same tokens
    assert torch.equal(generate(model, a, 10, eos_token_id=None), alone_a)


# ## Greedy decoding against transformers

# On a model whose greedy tokens depend on attention (`helpers.make_attention_sensitive_hf_model`): the test checks
# that a wrong rotary sign or a wrong attention scale would change them, so that passing means something
def test_greedy_tokens_equal_transformers_generate(monkeypatch):
    hf = make_attention_sensitive_hf_model(seed=3)
    model = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, batch=2, length=8, seed=5)
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                           min_new_tokens=24, pad_token_id=0)
    got = generate(model, ids, 24, temperature=0.0, eos_token_id=None)
    assert torch.equal(got, expected)
    for name, mutate in attention_mutations():
        with monkeypatch.context() as patch:
            mutate(patch)
            model = our_model_from_hf(hf)
            assert not torch.equal(generate(model, ids, 24, temperature=0.0, eos_token_id=None), expected), name


# ## The cache against transformers' cache
#
# Step by step, with the same weights: a prompt of 7 tokens, a chunk of 4, then one token at a time; at every step
# our logits with our `KVCache` against transformers' with its `past_key_values`. On the attention-sensitive model,
# so that a cache that stored keys before rotating them, or in the wrong slots, shows.
def hf_step(hf, ids, past):
    """transformers' forward with its cache: `(logits, cache)`. transformers 5.x names the cache `cache` (it was
    `past_key_values`, still accepted with a deprecation warning)."""
    import inspect
    name = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(ids, use_cache=True, **({name: past} if past is not None else {}))
    return out.logits, out[name] if name in out else out.past_key_values


def test_cached_logits_equal_transformers_cached_logits_step_by_step():
    hf = make_attention_sensitive_hf_model(seed=8)
    model = our_model_from_hf(hf)
    ids = random_ids(hf.config.vocab_size, batch=2, length=20, seed=9)
    chunks = [(0, 7), (7, 11)] + [(t, t + 1) for t in range(11, 20)]
    cache, past = KVCache(max_len=20), None
    with torch.no_grad():
        for start, end in chunks:
            ours = model(ids[:, start:end], cache)
            logits, past = hf_step(hf, ids[:, start:end], past)
            assert (ours - logits).abs().max().item() < 1e-4, (start, end)
    assert cache.offset == 20


# The same comparison holds only if it can fail: a wrong rotary sign or attention scale breaks it
def test_the_cache_comparison_catches_attention_bugs(monkeypatch):
    hf = make_attention_sensitive_hf_model(seed=8)
    ids = random_ids(hf.config.vocab_size, batch=2, length=12, seed=9)
    with torch.no_grad():
        _, past = hf_step(hf, ids[:, :8], None)
        expected, _ = hf_step(hf, ids[:, 8:], past)
    for name, mutate in attention_mutations():
        with monkeypatch.context() as patch:
            mutate(patch)
            model, cache = our_model_from_hf(hf), KVCache(max_len=12)
            with torch.no_grad():
                model(ids[:, :8], cache)
                assert (model(ids[:, 8:], cache) - expected).abs().max().item() > 1e-2, name


# ## A model that generated can train
#
# Generation runs under `torch.inference_mode`; the rotary tables it makes on the first call must still be usable
# by a forward pass that records gradients (a notebook that samples, then fine-tunes).
def test_a_model_that_generated_can_train():
    model = our_model_from_hf(make_tiny_hf_model(seed=12))
    ids = random_ids(96, batch=2, length=6, seed=13)
    generate(model, ids, 3)
    model.train()
    model(ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_batch_rows_generate_as_they_would_alone(hf_and_ours):
    _, model = hf_and_ours
    ids = random_ids(96, batch=3, length=5, seed=6)
    batch = generate(model, ids, 12, eos_token_id=None)
    for row in range(3):
        assert torch.equal(batch[row:row + 1], generate(model, ids[row:row + 1], 12, eos_token_id=None))


def test_end_of_text_stops_a_row_and_then_the_loop(hf_and_ours):
    # Use the first greedy token of row 0 as "end of text": row 0 stops at once, row 1 runs on and is cut
    # when it also produces that token, or at max_new_tokens
    _, model = hf_and_ours
    ids = random_ids(96, batch=2, length=5, seed=7)
    free = generate(model, ids, 16, eos_token_id=None)
    eos = int(free[0, 5])
    out = generate(model, ids, 16, eos_token_id=eos)
    assert (out[0, 5:] == eos).all()
    row1 = free[1, 5:].tolist()
    stop = row1.index(eos) + 1 if eos in row1 else 16
    assert out.shape[1] == 5 + stop
    assert torch.equal(out[1], free[1, :5 + stop])


def test_prompt_longer_than_the_context_is_refused(hf_and_ours):
    _, model = hf_and_ours
    n_ctx = model[0].config.n_ctx
    with pytest.raises(ValueError, match=f"context is {n_ctx}"):
        generate(model, random_ids(96, batch=1, length=n_ctx + 1), 4)


def test_generation_stops_at_the_end_of_the_context(hf_and_ours):
    _, model = hf_and_ours
    n_ctx = model[0].config.n_ctx
    from labml_nn.neox.generation import ContextLengthWarning
    with pytest.warns(ContextLengthWarning, match="only 3 of the 10"):
        out = generate(model, random_ids(96, batch=1, length=n_ctx - 3), 10, eos_token_id=None)
    assert out.shape[1] == n_ctx


# ## Sampling

def logits_rows(n_rows: int, seed: int = 0) -> torch.Tensor:
    # One random distribution over 10 tokens, repeated `n_rows` times, so one call gives many samples of it
    z = torch.randn(10, generator=torch.Generator().manual_seed(seed)) * 2
    return z.expand(n_rows, -1).contiguous()


def frequencies(tokens: torch.Tensor, vocab: int = 10) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


def test_temperature_samples_follow_the_scaled_softmax():
    logits = logits_rows(40000)
    for temperature in (0.5, 1.0, 2.0):
        tokens = sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(1))
        expected = torch.softmax(logits[0].double() / temperature, dim=-1)
        # 40,000 draws: the standard error of each frequency is below 0.0025
        assert (frequencies(tokens) - expected).abs().max().item() < 0.01


def test_top_k_keeps_the_k_most_likely_tokens():
    logits = logits_rows(40000)
    tokens = sample_next(logits, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(2))
    top3 = torch.topk(logits[0], 3).indices
    expected = torch.zeros(10, dtype=torch.float64)
    expected[top3] = torch.softmax(logits[0, top3].double(), dim=-1)
    assert (frequencies(tokens) - expected).abs().max().item() < 0.01


def test_top_p_keeps_the_nucleus():
    # The nucleus, computed directly: the most likely tokens, in order, until their probabilities add up to p
    logits = logits_rows(40000, seed=3)
    probs = torch.softmax(logits[0].double(), dim=-1)
    for top_p in (0.5, 0.8, 0.95):
        nucleus, total = [], 0.0
        for token in torch.argsort(probs, descending=True).tolist():
            nucleus.append(token)
            total += probs[token].item()
            if total >= top_p:
                break
        expected = torch.zeros(10, dtype=torch.float64)
        expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
        tokens = sample_next(logits, temperature=1.0, top_p=top_p, generator=torch.Generator().manual_seed(4))
        assert set(tokens.unique().tolist()) == set(nucleus)
        assert (frequencies(tokens) - expected).abs().max().item() < 0.01


def test_top_p_of_zero_keeps_the_most_likely_token():
    # The smallest set whose probabilities add up to at least 0 is the most likely token alone (as in
    # transformers, which always keeps one token), not an empty set whose softmax is NaN
    logits = logits_rows(4, seed=5)
    for top_p in (0.0, -1.0):
        tokens = sample_next(logits, temperature=1.0, top_p=top_p, generator=torch.Generator().manual_seed(6))
        assert torch.equal(tokens, logits.argmax(dim=-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_seed_works_when_the_prompt_is_not_on_the_models_device(hf_and_ours):
    # The embedding moves the ids to its device, so a CPU prompt for a GPU model is allowed; the seeded
    # generator must then live where the logits are, not where the prompt is
    _, model = hf_and_ours
    ids = random_ids(96, batch=2, length=6, seed=8)
    kwargs = dict(temperature=1.0, top_p=0.9, eos_token_id=None, seed=7)
    cuda_model = torch.nn.Sequential(*[m.cuda() for m in model])
    try:
        on_cpu = generate(cuda_model, ids, 8, **kwargs)
        on_gpu = generate(cuda_model, ids.cuda(), 8, **kwargs)
    finally:
        model.cpu()
    assert on_cpu.device.type == "cpu"
    assert torch.equal(on_cpu, on_gpu.cpu())


def test_top_k_of_one_is_greedy(hf_and_ours):
    _, model = hf_and_ours
    ids = random_ids(96, batch=2, length=6, seed=8)
    greedy = generate(model, ids, 12, eos_token_id=None)
    assert torch.equal(generate(model, ids, 12, temperature=1.5, top_k=1, seed=9, eos_token_id=None), greedy)


def test_a_seed_makes_sampling_reproducible(hf_and_ours):
    _, model = hf_and_ours
    ids = random_ids(96, batch=2, length=6, seed=8)
    kwargs = dict(temperature=1.0, top_p=0.9, eos_token_id=None)
    first = generate(model, ids, 24, seed=123, **kwargs)
    assert torch.equal(generate(model, ids, 24, seed=123, **kwargs), first)
    assert not torch.equal(generate(model, ids, 24, seed=124, **kwargs), first)
