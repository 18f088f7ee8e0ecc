"""The first `count_tokens_batch` call of a fresh process against tiktoken's.

`benches/bench_tokens.py` repeats the same texts, so llmedge's per-thread
caches are warm there. This script measures what a fresh process pays: each
measurement runs in a new interpreter, loads the encoding first (a
once-per-process cost both libraries pay), then times the first, second and
third call over the 744 prompts of prompts.csv; tiktoken's
`encode_ordinary_batch` at 1, 2, 4 and 8 threads.

Run: ``LLMEDGE_DATA=../shared/data python benches/first_call_tokens.py [runs]``
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _prompts() -> list[str]:
    from conftest import data_path

    with open(data_path() / "prompts.csv", newline="", encoding="utf-8") as f:
        return [r["prompt"] for r in csv.DictReader(f)]


def child(which: str) -> None:
    prompts = _prompts()
    times = []
    if which == "llmedge":
        import llmedge

        llmedge.count_tokens("load the encoding", model="gpt-4o")
        for _ in range(3):
            t = time.perf_counter()
            llmedge.count_tokens_batch(prompts, model="gpt-4o")
            times.append(time.perf_counter() - t)
    else:
        from baselines.tokens import offline_tiktoken_cache, tiktoken_assets

        assets = tiktoken_assets()
        if assets is None:
            print("skip")
            return
        os.environ["TIKTOKEN_CACHE_DIR"] = offline_tiktoken_cache(assets)
        import tiktoken

        enc = tiktoken.get_encoding("o200k_base")
        enc.encode_ordinary("load the encoding")
        for _ in range(3):
            t = time.perf_counter()
            enc.encode_ordinary_batch(prompts, num_threads=int(which))
            times.append(time.perf_counter() - t)
    print(" ".join(f"{x:.6f}" for x in times))


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    impls = ["llmedge", "1", "2", "4", "8"]
    firsts: dict[str, list[float]] = {i: [] for i in impls}
    warm: dict[str, list[float]] = {i: [] for i in impls}
    for _ in range(runs):
        for impl in impls:  # interleaved, so load changes hit every implementation
            out = subprocess.run(
                [sys.executable, __file__, "--child", impl],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if out == ["skip"]:
                continue
            t = [float(x) for x in out]
            firsts[impl].append(t[0])
            warm[impl].append(min(t[1:]))
    print(f"{'implementation':<22} {'first call (median)':>20} {'later calls (median)':>21}")
    for impl in impls:
        if not firsts[impl]:
            continue
        name = "llmedge" if impl == "llmedge" else f"tiktoken, {impl} threads"
        f = statistics.median(firsts[impl]) * 1e3
        w = statistics.median(warm[impl]) * 1e3
        print(f"{name:<22} {f:>17.1f} ms {w:>18.1f} ms")
    tk = [i for i in impls[1:] if firsts[i]]
    if firsts["llmedge"] and tk:
        best = min(statistics.median(firsts[i]) for i in tk)
        ours = statistics.median(firsts["llmedge"])
        print(f"first call: tiktoken's best / llmedge = {best / ours:.2f}x")
        for r, ours_r in enumerate(firsts["llmedge"]):
            best_r = min(firsts[i][r] for i in tk)
            ratio = best_r / ours_r
            print(f"  run {r + 1}: {best_r * 1e3:.1f} / {ours_r * 1e3:.1f} ms = {ratio:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
