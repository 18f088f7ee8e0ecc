"""The pytest plugin: installed by the package's entry point, only fixtures, and
the example test of docs/testing.md passes in a fresh pytest run."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from docs_text import docs_text

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def test_the_entry_point_names_the_plugin_module():
    (entry,) = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "llmedge"]
    assert entry.value == "llmedge.testing.pytest_plugin"


def test_the_plugin_is_loaded_and_defines_only_fixtures(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("llmedge")
    assert plugin is not None
    hooks = [name for name in vars(plugin) if name.startswith("pytest_")]
    assert hooks == []


def test_the_docs_example_passes_in_a_fresh_run(pytester):
    section = docs_text().split("## The pytest plugin", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    pytester.makepyfile(test_example=block)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_bad_indirect_settings_are_named(pytester):
    pytester.makepyfile(
        test_bad="""
import pytest

@pytest.mark.parametrize("mock_llm", [{"latency": 1}], indirect=True)
def test_unknown(mock_llm):
    pass

@pytest.mark.parametrize("llmedge_gateway", [{"cache_threshold": 0.9, "subprocess": True}],
                         indirect=True)
def test_settings_in_a_subprocess(llmedge_gateway):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "unknown mock_llm setting(s) ['latency']" in out
    assert "settings ['cache_threshold'] apply in this process only" in out


def test_the_clock_fixture_drives_a_limiter(llmedge_clock):
    import llmedge

    limiter = llmedge.RateLimiter(1, 10.0, burst=1, clock=llmedge_clock)
    assert limiter.try_acquire("k") and not limiter.try_acquire("k")
    llmedge_clock.advance(10.0)
    assert limiter.try_acquire("k")
    with pytest.raises(ValueError, match="only moves forward"):
        llmedge_clock.advance(-1)
