"""count_messages / fit_messages on real conversations (en_100_tree.jsonl).

Each tree is walked from the root to a leaf taking the lowest-ranked reply at
every step, giving 100 linear chats (prompter -> user, assistant -> assistant).
Implementations: llmedge, the pure-Python cookbook baseline with tiktoken
(benches/baselines/messages.py). `agree` means equal token totals.
"""

from __future__ import annotations

import json

import pytest
from baselines.messages import ChatRules, num_tokens_from_messages, offline_tiktoken
from conftest import interleaved, record

import llmedge
from llmedge import _core

MODEL = "gpt-4o"


def _chat(tree):
    node, msgs = tree["prompt"], []
    while node is not None:
        role = "user" if node["role"] == "prompter" else "assistant"
        msgs.append({"role": role, "content": node["text"]})
        replies = node.get("replies") or []
        ranked = [r for r in replies if r.get("rank") is not None] or replies
        node = min(ranked, key=lambda r: r.get("rank") or 0) if ranked else None
    return msgs


@pytest.fixture(scope="module")
def chats(data_dir, quick):
    path = data_dir / "en_100_tree.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open(encoding="utf-8") as f:
        trees = [json.loads(line) for line in f if line.strip()]
    return [_chat(t) for t in trees]


@pytest.fixture(scope="module")
def rules():
    if offline_tiktoken() is None:
        pytest.skip("tiktoken or the tiktoken-rs vocabularies are not available")
    return ChatRules(MODEL, llmedge.model_info(MODEL)["encoding"])


@pytest.fixture(scope="module")
def reference(chats, rules):
    return [num_tokens_from_messages(c, rules) for c in chats]


def _forget():
    # llmedge remembers the counts of message texts; cold runs start empty
    _core._clear_message_count_memo()


def _counter(impl, rules):
    if impl == "llmedge":
        return lambda chat: llmedge.count_messages(chat, MODEL)
    return lambda chat: num_tokens_from_messages(chat, rules)


@pytest.mark.parametrize("impl", ["llmedge", "python"])
def test_count_chats_cold(benchmark, impl, chats, rules, reference, quick):
    benchmark.group = "messages: count_messages, 100 chats, cold"
    count = _counter(impl, rules)

    def run():
        return [count(c) for c in chats]

    result = benchmark.pedantic(run, setup=_forget, rounds=8 if quick else 30, iterations=1)
    record(benchmark, impl, result == reference)


def test_count_chats_cold_interleaved(benchmark, chats, rules, reference, quick):
    """The cold case with the baseline run just before each llmedge round."""
    benchmark.group = "messages: count_messages, 100 chats, cold, interleaved"
    ours, theirs = _counter("llmedge", rules), _counter("python", rules)

    def check(name, result):
        assert result == reference, name

    result = interleaved(
        benchmark,
        lambda: [ours(c) for c in chats],
        {"python": lambda: [theirs(c) for c in chats]},
        rounds=8 if quick else 30,
        setup=_forget,
        check=check,
    )
    record(benchmark, "llmedge", result == reference)


@pytest.mark.parametrize("impl", ["llmedge", "python"])
def test_count_chats_warm(benchmark, impl, chats, rules, reference):
    # a chat backend counts the same history again on every turn
    benchmark.group = "messages: count_messages, 100 chats, history seen"
    count = _counter(impl, rules)

    def run():
        return [count(c) for c in chats]

    run()
    result = benchmark(run)
    record(benchmark, impl, result == reference)


@pytest.mark.parametrize("impl", ["llmedge", "python"])
def test_count_one_long_chat_cold(benchmark, impl, chats, rules, reference, quick):
    benchmark.group = "messages: count_messages, all chats as one, cold"
    long = [m for c in chats for m in c]
    expected = sum(reference) - 3 * (len(chats) - 1)
    count = _counter(impl, rules)
    result = benchmark.pedantic(
        count, args=(long,), setup=_forget, rounds=8 if quick else 30, iterations=1
    )
    record(benchmark, impl, result == expected)


def _python_fit_last(chat, rules, budget):
    # reference for the "last" strategy without system messages or options:
    # the last user message, then older messages while they fit
    costs = [rules.message(m) for m in chat]
    last_user = max(i for i, m in enumerate(chat) if m["role"] == "user")
    used = 3 + costs[last_user]
    kept = [last_user]
    for i in range(len(chat) - 1, -1, -1):
        if i == last_user:
            continue
        if used + costs[i] > budget:
            break
        used += costs[i]
        kept.append(i)
    return [chat[i] for i in sorted(kept)]


@pytest.mark.parametrize("impl", ["llmedge", "python"])
def test_fit_chats(benchmark, impl, chats, rules):
    benchmark.group = "messages: fit_messages(max_tokens=1000), history seen"

    def last_user(c):
        return [m for m in c if m["role"] == "user"][-1:]

    fits = [c for c in chats if last_user(c) and rules.message(last_user(c)[0]) + 3 <= 1000]
    expected = [_python_fit_last(c, rules, 1000) for c in fits]
    if impl == "llmedge":

        def run():
            return [llmedge.fit_messages(c, MODEL, max_tokens=1000) for c in fits]
    else:

        def run():
            return [_python_fit_last(c, rules, 1000) for c in fits]

    result = benchmark(run)
    record(benchmark, impl, result == expected)


def test_fresh_thread(chats, rules, reference, quick):
    """Cold in the strongest sense: each round counts the 100 chats in a new
    thread (its piece caches empty, the lazy DFA's states not built) with the
    message memo emptied; the cookbook baseline also runs in a new thread.
    Prints the per-round times and the median ratio (`pytest -s`)."""
    import statistics
    import threading
    import time

    llmedge.count_messages(chats[0], MODEL)  # loads the encoding: once per process
    num_tokens_from_messages(chats[0], rules)
    rounds = 5 if quick else 15
    ours, theirs = [], []

    def timed(f, out):
        t = time.perf_counter()
        result = [f(c) for c in chats]
        out.append(time.perf_counter() - t)
        assert result == reference

    for _ in range(rounds):
        _forget()
        for f, out in [(_counter("llmedge", rules), ours), (_counter("python", rules), theirs)]:
            th = threading.Thread(target=timed, args=(f, out))
            th.start()
            th.join()
    assert len(ours) == len(theirs) == rounds
    ratio = statistics.median(p / o for p, o in zip(theirs, ours, strict=True))
    print(
        f"\nfresh thread, {rounds} rounds: llmedge median {statistics.median(ours) * 1e3:.2f} ms,"
        f" python median {statistics.median(theirs) * 1e3:.2f} ms, median ratio {ratio:.1f}x"
    )
