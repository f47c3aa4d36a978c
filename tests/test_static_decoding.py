r"""
The static decoding step (`static_decoding.py`) computes what today's step computes: fp32 logits within 1e-5 of
`NeoXModel.forward` with a `KVCache`, step by step, for every residual, with uneven left-padded prompts; greedy tokens
identical, also when its cache is reused by a later generation. It is one graph of fixed shapes (traced once, no
break, no retrace across steps and generations), and compiled it gives the same tokens. Where it cannot run, it says
why in one line and the model decodes as before. (The CUDA graph itself needs a GPU; `benchmarks/gpu.py` measures
it.)
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from labml_nn.neox.generation import generate, left_pad  # noqa: E402
from labml_nn.neox.model import KVCache  # noqa: E402
from labml_nn.neox.static_decoding import (MIN_CACHE_LEN, StaticDecoder, StaticDecodingUnavailable,  # noqa: E402
                                            cache_length, prepare_for_gpu_decoding)
from helpers import make_tiny_hf_model, our_model_from_hf, random_ids  # noqa: E402

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [12, 13, 14], [20, 21, 22, 23, 24, 25, 26]]


# Today's step and the static one, side by side from the same prompt: the prompt's logits, then each step's
def _step_by_step(plain, decoder, ids, padding, n_steps):
    plain_cache = KVCache(ids.shape[1] + n_steps, padding=padding)
    static_cache = decoder.new_cache(ids.shape[0], ids.shape[1] + n_steps, padding)
    assert static_cache is decoder._static.cache and static_cache.offset == 0
    pairs = [(plain(ids, plain_cache, last_only=True), decoder(ids, static_cache, last_only=True))]
    for _ in range(n_steps):
        next_ids = pairs[-1][0][:, -1].argmax(-1, keepdim=True)
        pairs.append((plain(next_ids, plain_cache), decoder(next_ids, static_cache).clone()))
    assert plain_cache.offset == static_cache.offset == ids.shape[1] + n_steps
    return pairs


@pytest.mark.parametrize("residual", ["parallel", "sequential", "parallel_tied"])
@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
def test_static_step_gives_todays_logits_with_uneven_prompts(residual, rotary_pct):
    hf = make_tiny_hf_model(seed=31, use_parallel_residual=residual != "sequential", rotary_pct=rotary_pct)
    plain = our_model_from_hf(hf, tied_layernorms=residual == "parallel_tied")
    decoder = StaticDecoder(*plain, compile=None)
    with torch.inference_mode():
        for ids, padding in [(random_ids(96, batch=2, length=6), None), left_pad(PROMPTS)]:
            for ours, static in _step_by_step(plain, decoder, ids, padding, n_steps=12):
                assert static.shape == ours.shape
                assert (static - ours).abs().max().item() < 1e-5


def test_greedy_tokens_are_identical_and_the_reused_cache_forgets_the_last_generation():
    plain = our_model_from_hf(make_tiny_hf_model(seed=32))
    decoder = StaticDecoder(*plain, compile=None)
    ids, padding = left_pad(PROMPTS)
    # A long generation first fills many slots; the shorter ones after it reuse the same buffers (one cache length)
    long_prompt = random_ids(96, batch=4, length=20, seed=3)
    assert torch.equal(generate(decoder, long_prompt, 30, eos_token_id=None),
                       generate(plain, long_prompt, 30, eos_token_id=None))
    buffers = decoder._static.buffers[0][0]
    expected = generate(plain, ids, 16, eos_token_id=None, padding=padding)
    assert torch.equal(generate(decoder, ids, 16, eos_token_id=None, padding=padding), expected)
    assert decoder._static.buffers[0][0] is buffers
    # And each row as it generates alone
    for row, prompt in enumerate(PROMPTS):
        alone = generate(decoder, torch.tensor([prompt]), 16, eos_token_id=None)
        assert torch.equal(alone[0], expected[row, padding[row]:])


# Each new cache means a new compile and capture on a GPU: lengths are powers of two, and a cache only grows
def test_cache_lengths_are_powers_of_two_and_a_cache_is_replaced_only_by_a_new_batch_size_or_a_longer_one():
    assert [cache_length(n) for n in (1, MIN_CACHE_LEN, MIN_CACHE_LEN + 1, 1000, 2048)] == \
        [MIN_CACHE_LEN, MIN_CACHE_LEN, 2 * MIN_CACHE_LEN, 1024, 2048]
    decoder = StaticDecoder(*our_model_from_hf(make_tiny_hf_model(seed=33)), compile=None)
    cache = decoder.new_cache(2, 10)
    assert cache.max_len == MIN_CACHE_LEN and decoder.new_cache(2, 200) is cache
    cache = decoder.new_cache(3, 10)
    assert decoder._static.cache is cache and cache.max_len == MIN_CACHE_LEN
    longer = decoder.new_cache(3, 300)
    assert longer is not cache and longer.max_len == 2 * MIN_CACHE_LEN and decoder.new_cache(3, 10) is longer


# The property a CUDA graph needs: `torch.compile` traces the step once, in one graph (`fullgraph`), and replays it
# for every later step and generation of the same shape, with no retrace. The counting backend runs the traced
# graph as it is, without inductor's minute of compiling.
def test_the_step_is_one_graph_traced_once_for_every_step_and_generation():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    plain = our_model_from_hf(make_tiny_hf_model(seed=34))
    decoder = StaticDecoder(*plain, compile=None)
    counter = CompileCounter()
    decoder._step = torch.compile(decoder.static_step, backend=counter, fullgraph=True, dynamic=False)
    ids, padding = left_pad(PROMPTS)
    expected = generate(plain, ids, 12, eos_token_id=None, padding=padding)
    with torch.inference_mode():
        decoder.new_cache(4, 20)
    assert torch.equal(generate(decoder, ids, 12, eos_token_id=None, padding=padding), expected)
    other = random_ids(96, batch=4, length=9, seed=8)
    assert torch.equal(generate(decoder, other, 20, eos_token_id=None), generate(plain, other, 20, eos_token_id=None))
    assert counter.frame_count == 1


# The mode a GPU uses, on a CPU: inductor compiles the step (graphs are skipped for CPU tensors); its logits and
# tokens are today's. About a minute the first time on two cores (inductor's cache makes later runs faster).
@pytest.mark.slow
def test_compiled_static_step_gives_the_same_logits_and_tokens():
    torch._dynamo.reset()
    plain = our_model_from_hf(make_tiny_hf_model(seed=35))
    decoder = StaticDecoder(*plain, compile="reduce-overhead")
    ids, padding = left_pad(PROMPTS)
    with torch.inference_mode():
        for ours, static in _step_by_step(plain, decoder, ids, padding, n_steps=8):
            assert (static - ours).abs().max().item() < 1e-5
    assert decoder.compile_error is None and decoder.warm_up_seconds
    assert torch.equal(generate(decoder, ids, 16, eos_token_id=None, padding=padding),
                       generate(plain, ids, 16, eos_token_id=None, padding=padding))


def test_a_failing_compiled_step_falls_back_with_one_line(capsys):
    plain = our_model_from_hf(make_tiny_hf_model(seed=36))
    decoder = StaticDecoder(*plain, compile=None)
    decoder.compile_mode = "reduce-overhead"

    def broken(ids):
        raise RuntimeError("inductor could not compile this\nmore detail")
    decoder._step = broken
    ids, padding = left_pad(PROMPTS)
    got = generate(decoder, ids, 10, eos_token_id=None, padding=padding)
    assert torch.equal(got, generate(plain, ids, 10, eos_token_id=None, padding=padding))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: inductor could not compile this" in err[0]
    assert decoder.compile_error.startswith("RuntimeError") and decoder._static is None
    # Later generations go straight to `NeoXModel.forward`, silently
    generate(decoder, ids, 4, eos_token_id=None, padding=padding)
    assert capsys.readouterr().err == ""


def test_where_it_cannot_run_it_says_why():
    from labml_nn.neox.cpu_decoding import prepare_for_cpu_decoding

    plain = our_model_from_hf(make_tiny_hf_model(seed=37))
    with pytest.raises(StaticDecodingUnavailable, match="not a CUDA GPU"):
        prepare_for_gpu_decoding(plain)
    with pytest.raises(StaticDecodingUnavailable, match="from the embedding to the readout"):
        StaticDecoder(*plain[:-1])
    prepared = prepare_for_cpu_decoding(our_model_from_hf(make_tiny_hf_model(seed=37)), halves=True, kernel=False)
    with pytest.raises(StaticDecodingUnavailable, match="prepared for the CPU"):
        StaticDecoder(*prepared)
