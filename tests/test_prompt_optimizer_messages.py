"""PromptOptimizer.count_messages / fit_messages: the optimizer's model and budget."""

from __future__ import annotations

import pytest

import llmedge
from llmedge import ContextOverflowError, PromptOptimizer


def _chat(n: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "You are a terse assistant."}]
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append({"role": role, "content": f"message number {i} " + "word " * 20})
    return msgs


def test_count_messages_uses_the_optimizer_model():
    msgs = _chat(5)
    for model in ("gpt-4o", "gpt-4", "gpt-3.5-turbo"):
        opt = PromptOptimizer(model)
        assert opt.count_messages(msgs) == llmedge.count_messages(msgs, model)


def test_fit_messages_defaults_to_the_budget():
    msgs = _chat(40)
    total = llmedge.count_messages(msgs, "gpt-4o")
    opt = PromptOptimizer("gpt-4o", max_context_tokens=total // 2 + 300, reserve_output_tokens=300)
    kept = opt.fit_messages(msgs)
    assert kept == llmedge.fit_messages(msgs, "gpt-4o", max_tokens=opt.budget)
    assert llmedge.count_messages(kept, "gpt-4o") <= opt.budget
    assert kept[0] is msgs[0]  # system kept, the original object
    assert kept[-1] is msgs[-1]  # newest kept with strategy "last"
    assert len(kept) < len(msgs)


def test_history_limit_from_the_optimizer_and_overridden_per_call():
    msgs = _chat(6)
    opt = PromptOptimizer("gpt-4o", history_limit=4)
    kept = opt.fit_messages(msgs)
    assert [m for m in kept if m["role"] != "system"] == msgs[-4:]
    kept2 = opt.fit_messages(msgs, history_limit=2)
    assert [m for m in kept2 if m["role"] != "system"] == msgs[-2:]


def test_overflow_and_bad_budget():
    msgs = _chat(2)
    opt = PromptOptimizer("gpt-4o")
    with pytest.raises(ContextOverflowError):
        opt.fit_messages(msgs, max_tokens=5)
    with pytest.raises(ValueError, match="max_tokens"):
        opt.fit_messages(msgs, max_tokens=0)
    with pytest.raises(TypeError):
        opt.count_messages([{"role": "user", "content": 3}])
