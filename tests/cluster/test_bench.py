"""The benchmark: percentile math, report layout, a run against a real server, failures shown."""

import asyncio
import json

import pytest

from cluster.bench.main import bench
from cluster.bench.prompts import Prompt
from cluster.bench.report import report
from cluster.bench.stats import PhaseResult, Result, percentile, summarize
from cluster.launch.local import free_port


def test_percentiles_interpolate_like_numpy():
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 95) == pytest.approx(8.8)
    assert percentile(xs, 99) == pytest.approx(9.76)
    assert percentile([], 50) == 0.0
    assert summarize([2.0, 4.0])["avg"] == 3.0


def test_derived_rates():
    r = Result("x", "t", ok=True, prompt_tokens=20, completion_tokens=11, ttft_s=0.5)
    r.total_s, r.decode_s = 1.5, 1.0
    assert r.prefill_tok_s == 40.0 and r.decode_tok_s == 10.0
    assert r.overall_tok_s == pytest.approx(11 / 1.5)
    failed = Result("y", "t", error="boom")
    assert failed.decode_tok_s == 0.0 and failed.prefill_tok_s == 0.0


def test_report_layout_matches_the_seeds_and_shows_failures():
    ok = Result("France capital", "t", ok=True, prompt_tokens=10, completion_tokens=8)
    ok.ttft_s, ok.total_s, ok.decode_s = 0.75, 1.09, 0.3
    bad = Result("TCP vs UDP", "t", error="ConnectError: [Errno 111] Connection refused")
    text = report("http://h", [PhaseResult("sequential", "http://h", 1, 2.0, [ok, bad])], 256)
    assert "## Phase 1: Sequential (concurrency=1)" in text
    assert "| Metric | avg | p50 | p95 | p99 |" in text
    assert "| TTFT (ms) | 750.0 |" in text
    assert "**Aggregate**: 2 requests (1 failed)" in text
    assert "| 1 | FAIL: ConnectError: [Errno 111] Connection refused |" in text
    # an error body of several lines and pipes stays in its cell, and says its cause
    html = Result("x | y", "t", error="HTTP 501: <html>\n<body>" + "x" * 300 + "</body>")
    row = report("h", [PhaseResult("sequential", "h", 1, 1.0, [html])], 8).splitlines()[-1]
    assert row.startswith("| 0 | FAIL: HTTP 501: <html> <body>xxx") and row.endswith("| x \\| y |")


def test_an_endpoint_whose_requests_all_failed_reads_n_a_and_fails_the_run(tmp_path, capsys):
    """A dead endpoint beside a live one read TTFT 0.0 (a 0.00x ratio: "faster") and the run
    exited 0; now its figures are n/a, the comparison counts its failures, and it exits 1."""
    from types import SimpleNamespace

    from cluster.bench.main import run
    from cluster.bench.report import comparison

    ok = Result("a", "t", ok=True, prompt_tokens=4, completion_tokens=4, ttft_s=0.1)
    ok.total_s, ok.decode_s = 0.4, 0.3
    refused = Result("a", "u", error="refused")
    runs = {"live": [PhaseResult("sequential", "t", 1, 1.0, [ok])],
            "dead": [PhaseResult("sequential", "u", 1, 1.0, [refused])]}  # fmt: skip
    table = comparison(["live", "dead"], runs)
    assert "| sequential | TTFT (ms) p50 | 100.0 | n/a | n/a |" in table
    assert "| sequential | failed requests | 0 | 1 |" in table
    dead = f"http://127.0.0.1:{free_port()}"
    args = SimpleNamespace(base_url=dead, compare=None, names=None, phases="sequential:1",
                           concurrency=1, prompts=None, max_tokens=4, out=str(tmp_path),
                           model=None, warmup=1, alternate=False)  # fmt: skip
    assert run(args) == 1
    out = capsys.readouterr()
    assert "1 of 1 warm-up requests failed" in out.out and "every request to" in out.err


