"""pytest fixtures for code built on llmedge, registered by the ``pytest11`` entry
point ``llmedge`` when the package is installed. The plugin only defines
fixtures: a test suite that asks for none of them runs exactly as without it.

* ``mock_llm``: the OpenAI-compatible mock upstream (:class:`MockLLM`, served
  on a loopback port once per session), with its faults, latency and statistics
  reset for each test. Per-test settings through indirect parametrisation::

      @pytest.mark.parametrize("mock_llm", [{"ttft": 0.05, "error_rate": 0.5}],
                               indirect=True)

  (``ttft``, ``tpot``, ``answer_tokens``, ``seed`` and the arguments of
  ``MockLLM.set_faults``), or ``mock_llm.set_faults(...)`` in the test.
* ``llmedge_gateway``: a :class:`GatewayServer` in front of ``mock_llm``,
  started for the test and stopped after it; parametrise it indirectly with
  gateway settings (``{"cache_threshold": 0.9}``) or
  ``{"subprocess": True, "env": {...}}`` to run ``llmedge serve`` instead.
* ``llmedge_clock``: a :class:`FakeClock` (at 1000.0) for the ``clock=`` of
  breakers, limiters and caches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

_MOCK_CONFIG = {"ttft": 0.0, "tpot": 0.0, "answer_tokens": 24, "seed": 0}
_MOCK_FAULTS = ("error_rate", "status", "timeout_rate", "hang", "break_rate", "fail_all",
                "retry_after")  # fmt: skip


def _param(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    value = getattr(request, "param", None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(
            f"the indirect parameter of {name} must be a dict of settings, got {value!r}"
        )
    return dict(value)


@pytest.fixture(scope="session")
def _llmedge_mock_server() -> Iterator[Any]:
    from llmedge.testing import MockLLM

    with MockLLM(**_MOCK_CONFIG) as mock:
        yield mock


@pytest.fixture
def mock_llm(request: pytest.FixtureRequest, _llmedge_mock_server: Any) -> Iterator[Any]:
    """The mock LLM, reset for this test and set up by its indirect parameter."""
    mock = _llmedge_mock_server
    settings = _param(request, "mock_llm")
    unknown = sorted(set(settings) - set(_MOCK_CONFIG) - set(_MOCK_FAULTS))
    if unknown:
        raise ValueError(
            f"unknown mock_llm setting(s) {unknown}; accepted: "
            f"{sorted([*_MOCK_CONFIG, *_MOCK_FAULTS])}"
        )
    mock.configure(**{**_MOCK_CONFIG, **{k: settings[k] for k in _MOCK_CONFIG if k in settings}})
    mock.set_faults(**{k: settings[k] for k in _MOCK_FAULTS if k in settings})
    mock.reset_stats()
    try:
        yield mock
    finally:
        mock.clear_faults()
        mock.configure(**_MOCK_CONFIG)
        mock.reset_stats()


@pytest.fixture
def llmedge_gateway(request: pytest.FixtureRequest, mock_llm: Any) -> Iterator[Any]:
    """The gateway in front of ``mock_llm`` for this test (stopped after it)."""
    from llmedge.testing import GatewayServer

    with GatewayServer([mock_llm.base_url], **_param(request, "llmedge_gateway")) as gateway:
        yield gateway


@pytest.fixture
def llmedge_clock() -> Any:
    """A fake clock at 1000.0 that moves only when the test calls ``advance``."""
    from llmedge.testing import FakeClock

    return FakeClock(1000.0)
