"""The token-counting tables are shared by the process: their memory does not
grow with the number of threads that count."""

from __future__ import annotations

import threading

import llmedge
from llmedge import PromptOptimizer, Tokenizer, count_messages, token_table_bytes

WORDS = (
    "the quick brown fox jumps over a lazy dog Ünïcödé naïve café 日本語のテキスト "
    "λόγος слово 👩‍👩‍👧 ✨ internationalisation counterrevolutionaries 1234567 "
    "HTTPServer isn't they'll {\"key\": [1, 2]} \n\n\t  indented"
).split(" ")


def _texts(seed: int, n: int = 40) -> list[str]:
    # distinct words per thread, so that every thread brings new pieces
    out = []
    for i in range(n):
        words = [WORDS[(seed * 7 + i * 3 + k) % len(WORDS)] for k in range(60)]
        words.append(f"word{seed}x{i}y{'z' * (i % 30)}")
        out.append(" ".join(words))
    return out


def test_tables_are_bounded_and_shared_by_64_threads():
    assert llmedge.TOKEN_TABLE_MAX_BYTES == llmedge._core.TOKEN_TABLE_MAX_BYTES
    encodings = ["o200k_base", "cl100k_base", "p50k_base"]
    expected = {
        (name, seed): [Tokenizer(name).count(t) for t in _texts(seed)]
        for name in encodings
        for seed in range(64)
    }
    # every table in use has been made by the counts above, in this thread
    one_thread = token_table_bytes()
    assert 0 < one_thread <= llmedge.TOKEN_TABLE_MAX_BYTES

    results: dict[tuple[str, int], list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(64)

    def work(seed: int) -> None:
        try:
            start.wait()
            for name in encodings:
                tok = Tokenizer(name)
                results[(name, seed)] = [tok.count(t) for t in _texts(seed)]
            opt = PromptOptimizer(model="gpt-4o")
            opt.compress(" ".join(_texts(seed, 5)), level="aggressive")
            count_messages([{"role": "user", "content": t} for t in _texts(seed, 5)], "gpt-4o")
        except BaseException as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == expected
    after = token_table_bytes()
    assert after <= llmedge.TOKEN_TABLE_MAX_BYTES
    # 64 threads hold what one thread held, plus at most the pre-tokenisers'
    # pool of lazy-DFA caches (bounded too), not 64 copies of the tables
    assert after < 2 * one_thread + 8 * 2**20, (one_thread, after)
