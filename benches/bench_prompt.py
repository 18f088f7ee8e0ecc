"""PromptOptimizer.compress against the pure-Python statement of the same rules.

Over the 744 prompts of prompts.csv, at each level: llmedge's `compress` and
`benches/baselines/prompt.py` (the same rules with `re`, `json` and tiktoken
for the token counts), each recording whether its output (text, token counts
and steps) is identical to llmedge's. `test_savings_per_level` is the
evaluation behind the README's savings table. `test_compress_cpu_time` times
the same passes by CPU time (`time.process_time`), which the other processes
on a shared machine disturb much less than wall-clock time.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from baselines import prompt as baseline
from conftest import interleaved, record

import llmedge

LEVELS = ["lossless", "balanced", "aggressive"]


def _offline_tiktoken():
    """tiktoken with the vocabularies shipped in the tiktoken-rs crate (no network)."""
    try:
        import tiktoken
    except ImportError:
        return None
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pattern = str(Path.home() / ".cargo/registry/src/*/tiktoken-rs-*/assets/*.tiktoken")
        files = glob.glob(pattern)
        if not files:
            return None
        cache = tempfile.mkdtemp(prefix="llmedge-tiktoken-")
        for f in files:
            url = "https://openaipublic.blob.core.windows.net/encodings/" + os.path.basename(f)
            shutil.copy(f, os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    try:
        return tiktoken.get_encoding("o200k_base")
    except Exception:
        return None


@pytest.fixture(scope="module")
def prompts(data_dir: Path, quick: bool) -> list[str]:
    with open(data_dir / "prompts.csv", newline="", encoding="utf-8") as f:
        rows = [r["prompt"] for r in csv.DictReader(f)]
    return rows[:200] if quick else rows


@pytest.fixture(scope="module")
def counter():
    enc = _offline_tiktoken()
    if enc is None:
        pytest.skip("tiktoken (offline, from the tiktoken-rs crate's vocabularies) unavailable")
    return lambda s: len(enc.encode_ordinary(s))


OPT = llmedge.PromptOptimizer("gpt-4o")


def _llmedge(prompts, level):
    out = []
    for p in prompts:
        r = OPT.compress(p, level=level)
        out.append((r.text, r.tokens_before, r.tokens_after, r.steps))
    return out


def _python(prompts, level, count):
    return [baseline.compress(p, count, level) for p in prompts]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("impl", ["llmedge", "python"])
def test_compress(benchmark, prompts, counter, level, impl):
    benchmark.group = f"prompt: compress {level}, {len(prompts)} prompts"
    expected = _llmedge(prompts, level)
    if impl == "llmedge":
        result = benchmark(_llmedge, prompts, level)
    else:
        result = benchmark(_python, prompts, level, counter)
    record(benchmark, impl, result == expected)
    assert result == expected


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("impl", ["llmedge", "python"])
def test_compress_cpu_time(benchmark, prompts, counter, quick, level, impl):
    """`test_compress` timed by the process's CPU time instead of the wall clock."""
    benchmark.group = f"prompt: compress {level}, {len(prompts)} prompts, CPU time"
    # pytest-benchmark 5 reads the fixture's timer when a measurement starts
    benchmark._timer = time.process_time
    benchmark.extra_info["timer"] = "time.process_time"
    expected = _llmedge(prompts, level)
    if impl == "llmedge":
        result = benchmark.pedantic(
            _llmedge, args=(prompts, level), rounds=10 if quick else 30, warmup_rounds=1
        )
    else:
        result = benchmark.pedantic(
            _python, args=(prompts, level, counter), rounds=3 if quick else 7
        )
    record(benchmark, impl, result == expected)
    assert result == expected


@pytest.mark.parametrize("level", LEVELS)
def test_compress_interleaved(benchmark, prompts, counter, quick, level):
    """`test_compress` with the baseline run just before each llmedge round."""
    benchmark.group = f"prompt: compress {level}, {len(prompts)} prompts, interleaved"
    expected = _llmedge(prompts, level)

    def check(name, result):
        assert result == expected, name

    result = interleaved(
        benchmark,
        lambda: _llmedge(prompts, level),
        {"python": lambda: _python(prompts, level, counter)},
        rounds=5 if quick else 15,
        check=check,
    )
    record(benchmark, "llmedge", result == expected)
    assert result == expected


def test_savings_per_level(prompts, counter):
    """Token savings per level (o200k), whole corpus and its indented-JSON prompts."""
    lines = []
    structured = [p for p in prompts if p.lstrip().startswith(("{", "[")) and "\n " in p]
    for name, subset in [("all prompts", prompts), ("indented JSON prompts", structured)]:
        before = sum(counter(p) for p in subset)
        for level in LEVELS:
            after = sum(OPT.compress(p, level=level).tokens_after for p in subset)
            saved = (before - after) / before
            lines.append(
                f"{name:<24} {len(subset):>4} {level:<11} {before:>8} {after:>8} {saved:7.2%}"
            )
            assert 0 <= saved < 1
    print("\n" + "\n".join(lines))


def test_cold_single_pass(prompts, counter):
    """One pass over the corpus in a fresh thread, so that the per-thread memo of
    word token counts starts empty (the benchmark above repeats rounds, warm).
    The encoding itself is loaded first: that is a once-per-process cost."""
    import threading
    import time

    OPT.count("load the encoding")
    counter("load the encoding")

    timings = {}

    def run_llmedge(level):
        t = time.perf_counter()
        _llmedge(prompts, level)
        timings[("llmedge", level)] = time.perf_counter() - t

    lines = []
    for level in LEVELS:
        th = threading.Thread(target=run_llmedge, args=(level,))
        th.start()
        th.join()
        t = time.perf_counter()
        _python(prompts, level, counter)
        py = time.perf_counter() - t
        rust = timings[("llmedge", level)]
        lines.append(f"cold {level:<11} llmedge {rust * 1e3:8.1f} ms  python {py * 1e3:8.1f} ms")
        lines[-1] += f"  {py / rust:5.1f}x"
    print("\n" + "\n".join(lines))
