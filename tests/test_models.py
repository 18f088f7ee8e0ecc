"""The model table: lookup, dated versions, registration, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import llmedge
from llmedge import UnknownEncodingError, UnknownModelError, list_models, model_info

TABLE = json.loads(
    (Path(llmedge.__file__).with_name("data") / "models.json").read_text(encoding="utf-8")
)["models"]


def test_every_shipped_model_is_listed_and_resolves():
    assert set(TABLE) <= set(list_models())
    for name, raw in TABLE.items():
        info = model_info(name)
        assert info["encoding"] == raw["encoding"]
        assert info["context_window"] == raw["context_window"]
        assert info["input_price"] == raw["input"]
        assert info["cached_input_price"] == raw["cached_input"]


@pytest.mark.parametrize(
    "name",
    [
        "gpt-5.5", "gpt-5.5-pro", "gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.4-pro",
        "gpt-5.3-codex", "gpt-5.2", "gpt-5.2-pro", "gpt-5.2-chat-latest", "gpt-5.2-codex",
        "gpt-5.1", "gpt-5.1-codex", "gpt-5.1-codex-max", "gpt-5.1-codex-mini",
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
        "gpt-4o", "gpt-4o-mini", "o1", "o3", "o3-mini", "o4-mini", "gpt-4-turbo", "gpt-4",
        "gpt-3.5-turbo", "gpt-oss-120b", "gpt-oss-20b", "text-embedding-3-small",
        "text-embedding-3-large", "text-embedding-ada-002",
    ],
)  # fmt: skip
def test_current_openai_models_are_covered(name):
    assert model_info(name)["name"] == name


def test_model_info_fields():
    info = model_info("gpt-4o")
    assert info == {
        "name": "gpt-4o",
        "encoding": "o200k_base",
        "context_window": 128000,
        "max_output_tokens": 16384,
        "input_price": 2.5,
        "output_price": 10.0,
        "cached_input_price": 1.25,
        "kind": "chat",
    }
    assert model_info("gpt-oss-20b")["encoding"] == "o200k_harmony"
    assert model_info("gpt-4")["encoding"] == "cl100k_base"
    assert model_info("text-embedding-3-small")["kind"] == "embedding"


def test_dated_versions_resolve_to_the_longest_base_name():
    assert model_info("gpt-4o-2024-08-06")["input_price"] == 2.5
    assert model_info("gpt-4o-mini-2024-07-18")["input_price"] == 0.15
    assert model_info("gpt-4-turbo-2024-04-09")["context_window"] == 128000
    assert model_info("gpt-4-0613")["context_window"] == 8192
    assert model_info("gpt-4o-2024-05-13")["input_price"] == 5.0  # exact entry wins
    assert model_info("o1-2024-12-17")["output_price"] == 60.0


@pytest.mark.parametrize(
    ("name", "resolves_to"),
    [
        ("gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
        ("gpt-5.4-nano-2026-03-17", "gpt-5.4-nano"),
        ("gpt-5.4-2026-03-05", "gpt-5.4"),
        ("gpt-5.4-pro-2026-03-05", "gpt-5.4-pro"),
        ("gpt-5.5-2026-04-23", "gpt-5.5"),
        ("gpt-5.2-2025-12-11", "gpt-5.2"),
        ("gpt-5.1-2025-11-13", "gpt-5.1"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-4-32k-0613", "gpt-4-32k"),
        ("gpt-3.5-turbo-16k-0613", "gpt-3.5-turbo-16k"),
        ("gpt-4-0314", "gpt-4"),
    ],
)
def test_snapshots_resolve_to_their_own_family(name, resolves_to):
    info = model_info(name)
    expected = model_info(resolves_to)
    assert info["name"] == name
    assert {k: v for k, v in info.items() if k != "name"} == {
        k: v for k, v in expected.items() if k != "name"
    }


@pytest.mark.parametrize(
    "name",
    [
        "gpt-5.9",  # a later release is not gpt-5
        "gpt-5.4-turbo",  # an unlisted variant is not gpt-5.4
        "gpt-5.5-instant",
        "gpt-4o-realtime-preview",  # different prices from gpt-4o
        "o1-preview",
        "gpt-4-vision-preview",
        "gpt-5.4-",
    ],
)
def test_variants_never_fall_back_to_the_base_model(name):
    with pytest.raises(UnknownModelError):
        model_info(name)


def _expected_base(name: str) -> str | None:
    """The documented rule, written independently: an exact entry, else the
    longest entry that `name` extends with '-' and a run of digits ending the
    name or followed by '-'."""
    if name in TABLE:
        return name
    best = None
    for base in TABLE:
        rest = name[len(base) :]
        if not name.startswith(base) or not rest.startswith("-"):
            continue
        stamp = rest[1:].split("-", 1)[0]
        if stamp.isascii() and stamp.isdigit() and (best is None or len(base) > len(best)):
            best = base
    return best


@given(
    base=st.sampled_from(sorted(TABLE)),
    suffix=st.lists(
        st.one_of(
            st.from_regex(r"[0-9]{1,8}", fullmatch=True),
            st.sampled_from(["mini", "nano", "pro", "preview", "32k", "latest", "x"]),
        ),
        max_size=3,
    ),
)
def test_resolution_matches_the_documented_rule(base, suffix):
    name = "-".join([base, *suffix])
    expected = _expected_base(name)
    if expected is None:
        with pytest.raises(UnknownModelError):
            model_info(name)
    else:
        info = model_info(name)
        assert info["name"] == name
        raw = TABLE[expected]
        assert (info["input_price"], info["context_window"]) == (
            raw["input"],
            raw["context_window"],
        )


def test_new_models_have_distinct_limits_and_prices():
    assert model_info("gpt-5.4")["context_window"] == 1_050_000
    assert model_info("gpt-5")["context_window"] == 400_000
    assert model_info("gpt-5.4-mini")["input_price"] == 0.75
    assert model_info("gpt-5.4")["input_price"] == 2.5
    assert model_info("gpt-5.4-pro")["cached_input_price"] is None
    assert model_info("gpt-3.5-turbo-1106")["input_price"] == 1.0  # exact legacy entry
    assert model_info("gpt-3.5-turbo-0613")["context_window"] == 4096
    assert llmedge.estimate_cost("gpt-5.5", 1_000_000, 1_000_000) == pytest.approx(35.0)


def test_gpt5_and_o_series_use_o200k_and_embeddings_cl100k():
    for name, raw in TABLE.items():
        if name.startswith(("gpt-5", "gpt-4.1", "gpt-4o", "o1", "o3", "o4", "codex-")):
            assert raw["encoding"] == "o200k_base", name
        if name.startswith("text-embedding"):
            assert raw["encoding"] == "cl100k_base" and raw["kind"] == "embedding", name


def test_every_shipped_model_has_a_sources_row():
    data = Path(__file__).resolve().parent.parent / "python" / "llmedge" / "data"
    sources = (data / "MODELS_SOURCES.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in sources.splitlines()
        if line.startswith("| `")
    }
    assert rows == set(TABLE)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        model_info("gpt4o-mini")
    assert isinstance(info.value, KeyError)
    assert "gpt-4o-mini" in info.value.suggestions
    assert "gpt-4o-mini" in str(info.value)
    with pytest.raises(UnknownModelError):
        model_info("gpt-4ox")  # a prefix match needs a dash


def test_list_models_by_kind():
    chat = list_models("chat")
    emb = list_models(kind="embedding")
    assert "gpt-4o" in chat and "gpt-4o" not in emb
    assert set(emb) >= {"text-embedding-3-small", "text-embedding-3-large"}
    assert sorted(list_models()) == list_models()
    with pytest.raises(ValueError, match="kind: expected"):
        list_models("vision")


def test_register_model_adds_and_overrides():
    llmedge.register_model(
        "acme-chat-1",
        encoding="cl100k_base",
        context_window=32000,
        max_output_tokens=4000,
        input_price=1.0,
        output_price=2.0,
        cached_input_price=0.5,
    )
    info = model_info("acme-chat-1-2025-01-01")
    assert info["context_window"] == 32000 and info["cached_input_price"] == 0.5
    assert "acme-chat-1" in list_models("chat")
    assert llmedge.estimate_cost("acme-chat-1", 1_000_000, 0) == 1.0
    assert llmedge.count_messages([{"role": "user", "content": "hello"}], "acme-chat-1") == 8
    llmedge.register_model("acme-chat-1", encoding="o200k_base", context_window=8000)
    info = model_info("acme-chat-1")
    assert info["encoding"] == "o200k_base" and info["max_output_tokens"] == 8000
    assert info["input_price"] == 0.0 and info["cached_input_price"] is None


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"encoding": "gpt2", "context_window": 10}, UnknownEncodingError, "encoding: unknown"),
        ({"encoding": "o200k_base", "context_window": 0}, ValueError, "context_window"),
        ({"encoding": "o200k_base", "context_window": -1}, ValueError, "got -1"),
        (
            {"encoding": "o200k_base", "context_window": 10, "max_output_tokens": 11},
            ValueError,
            "max_output_tokens: 11 exceeds context_window 10",
        ),
        (
            {"encoding": "o200k_base", "context_window": 10, "input_price": -1.0},
            ValueError,
            "input_price",
        ),
        (
            {"encoding": "o200k_base", "context_window": 10, "output_price": float("nan")},
            ValueError,
            "output_price",
        ),
        (
            {"encoding": "o200k_base", "context_window": 10, "cached_input_price": float("inf")},
            ValueError,
            "cached_input_price",
        ),
        ({"encoding": "o200k_base", "context_window": 10, "kind": "image"}, ValueError, "kind"),
    ],
)
def test_register_model_validates_and_leaves_the_table_unchanged(kwargs, exc, fragment):
    before = list_models()
    with pytest.raises(exc) as info:
        llmedge.register_model("bad-model-x", **kwargs)
    assert fragment in str(info.value)
    assert list_models() == before
    with pytest.raises(UnknownModelError):
        model_info("bad-model-x")


def test_register_model_rejects_an_empty_name():
    with pytest.raises(ValueError, match="name"):
        llmedge.register_model(" ", encoding="o200k_base", context_window=10)
