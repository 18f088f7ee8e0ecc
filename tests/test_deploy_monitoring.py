"""The shipped alert rules (deploy/prometheus/alerts.yml) and Grafana dashboard
(deploy/grafana/llmedge.json) only name metrics, and labels of those metrics,
that the gateway's /metrics really exports: the gateway (llmedge.gateway),
with two mock upstreams and its limits and breakers on a real redis-server,
is driven through answers, a 429, a guard rejection and a breaker
transition, and its /metrics is read over HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import pytest_asyncio

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
yaml = pytest.importorskip("yaml")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from llmedge.gateway import Settings, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "llmedge.json"

# labels Prometheus adds at scrape time, and the histogram's bucket bound
SCRAPE_LABELS = {"job", "instance"}
METRIC = re.compile(r"\bllmedge_[A-Za-z0-9_]+")
SELECTOR = re.compile(r"\b(llmedge_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
QUESTION = "How many milligrams of ibuprofen can an adult safely take in one day at 70 kg?"
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} [{target['refId']}]"] = target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out[f"variable {var['name']}"] = var["definition"]
    return out


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in `expr` the service does not export: metric names, label
    matchers on a metric, and grouping labels no metric of `expr` carries."""
    names = set(METRIC.findall(expr))
    found = [f"no llmedge metric in {expr!r}"] if not names else []
    found += [f"{n} is not exported" for n in sorted(names - exported.keys())]
    for name, body in SELECTOR.findall(expr):
        for label in MATCHER.findall(body):
            if name in exported and label not in exported[name] | SCRAPE_LABELS:
                found.append(f"{name} has no label {label!r} (it has {sorted(exported[name])})")
    carried = set().union(*(exported.get(n, set()) for n in names)) | SCRAPE_LABELS
    for group in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if label not in carried:
                found.append(f"grouping label {label!r} is on none of {sorted(names)}")
    return found


@pytest_asyncio.fixture
async def exported(upstreams, redis_server) -> dict[str, set[str]]:
    """Sample name -> label names, read from a live /metrics of the gateway."""
    settings = Settings(
        upstreams=[m.base_url for m in upstreams],
        rate_limit=(1.0, 60.0, 1),  # one request per key and minute: the second gets 429
        redis_url=redis_server.url,
        redis_timeout=0.5,
    )
    app = create_app(settings)
    router = app.state.service.router

    def key(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {name}"}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            ask = {"question": QUESTION}
            assert (await c.post("/chat", json=ask, headers=key("a"))).status_code == 200
            assert (await c.post("/chat", json=ask, headers=key("a"))).status_code == 429
            # a near-duplicate that differs in its number: the guard's rejection
            ask = {"question": QUESTION.replace("70", "80")}
            assert (await c.post("/chat", json=ask, headers=key("b"))).status_code == 200
            breaker = router.breakers[-1]
            breaker.force_open()  # a transition the monitor counts
            try:
                text = (await c.get("/metrics")).text
            finally:
                breaker.reset()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            if sample.name == "llmedge_cache_guard_rejections_total":
                assert sample.labels["reason"] == "numbers" and sample.value == 1
    return labels


def test_the_check_finds_what_is_not_exported():
    exported = {"llmedge_cache_hits_total": {"cache", "kind"}}
    assert problems('rate(llmedge_cache_hits_total{kind="exact"}[5m])', exported) == []
    assert problems("rate(llmedge_cache_hitz_total[5m])", exported) == [
        "llmedge_cache_hitz_total is not exported"
    ]
    assert problems('llmedge_cache_hits_total{breaker="x"}', exported)[0].startswith(
        "llmedge_cache_hits_total has no label 'breaker'"
    )
    assert problems("sum by (job, upstream) (llmedge_cache_hits_total)", exported) == [
        "grouping label 'upstream' is on none of ['llmedge_cache_hits_total']"
    ]
    assert problems("vector(1)", exported) == ["no llmedge metric in 'vector(1)'"]


@pytest.mark.asyncio
async def test_every_alert_and_dashboard_query_names_exported_metrics(exported):
    # the families these files rely on really were exported by the live service
    for name in (
        "llmedge_breaker_state",
        "llmedge_breaker_transitions_total",
        "llmedge_cache_guard_rejections_total",
        "llmedge_http_request_duration_seconds_bucket",
        "llmedge_rate_limit_rejections_total",
        "llmedge_router_latency_seconds",
        "llmedge_store_fallbacks_total",
        "llmedge_llm_cost_usd_total",
    ):
        assert name in exported, name
    expressions = {**alert_expressions(), **dashboard_expressions()}
    assert len(expressions) > 30
    found = {where: p for where, expr in expressions.items() if (p := problems(expr, exported))}
    assert found == {}


def test_every_alert_has_a_severity_and_a_summary():
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
