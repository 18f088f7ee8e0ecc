"""The mock LLM upstream (llmedge.testing): OpenAI's wire format, determinism,
latency settings and fault injection, in-process and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

import llmedge
from llmedge.testing import MockLLM, mock_answer, spawn_mock

pytest.importorskip("uvicorn")

CHAT = "/v1/chat/completions"


def body(question: str = "What is a token?", model: str = "gpt-4o", **extra):
    return {"model": model, "messages": [{"role": "user", "content": question}], **extra}


def client(mock: MockLLM) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mock.app), base_url="http://mock")


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.mark.asyncio
async def test_completion_is_openai_shaped_and_deterministic():
    mock = MockLLM(answer_tokens=12)
    async with client(mock) as c:
        first = (await c.post(CHAT, json=body())).json()
        again = (await c.post(CHAT, json=body())).json()
        other = (await c.post(CHAT, json=body("What is a vector?"))).json()
        other_model = (await c.post(CHAT, json=body(model="gpt-4o-mini"))).json()
    answer = first["choices"][0]["message"]["content"]
    assert first["object"] == "chat.completion"
    assert first["choices"][0]["message"]["role"] == "assistant"
    assert first["choices"][0]["finish_reason"] == "stop"
    assert answer == again["choices"][0]["message"]["content"]
    assert answer == mock_answer("gpt-4o", body()["messages"], 12)
    assert len(answer.split()) == 12
    assert answer != other["choices"][0]["message"]["content"]
    assert answer != other_model["choices"][0]["message"]["content"]
    usage = first["usage"]
    assert usage["prompt_tokens"] == llmedge.count_messages(body()["messages"], "gpt-4o")
    assert usage["completion_tokens"] == llmedge.count_tokens(answer, "gpt-4o")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.asyncio
async def test_max_tokens_shortens_the_answer():
    mock = MockLLM(answer_tokens=30)
    async with client(mock) as c:
        reply = (await c.post(CHAT, json=body(max_tokens=5))).json()
    assert len(reply["choices"][0]["message"]["content"].split()) == 5
    assert reply["choices"][0]["finish_reason"] == "length"


@pytest.mark.asyncio
async def test_stream_chunks_usage_and_done():
    mock = MockLLM(answer_tokens=10)
    payload = body(stream=True, stream_options={"include_usage": True})
    async with client(mock) as c:
        response = await c.post(CHAT, json=payload)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(deltas) == mock_answer("gpt-4o", payload["messages"], 10)
    assert len([d for d in deltas if d]) == 10
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert mock.stats()["streams"] == 1


@pytest.mark.asyncio
async def test_error_rate_is_spread_evenly_and_counted():
    mock = MockLLM()
    mock.set_faults(error_rate=0.5, status=503)
    async with client(mock) as c:
        responses = [await c.post(CHAT, json=body()) for _ in range(10)]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 503] * 5
    assert responses[1].json()["error"]["type"] == "server_error"
    assert mock.stats()["by_status"] == {"200": 5, "503": 5}


@pytest.mark.asyncio
async def test_429_carries_retry_after_and_fail_all_then_recover():
    mock = MockLLM()
    mock.set_faults(fail_all=True, status=429)
    async with client(mock) as c:
        limited = await c.post(CHAT, json=body())
        mock.clear_faults()
        recovered = await c.post(CHAT, json=body())
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert recovered.status_code == 200


@pytest.mark.asyncio
async def test_timeout_fault_hangs_then_answers_504():
    mock = MockLLM()
    mock.set_faults(timeout_rate=1.0, hang=0.05)
    async with client(mock) as c:
        response = await c.post(CHAT, json=body())
    assert response.status_code == 504
    assert mock.stats()["timeouts"] == 1


@pytest.mark.asyncio
async def test_break_cuts_a_stream_without_done():
    mock = MockLLM(answer_tokens=10)
    mock.set_faults(break_rate=1.0)
    async with client(mock) as c:
        response = await c.post(CHAT, json=body(stream=True))
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)
    assert len(events) == 5
    assert mock.stats()["breaks"] == 1


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ("not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "'model'"),
        ({"model": "gpt-4o", "messages": []}, "'messages'"),
        ({"model": "gpt-4o", "messages": ["hi"]}, "messages[0]"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "'stream'",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, "messages"),
    ],
)
@pytest.mark.asyncio
async def test_bad_requests_get_400_with_the_reason(payload, fragment):
    mock = MockLLM()
    content = payload if isinstance(payload, str) else json.dumps(payload)
    async with client(mock) as c:
        response = await c.post(CHAT, content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


@pytest.mark.asyncio
async def test_admin_endpoints_and_unknown_routes():
    mock = MockLLM()
    async with client(mock) as c:
        faults = await c.post("/mock/faults", json={"error_rate": 1.0, "status": 502})
        assert faults.json()["status"] == 502
        assert (await c.post(CHAT, json=body())).status_code == 502
        bad = await c.post("/mock/faults", json={"eror_rate": 1.0})
        assert bad.status_code == 400 and "eror_rate" in bad.json()["error"]["message"]
        assert mock.stats()["faults"]["status"] == 502  # unchanged by the bad request
        await c.post("/mock/faults", json={})
        await c.post("/mock/config", json={"answer_tokens": 3})
        reply = (await c.post(CHAT, json=body())).json()
        assert len(reply["choices"][0]["message"]["content"].split()) == 3
        assert (await c.get("/v1/models")).json()["object"] == "list"
        assert (await c.get("/nope")).status_code == 404
        await c.post("/mock/reset")
        assert (await c.get("/mock/stats")).json()["requests"] == 0


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"status": 200}, "status"),
        ({"hang": -1}, "hang"),
        ({"break_rate": "half"}, "break_rate"),
    ],
)
def test_bad_fault_settings_raise_and_keep_the_old_ones(kwargs, fragment):
    mock = MockLLM()
    mock.set_faults(error_rate=0.25)
    with pytest.raises(ValueError, match=fragment):
        mock.set_faults(**kwargs)
    assert mock.stats()["faults"]["error_rate"] == 0.25


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"ttft": -1}, "ttft"), ({"answer_tokens": 0}, "answer_tokens"), ({"port": 70000}, "port")],
)
def test_bad_configuration_raises(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        MockLLM(**kwargs)


def test_served_in_a_thread_on_a_free_port():
    with MockLLM(ttft=0.001) as mock:
        assert mock.base_url == f"http://127.0.0.1:{mock.port}/v1"
        reply = httpx.post(mock.base_url + "/chat/completions", json=body(), timeout=10)
        assert reply.status_code == 200
        with pytest.raises(RuntimeError, match="already running"):
            mock.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = mock.url


@pytest.mark.asyncio
async def test_async_context_manager_serves():
    async with MockLLM() as mock, httpx.AsyncClient(timeout=10) as c:
        reply = await c.post(mock.base_url + "/chat/completions", json=body(stream=True))
        assert sse_events(reply.text)[-1] == "[DONE]"


def test_subprocess_mock_is_driven_over_http_and_stops():
    with spawn_mock(answer_tokens=4) as proc:
        reply = httpx.post(proc.base_url + "/chat/completions", json=body(), timeout=10)
        assert reply.json()["choices"][0]["message"]["content"] == mock_answer(
            "gpt-4o", body()["messages"], 4
        )
        proc.set_faults(fail_all=True, status=500)
        assert (
            httpx.post(proc.base_url + "/chat/completions", json=body(), timeout=10).status_code
            == 500
        )
        with pytest.raises(ValueError, match="unknown fault"):
            proc.set_faults(nonsense=1)
        proc.clear_faults()
        assert proc.stats()["by_status"] == {"200": 1, "500": 1}
        proc.reset_stats()
        assert proc.stats()["requests"] == 0
    assert proc.process.poll() is not None


def test_command_line_rejects_bad_settings():
    result = subprocess.run(
        [sys.executable, "-m", "llmedge.testing", "--port", "0", "--error-rate", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error_rate" in result.stderr


@pytest.mark.asyncio
async def test_finish_reason_can_be_forced_and_streams_are_counted_while_open():
    mock = MockLLM(answer_tokens=8)
    mock.configure(finish_reason="content_filter")
    async with client(mock) as c:
        r = await c.post(CHAT, json=body())
        assert r.json()["choices"][0]["finish_reason"] == "content_filter"
        r = await c.post(CHAT, json=body(stream=True))
        finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in sse_events(r.text)[:-1]]
        assert finishes[-1] == "content_filter"
    stats = mock.stats()
    assert stats["open_streams"] == 0 and stats["disconnects"] == 0
    with pytest.raises(ValueError, match=r"finish_reason must be one of .*'content_filter'"):
        mock.configure(finish_reason="tool_calls")


@pytest.mark.asyncio
async def test_tools_get_a_tool_call_unless_the_last_message_is_a_tool_result():
    schema = {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "number"}}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": schema}}
    mock = MockLLM()
    async with client(mock) as c:
        r = await c.post(CHAT, json=body("Find it", tools=[tool]))
        message = r.json()["choices"][0]["message"]
        (call,) = message["tool_calls"]
        assert json.loads(call["function"]["arguments"]) == {"q": "Find it", "n": 1.0}
        assert r.json()["usage"]["completion_tokens"] > 0
        result = {"role": "tool", "tool_call_id": call["id"], "content": "42"}
        follow = body("Find it", tools=[tool])
        follow["messages"] += [message, result]
        r = await c.post(CHAT, json=follow)
        assert r.json()["choices"][0]["finish_reason"] == "stop"
        bad = {"type": "function", "function": {"name": "other"}}
        r = await c.post(CHAT, json=body(tools=[tool], tool_choice=bad))
        assert r.status_code == 400 and "'other'" in r.json()["error"]["message"]
    assert mock.stats()["tool_calls"] == 1
