"""OpenAIEmbedder end to end against the mock LLM's /v1/embeddings (the pytest
plugin's ``mock_llm``): shapes, batches, bad inputs, errors, timeouts, the
breaker, and use as a SemanticCache embedder."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import llmedge  # noqa: E402
from llmedge.embedders import OpenAIEmbedder  # noqa: E402
from llmedge.testing import mock_embeddings  # noqa: E402

MODEL = "text-embedding-3-small"


def embedder(mock, **kw):
    return OpenAIEmbedder(mock.base_url, MODEL, **kw)


def test_vectors_are_the_mocks_in_input_order(mock_llm):
    texts = [
        "How do I reset my password?",
        "What is a context window?",
        "How do I reset my password?",
    ]
    with embedder(mock_llm, dimensions=64) as e:
        out = e(texts)
        assert e.dim == 64
    assert out == mock_embeddings(texts, 64)
    assert out[0] == out[2] and out[0] != out[1]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in out)
    assert mock_llm.stats()["embedding_requests"] == 1


def test_dim_is_measured_once_without_dimensions(mock_llm):
    e = embedder(mock_llm)
    assert "dim=unknown" in repr(e)
    assert e.dim == 384 and e.dim == 384
    assert mock_llm.stats()["embedding_requests"] == 1
    assert e.identity == f"openai-compatible/{MODEL}@{mock_llm.base_url}/dim=384"
    e.close()


@pytest.mark.parametrize("n, batch, requests", [(10, 3, 4), (9, 3, 3), (1, 5, 1), (0, 2, 0)])
def test_batches_split_the_texts(mock_llm, n, batch, requests):
    texts = [f"question number {i}" for i in range(n)]
    with embedder(mock_llm, batch_size=batch, dimensions=16) as e:
        assert e(texts) == mock_embeddings(texts, 16) if texts else e(texts) == []
    stats = mock_llm.stats()
    assert stats["embedding_requests"] == requests
    assert stats["embedding_inputs"] == n


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"base_url": "localhost:8000"}, ValueError, "base_url must be an http"),
        ({"model": ""}, ValueError, "model must be a non-empty str"),
        ({"dimensions": 0}, ValueError, "dimensions must be a positive int"),
        ({"timeout": 0}, ValueError, "timeout must be a finite number"),
        ({"timeout": math.inf}, ValueError, "timeout must be a finite number"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"breaker": "yes"}, TypeError, "breaker must be an llmedge.CircuitBreaker"),
        ({"api_key": ""}, ValueError, "api_key must be a non-empty str"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, error, match):
    args = {"base_url": "http://127.0.0.1:1/v1", "model": MODEL, **kwargs}
    with pytest.raises(error, match=match):
        OpenAIEmbedder(args.pop("base_url"), args.pop("model"), **args)


def test_bad_inputs_are_rejected_before_any_request(mock_llm):
    with embedder(mock_llm, dimensions=8) as e:
        with pytest.raises(TypeError, match="a single str"):
            e("one text")
        with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
            e(["a", 2])
        with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
            e(["", "b"])
    assert mock_llm.stats()["embedding_requests"] == 0


def test_a_rejected_request_is_the_callers_error_and_not_a_breaker_failure(mock_llm):
    # the mock, like OpenAI, rejects a dimension it cannot serve
    e = embedder(mock_llm, dimensions=10_000)
    for _ in range(8):
        with pytest.raises(llmedge.UpstreamClientError, match="dimensions") as info:
            e(["a text"])
        assert info.value.status == 400
    assert e.breaker is not None and e.breaker.state == "closed"
    e.close()


def test_failures_open_the_breaker_and_it_recovers(mock_llm, llmedge_clock):
    breaker = llmedge.CircuitBreaker(
        "test-embeddings", failure_threshold=3, recovery_timeout=10.0, success_threshold=1,
        clock=llmedge_clock,
    )  # fmt: skip
    e = embedder(mock_llm, dimensions=8, breaker=breaker)
    mock_llm.set_faults(fail_all=True, status=503, retry_after=7)
    for _ in range(3):
        with pytest.raises(llmedge.UpstreamError, match="HTTP 503") as info:
            e(["a"])
        assert info.value.status == 503 and info.value.retry_after == 7.0
    assert breaker.state == "open"
    with pytest.raises(llmedge.CircuitOpenError):
        e(["a"])
    assert mock_llm.stats()["embedding_requests"] == 3  # the open breaker sent nothing
    mock_llm.clear_faults()
    llmedge_clock.advance(10.0)
    assert e(["a"]) == mock_embeddings(["a"], 8)
    assert breaker.state == "closed"
    e.close()


def test_a_hanging_endpoint_times_out_as_an_upstream_error(mock_llm):
    mock_llm.set_faults(timeout_rate=1.0, hang=5.0)
    with embedder(mock_llm, dimensions=8, timeout=0.2, breaker=False) as e:
        with pytest.raises(llmedge.UpstreamError, match="no answer within 0.2 s") as info:
            e(["a"])
    assert info.value.timeout is True


def test_a_closed_port_is_an_upstream_error():
    with socket_free_port() as port:
        pass
    with OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", MODEL, dimensions=8) as e:
        with pytest.raises(llmedge.UpstreamError, match="ConnectError"):
            e(["a"])


def socket_free_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            yield s.getsockname()[1]

    return bound()


@pytest.mark.parametrize(
    "body, match",
    [
        ({"data": []}, "expected 'data' with 1 embeddings, got 0"),
        ({"data": [{"index": 3, "embedding": [1.0]}]}, "index is 3"),
        ({"data": [{"index": 0, "embedding": "x"}]}, "not a list of floats"),
        ({"data": [{"index": 0, "embedding": [1.0] * 7 + ["a"]}]}, "not a number"),
        ({"data": [{"index": 0, "embedding": [1.0, 2.0]}]}, "has 2 floats, expected 8"),
        ([1, 2], "expected 'data'"),
    ],
)
def test_malformed_answers_are_upstream_errors(body, match):
    def handler(request):
        return httpx.Response(200, json=body)

    e = OpenAIEmbedder("http://embeddings.test/v1", MODEL, dimensions=8, breaker=False)
    e._client = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(llmedge.UpstreamError, match=match):
        e(["a"])
    e.close()


def test_api_key_is_sent_as_a_bearer_token():
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 0.0]}]})

    e = OpenAIEmbedder("http://embeddings.test/v1", MODEL, api_key="sk-test", breaker=False)
    e._client = httpx.Client(transport=httpx.MockTransport(handler), headers=e._client.headers)
    assert e(["a"]) == [[1.0, 0.0]]
    assert seen == ["Bearer sk-test"]
    e.close()


def test_aembed_runs_off_the_event_loop(mock_llm):
    async def main():
        with embedder(mock_llm, dimensions=8, batch_size=2) as e:
            results = await asyncio.gather(*(e.aembed([f"q{i}", f"r{i}"]) for i in range(6)))
        return results

    results = asyncio.run(main())
    for i, vectors in enumerate(results):
        assert vectors == mock_embeddings([f"q{i}", f"r{i}"], 8)
    assert mock_llm.stats()["embedding_requests"] == 6


def test_as_a_semantic_cache_embedder(mock_llm):
    e = embedder(mock_llm, dimensions=128)
    cache = llmedge.SemanticCache(embedder=e, threshold=0.9)
    assert cache.dim == 128 and cache.embedder_identity == e.identity
    cache.set("What is the capital of France?", "Paris")
    hit = cache.get("What is the capital of France?")
    assert hit is not None and hit.response == "Paris" and hit.kind == "exact"
    assert cache.get("How do I bake bread?") is None

    async def lookups():
        return await asyncio.gather(
            *(cache.aget("What is the capital of France?") for _ in range(5))
        )

    assert [h.response for h in asyncio.run(lookups())] == ["Paris"] * 5
    e.close()


def test_mock_embeddings_reject_bad_bodies(mock_llm):
    url = mock_llm.base_url + "/embeddings"
    cases = [
        ({"input": ["a"]}, "'model' must be a non-empty string"),
        ({"model": MODEL, "input": []}, "'input' must be a string or a non-empty array"),
        ({"model": MODEL, "input": [1]}, r"input\[0\] must be a non-empty string"),
        ({"model": MODEL, "input": "a", "encoding_format": "base64"}, "encoding_format"),
        ({"model": MODEL, "input": ["a"] * 2049}, "at most 2048"),
    ]
    for body, match in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == 400
        assert re.search(match, r.json()["error"]["message"])
    one = httpx.post(url, json={"model": MODEL, "input": "a"}).json()
    assert one["object"] == "list" and one["data"][0]["object"] == "embedding"
    assert one["usage"]["prompt_tokens"] == one["usage"]["total_tokens"] >= 1


def test_the_docs_example_runs(capsys):
    from docs_text import docs_text

    text = docs_text()
    start = text.index("## Guard and embedders")
    section = text[start : text.index("\n## ", start + 1)]
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "OpenAIEmbedder(" in b
    )
    exec(block, {})
    assert capsys.readouterr().out.split() == ["exact", "closed", "1"]
