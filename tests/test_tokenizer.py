r"""
The GPT-NeoX-20B tokenizer, from `../shared/data/20B_tokenizer.json` when it is there (the tests that need it
are skipped otherwise; nothing is downloaded).
"""

from pathlib import Path

import pytest

from labml_nn.neox.tokenizer import StreamDecoder, encode, find_tokenizer, load_tokenizer

REAL_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "20B_tokenizer.json"
needs_real_tokenizer = pytest.mark.skipif(not REAL_TOKENIZER.is_file(),
                                          reason=f"{REAL_TOKENIZER} is absent")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REAL_TOKENIZER)


@needs_real_tokenizer
def test_hello_world_is_two_tokens(tokenizer):
    assert encode(tokenizer, "Hello world") == [12092, 1533]


@needs_real_tokenizer
def test_the_special_tokens_have_ids_0_and_1(tokenizer):
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.token_to_id("<|padding|>") == 1
    assert tokenizer.get_vocab_size() == 50277


@needs_real_tokenizer
def test_streaming_decode_rebuilds_characters_split_over_tokens(tokenizer):
    # An emoji and CJK characters are several bytes, split over several byte-level BPE tokens; decoding each
    # token alone gives broken characters, the stream decoder gives the text back exactly
    text = "Thou art🦜, said 世界 — naïve café.\nEnd"
    ids = encode(tokenizer, text)
    assert len(ids) > len(text.split())
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) != text
    decoder = StreamDecoder(tokenizer)
    assert "".join(decoder.step(i) for i in ids) == text


@needs_real_tokenizer
def test_end_of_text_decodes_unless_skipped(tokenizer):
    ids = encode(tokenizer, "a") + [0]
    assert "".join(StreamDecoder(tokenizer).step(i) for i in ids) == "a<|endoftext|>"
    assert "".join(StreamDecoder(tokenizer, skip_special_tokens=True).step(i) for i in ids) == "a"


@needs_real_tokenizer
def test_a_checkpoint_folder_finds_its_tokenizer(tmp_path):
    (tmp_path / "20B_tokenizer.json").write_bytes(REAL_TOKENIZER.read_bytes())
    assert find_tokenizer(tmp_path) == tmp_path / "20B_tokenizer.json"
    assert encode(load_tokenizer(tmp_path), "Hello world") == [12092, 1533]


def test_a_folder_without_a_tokenizer_says_what_was_looked_for(tmp_path):
    assert find_tokenizer(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="20B_tokenizer.json, tokenizer.json"):
        load_tokenizer(tmp_path)


def test_a_file_that_is_not_a_tokenizer_is_named(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is not a tokenizers JSON file"):
        load_tokenizer(tmp_path)
