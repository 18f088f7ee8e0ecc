"""count_messages and fit_messages through the public API.

Expected numbers are committed: the cookbook examples were verified by OpenAI
against the API (129 / 124 tokens, 105 / 101 with tools), the vision ones by
the OpenAI community forum's measurements; the rest are hand-computed from the
documented rules with token counts of the individual strings.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmedge
from llmedge import ContextOverflowError, UnknownModelError, count_messages, fit_messages

COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]

WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("gpt-4o-2024-08-06", 124),
    ],
)
def test_cookbook_example_matches_the_api(model, expected):
    assert count_messages(COOKBOOK, model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools_example_matches_the_api(model, expected):
    assert count_messages(WEATHER_MESSAGES, model, tools=WEATHER_TOOLS) == expected


def test_tuple_input_and_empty_list():
    assert count_messages(tuple(COOKBOOK), "gpt-4o") == 124
    assert count_messages([], "gpt-4o") == 3  # reply priming only


def test_name_costs_its_tokens_plus_one():
    plain = count_messages([{"role": "user", "content": "hello"}], "gpt-4o")
    named = count_messages([{"role": "user", "content": "hello", "name": "bob"}], "gpt-4o")
    assert plain == 3 + 1 + 1 + 3
    assert named == plain + llmedge.count_tokens("bob", model="gpt-4o") + 1


def test_legacy_0301_overheads():
    # 4 per message, -1 per name: 4 + user(1) + hello(1) + bob(1) - 1 + 3
    msgs = [{"role": "user", "content": "hello", "name": "bob"}]
    assert count_messages(msgs, "gpt-3.5-turbo-0301") == 9


def test_tool_calls_and_tool_results():
    msgs = [
        {"role": "user", "content": "Hi"},  # 3 + 1 + 1
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"city": "Paris"}'},
                }
            ],
        },  # 3 + 1 + (lookup 1 + arguments 6 + 3)
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},  # 3 + 1 + 6
    ]
    assert count_messages(msgs, "gpt-4o") == 5 + 14 + 10 + 3
    # a second call costs its own name, arguments and 3
    two = dict(msgs[1], tool_calls=msgs[1]["tool_calls"] * 2)
    assert count_messages([msgs[0], two, msgs[2]], "gpt-4o") == 5 + 24 + 10 + 3


def test_legacy_function_call_and_function_result():
    # measured on gpt-3.5-turbo by hmarr/openai-chat-tokens
    call = {
        "role": "assistant",
        "content": "",
        "function_call": {"name": "do_stuff", "arguments": '{"foo": "bar", "baz": 1.5}'},
    }
    assert count_messages([call], "gpt-3.5-turbo") == 26
    result = [
        {"role": "user", "content": "hello world"},
        {"role": "function", "name": "do_stuff", "content": "{}"},
    ]
    assert count_messages(result, "gpt-3.5-turbo") == 15


def test_custom_tool_definition_rule():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather for a city.",  # one trailing dot dropped
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "unit": {
                            "type": "string",
                            "description": "Unit.",
                            "enum": ["celsius", "fahrenheit"],
                        },
                    },
                },
            },
        }
    ]
    msgs = [{"role": "user", "content": "Hi"}]
    # 7 + "get_weather:Get the weather for a city"(8) + 3 + [3 + "city:string:City name"(5)]
    # + [3 - 3 + (3 + 2) + (3 + 2) + "unit:string:Unit"(4)] + 12 = 52; messages 5 + 3
    assert count_messages(msgs, "gpt-4o", tools=tools) == 52 + 8
    assert count_messages(msgs, "gpt-4", tools=tools) == 55 + 8  # func_init 10 on cl100k
    # the legacy bare function dict is accepted too
    assert count_messages(msgs, "gpt-4o", tools=[tools[0]["function"]]) == 60
    # no tools and an empty list cost nothing
    assert count_messages(msgs, "gpt-4o", tools=[]) == count_messages(msgs, "gpt-4o") == 8


def _vision(detail, width=None, height=None, where="image_url"):
    image_url = {"url": "https://example.com/a.png", "detail": detail}
    part = {"type": "image_url", "image_url": image_url}
    target = image_url if where == "image_url" else part
    if width is not None:
        target["width"] = width
        target["height"] = height
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "repeat word from attached image"}, part],
        }
    ]


def test_image_parts_match_community_measurements():
    # forum-measured prompt tokens, a 128x64 image plus this five-token text
    assert llmedge.count_tokens("repeat word from attached image", model="gpt-4o") == 5
    assert count_messages(_vision("low", 128, 64), "gpt-4o-2024-08-06") == 97
    assert count_messages(_vision("high", 128, 64), "gpt-4o-2024-08-06") == 267
    assert count_messages(_vision("high", 128, 64), "gpt-4.1") == 267
    assert count_messages(_vision("low", 128, 64), "gpt-4o-mini-2024-07-18") == 2845
    assert count_messages(_vision("high", 128, 64), "gpt-4o-mini-2024-07-18") == 8512


def test_image_tile_formula_documented_examples():
    text = 3 + 1 + 5 + 3
    assert count_messages(_vision("high", 1024, 1024), "gpt-4o") == text + 765
    assert count_messages(_vision("high", 2048, 4096), "gpt-4o") == text + 1105
    assert count_messages(_vision("low", 4096, 8192), "gpt-4o") == text + 85
    # size given on the part instead of the image_url dict
    assert count_messages(_vision("high", 2048, 4096, where="part"), "gpt-4o") == text + 1105
    # auto is costed as high; unknown size costs the 8-tile upper bound
    assert count_messages(_vision("auto", 1024, 1024), "gpt-4o") == text + 765
    assert count_messages(_vision("auto"), "gpt-4o") == text + 85 + 8 * 170
    assert count_messages(_vision("high"), "gpt-4o") == text + 85 + 8 * 170
    # a bare URL string as image_url is accepted (detail auto, size unknown)
    bare = [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}]
    assert count_messages(bare, "gpt-4o") == 3 + 1 + 85 + 8 * 170 + 3


def test_content_none_missing_and_text_parts_agree():
    text = count_messages([{"role": "user", "content": "hello world"}], "gpt-4o")
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    assert count_messages(parts, "gpt-4o") == text
    assert count_messages([{"role": "assistant", "content": None}], "gpt-4o") == 7
    assert count_messages([{"role": "assistant"}], "gpt-4o") == 7
    unknown_keys = [{"role": "user", "content": "hello world", "refusal": None, "x": 1}]
    assert count_messages(unknown_keys, "gpt-4o") == text


@pytest.mark.parametrize(
    ("messages", "exc", "fragment"),
    [
        ("hi", TypeError, "messages: expected a list of dicts, got str"),
        ([{"role": "user", "content": "a"}, 3], TypeError, "messages[1]: expected a dict, got int"),
        ([{"content": "a"}], ValueError, "messages[0]: missing 'role'"),
        ([{"role": 1}], TypeError, "messages[0].role: expected str, got int"),
        ([{"role": "robot", "content": "a"}], ValueError, "messages[0].role: unknown role"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
            + [{"role": "user", "content": 3}],
            TypeError,
            "messages[2].content: expected str, list of parts or None, got int",
        ),
        ([{"role": "user", "content": [3]}], TypeError, "messages[0].content[0]: expected a dict"),
        ([{"role": "user", "content": [{"text": "a"}]}], ValueError, "content[0]: missing 'type'"),
        (
            [{"role": "user", "content": [{"type": "audio"}]}],
            ValueError,
            'messages[0].content[0].type: unsupported part type "audio"',
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            TypeError,
            "messages[0].content[0].text: expected str, got int",
        ),
        (
            _vision("medium", 10, 10),
            ValueError,
            'messages[0].content[1].image_url.detail: expected "low", "high" or "auto"',
        ),
        (_vision("high", -5, 10), ValueError, "image_url.width: expected a positive int, got -5"),
        (_vision("high", "5", 10), TypeError, "image_url.width: expected a positive int, got str"),
        ([{"role": "user", "content": "a", "name": 3}], TypeError, "messages[0].name: expected"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "x"}]}],
            ValueError,
            "messages[0].tool_calls[0]: missing 'function'",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}],
            TypeError,
            "messages[0].tool_calls[0].function.arguments: expected str, got dict",
        ),
        (
            [{"role": "user", "content": "bad \ud800 surrogate"}],
            ValueError,
            "messages[0].content: the string is not valid Unicode",
        ),
    ],
)
def test_malformed_messages_name_index_and_field(messages, exc, fragment):
    with pytest.raises(exc) as info:
        count_messages(messages, "gpt-4o")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("tools", "exc", "fragment"),
    [
        ({"name": "f"}, TypeError, "tools: expected a list of dicts, got dict"),
        ([{"type": "function", "function": {}}], ValueError, "tools[0].function: missing 'name'"),
        ([{"name": 3}], TypeError, "tools[0].name: expected str, got int"),
        (
            [{"name": "f", "parameters": {"properties": {"a": 3}}}],
            TypeError,
            "tools[0].parameters.properties.a: expected a dict, got int",
        ),
    ],
)
def test_malformed_tools(tools, exc, fragment):
    with pytest.raises(exc) as info:
        count_messages([{"role": "user", "content": "a"}], "gpt-4o", tools=tools)
    assert fragment in str(info.value)


def test_unknown_model_is_a_key_error_with_suggestions():
    with pytest.raises(UnknownModelError) as info:
        count_messages([], "gpt-4oo")
    assert isinstance(info.value, KeyError)
    assert "gpt-4o" in info.value.suggestions


# ---- fit_messages ------------------------------------------------------------------------


def _convo(n_pairs=3):
    msgs = [{"role": "system", "content": "You are terse."}]
    for i in range(n_pairs):
        msgs.append({"role": "user", "content": f"question number {i} about something"})
        msgs.append({"role": "assistant", "content": f"answer number {i} with some detail"})
    msgs.append({"role": "user", "content": "final question"})
    return msgs


def test_fit_returns_the_original_objects_when_everything_fits():
    msgs = _convo()
    out = fit_messages(msgs, "gpt-4o", max_tokens=10_000)
    assert len(out) == len(msgs)
    assert all(a is b for a, b in zip(out, msgs, strict=True))


def test_fit_budget_is_exact_including_reply_priming():
    msgs = _convo()
    full = count_messages(msgs, "gpt-4o")
    assert fit_messages(msgs, "gpt-4o", max_tokens=full) == msgs
    out = fit_messages(msgs, "gpt-4o", max_tokens=full - 1)
    assert out == [msgs[0], *msgs[2:]]  # the oldest user message goes first
    assert count_messages(out, "gpt-4o") <= full - 1


def test_history_limit_cuts_six_to_four():
    msgs = _convo()  # system + 7 non-system messages
    out = fit_messages(msgs[:7], "gpt-4o", max_tokens=10_000, history_limit=4)
    assert out == [msgs[0], *msgs[3:7]]
    first = fit_messages(msgs, "gpt-4o", max_tokens=10_000, history_limit=4, strategy="first")
    assert first == [msgs[0], msgs[1], msgs[2], msgs[3], msgs[7]]


def test_keep_system_false_lets_system_messages_go():
    msgs = _convo()
    need = count_messages([msgs[-1]], "gpt-4o")
    assert fit_messages(msgs, "gpt-4o", max_tokens=need, keep_system=False) == [msgs[-1]]
    with pytest.raises(ContextOverflowError):
        fit_messages(msgs, "gpt-4o", max_tokens=need, keep_system=True)


def test_tool_call_is_kept_or_dropped_with_its_results():
    msgs = [
        {"role": "user", "content": "what is the weather in Paris and Rome"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "w", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": "rain"},
        {"role": "user", "content": "thanks"},
    ]
    need = count_messages(msgs[1:], "gpt-4o")
    assert fit_messages(msgs, "gpt-4o", max_tokens=need) == msgs[1:]
    assert fit_messages(msgs, "gpt-4o", max_tokens=need - 1) == [msgs[4]]


def test_allow_partial_truncates_the_boundary_message():
    long = "The quick brown fox jumps over the lazy dog. " * 40
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": long, "name": "bot"},
        {"role": "user", "content": "and then?"},
    ]
    budget = count_messages([msgs[0], msgs[2]], "gpt-4o") + 40
    out = fit_messages(msgs, "gpt-4o", max_tokens=budget, allow_partial=True)
    assert out[0] is msgs[0] and out[2] is msgs[2]
    assert out[1] is not msgs[1] and msgs[1]["content"] == long, "original untouched"
    assert out[1]["name"] == "bot"
    assert long.endswith(out[1]["content"]) and 0 < len(out[1]["content"]) < len(long)
    n = count_messages(out, "gpt-4o")
    assert budget - 2 <= n <= budget
    first = fit_messages(msgs, "gpt-4o", max_tokens=budget, allow_partial=True, strategy="first")
    assert long.startswith(first[1]["content"])
    without = fit_messages(msgs, "gpt-4o", max_tokens=budget)
    assert without == [msgs[0], msgs[2]]


def test_partial_never_splits_a_character():
    text = "日本語のテキスト🙂と絵文字、" * 30
    msgs = [{"role": "assistant", "content": text}, {"role": "user", "content": "?"}]
    base = count_messages([msgs[1]], "gpt-4o")
    for extra in range(5, 40, 3):
        out = fit_messages(msgs, "gpt-4o", max_tokens=base + extra, allow_partial=True)
        if len(out) == 2:
            assert text.endswith(out[0]["content"])
            out[0]["content"].encode("utf-8")
            assert count_messages(out, "gpt-4o") <= base + extra


def test_context_overflow_error_carries_the_numbers():
    msgs = [{"role": "system", "content": "rules " * 50}, {"role": "user", "content": "hi"}]
    required = count_messages(msgs, "gpt-4o")
    with pytest.raises(ContextOverflowError) as info:
        fit_messages(msgs, "gpt-4o", max_tokens=required - 1)
    err = info.value
    assert (err.required, err.available) == (required, required - 1)
    assert str(required) in str(err) and str(required - 1) in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens: expected a positive number of tokens, got 0"),
        ({"max_tokens": -5}, "got -5"),
        ({"max_tokens": 100, "strategy": "middle"}, 'strategy: expected "last" or "first"'),
        ({"max_tokens": 100, "history_limit": 0}, "history_limit: expected a positive number"),
    ],
)
def test_fit_rejects_bad_options(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        fit_messages(_convo(), "gpt-4o", **kwargs)
    assert fragment in str(info.value)


def test_fit_with_tools_counts_them_in_the_budget():
    msgs = WEATHER_MESSAGES
    assert fit_messages(msgs, "gpt-4o", max_tokens=101, tools=WEATHER_TOOLS) == msgs
    with pytest.raises(ContextOverflowError) as info:
        fit_messages(msgs, "gpt-4o", max_tokens=100, tools=WEATHER_TOOLS)
    assert info.value.required == 101


roles = st.sampled_from(["system", "user", "assistant"])
words = st.text(alphabet="abc xyz.é🙂", min_size=0, max_size=60)
conversations = st.lists(st.fixed_dictionaries({"role": roles, "content": words}), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    msgs=conversations,
    budget=st.integers(min_value=1, max_value=400),
    strategy=st.sampled_from(["last", "first"]),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
    partial=st.booleans(),
)
def test_fit_properties(msgs, budget, strategy, limit, partial):
    try:
        out = fit_messages(
            msgs,
            "gpt-4o",
            max_tokens=budget,
            strategy=strategy,
            history_limit=limit,
            allow_partial=partial,
        )
    except ContextOverflowError as e:
        assert e.required > e.available == budget
        return
    assert count_messages(out, "gpt-4o") <= budget
    originals = [m for m in out if any(m is x for x in msgs)]
    assert len(originals) >= len(out) - 1  # at most one partial copy
    positions = [next(i for i, x in enumerate(msgs) if x is m) for m in originals]
    assert positions == sorted(positions)
    systems = [m for m in msgs if m["role"] == "system"]
    assert all(any(s is m for m in out) for s in systems)
    users = [m for m in msgs if m["role"] == "user"]
    if users:
        assert any(users[-1] is m for m in out)
    if limit is not None:
        assert sum(1 for m in out if m["role"] != "system") <= limit


def test_count_from_many_threads_agrees():
    msgs = _convo(20)
    expected = count_messages(msgs, "gpt-4o")
    results = []

    def work():
        results.extend(count_messages(msgs, "gpt-4o") for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 160
