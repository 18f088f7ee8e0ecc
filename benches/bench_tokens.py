"""Token counting: llmedge against tiktoken and a pure-Python BPE, side by side.

tiktoken runs offline: its vocabularies are copied from the tiktoken-rs crate
into a temporary TIKTOKEN_CACHE_DIR under the names tiktoken's loader looks
for (see baselines/tokens.py). Cases:

* one 2 KB text, o200k_base and cl100k_base: ``Tokenizer.count`` vs
  ``len(enc.encode_ordinary(text))`` vs the pure-Python BPE;
* the 744 prompts of prompts.csv: ``count_tokens_batch`` vs tiktoken's
  ``encode_ordinary_batch`` at 1, 2, 4 and 8 threads.

Run: ``python -m llmedge bench tokens`` (``--full`` for more rounds).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from baselines.tokens import PythonBPE, offline_tiktoken_cache, tiktoken_assets
from conftest import data_path, interleaved, record

import llmedge

FALLBACK_2KB = (
    "You are a helpful assistant for a FastAPI backend. Answer briefly and cite the "
    "relevant function names. Ünïcödé names like Zoë and 日本語 appear in user data; "
    "emoji 👍🏽 too.\n\n```python\n@app.post('/chat')\nasync def chat(req: ChatRequest):\n"
    "    tokens = count_tokens(req.prompt, model='gpt-4o')\n    return {'tokens': tokens}\n"
    "```\n\nNumbers: 3.14159, 1,000,000 and 2024-08-06.   Trailing   spaces\t\ttabs.\n"
)


def _assets() -> Path:
    assets = tiktoken_assets()
    if assets is None:
        pytest.skip(
            "tiktoken-rs vocabulary files not found under ~/.cargo/registry/src/*/"
            "tiktoken-rs-*/assets (run `cargo build` once); the tiktoken and pure-Python "
            "comparisons need them"
        )
    return assets


@pytest.fixture(scope="module")
def tiktoken_mod():
    assets = _assets()
    os.environ["TIKTOKEN_CACHE_DIR"] = offline_tiktoken_cache(assets)
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken


def _prompts() -> list[str] | None:
    path = data_path() / "prompts.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return [row["prompt"] for row in csv.DictReader(f)]


def text_2kb() -> str:
    """About 2,048 characters of real prompt text (prompts.csv when available)."""
    prompts = _prompts()
    text = "\n\n".join(prompts) if prompts else FALLBACK_2KB * 8
    return text[:2048]


ENCODINGS = ["o200k_base", "cl100k_base"]
IMPLS_2KB = ["llmedge", "tiktoken", "python"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("impl", IMPLS_2KB)
def test_count_2kb(benchmark, tiktoken_mod, encoding, impl, quick):
    text = text_2kb()
    enc = tiktoken_mod.get_encoding(encoding)
    expected = len(enc.encode_ordinary(text))
    benchmark.group = f"tokens: count one 2 KB text ({encoding})"
    if impl == "llmedge":
        fn = llmedge.Tokenizer(encoding).count
    elif impl == "tiktoken":

        def fn(t, _e=enc.encode_ordinary):
            return len(_e(t))
    else:
        fn = PythonBPE(encoding, _assets()).count
    if impl == "python":
        result = benchmark.pedantic(fn, args=(text,), rounds=3 if quick else 10, iterations=1)
    else:
        result = benchmark(fn, text)
    record(benchmark, impl, result == expected)


BATCH_IMPLS = [
    "llmedge",
    "tiktoken[threads=1]",
    "tiktoken[threads=2]",
    "tiktoken[threads=4]",
    "tiktoken[threads=8]",
]


@pytest.mark.parametrize("impl", BATCH_IMPLS)
def test_count_batch_prompts(benchmark, tiktoken_mod, data_dir, impl, quick):
    with (data_dir / "prompts.csv").open(newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    enc = tiktoken_mod.get_encoding("o200k_base")
    expected = [len(x) for x in enc.encode_ordinary_batch(prompts, num_threads=2)]
    benchmark.group = f"tokens: count_tokens_batch, {len(prompts)} prompts (o200k_base)"
    if impl == "llmedge":
        result = benchmark(llmedge.count_tokens_batch, prompts, model="gpt-4o")
    else:
        threads = int(impl.split("=")[1].rstrip("]"))

        def fn():
            return [len(x) for x in enc.encode_ordinary_batch(prompts, num_threads=threads)]

        result = benchmark(fn)
    record(benchmark, impl, result == expected)


def test_count_batch_prompts_interleaved(benchmark, tiktoken_mod, data_dir, quick):
    """`count_tokens_batch` with tiktoken at 1, 2, 4 and 8 threads run just before
    each llmedge round; "best" is the fastest thread count of each round."""
    with (data_dir / "prompts.csv").open(newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    enc = tiktoken_mod.get_encoding("o200k_base")
    expected = [len(x) for x in enc.encode_ordinary_batch(prompts, num_threads=2)]
    benchmark.group = (
        f"tokens: count_tokens_batch, {len(prompts)} prompts (o200k_base), interleaved"
    )

    def tiktoken_at(threads):
        return lambda: [len(x) for x in enc.encode_ordinary_batch(prompts, num_threads=threads)]

    def check(name, result):
        assert result == expected, name

    result = interleaved(
        benchmark,
        lambda: llmedge.count_tokens_batch(prompts, model="gpt-4o"),
        {f"tiktoken, {t} thr": tiktoken_at(t) for t in (1, 2, 4, 8)},
        rounds=10 if quick else 30,
        check=check,
    )
    record(benchmark, "llmedge", result == expected)
