"""llmedge.HashingEmbedder: the built-in, dependency-free embedder."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmedge
from llmedge import HashingEmbedder

# A regression fixture: the embedding function is versioned (identity "v3"); a
# change to these numbers must come with a new version.
FIXED_TEXT = "Is it safe to take 2 aspirin?"
FIXED_PREFIX = [
    -0.08750367909669876,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.25210508704185486,
    0.0,
    -0.08750367909669876,
    0.0,
    0.010405944660305977,
    -0.07709773629903793,
    0.1646014153957367,
    -0.1646014153957367,
    -0.08750367909669876,
    0.0,
]


def cos(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_defaults_and_repr():
    e = HashingEmbedder()
    assert e.dim == 384
    assert e.word_ngrams == (1, 2)
    assert e.char_ngrams == (3, 5)
    assert repr(e) == "HashingEmbedder(dim=384, word_ngrams=(1, 2), char_ngrams=(3, 5))"
    assert e.identity == "llmedge.HashingEmbedder/v3/dim=384/words=1-2/chars=3-5"
    assert llmedge.HashingEmbedder is HashingEmbedder


def test_identity_changes_with_the_configuration():
    ids = {
        HashingEmbedder(384).identity,
        HashingEmbedder(256).identity,
        HashingEmbedder(384, word_ngrams=(1, 1)).identity,
        HashingEmbedder(384, char_ngrams=None).identity,
        HashingEmbedder(384, word_ngrams=None).identity,
    }
    assert len(ids) == 5


def test_known_vector():
    assert HashingEmbedder(64).embed(FIXED_TEXT)[:16] == FIXED_PREFIX


def test_deterministic_across_processes():
    code = (
        "import llmedge, json; "
        f"print(json.dumps(llmedge.HashingEmbedder(64).embed({FIXED_TEXT!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    import json

    assert json.loads(out) == HashingEmbedder(64).embed(FIXED_TEXT)


def test_normalised_and_zero_for_text_without_words():
    e = HashingEmbedder(128)
    v = e.embed("How do I reset my password?")
    assert len(v) == 128
    assert norm(v) == pytest.approx(1.0, abs=1e-5)
    assert e.embed("") == [0.0] * 128
    assert e.embed(" ?! ... \n") == [0.0] * 128


def test_near_duplicates_score_higher_than_unrelated_text():
    e = HashingEmbedder()
    a, b, c = e(
        [
            "How do I reset my password?",
            "how can i reset my password",
            "What is the boiling point of water at altitude?",
        ]
    )
    assert cos(a, b) > 0.6
    assert cos(a, c) < 0.2
    assert e.embed("How do I reset my password?") == e.embed("how   DO i reset my password")


def test_call_matches_embed_for_small_and_parallel_batches():
    e = HashingEmbedder(96)
    texts = [f"question number {i} about café 東京 {i % 7}" for i in range(200)]
    batch = e(texts)
    assert len(batch) == 200
    assert batch == [e.embed(t) for t in texts]
    assert e(texts[:3]) == batch[:3]
    assert e([]) == []
    assert e(t for t in texts[:2]) == batch[:2]


@pytest.mark.parametrize("dim", [0, -1, -384, 2**16 + 1, 10**30])
def test_bad_dimension_is_a_value_error_naming_it(dim):
    with pytest.raises(ValueError, match=str(dim)):
        HashingEmbedder(dim)


@pytest.mark.parametrize("dim", [1.5, "384", None.__class__, True])
def test_non_integer_dimension_is_a_type_error(dim):
    with pytest.raises(TypeError, match="dim"):
        HashingEmbedder(dim)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"word_ngrams": (0, 2)}, "(0, 2)"),
        ({"word_ngrams": (3, 2)}, "(3, 2)"),
        ({"char_ngrams": (-1, 2)}, "(-1, 2)"),
        ({"char_ngrams": (1, 99)}, "(1, 99)"),
        ({"word_ngrams": None, "char_ngrams": None}, "both be None"),
    ],
)
def test_bad_ngram_ranges(kwargs, shown):
    with pytest.raises(ValueError) as info:
        HashingEmbedder(32, **kwargs)
    assert shown in str(info.value)


def test_non_str_inputs_name_the_index():
    e = HashingEmbedder(32)
    with pytest.raises(TypeError, match=r"texts\[2\] must be str, got int"):
        e(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] must be str, got bytes"):
        e([b"a"])
    with pytest.raises(TypeError, match="single str"):
        e("a text")
    with pytest.raises(TypeError, match="got int"):
        e(5)
    with pytest.raises(TypeError, match="text must be str, got NoneType"):
        e.embed(None)


def test_shared_between_threads():
    e = HashingEmbedder(64)
    texts = [f"prompt {i}" for i in range(50)]
    expected = [e.embed(t) for t in texts]
    results: list[list[list[float]]] = []
    lock = threading.Lock()

    def work():
        for _ in range(20):
            out = e(texts)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80
    assert all(r == expected for r in results)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_unicode_embeds_to_a_unit_or_zero_vector(text):
    v = HashingEmbedder(48).embed(text)
    assert len(v) == 48
    n = norm(v)
    assert n == 0.0 or n == pytest.approx(1.0, abs=1e-5)
    assert all(math.isfinite(x) for x in v)


def _python_model():
    """The pure-Python model of the same algorithm, from benches/baselines."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benches" / "baselines" / "embed.py"
    if not path.is_file():
        pytest.skip(f"pure-Python model not found at {path}")
    spec = importlib.util.spec_from_file_location("_embed_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PyHashingEmbedder


# characters Python and Rust classify alike (alphanumeric or not, lowercase)
ascii_text = st.text(
    alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,'?!-\n")),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    ascii_text,
    st.sampled_from([8, 64, 384]),
    st.sampled_from([(1, 1), (1, 2), (2, 3), None]),
    st.sampled_from([(3, 5), (1, 2), (4, 4), None]),
)
def test_matches_the_python_model(text, dim, words, chars):
    if words is None and chars is None:
        return
    model = _python_model()(dim, word_ngrams=words, char_ngrams=chars)
    rust = HashingEmbedder(dim, word_ngrams=words, char_ngrams=chars).embed(text)
    assert rust == pytest.approx(model.embed(text), abs=1e-5)
