"""llmedge.sse: the one reader of server-sent event streams (sync and async)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmedge import errors
from llmedge.errors import IncompleteStreamError, LlmEdgeError
from llmedge.sse import DONE, aiter_events, iter_events, iter_lines

STREAM = [
    ": a comment",
    "event: message",
    "id: 7",
    'data: {"content": "Hel"}',
    "",
    'data:{"content":"lo"}\r',
    "",
    "data: [DONE]",
    "",
]


async def _lines(lines):
    for line in lines:
        await asyncio.sleep(0)
        yield line


def _aread(lines):
    async def read():
        return [event async for event in aiter_events(_lines(lines))]

    return asyncio.run(read())


@pytest.mark.parametrize("read", [lambda lines: list(iter_events(lines)), _aread])
def test_events_until_done_skip_lines_without_data(read):
    assert read(STREAM) == [{"content": "Hel"}, {"content": "lo"}]
    # nothing after [DONE] is read
    assert read(["data: [DONE]", "data: {not json"]) == []


@pytest.mark.parametrize("read", [lambda lines: list(iter_events(lines)), _aread])
@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (STREAM[:-2], "ended without data: \\[DONE\\]"),
        ([], "ended without data: \\[DONE\\]"),
        (['data: {"error": {"message": "boom"}}', "data: [DONE]"], "reported an error"),
        (["data: {not json", "data: [DONE]"], "malformed"),
        (["data: [1, 2]", "data: [DONE]"], "non-object"),
    ],
)
def test_a_broken_stream_raises(read, lines, message):
    with pytest.raises(IncompleteStreamError, match=message):
        read(lines)


def test_incomplete_stream_error_is_a_connection_error_importable_where_it_was():
    fastapi = pytest.importorskip("llmedge.fastapi")
    assert issubclass(IncompleteStreamError, LlmEdgeError)
    assert issubclass(IncompleteStreamError, ConnectionError)
    assert fastapi.IncompleteStreamError is errors.IncompleteStreamError


def test_iter_lines_joins_chunks_and_characters_split_between_them():
    body = 'data: {"content": "d\u00e9j\u00e0 \u2713"}\n\ndata: [DONE]\n\n'.encode()
    chunks = [body[i : i + 3] for i in range(0, len(body), 3)]  # splits the accents
    assert list(iter_events(iter_lines(chunks))) == [{"content": "d\u00e9j\u00e0 \u2713"}]
    assert list(iter_lines(["a\nb", "c\n", "", "d"])) == ["a", "bc", "d"]
    assert list(iter_lines([b"\xff\n"])) == ["\ufffd"]


@given(st.lists(st.text(), max_size=6), st.lists(st.integers(1, 8), min_size=1))
def test_iter_lines_matches_split_whatever_the_chunking(lines, sizes):
    text = "\n".join(lines)
    data = text.encode()
    chunks, i = [], 0
    for n in sizes * (len(data) + 1):
        if i >= len(data):
            break
        chunks.append(data[i : i + n])
        i += n
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()  # no line after the last newline
    assert list(iter_lines(chunks)) == expected


def test_reads_what_sse_event_writes():
    fastapi = pytest.importorskip("llmedge.fastapi")
    body = b"".join(
        [
            fastapi.sse_event({"content": "a\nb"}, event="message", id="1"),
            fastapi.sse_event({"done": True}),
            b"data: " + DONE.encode() + b"\n\n",
        ]
    )
    assert list(iter_events(iter_lines([body]))) == [{"content": "a\nb"}, {"done": True}]


def test_needs_no_fastapi():
    code = (
        "import sys; sys.modules['fastapi'] = sys.modules['prometheus_client'] = None\n"
        "import llmedge.sse\n"
        "print(list(llmedge.sse.iter_events(['data: {}', 'data: [DONE]'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[{}]"
