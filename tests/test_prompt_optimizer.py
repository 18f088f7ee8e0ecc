"""PromptOptimizer: configuration, counting and rule-based compression."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmedge
from llmedge import CompressionResult, PromptOptimizer, UnknownModelError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from baselines import prompt as baseline  # noqa: E402  the same rules in Python

OPT = PromptOptimizer()
LEVELS = ["lossless", "balanced", "aggressive"]

# ---- configuration ---------------------------------------------------------


def test_defaults_come_from_the_model():
    opt = PromptOptimizer()
    assert opt.model == "gpt-4o"
    assert opt.max_context_tokens == 128000
    assert opt.reserve_output_tokens == 300
    assert opt.history_limit is None
    assert opt.budget == 128000 - 300
    assert repr(opt) == (
        'PromptOptimizer(model="gpt-4o", max_context_tokens=128000, '
        'reserve_output_tokens=300, history_limit=None, encoding="o200k_base")'
    )


def test_explicit_configuration():
    opt = PromptOptimizer(
        "gpt-4-0613", max_context_tokens=1000, reserve_output_tokens=0, history_limit=4
    )
    assert (opt.model, opt.max_context_tokens, opt.reserve_output_tokens) == (
        "gpt-4-0613",
        1000,
        0,
    )
    assert opt.history_limit == 4
    assert opt.budget == 1000
    assert "cl100k_base" in repr(opt)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_context_tokens": 0}, "max_context_tokens"),
        ({"max_context_tokens": -5}, "-5"),
        ({"reserve_output_tokens": -1}, "-1"),
        ({"max_context_tokens": 100, "reserve_output_tokens": 100}, "reserve_output_tokens"),
        ({"history_limit": 0}, "history_limit"),
    ],
)
def test_bad_configuration_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        PromptOptimizer("gpt-4o", **kwargs)


def test_unknown_model():
    with pytest.raises(UnknownModelError) as e:
        PromptOptimizer("gpt-4oo")
    assert "gpt-4o" in e.value.suggestions
    assert isinstance(e.value, KeyError)


def test_configuration_is_keyword_only():
    with pytest.raises(TypeError):
        PromptOptimizer("gpt-4o", 1000)  # type: ignore[misc]


def test_count_matches_count_tokens():
    text = "Hello, world! ```code``` and unicode: 日本語"
    assert OPT.count(text) == llmedge.count_tokens(text, "gpt-4o")
    assert PromptOptimizer("gpt-4").count(text) == llmedge.count_tokens(text, "gpt-4")
    assert OPT.count("") == 0


# ---- compression: each step ------------------------------------------------


def test_lossless_whitespace_and_duplicates():
    text = (
        "Act as a careful reviewer.   Be terse.  \n\n\n\n"
        "Do not write explanations.\n"
        "Do not write explanations.\n\n"
        "  - keep   indentation\n"
    )
    r = OPT.compress(text)
    assert r.text == (
        "Act as a careful reviewer. Be terse.\n\n"
        "Do not write explanations.\n\n  - keep indentation\n"
    )
    assert r.steps == ["whitespace", "duplicates"]
    assert r.tokens_before == OPT.count(text)
    assert r.tokens_after == OPT.count(r.text)
    assert r.saved_ratio == pytest.approx((r.tokens_before - r.tokens_after) / r.tokens_before)


def test_duplicate_paragraphs_are_removed_with_their_separator():
    para = "Always answer in English, whatever the language of the question."
    r = OPT.compress(f"{para}\n\nSecond paragraph here.\n\n{para}\n")
    assert r.text == f"{para}\n\nSecond paragraph here.\n"


def test_short_and_structural_lines_are_not_deduplicated():
    text = "Input:\nfoo\n---\nInput:\nbar\n---\n| a | b |\n| a | b |"
    assert OPT.compress(text).text == text


def test_indented_json_is_minified():
    text = 'Return this shape:\n{\n  "name": "string",\n  "tags": [\n    "a",\n    "b"\n  ]\n}'
    r = OPT.compress(text)
    assert r.text == 'Return this shape:\n{"name":"string","tags":["a","b"]}'
    assert r.steps == ["json"]


def test_json_fences_are_minified_other_fences_are_not():
    text = (
        '```json\n{\n  "a": 1,\n  "b": [1, 2]\n}\n```\n\n'
        "```python\ndef f(x):\n\n\n\n    return x   # the  value\n```\n"
    )
    r = OPT.compress(text, level="aggressive")
    assert r.text == (
        '```json\n{"a":1,"b":[1,2]}\n```\n\n'
        "```python\ndef f(x):\n\n\n\n    return x   # the  value\n```\n"
    )


def test_invalid_json_is_left_alone():
    text = "{\n  'a': 1,\n}"
    assert OPT.compress(text).text == text


def test_balanced_removes_fillers_and_markdown():
    text = (
        "Please note that the **output** must be short.\n"
        "In order to win, basically, try __very hard__."
    )
    r = OPT.compress(text, level="balanced")
    assert r.text == "The output must be short.\nTo win, try very hard."
    assert r.steps == ["markdown", "fillers"]


def test_fillers_are_whole_words_and_case_aware():
    r = OPT.compress("I am pleased, kindly respond. Kindly respond.", level="balanced")
    assert r.text == "I am pleased, respond. Respond."


def test_aggressive_removes_stop_words_but_keeps_negations():
    r = OPT.compress("The answer is not in the list and it is never a number.", level="aggressive")
    assert r.text == "Answer not list never number."
    assert r.steps == ["stopwords"]


def test_protected_spans_survive_every_level():
    text = (
        "Use `the value` from https://example.com/the/a?x=1 for {name} and {{ the_var }} "
        "or ${Role:the best}; say \"the end\" or 'is it' with 3.14 and 2024-08-06."
    )
    for level in LEVELS:
        out = OPT.compress(text, level=level).text
        for span in [
            "`the value`",
            "https://example.com/the/a?x=1",
            "{name}",
            "{{ the_var }}",
            "${Role:the best}",
            '"the end"',
            "'is it'",
            "3.14",
            "2024-08-06",
        ]:
            assert span in out, (level, span, out)


def test_code_fences_are_untouched_at_every_level():
    code = "```\nPlease note that   the    **x** is   here\n\n\n\nPlease note that\n```"
    text = f"Intro   text.\n\n{code}\n\n~~~\nthe  a  an\n~~~"
    for level in LEVELS:
        out = OPT.compress(text, level=level).text
        assert code in out
        assert "~~~\nthe  a  an\n~~~" in out


def test_unclosed_fence_protects_the_rest():
    text = "Hi  b\n```\nthe   rest   stays"
    assert OPT.compress(text, level="aggressive").text == "Hi b\n```\nthe   rest   stays"


def test_nothing_to_do():
    r = OPT.compress("hello")
    assert (r.text, r.tokens_before, r.tokens_after, r.steps, r.saved_ratio) == (
        "hello",
        1,
        1,
        [],
        0.0,
    )
    empty = OPT.compress("")
    assert (empty.text, empty.tokens_before, empty.saved_ratio) == ("", 0, 0.0)


def test_result_repr_and_type():
    r = OPT.compress("a  b", level="balanced")
    assert isinstance(r, CompressionResult)
    assert repr(r).startswith("CompressionResult(tokens_before=")
    assert "'whitespace'" in repr(r) or '"whitespace"' in repr(r)
    with pytest.raises(AttributeError):
        r.text = "x"  # type: ignore[misc]


# ---- target_reduction and optimize ------------------------------------------

LONG = (
    "Please note that the answer must be in the form of a list.   \n\n\n"
    "It is important to note that the list is not sorted in any way.\n"
) * 3


def test_target_reduction_stops_after_the_step_that_reaches_it():
    full = OPT.compress(LONG, level="aggressive")
    assert full.steps == ["whitespace", "duplicates", "fillers", "stopwords"]
    first = OPT.compress(LONG, level="aggressive", target_reduction=0.01)
    assert first.steps == ["whitespace"]
    assert first.saved_ratio >= 0.01
    r = OPT.compress(LONG, level="aggressive", target_reduction=first.saved_ratio + 0.01)
    assert r.steps == ["whitespace", "duplicates"]
    r = OPT.compress(LONG, level="aggressive", target_reduction=0.99)
    assert r.text == full.text


def test_optimize_applies_steps_in_order_until_the_target():
    assert OPT.optimize(LONG) == OPT.compress(LONG, level="aggressive", target_reduction=0.25).text
    lossless = OPT.compress(LONG).text
    assert OPT.optimize(LONG, target_reduction=0.01) != LONG
    assert OPT.count(OPT.optimize(LONG, 0.9)) >= OPT.count(
        OPT.compress(LONG, level="aggressive").text
    )
    assert len(OPT.optimize(LONG, 0.1)) <= len(lossless)


def test_optimize_never_truncates():
    text = "x" * 5000
    assert OPT.optimize(text, 0.9) == text


# ---- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["a"]])
def test_non_str_prompt(bad):
    with pytest.raises(TypeError, match="prompt must be a str"):
        OPT.compress(bad)
    with pytest.raises(TypeError, match="prompt must be a str"):
        OPT.optimize(bad)
    with pytest.raises(TypeError, match="text must be a str"):
        OPT.count(bad)


def test_unknown_level_lists_the_allowed_values():
    with pytest.raises(ValueError, match="'extreme'.*lossless.*balanced.*aggressive"):
        OPT.compress("x", level="extreme")


@pytest.mark.parametrize("t", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_target_reduction_out_of_range(t):
    with pytest.raises(ValueError, match="target_reduction"):
        OPT.compress("x", target_reduction=t)
    with pytest.raises(ValueError, match="target_reduction"):
        OPT.optimize("x", t)


def test_lone_surrogate_is_a_clear_error():
    with pytest.raises(ValueError, match="prompt"):
        OPT.compress("a\ud800b")


# ---- properties ------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "the",
        "The",
        "a",
        "is",
        "not",
        "never",
        "please",
        "Please",
        "kindly",
        "in order to",
        "In order to",
        "basically,",
        "please note that",
        "it's",
        "don't",
        "users'",
        "and",
        "word",
        "Hello",
        "x",
        "3",
        "42",
        "3.14",
        "4o",
        "1,000",
        "16:9",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        "\n\n\n",
        "\r\n",
        ",",
        ".",
        "-",
        "*",
        "**",
        "__",
        "_",
        "`",
        "``",
        "```",
        "```json",
        "~~~",
        "---",
        "***",
        "|",
        "'",
        '"',
        "“",
        "”",
        "{",
        "}",
        "{{",
        "}}",
        "${",
        "[",
        "]",
        ":",
        "/",
        "http://",
        "https://",
        "www.",
        "é",
        "日本",
        "\u00a0",
        "\u2019",
        "\U0001f600",
        "\u0301",
        '{"a": [1, 2]}',
        '{\n  "k": "v v"\n}',
        "`code the`",
        '"the quote"',
        "'a b'",
        "{name}",
        "{{ the }}",
        "Do not write explanations.",
    ]
)
TEXTS = st.one_of(
    st.lists(FRAGMENTS, max_size=40).map("".join),
    st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=30).map(" ".join),
    st.text(max_size=200),
)
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _protected_spans(text: str) -> list[str]:
    """The protected text of `text` by the rules' own definitions (the baseline's scanner)."""
    lines = text.split("\n")
    out = []
    for start, end, _closed, is_json in baseline.fences(lines):
        if not is_json:
            out.append("\n".join(lines[start:end]))
    mask = baseline.fence_mask(lines)
    for i, line in enumerate(lines):
        if not mask[i]:
            out.extend(line[a:b] for a, b in baseline.spans(line))
    return out


@PROPS
@given(TEXTS, st.sampled_from(LEVELS))
def test_identical_to_the_python_statement_of_the_rules(text, level):
    r = OPT.compress(text, level=level)
    assert (r.text, r.tokens_before, r.tokens_after, r.steps) == baseline.compress(
        text, OPT.count, level
    )


@PROPS
@given(TEXTS, st.sampled_from(LEVELS))
def test_protected_spans_appear_unchanged(text, level):
    out = OPT.compress(text, level=level).text
    for span in _protected_spans(text):
        assert span in out


OPTIMIZERS = {m: PromptOptimizer(m) for m in ["gpt-4o", "gpt-4", "gpt-4o-mini"]}


@PROPS
@given(TEXTS, st.sampled_from(LEVELS), st.sampled_from(sorted(OPTIMIZERS)))
def test_token_count_never_increases_and_is_exact(text, level, model):
    opt = OPTIMIZERS[model]
    r = opt.compress(text, level=level)
    assert r.tokens_before == opt.count(text) == llmedge.count_tokens(text, model)
    assert r.tokens_after == opt.count(r.text)
    assert r.tokens_after <= r.tokens_before


@PROPS
@given(TEXTS)
def test_lossless_is_idempotent(text):
    once = OPT.compress(text).text
    assert OPT.compress(once).text == once


@PROPS
@given(st.text(), st.sampled_from(LEVELS), st.sampled_from(["gpt-4o", "gpt-4"]))
def test_arbitrary_unicode_never_panics(text, level, model):
    r = PromptOptimizer(model).compress(text, level=level)
    assert isinstance(r.text, str)


# ---- concurrency -------------------------------------------------------------


def test_threads_share_one_optimizer():
    texts = [f"Please note that  item {i} is **bold**.\n\n\n" * (1 + i % 5) for i in range(40)]
    expected = [OPT.compress(t, level="aggressive").text for t in texts]
    results: dict[int, list[str]] = {}

    def work(k: int) -> None:
        results[k] = [OPT.compress(t, level="aggressive").text for t in texts]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert all(r == expected for r in results.values())
