"""The load-test machinery: request mix, summaries, health monitor, process control,
report writing (loadtest/run.py), and one short real end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import FakeClock
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtest"))

import traffic as tr  # noqa: E402

from llmedge import _workload  # noqa: E402


def _load_runner():
    spec = importlib.util.spec_from_file_location("loadtest_run", ROOT / "loadtest" / "run.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


run_mod = _load_runner()


# ------------------------------------------------------------------ request mix


def test_mix_proportions_follow_the_weights():
    corpus = tr.builtin_corpus()
    mix = {"new": 0.5, "exact": 0.3, "paraphrase": 0.2}
    reqs = tr.generate_requests(corpus, 20_000, mix=mix, stream_fraction=0.25, seed=7)
    counts = tr.mix_counts(reqs)
    assert sum(counts.values()) == 20_000
    for kind, w in mix.items():
        assert abs(counts[kind] / 20_000 - w) < 0.02, (kind, counts)
    streamed = sum(r.stream for r in reqs) / len(reqs)
    assert abs(streamed - 0.25) < 0.02


def test_mix_is_deterministic_for_a_seed():
    corpus = tr.builtin_corpus()
    a = tr.generate_requests(corpus, 500, seed=3)
    b = tr.generate_requests(corpus, 500, seed=3)
    c = tr.generate_requests(corpus, 500, seed=4)
    assert a == b
    assert a != c


def test_repeats_and_paraphrases_refer_to_questions_asked_before():
    corpus = tr.builtin_corpus()
    second_of = {b: a for a, b in corpus.pairs}
    asked: set[str] = set()
    reqs = tr.generate_requests(corpus, 3_000, seed=11)
    assert reqs[0].kind == "new"  # nothing to repeat yet
    for r in reqs:
        if r.kind == "exact":
            assert r.question in asked
        elif r.kind == "paraphrase":
            assert second_of[r.question] in asked
            assert r.question != second_of[r.question]
        else:
            assert r.kind == "new"
        asked.add(r.question)


def test_new_questions_are_unique_until_the_corpus_runs_out():
    corpus = tr.builtin_corpus()
    distinct = len(set(corpus.questions) | {a for a, _ in corpus.pairs})
    reqs = tr.generate_requests(corpus, 2_000, mix={"new": 1.0}, seed=1)
    first = [r.question for r in reqs[:distinct]]
    assert len(set(first)) == distinct
    assert all(r.kind == "new" for r in reqs)


def test_parse_mix_normalises_and_rejects_bad_entries():
    assert tr.parse_mix("new=3,exact=1") == {"new": 0.75, "exact": 0.25, "paraphrase": 0.0}
    with pytest.raises(ValueError, match="'repeat=1'"):
        tr.parse_mix("new=1,repeat=1")
    with pytest.raises(ValueError, match="'lots'"):
        tr.parse_mix("new=lots")
    with pytest.raises(ValueError, match="'new'"):
        tr.parse_mix("exact=1,paraphrase=1")
    with pytest.raises(ValueError, match="-1"):
        tr.normalise_mix({"new": 1, "exact": -1})
    with pytest.raises(ValueError, match="stream_fraction"):
        tr.generate_requests(tr.builtin_corpus(), 10, stream_fraction=1.5)
    with pytest.raises(ValueError, match="-1"):
        tr.generate_requests(tr.builtin_corpus(), -1)


def test_load_corpus_reads_prompts_and_positive_pairs(tmp_path):
    (tmp_path / "prompts.csv").write_text(
        'act,prompt,for_devs,type,contributor\nA,"Line one\nline two",FALSE,TEXT,x\n'
        "B,short,FALSE,TEXT,y\nC," + "z" * 50 + ",FALSE,TEXT,z\n",
        encoding="utf-8",
    )
    (tmp_path / "mqp.csv").write_text(
        "1,Is it safe?,Is it dangerous?,0\n1,How much water?,What amount of water?,1\n",
        encoding="utf-8",
    )
    corpus = tr.load_corpus(tmp_path, max_chars=20)
    assert corpus.questions == ("Line one\nline two", "short")
    assert corpus.pairs == (("How much water?", "What amount of water?"),)
    assert "mqp.csv" in corpus.source


def test_load_corpus_falls_back_to_the_builtin_set(tmp_path):
    corpus = tr.load_corpus(tmp_path)
    assert corpus == tr.builtin_corpus()
    assert corpus.source == "built-in prompt set"
    with pytest.raises(ValueError, match="max_chars"):
        tr.load_corpus(tmp_path, max_chars=0)


def test_the_packages_load_corpus_reads_only_a_directory_it_is_given(tmp_path):
    assert _workload.load_corpus(None) == tr.builtin_corpus()
    with pytest.raises(FileNotFoundError, match=r"lacks prompts\.csv and mqp\.csv"):
        _workload.load_corpus(tmp_path)
    (tmp_path / "prompts.csv").write_text("prompt\n" + "x" * 50 + "\n", encoding="utf-8")
    (tmp_path / "mqp.csv").write_text("1,a,b,0\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="no usable rows"):
        _workload.load_corpus(tmp_path, max_chars=10)


# ------------------------------------------------------------------ summaries


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_is_within_range_and_monotone(values, q):
    p = tr.percentile(values, q)
    assert min(values) <= p <= max(values)
    assert tr.percentile(values, min(100.0, q + 1)) >= p


def test_percentile_exact_values():
    assert tr.percentile([], 50) is None
    assert tr.percentile([5.0], 99) == 5.0
    assert tr.percentile([1, 2, 3, 4], 50) == 2.5
    assert tr.percentile(list(range(101)), 95) == 95
    with pytest.raises(ValueError, match="101"):
        tr.percentile([1.0], 101)


def _rec(t, status=200, latency=100.0, kind="new", stream=False, cached="none", **kw):
    return tr.Record(t=t, user="chat", kind=kind, stream=stream, status=status,
                     latency_ms=latency, cached=cached, **kw)  # fmt: skip


def test_summarize_counts_hits_errors_and_ttft():
    records = [
        _rec(0.0, latency=100, kind="new", cached="none"),
        _rec(0.5, latency=10, kind="exact", cached="exact"),
        _rec(1.0, latency=20, kind="paraphrase", cached="semantic", stream=True, ttft_ms=5.0),
        _rec(1.5, latency=200, kind="paraphrase", cached="none", stream=True, ttft_ms=50.0),
        _rec(2.0, status=502, latency=3, cached=None),
        _rec(2.5, status=200, latency=30, stream=True, error="stream ended without [DONE]"),
    ]
    s = tr.summarize(records, duration_s=3.0)
    assert s["requests"] == 6 and s["ok"] == 4
    assert s["rps"] == 2.0
    assert s["cache"]["exact"] == 1 and s["cache"]["semantic"] == 1 and s["cache"]["miss"] == 2
    assert s["cache"]["hit_rate"] == 0.5
    assert s["cache"]["by_request_kind"]["paraphrase"] == {
        "requests": 2, "exact_hits": 0, "semantic_hits": 1, "hit_rate": 0.5,
    }  # fmt: skip
    assert s["ttft_ms"]["streams"] == 2 and s["ttft_ms"]["p50"] == 27.5
    assert s["latency_ms"]["max"] == 200
    assert s["errors"] == {"HTTP 502": 1, "stream ended without [DONE]": 1}
    assert s["status"] == {"200": 5, "502": 1}
    assert s["error_rate"] == round(2 / 6, 4)


def test_records_round_trip_through_json_lines(tmp_path):
    recs = [_rec(1.0, extra={"key": "chat-1"}), _rec(2.0, status=429, retry_after=1.0)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in recs))
    assert tr.read_records(path) == recs


def test_sse_content_reads_both_stream_formats():
    assert tr.sse_content({"content": "Hi"}) == ("Hi", None)
    assert tr.sse_content({"done": True, "cached": "exact"}) == ("", "exact")
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hey"}}]}
    assert tr.sse_content(chunk) == ("Hey", None)
    assert tr.sse_content([1, 2]) == ("", None)


# ------------------------------------------------------------------ health monitor


def test_health_monitor_reports_transitions_per_worker():
    clock = FakeClock(100.0)
    mon = tr.HealthMonitor("http://127.0.0.1:9", clock=clock)

    def sample(pid, primary):
        mon.add({"pid": pid, "status": "x", "breakers": {"p": {"state": primary},
                                                        "f": {"state": "closed"}}})  # fmt: skip
        clock.advance(1.0)

    sample(1, "closed")
    sample(2, "closed")
    sample(1, "open")
    sample(2, "closed")  # the other worker's view does not flip worker 1's
    sample(1, "half_open")
    sample(1, "closed")
    trans = mon.transitions()
    assert [(t["worker"], t["from"], t["to"]) for t in trans] == [
        ("1", "closed", "open"), ("1", "open", "half_open"), ("1", "half_open", "closed"),
    ]  # fmt: skip
    assert trans[0]["t"] == 102.0
    assert mon.states_seen(101.0, 104.0) == {"p": ["closed", "open"], "f": ["closed"]}
    assert mon.last_states() == {"1": {"p": "closed", "f": "closed"},
                                 "2": {"p": "closed", "f": "closed"}}  # fmt: skip
    with pytest.raises(ValueError, match="interval"):
        tr.HealthMonitor("http://x", interval=0)


def test_breaker_states_reads_lists_and_mappings():
    assert tr.breaker_states({"breakers": [{"name": "a", "state": "open"}]}) == {"a": "open"}
    assert tr.breaker_states({"breakers": {"b": "closed"}}) == {"b": "closed"}
    assert tr.breaker_states({}) == {}
    assert tr.worker_id({"process": {"pid": 9}}) == "9"
    assert tr.worker_id({}) == "service"


# ------------------------------------------------------------------ processes


def test_managed_process_stops_its_whole_group(tmp_path):
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "time.sleep(120)\n"
    )
    proc = tr.ManagedProcess("sleeper", [sys.executable, "-c", script],
                             log_path=tmp_path / "log")  # fmt: skip
    for _ in range(200):
        if len(proc.pids()) == 2:
            break
        import time

        time.sleep(0.05)
    assert len(proc.pids()) == 2
    proc.stop(timeout=5)
    assert proc.pids() == []
    assert not proc.alive()
    proc.stop()  # idempotent


def test_start_service_rejects_bad_choices(tmp_path):
    with pytest.raises(ValueError, match="'fast'"):
        tr.start_service(upstreams=["http://x/v1"], backend="fast")
    with pytest.raises(ValueError, match="'hypercorn'"):
        tr.start_service(upstreams=["http://x/v1"], server="hypercorn")


# ------------------------------------------------------------------ the runner's report


def _fake_run(backend, scenario, rps, p99):
    recs = [_rec(i * 0.1, latency=50 + i, stream=bool(i % 2), ttft_ms=10.0 + i) for i in range(20)]
    s = tr.summarize(recs)
    s["rps"] = rps
    s["latency_ms"]["p99"] = p99
    out = {"backend": backend, "scenario": scenario, "overall": s, "breaker_transitions": []}
    if scenario == "failure":
        out["upstream_timeout_s"] = 2.0
        out["phases"] = [
            {"phase": "down", "seconds": 10.0, "summary": s, "at_least_upstream_timeout": 0,
             "primary": {"requests": 3}, "fallback": {"requests": 40},
             "breaker_states": {"p": ["closed", "open"]}},
        ]  # fmt: skip
        out["breaker_transitions"] = [{"t": 3.2, "breaker": "p", "from": "closed", "to": "open"}]
    if scenario == "ratelimit":
        greedy = [_rec(i, status=429, retry_after=1.0) for i in range(4)]
        greedy = [tr.Record(**{**r.__dict__, "user": "greedy"}) for r in greedy]
        checks = [tr.Record(t=9, user="greedy-check", kind="honoured", stream=False,
                            status=200, latency_ms=0.0, retry_after=1.0)]  # fmt: skip
        out["ratelimit"] = run_mod.ratelimit_summary(greedy + checks + recs)
    return out


def test_ratelimit_summary_checks_retry_after():
    rl = _fake_run("llmedge", "ratelimit", 10, 100)["ratelimit"]
    g = rl["greedy"]
    assert g["429"] == 4 and g["retry_after_present"] == 4
    assert g["retry_after_within_bound"] == 4 and g["retry_after_bound_s"] == 1
    assert g["honoured_retries"] == 1 and g["honoured_retries_ok"] == 1


def test_report_writes_json_and_markdown_with_ratios(tmp_path):
    runs = [
        _fake_run(b, s, rps, p99)
        for s in ("sustained", "failure", "ratelimit")
        for b, rps, p99 in (("llmedge", 200.0, 100.0), ("baseline", 100.0, 300.0))
    ]
    ratios = run_mod.compute_ratios(runs)
    assert ratios["sustained"]["req/s"] == "2.00x"
    assert ratios["sustained"]["p99"] == "3.00x"
    report = {
        "command": "python loadtest/run.py", "finished": "now", "machine": "m", "users": 100,
        "mix": {"corpus": "c", "weights": {"new": 1.0}, "stream_fraction": 0.5, "seed": 0},
        "mock": {"ttft": 0.05, "tpot": 0.005, "tokens": 24}, "runs": runs, "ratios": ratios,
    }  # fmt: skip
    jpath, mpath = run_mod.write_report(report, tmp_path / "out")
    assert json.loads(jpath.read_text())["ratios"] == ratios
    md = mpath.read_text()
    assert "| sustained | llmedge | 100 | 200.0 |" in md
    assert "| down | 10 |" in md and "p: closed/open" in md
    assert "Cache hits by request kind (sustained): llmedge: new" in md
    assert "3.2s p closed->open" in md
    assert "4 429s" in md and "1/1 retries succeeded" in md


def test_runner_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="--users"):
        run_mod.main(["--users", "0"])
    with pytest.raises(SystemExit, match="--duration"):
        run_mod.main(["--duration", "1"])
    with pytest.raises(SystemExit, match="'burst=2'"):
        run_mod.main(["--mix", "new=1,burst=2"])


# ------------------------------------------------------------------ end to end


def test_runner_end_to_end_short_run_leaves_no_process(tmp_path):
    out = tmp_path / "results"
    empty = tmp_path / "no-data"
    empty.mkdir()
    rc = run_mod.main(
        ["--scenario", "sustained", "--backend", "llmedge", "--users", "3", "--duration", "5",
         "--wait", "0.1", "0.3", "--out", str(out), "--data", str(empty)]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert "built-in" in report["mix"]["corpus"]
    (run,) = report["runs"]
    assert run["backend"] == "llmedge" and run["scenario"] == "sustained"
    o = run["overall"]
    assert o["requests"] > 0 and o["ok"] == o["requests"], o
    assert o["latency_ms"]["p50"] is not None
    assert run["upstreams"]["primary"]["requests"] > 0
    assert run["health_samples"] > 0
    assert (out / "summary.md").read_text().startswith("# Load test")
    assert len(report["started"]) == 4  # two mocks, the service, locust
    assert tr.still_running(report["started"]) == []
    assert report["left_running"] == []


def test_failure_checks_read_the_phases():
    def phase(name, states, fallback, hung=0, failed=0):
        summary = {"requests": 10, "ok": 10 - failed, "latency_ms": {"max": 900.0}}
        return {"phase": name, "breaker_states": {"primary": states},
                "fallback": {"requests": fallback}, "primary": {"requests": 5},
                "hung_on_upstream": hung, "summary": summary}  # fmt: skip

    run = {
        "phases": [phase("healthy", ["closed"], 0), phase("down", ["closed", "open"], 40, 3),
                   phase("recovered", ["open", "closed"], 5)],
        "breaker_final": {"1": {"primary": "closed"}, "2": {"primary": "closed"}},
    }  # fmt: skip
    c = run_mod.failure_checks(run)
    assert c["breaker_opened"] and c["breaker_closed_after_recovery"]
    assert c["fallback_served_during_failure"] == 40
    assert c["requests_that_waited_on_the_hung_primary"] == 3
    assert c["errors_during_failure"] == 0 and c["primary_served_again"]
    run["breaker_final"]["2"]["primary"] = "open"
    run["phases"][1] = phase("down", ["closed"], 0, failed=4)
    c = run_mod.failure_checks(run)
    assert not c["breaker_opened"] and not c["breaker_closed_after_recovery"]
    assert c["errors_during_failure"] == 4


def test_runner_rate_limit_scenario_end_to_end(tmp_path):
    out = tmp_path / "results"
    rc = run_mod.main(
        ["--scenario", "ratelimit", "--backend", "llmedge", "--duration", "5",
         "--polite-users", "2", "--warmup", "1", "--out", str(out),
         "--data", str(tmp_path / "absent")]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    g = run["ratelimit"]["greedy"]
    assert g["requests"] > g["429"] > 0
    # every 429 carried a whole-second Retry-After within the limit's refill time
    assert g["retry_after_present"] == g["429"]
    assert g["retry_after_within_bound"] == g["429"]
    assert run["ratelimit"]["polite"]["429"] == 0
    assert report["left_running"] == []
