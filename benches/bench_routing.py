"""Selection overhead per request: the decision work a router does around
each upstream call (rank the upstreams, note the call, learn from its
answer), for three upstreams under ``least_latency``.

* llmedge: ``RouteSelector.rank`` + ``begin`` + ``success`` (the Rust core
  the Router calls, through its binding);
* python: the same rules in pure Python (``baselines/routing.py``);
* litellm: ``Router.get_available_deployment`` with
  ``routing_strategy="latency-based-routing"`` over three deployments (its
  selection only; skipped when litellm is not installed).

Timed as loops of LOOP requests; ``correct`` is True when the implementation
put the fastest upstream first after learning (llmedge, python) or picked one
of the deployments (litellm).
"""

from __future__ import annotations

import os
import warnings

import pytest
from baselines.routing import PySelector
from conftest import interleaved, record

from llmedge import _core

LOOP = 1000
LATENCY = [0.30, 0.05, 0.12]  # seconds; upstream 1 is the fastest


def llmedge_loop() -> list[int]:
    sel = _core.RouteSelector([1.0, 1.0, 1.0], strategy="least_latency", seed=1)
    now = 0.0
    order: list[int] = []
    for _ in range(LOOP):
        now += 0.001
        order, _hedge, _ = sel.rank(False, "gpt-4o-mini", now)
        i = order[0]
        call = sel.begin(i, now)
        sel.success(i, call, LATENCY[i], LATENCY[i], 0)
    return order


def python_loop() -> list[int]:
    sel = PySelector(3)
    now = 0.0
    order: list[int] = []
    for _ in range(LOOP):
        now += 0.001
        order, _hedge = sel.rank(now)
        i = order[0]
        call = sel.begin(i, now)
        sel.success(i, call, LATENCY[i], LATENCY[i])
    return order


def import_litellm():
    """litellm, offline (its bundled price table) and with its import-time
    warnings silenced; skips when it is not installed."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("litellm")


def litellm_loop():
    litellm = import_litellm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        router = litellm.Router(
            model_list=[
                {
                    "model_name": "gpt-4o-mini",
                    "litellm_params": {
                        "model": "openai/gpt-4o-mini",
                        "api_base": f"http://127.0.0.1:{9000 + i}/v1",
                        "api_key": "x",
                    },
                }
                for i in range(3)
            ],
            routing_strategy="latency-based-routing",
        )

    def run():
        picked = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(LOOP):
                picked = router.get_available_deployment(model="gpt-4o-mini")
        return picked

    return run


def test_selection_overhead(benchmark, quick):
    baselines = {"python": python_loop}
    try:
        baselines["litellm"] = litellm_loop()
    except pytest.skip.Exception:
        pass

    def check(name, out):
        if name == "python":
            assert out[0] == 1
        else:
            assert out is not None

    order = interleaved(benchmark, llmedge_loop, baselines, rounds=5 if quick else 20, check=check)
    assert order[0] == 1
    record(benchmark, "llmedge", correct=True)
    benchmark.extra_info["per_request_us"] = benchmark.stats.stats.median / LOOP * 1e6
