r"""
Tokenizers: the demo model's, which ships with the package, and the GPT-NeoX-20B tokenizer from
`shared/data/20B_tokenizer.json` when it is there (the tests about that file are skipped otherwise; nothing is
downloaded).
"""

import pytest

from labml_nn.neox.cli import DEMO_CHECKPOINT
from labml_nn.neox.tokenizer import StreamDecoder, encode, find_tokenizer, load_tokenizer

from helpers import needs_shared_file, shared_file

REAL_TOKENIZER = shared_file("20B_tokenizer.json")
needs_real_tokenizer = needs_shared_file("20B_tokenizer.json")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REAL_TOKENIZER)


# The demo model's byte-level BPE ships inside the package: the tests of decoding run on it everywhere, and on the
# real 20B tokenizer too when that file is there
@pytest.fixture(scope="module", params=["demo", pytest.param("20B", marks=pytest.mark.shared_data)])
def any_tokenizer(request):
    if request.param == "20B":
        if not REAL_TOKENIZER.is_file():
            pytest.skip("shared/data/20B_tokenizer.json is absent (set NEOX_SHARED_DATA to a folder holding it)")
        return load_tokenizer(REAL_TOKENIZER)
    return load_tokenizer(DEMO_CHECKPOINT)


@needs_real_tokenizer
def test_hello_world_is_two_tokens(tokenizer):
    assert encode(tokenizer, "Hello world") == [12092, 1533]


@needs_real_tokenizer
def test_the_special_tokens_have_ids_0_and_1(tokenizer):
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.token_to_id("<|padding|>") == 1
    assert tokenizer.get_vocab_size() == 50277


def test_streaming_decode_rebuilds_characters_split_over_tokens(any_tokenizer):
    tokenizer = any_tokenizer
    # An emoji and CJK characters are several bytes, split over several byte-level BPE tokens; decoding each
    # token alone gives broken characters, the stream decoder gives the text back exactly
    text = "Thou art🦜, said 世界 — naïve café.\nEnd"
    ids = encode(tokenizer, text)
    assert len(ids) > len(text.split())
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) != text
    decoder = StreamDecoder(tokenizer)
    assert "".join(decoder.step(i) for i in ids) == text


def test_end_of_text_decodes_unless_skipped(any_tokenizer):
    tokenizer = any_tokenizer
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
