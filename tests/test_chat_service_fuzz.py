"""The reference service never answers an arbitrary body with a 500 (hypothesis)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from test_chat_service import BACKENDS, chat_app  # noqa: E402

# ---------------------------------------------------------------------------
# Arbitrary bodies never give a 500
# ---------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "wizard", 3])
_message = st.fixed_dictionaries(
    {"role": _roles, "content": _json | st.text(max_size=30)},
    optional={"name": _json, "tool_calls": _json, "tool_call_id": _json},
)
_models = st.sampled_from(["gpt-4o-mini", "gpt-4o", "gpt4o", "", "o3"]) | _json
_chat_body = st.fixed_dictionaries(
    {},
    optional={
        "question": st.text(max_size=30) | _json,
        "history": st.lists(_message, max_size=4) | _json,
        "stream": st.booleans() | _json,
        "model": _models,
        "temperature": _json,
        "max_tokens": st.integers(-5, 10**9) | _json,
    },
)
_completion_body = st.fixed_dictionaries(
    {},
    optional={
        "model": _models,
        "messages": st.lists(_message, max_size=4) | _json,
        "stream": st.booleans() | _json,
        "stream_options": _json,
        "max_tokens": st.integers(-5, 10**9) | _json,
        "n": _json,
        "tools": _json,
    },
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    request_=st.one_of(
        st.tuples(st.just("/chat"), _chat_body | _json),
        st.tuples(st.just("/v1/chat/completions"), _completion_body | _json),
    )
)
def test_arbitrary_bodies_never_get_a_500(upstreams, backend, request_):
    path, payload = request_
    settings_ = chat_app.Settings(
        upstreams=[upstreams[0].base_url], backend=backend, rate_limit=None, sse_max_delay=None
    )
    app = chat_app.create_app(settings_)

    async def run() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
                return await c.post(path, json=payload)

    r = asyncio.run(run())
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert "error" in r.json()
