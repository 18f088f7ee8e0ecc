"""llmedge.Tokenizer, count_tokens and count_tokens_batch.

Ids are checked against fixtures generated once with the real tiktoken
library (tests/fixtures/make_token_fixtures.py), so these tests need neither
tiktoken nor its vocabulary files.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from docs_text import docs_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmedge
from llmedge import (
    LlmEdgeError,
    Tokenizer,
    UnknownEncodingError,
    UnknownModelError,
    UnknownTokenError,
    count_tokens,
    count_tokens_batch,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENCODINGS = ["o200k_base", "o200k_harmony", "cl100k_base", "p50k_base", "r50k_base"]


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"tokens_{name}.json").read_text())


FIXTURE = {name: load(name) for name in ENCODINGS}


# ---- identical to tiktoken ---------------------------------------------------


@pytest.mark.parametrize("name", ENCODINGS)
def test_encode_ordinary_matches_tiktoken(name):
    tok = Tokenizer(name)
    for case in FIXTURE[name]["cases"]:
        assert tok.encode_ordinary(case["text"]) == case["ordinary"], case["text"]


@pytest.mark.parametrize("name", ENCODINGS)
def test_count_matches_tiktoken(name):
    tok = Tokenizer(name)
    cases = FIXTURE[name]["cases"]
    for case in cases:
        assert tok.count(case["text"]) == len(case["ordinary"]), case["text"]
    texts = [c["text"] for c in cases]
    expected = [len(c["ordinary"]) for c in cases]
    assert tok.count_batch(texts) == expected
    assert tok.encode_ordinary_batch(texts) == [c["ordinary"] for c in cases]


@pytest.mark.parametrize("name", ENCODINGS)
def test_encode_with_all_special_matches_tiktoken(name):
    tok = Tokenizer(name)
    special_cases = [c for c in FIXTURE[name]["cases"] if "all_special" in c]
    assert special_cases
    for case in special_cases:
        assert tok.encode(case["text"], allowed_special="all") == case["all_special"]
    texts = [c["text"] for c in special_cases]
    assert tok.encode_batch(texts, allowed_special="all") == [
        c["all_special"] for c in special_cases
    ]


@pytest.mark.parametrize("name", ENCODINGS)
def test_decode_matches_tiktoken(name):
    tok = Tokenizer(name)
    for case in FIXTURE[name]["decode_cases"]:
        assert tok.decode_bytes(case["ids"]).hex() == case["bytes_hex"]
        assert tok.decode(case["ids"]) == case["text"]
    for case in FIXTURE[name]["cases"]:
        assert tok.decode(case["ordinary"]) == case["text"]


@pytest.mark.parametrize("name", ENCODINGS)
def test_vocabulary_metadata(name):
    tok = Tokenizer(name)
    assert tok.name == name
    assert tok.n_vocab == FIXTURE[name]["n_vocab"]
    assert tok.special_tokens == FIXTURE[name]["special_tokens"]
    assert repr(tok) == f'Tokenizer("{name}", n_vocab={tok.n_vocab})'


# ---- special tokens: tiktoken's rules ----------------------------------------


def test_disallowed_special_raises_naming_the_token():
    tok = Tokenizer("cl100k_base")
    with pytest.raises(ValueError, match=r"disallowed special token '<\|endoftext\|>'"):
        tok.encode("hi <|endoftext|>")
    with pytest.raises(ValueError, match="fim_middle"):
        tok.encode("<|endoftext|><|fim_middle|>", allowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError, match=r"texts\[1\]: .*endoftext"):
        tok.encode_batch(["fine", "<|endoftext|>"])


def test_allowed_and_disallowed_special_semantics():
    tok = Tokenizer("cl100k_base")
    text = "a<|endoftext|>b"
    ordinary = tok.encode_ordinary(text)
    assert 100257 not in ordinary
    assert tok.encode(text, disallowed_special=()) == ordinary
    assert tok.encode(text, disallowed_special=set()) == ordinary
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == [64, 100257, 65]
    assert tok.encode(text, allowed_special=["<|endoftext|>"]) == [64, 100257, 65]
    # a special token that is allowed is still an error if explicitly disallowed
    with pytest.raises(ValueError):
        tok.encode(text, allowed_special="all", disallowed_special={"<|endoftext|>"})
    # like tiktoken, explicit disallowed strings are searched for verbatim
    with pytest.raises(ValueError, match="'ell'"):
        tok.encode("hello", disallowed_special={"ell"})
    # names that are not special tokens are ignored when allowed
    assert tok.encode("hello", allowed_special={"<|nope|>"}) == tok.encode_ordinary("hello")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_special": "some"},
        {"disallowed_special": "none"},
        {"allowed_special": None},
        {"disallowed_special": 5},
        {"allowed_special": {1, 2}},
    ],
)
def test_bad_special_arguments(kwargs):
    with pytest.raises((TypeError, ValueError), match="special"):
        Tokenizer("o200k_base").encode("x", **kwargs)


# ---- decode -------------------------------------------------------------------


def test_decode_unknown_ids():
    tok = Tokenizer("o200k_base")
    for bad in (10**9, 199_998, -1, 2**32):
        with pytest.raises(UnknownTokenError) as info:
            tok.decode([1, bad])
        assert str(bad) in str(info.value)
        assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
        assert isinstance(info.value, LlmEdgeError)
    with pytest.raises(UnknownTokenError):
        tok.decode_bytes([10**9])
    with pytest.raises(TypeError, match="ids must be a list of int, got str"):
        tok.decode("123")
    with pytest.raises(TypeError, match=r"ids\[1\] must be int, got str"):
        tok.decode([1, "2"])
    with pytest.raises(TypeError):
        tok.decode(None)


def test_decode_replaces_invalid_utf8_like_tiktoken():
    tok = Tokenizer("cl100k_base")
    ids = tok.encode_ordinary("é")
    byte_ids = [i for i in range(256) if tok.decode_bytes([i]) in (b"\xc3", b"\xa9")]
    assert len(byte_ids) == 2
    lead = next(i for i in byte_ids if tok.decode_bytes([i]) == b"\xc3")
    assert tok.decode([lead, *tok.encode_ordinary("a")]) == "\ufffda"
    assert tok.decode(ids) == "é"
    assert tok.decode(()) == ""


single_byte_ids = st.lists(st.integers(min_value=0, max_value=255), max_size=30)


@given(ids=single_byte_ids)
@settings(max_examples=200)
def test_decode_equals_bytes_decode_replace(ids):
    tok = Tokenizer("o200k_base")
    assert tok.decode(ids) == tok.decode_bytes(ids).decode("utf-8", errors="replace")


@given(text=st.text(max_size=200))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_and_count(text):
    for name in ("o200k_base", "cl100k_base", "r50k_base"):
        tok = Tokenizer(name)
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert tok.count(text) == len(ids)


# ---- truncate -------------------------------------------------------------------

LONG = "The quick brown fox jumps over the lazy dog. Ünïcödé 日本語 emoji 👩‍👩‍👧✨. " * 20


@pytest.mark.parametrize("side", ["end", "start", "middle"])
@pytest.mark.parametrize("marker", ["", " [...] ", "…"])
def test_truncate_fits_and_keeps_as_much_as_possible(side, marker):
    tok = Tokenizer("o200k_base")
    for max_tokens in (3, 7, 20, 55, 200):
        out = tok.truncate(LONG, max_tokens, side=side, marker=marker)
        assert tok.count(out) <= max_tokens
        assert marker in out
        if side == "end":
            head = out[: len(out) - len(marker)]
            assert out.endswith(marker) and LONG.startswith(head)
            longer = head + LONG[len(head)] + marker
            assert tok.count(longer) > max_tokens
        elif side == "start":
            tail = out[len(marker) :]
            assert out.startswith(marker) and LONG.endswith(tail)
            longer = marker + LONG[len(LONG) - len(tail) - 1] + tail
            assert tok.count(longer) > max_tokens
        else:
            assert any(
                out[i:].startswith(marker)
                and LONG.startswith(out[:i])
                and LONG.endswith(out[i + len(marker) :])
                for i in range(len(out) + 1)
            )
        # within one token of the budget: nothing large was thrown away
        assert tok.count(out) >= max_tokens - 3


def test_truncate_never_splits_a_character():
    tok = Tokenizer("cl100k_base")
    text = "👩‍👩‍👧" * 40  # emoji are several tokens each in cl100k
    for n in range(1, 30):
        out = tok.truncate(text, n)
        assert text.startswith(out)
        out.encode("utf-8")  # a split surrogate pair or byte would not survive
        assert tok.count(out) <= n


def test_truncate_short_text_is_unchanged():
    tok = Tokenizer("o200k_base")
    assert tok.truncate("short text", 100, marker="...") == "short text"


@given(
    text=st.text(max_size=300),
    max_tokens=st.integers(min_value=1, max_value=60),
    side=st.sampled_from(["end", "start", "middle"]),
)
@settings(max_examples=150, deadline=None)
def test_truncate_property(text, max_tokens, side):
    tok = Tokenizer("o200k_base")
    out = tok.truncate(text, max_tokens, side=side, marker="~")
    assert tok.count(out) <= max_tokens
    if tok.count(text) <= max_tokens:
        assert out == text


def test_truncate_bad_arguments():
    tok = Tokenizer("o200k_base")
    with pytest.raises(ValueError, match="positive integer, got 0"):
        tok.truncate("abc", 0)
    with pytest.raises(ValueError, match="positive integer, got -5"):
        tok.truncate("abc", -5)
    with pytest.raises(TypeError, match="max_tokens must be int, got float"):
        tok.truncate("abc", 1.5)
    with pytest.raises(TypeError, match="max_tokens must be int, got bool"):
        tok.truncate("abc", True)
    with pytest.raises(ValueError, match=r"side must be one of \"end\", \"start\", \"middle\""):
        tok.truncate("abc", 5, side="left")
    with pytest.raises(ValueError, match="marker is .* tokens, more than max_tokens=2"):
        tok.truncate("word " * 50, 2, marker=" and so on and so forth ")
    with pytest.raises(TypeError, match="marker must be str"):
        tok.truncate("abc", 5, marker=3)


# ---- construction, models, module functions ----------------------------------


def test_unknown_encoding_lists_valid_names():
    with pytest.raises(UnknownEncodingError) as info:
        Tokenizer("gpt2")
    for name in ENCODINGS:
        assert name in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError):
        Tokenizer(None)


def test_for_model_and_count_tokens():
    assert Tokenizer.for_model("gpt-4o").name == "o200k_base"
    assert Tokenizer.for_model("gpt-4o-2024-08-06").name == "o200k_base"
    assert Tokenizer.for_model("gpt-4").name == "cl100k_base"
    text = "Counting tokens for a model."
    assert count_tokens(text) == Tokenizer("o200k_base").count(text)
    assert count_tokens(text, model="gpt-4") == Tokenizer("cl100k_base").count(text)
    assert count_tokens_batch([text, "", "a b"], model="gpt-4") == [
        Tokenizer("cl100k_base").count(t) for t in (text, "", "a b")
    ]
    with pytest.raises(UnknownModelError):
        Tokenizer.for_model("gpt-unknown")
    with pytest.raises(UnknownModelError):
        count_tokens("x", model="nope-model")
    with pytest.raises(KeyError):
        count_tokens_batch(["x"], model="nope-model")


@pytest.mark.parametrize("bad", [None, 5, b"bytes", ["list"]])
def test_non_str_text_is_a_type_error(bad):
    tok = Tokenizer("o200k_base")
    for call in (tok.count, tok.encode, tok.encode_ordinary, count_tokens):
        with pytest.raises(TypeError, match="text must be str, got"):
            call(bad)


def test_lone_surrogate_is_a_clear_value_error():
    tok = Tokenizer("o200k_base")
    for call in (tok.count, tok.encode, tok.encode_ordinary, count_tokens):
        with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at index 3"):
            call("abc\ud800def")
    with pytest.raises(ValueError, match=r"texts\[1\] contains the lone surrogate"):
        tok.count_batch(["fine", "\udfff"])
    with pytest.raises(ValueError, match="lone surrogate"):
        count_tokens_batch(["\ud800"])


@pytest.mark.parametrize("bad", [None, "a string", 5, {"a": 1}, {"a"}, (t for t in ["a"])])
def test_batch_input_must_be_a_list(bad):
    tok = Tokenizer("o200k_base")
    for call in (tok.count_batch, tok.encode_batch, tok.encode_ordinary_batch, count_tokens_batch):
        with pytest.raises(TypeError, match="texts must be a list or tuple of str"):
            call(bad)


def test_batch_items_must_be_str():
    with pytest.raises(TypeError, match=r"texts\[2\] must be str, got NoneType"):
        count_tokens_batch(["a", "b", None])
    assert count_tokens_batch(("a", "b")) == [1, 1]
    assert count_tokens_batch([]) == []


# ---- pathological input, threads -------------------------------------------------


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,
        " " * 1_000_000 + "x",
        "\n" * 1_000_000,
        "9" * 1_000_000,
        "!" * 1_000_000,
        "ab1 " * 250_000,
        "\u00e9" * 500_000,
    ],
    ids=["a", "spaces", "newlines", "digits", "punct", "mixed", "e-acute"],
)
def test_pathological_input_completes(name, text):
    tok = Tokenizer(name)
    n = tok.count(text)
    assert 0 < n <= len(text.encode())
    assert len(tok.encode_ordinary(text)) == n


def test_shared_across_threads_with_exact_results():
    tok = Tokenizer("o200k_base")
    texts = [c["text"] for c in FIXTURE["o200k_base"]["cases"]]
    expected = [len(c["ordinary"]) for c in FIXTURE["o200k_base"]["cases"]]
    barrier = threading.Barrier(8)

    def work(i: int) -> list[int]:
        barrier.wait()
        t = Tokenizer("o200k_base") if i % 2 else tok
        out = [t.count(x) for x in texts]
        assert t.count_batch(texts) == expected
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [expected] * 8


def test_exported():
    for name in ("Tokenizer", "count_tokens", "count_tokens_batch", "UnknownTokenError"):
        assert name in llmedge.__all__


def test_readme_tokens_example_runs():
    readme = docs_text()
    section = readme.split("## Tokens", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md#tokens", "exec"), {})