def test_the_same_endpoint_twice_gets_two_reports_and_bad_arguments_are_refused(tmp_path):
    from cluster.bench.main import unique_slugs
    from cluster.bench.prompts import load_prompts

    assert unique_slugs(["http://h:1", "http://h:1", "http://g"]) == ["h-1", "h-1-2", "g"]
    for body, says in (('{"prompts": ["a"]}', "not a dict"), ('[{"label": "x"}]', "item 0"),
                       ("not json", "not a JSON file")):  # fmt: skip
        path = tmp_path / "p.json"
        path.write_text(body)
        with pytest.raises(ValueError, match=says):
            load_prompts(path)
    for kw, says in ((dict(concurrency=0), "--concurrency"), (dict(names=["a"]), "--names"),
                     (dict(phases=[]), "no phase")):  # fmt: skip
        args = dict(targets=["http://h:1", "http://h:2"], phases=["sequential"], concurrency=1,
                    prompts_file=None, max_tokens=4, out=tmp_path) | kw  # fmt: skip
        with pytest.raises(ValueError, match=says):
            asyncio.run(bench(**args))


def test_unreachable_target_is_reported_as_failures(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    runs = asyncio.run(bench([dead], ["sequential"], 1, None, 8, tmp_path))
    (phase,) = next(iter(runs.values()))
    assert len(phase.results) == 10 and not phase.ok
    assert all("ClientConnectorError" in r.error for r in phase.results)
    assert "FAIL" in next(tmp_path.glob("*.md")).read_text()


def test_bench_against_a_real_server(server, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["What is 2+2?", {"label": "code", "text": "def f(x):"}]))
    runs = asyncio.run(
        bench(
            [server.url, server.url],
            ["sequential", "concurrent", "prefix-cache"],
            2,
            str(prompts),
            8,
            tmp_path,
            names=["a", "b"],
        )
    )
    seq, conc, prefix = runs["a"]
    assert [r.label for r in seq.results] == ["What is 2+2?", "code"] and len(seq.ok) == 2
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in seq.ok)
    assert conc.concurrency == 2 and len(conc.ok) == 2
    assert len(prefix.results) == 6 and prefix.server["prefix_cache_hit_rate"] > 0.3
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["phases"][0]["requests"][0]["ttft_s"] > 0
    assert "| sequential | TTFT (ms) p50 |" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "a-ttft.png").exists()


def test_prompt_file_must_not_be_empty(tmp_path):
    from cluster.bench.prompts import load_prompts

    empty = tmp_path / "p.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(empty)
    assert load_prompts(None)[0] == Prompt("France capital", "What is the capital of France?")


def test_phase_specs_take_a_concurrency_or_a_count_and_refuse_unknown_ones():
    from cluster.bench.main import parse_phase

    assert parse_phase("concurrent", 16) == ("concurrent", 16, None)
    assert parse_phase("concurrent:8", 16) == ("concurrent", 8, None)
    assert parse_phase("sequential", 16) == ("sequential", 1, None)
    assert parse_phase("sequential:30", 16) == ("sequential", 1, 30)
    for bad in ("concurrent:0", "prefix-cache:4", "burst", "concurrent:x"):
        with pytest.raises(ValueError, match="unknown phase"):
            parse_phase(bad, 16)


def test_fresh_prompts_are_unique_per_request_and_cycle_the_set():
    from cluster.bench.main import fresh
    from cluster.bench.prompts import Prompt

    batch = fresh([Prompt("a", "x"), Prompt("b", "y")], 5, "tag")
    assert [p.label for p in batch] == ["a", "b", "a", "b", "a"]
    assert len({p.text for p in batch}) == 5 and batch[2].text.endswith(" x")


def test_alternating_sends_request_i_to_every_target_before_request_i_plus_1(server, tmp_path):
    labels = ["one", "two", "three", "four", "five", "six"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(labels))
    turns = []
    runs = asyncio.run(
        bench(
            [server.url] * 3,
            ["sequential"],
            1,
            str(prompts),
            4,
            tmp_path,
            names=["a", "b", "c"],
            on_target=turns.append,
            warmup=0,
            alternate=True,
        )  # fmt: skip
    )
    rounds = [tuple(turns[i : i + 3]) for i in range(0, len(turns), 3)]
    assert len(rounds) == 6 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    # Shuffled each round: no target always comes right after the same other one.
    pairs = list(zip(turns, turns[1:], strict=False))
    before = {n: {p for p, m in pairs if m == n != p} for n in "abc"}
    assert all(len(others) == 2 for others in before.values()), rounds
    for name in ("a", "b", "c"):
        (seq,) = runs[name]
        assert [r.label for r in seq.results] == labels and len(seq.ok) == 6
        assert seq.wall_s > 0 and seq.server is not None
