"""Random Unicode: llmedge's ids and counts equal the real tiktoken's.

Runs where tiktoken is installed and the tiktoken-rs crate's vocabulary files
are on the machine (``cargo build`` downloads them); tiktoken reads them
offline (benches/baselines/tokens.py). The other tests of the tokenizer use
fixtures and need neither.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmedge
from llmedge import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from baselines.tokens import offline_tiktoken_cache, tiktoken_assets  # noqa: E402

ENCODINGS = ["o200k_base", "cl100k_base", "p50k_base", "r50k_base"]


@pytest.fixture(scope="module")
def tiktoken_encodings():
    assets = tiktoken_assets()
    if assets is None:
        pytest.skip("the tiktoken-rs vocabulary files are not on this machine")
    os.environ["TIKTOKEN_CACHE_DIR"] = offline_tiktoken_cache(assets)
    tiktoken = pytest.importorskip("tiktoken")
    return {name: tiktoken.get_encoding(name) for name in ENCODINGS}


# any character but lone surrogates (not encodable), with the runs that make
# pre-tokenisers work: whitespace, digits, apostrophes, letters of every case
characters = st.characters(exclude_categories=("Cs",))
pieces = st.one_of(
    st.text(characters, max_size=12),
    st.sampled_from(
        [" ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "'s", "'LL", "123456", "\u00a0"]
    ),
    st.text(st.sampled_from("aZé日👍 0'\n"), max_size=20),
)
texts = st.lists(pieces, max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_random_unicode_encodes_as_tiktoken_does(tiktoken_encodings, text):
    for name, enc in tiktoken_encodings.items():
        expected = enc.encode_ordinary(text)
        tok = Tokenizer(name)
        assert tok.encode_ordinary(text) == expected, name
        assert tok.count(text) == len(expected), name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_counts_by_pieces_equal_whole_counts(tiktoken_encodings, text):
    # message texts (48 bytes and more) and compression are counted by pieces
    # cut where the pre-tokeniser always splits; the sum must be exact
    whole = len(tiktoken_encodings["o200k_base"].encode_ordinary(text))
    empty = llmedge.count_messages([{"role": "user", "content": ""}], "gpt-4o")
    counted = llmedge.count_messages([{"role": "user", "content": text}], "gpt-4o")
    assert counted - empty == whole
