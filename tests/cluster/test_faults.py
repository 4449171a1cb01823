"""Faults: kill -9 a leader rank under 16 streaming requests on two replicas."""

import concurrent.futures as cf
import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, Server
from test_cluster import _wait, rank_pids, status

streaming: set[int] = set()
"""Requests of the running test that have streamed output."""


def _stream(url: str, model: str, i: int) -> dict:
    """One streaming request; returns how it ended and when."""
    body = {
        "model": model,
        "prompt": f"Request {i}: keep writing.",
        "max_tokens": 400,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    out = {"tokens": 0, "error": None, "done": False, "finish": None, "streamed": False}
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                elif line.startswith("data: {"):
                    data = json.loads(line[6:])
                    if "error" in data:
                        out["error"] = data["error"]["message"]
                    elif data.get("usage"):
                        out["tokens"] = data["usage"]["completion_tokens"]
                    elif data["choices"]:
                        out["finish"] = data["choices"][0]["finish_reason"] or out["finish"]
                        out["streamed"] = out["streamed"] or bool(data["choices"][0]["text"])
                        streaming.add(i)
    except httpx.HTTPError as e:
        out["error"] = f"transport: {e}"
    out["ended"] = time.time()
    return out


def test_leader_kill_under_16_streams(model_dir, tmp_path):
    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-2replicas.yaml")],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )
    streaming.clear()
    try:
        pids = rank_pids(srv)
        with cf.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_stream, srv.url, srv.model, i) for i in range(16)]
            _wait(lambda: len(streaming) == 16, 30)  # every stream has begun
            on_r0 = status(srv)["replicas"][0]["in_flight"]
            assert on_r0 > 0
            os.kill(pids[("r0", 0)], signal.SIGKILL)
            killed = time.time()
            results = [f.result(timeout=120) for f in futures]
        failed = [r for r in results if r["error"]]
        finished = [r for r in results if r["finish"] == "length" and not r["error"]]
        assert len(failed) + len(finished) == 16
        # Every stream r0 held fails, but one may have finished between the count and the kill.
        done_before = [r for r in finished if r["ended"] < killed]
        assert 0 < len(failed) <= on_r0 <= len(failed) + len(done_before)
        for r in failed:  # an OpenAI error event, then [DONE], within 5 s: no hang, no silent cut
            assert "r0" in r["error"] and r["done"] and r["ended"] - killed < 5
            assert r["streamed"]  # only requests that had streamed may fail
        assert all(r["tokens"] == 400 for r in finished)
        # The coordinator lived through it; the launcher brings r0 back.
        back = _wait(lambda: status(srv)["replicas"][0]["state"] == "ready", 60, 0.5)
        assert back and time.time() - killed < 60
        r0 = status(srv)["replicas"][0]
        assert r0["restarts"] == 1 and "rank process died" in r0["reason"]
        # The restart appends to the rank's log: the killed run's lines are still there.
        log = next((tmp_path / "home").glob("run/*/r0/rank0.log")).read_text()
        assert log.count("=== rank started") == 2 and log.count("serving gRPC") == 2, log
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'cluster:replica_restarts{model_name="glm5-fixture",replica="r0"} 1.0' in metrics
        assert 'finished_reason="error"' in metrics
        client = srv.client()
        r = client.completions.create(model=srv.model, prompt="again", max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        srv.stop()


@pytest.mark.slow  # 37 s; moved when `make test` read 19.6 minutes
def test_requests_waiting_for_their_first_token_move_to_the_other_replica(model_dir, tmp_path):
    """kill -9 of one replica's leader while 16 requests wait for their first token (long
    prompts still prefilling): every one that had no token yet completes, on the other
    replica; only a stream that had begun may end with an error (by design), and on a loaded
    machine the first prefill can finish before the kill lands, so that is read per stream."""
    import random

    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-2replicas.yaml")],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )
    rng = random.Random(5)

    whole: dict[str, str] = {}  # a whole reply's request id -> the replica its header names

    def ask(i) -> tuple[int, bool, str | None]:
        """(text chunks, whether it ended with an error, its finish reason)."""
        prompt = [rng.randrange(30, 4000) for _ in range(2500)]
        body = {"model": srv.model, "prompt": prompt, "max_tokens": 4, "ignore_eos": True,
                "stream": i % 2 == 1}  # fmt: skip
        if not body["stream"]:  # a whole reply: its header names the replica that served it
            r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=180)
            whole[r.headers["x-request-id"]] = r.headers["x-replica"]
            ok = r.status_code == 200
            return ok, not ok, r.json()["choices"][0]["finish_reason"] if ok else None
        chunks, error, finish = 0, False, None
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=180) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                error = error or "error" in data
                for choice in data.get("choices", []):
                    chunks += bool(choice.get("text"))
                    finish = choice.get("finish_reason") or finish
        return chunks, error, finish

    try:
        pids = rank_pids(srv)
        with cf.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(ask, i) for i in range(16)]
            # Read from /metrics, the coordinator's own count: /v1/status also asks each
            # engine, which answers between steps, so a 2,500-token prefill step delays it.
            _wait(lambda: _in_flight(srv, "r0") > 0, 20, 0.02)
            os.kill(pids[("r0", 0)], signal.SIGKILL)
            replies = [f.result(timeout=180) for f in futures]
        begun_and_cut = [r for r in replies if r[1]]
        assert all(chunks > 0 for chunks, _, _ in begun_and_cut), replies  # none lost unbegun
        assert len(begun_and_cut) <= 2, replies  # the kill lands while nearly all prefill
        assert all(finish == "length" for _, error, finish in replies if not error), replies
        metrics = httpx.get(f"{srv.url}/metrics").text
        moved = [line for line in metrics.splitlines()
                 if 'reason="failover"' in line and line.startswith("cluster:routing_decisions_total")]  # fmt: skip
        assert moved and float(moved[0].split()[-1]) > 0
        srv.stop()
        log = "".join(srv.lines) + srv.proc.stdout.read()
        failed = set(re.findall(r"replica r0 failed request (\S+) before its first token", log))
        assert failed & whole.keys(), (whole, failed)  # whole replies moved too
        assert all(whole[rid] == "r1" for rid in failed & whole.keys()), (whole, failed)
    finally:
        srv.stop()


def _in_flight(srv, replica: str) -> float:
    """The coordinator's own count of a replica's requests (no engine is asked)."""
    for line in httpx.get(f"{srv.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("cluster:num_requests_in_flight{") and f'replica="{replica}"' in line:
            return float(line.split()[-1])
    return 0.0


def _pinned(model_dir, tmp_path) -> tuple[list[str], dict]:
    """serve's arguments and environment for one TP 1 replica on a fixed gRPC port: its ranks
    outlive a coordinator killed hard, and the next one re-attaches to them."""
    import yaml

    from cluster.launch.local import free_port

    inventory = yaml.safe_load((ROOT / "inventory/local.yaml").read_text())
    inventory["all"]["vars"]["grpc_base_port"] = free_port()
    inv = tmp_path / "pinned.yaml"
    inv.write_text(yaml.safe_dump(inventory))
    return ["--model", str(model_dir), "--inventory", str(inv)], {
        "CLUSTER_HOME": str(tmp_path / "home")
    }


def test_a_restarted_coordinator_reattaches_to_running_replicas(model_dir, tmp_path):
    args, env = _pinned(model_dir, tmp_path)
    first = Server(args, env=env)
    pids = {}
    try:
        pids = rank_pids(first)
        prompt = {"model": first.model, "prompt": "def f(x):", "max_tokens": 12, "temperature": 0}
        before = httpx.post(f"{first.url}/v1/completions", json=prompt, timeout=30).json()
        os.kill(first.proc.pid, signal.SIGKILL)  # the coordinator crashes; its ranks keep running
        first.proc.wait()
        assert rank_pids(first) == pids
        second = Server(args, env=env, timeout=60)
        try:
            replica = status(second)["replicas"][0]
            assert replica["attached"] and replica["state"] == "ready"
            assert rank_pids(second) == pids  # nothing reloaded
            after = httpx.post(
                f"{second.url}/v1/completions", json=prompt | {"model": second.model}, timeout=30
            ).json()
            assert after["choices"][0]["text"] == before["choices"][0]["text"]
        finally:
            second.stop()
        assert rank_pids(second) == pids  # re-attached replicas are left running
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_a_leader_left_running_is_not_taken_over_with_other_flags(model_dir, tmp_path):
    """A coordinator killed hard, then `serve` again with other engine flags: it re-attached
    and said nothing, while the leader ran on with the old ones (status showed the new). Now
    it refuses and names the flags and the pid; a second `serve` on the same home while the
    first runs is refused too (both drove one leader)."""
    import subprocess
    import sys

    args, env = _pinned(model_dir, tmp_path)
    first = Server(args, env=env)
    pids = rank_pids(first)
    try:
        cmd = [sys.executable, "-m", "cluster", "serve", "--port", "0", *args]
        both = subprocess.run(cmd, cwd=ROOT, env=first.env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert both.returncode != 0, both.stderr[-2000:]
        assert f"another coordinator (pid {first.proc.pid}) drives the leader" in both.stderr
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        other = subprocess.run([*cmd, "--max-num-seqs", "4"], cwd=ROOT, env=first.env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert other.returncode != 0, other.stderr[-2000:]
        leader = pids[("r0", 0)]
        assert f"runs with other settings (pid {leader}" in other.stderr, other.stderr[-2000:]
        assert "--max-num-seqs 16 (asked: 4)" in other.stderr and f"kill {leader}" in other.stderr
        assert "Traceback" not in other.stderr
        assert rank_pids(first) == pids  # left as it was
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_a_stopped_leader_the_cluster_did_not_start_ends_its_streams(model_dir, tmp_path):
    """A leader the coordinator re-attached to (or one a service manager runs) cannot be killed
    by it: stopped (SIGSTOP: a node asleep, a hung process), it keeps its socket open. Its
    streams used to wait forever; the supervisor now closes its channel when it gives the
    replica up, and they end with an error event."""
    args, env = _pinned(model_dir, tmp_path)
    first = Server(args, env=env)
    pids = rank_pids(first)
    streaming.clear()
    try:
        os.kill(first.proc.pid, signal.SIGKILL)  # its ranks keep running, for the next one
        first.proc.wait()
        second = Server(args, env=env, timeout=60)
        try:
            assert status(second)["replicas"][0]["attached"]
            with cf.ThreadPoolExecutor(1) as pool:
                future = pool.submit(_stream, second.url, second.model, 0)
                assert _wait(lambda: 0 in streaming, 30)
                os.kill(pids[("r0", 0)], signal.SIGSTOP)
                stopped = time.time()
                result = future.result(timeout=90)
            assert result["error"] and result["done"], result  # an error event, then [DONE]
            took = result["ended"] - stopped
            assert took < 10, took  # 2.5 s here; gRPC's keepalive alone would take 15-30 s
        finally:
            second.stop()
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _responses_stream(url: str, model: str, i: int) -> list[dict]:
    """One streamed Responses request (as Codex sends it: no output cap); its events."""
    # Any JSON object: the built-in model runs on inside its strings, so the reply is long.
    body = {"model": model, "input": f"Request {i}: keep writing.", "stream": True,
            "reasoning": {"effort": "none"}, "text": {"format": {"type": "json_object"}}}  # fmt: skip
    events = []
    with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "response.output_text.delta":
                    streaming.add(i)
    return events


def test_shutdown_ends_open_streams_with_an_error_and_exits(model_dir, tmp_path):
    """SIGTERM (systemd's stop, launchd's unload) while streams are open: each ends with an
    error event and [DONE] at once, and the server exits; before, it waited for every stream
    to finish on its own (a long generation: minutes)."""
    srv = Server(["--model", str(model_dir)], env={"CLUSTER_HOME": str(tmp_path / "home")})
    streaming.clear()
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(_stream, srv.url, srv.model, i) for i in range(2)]
            responses = pool.submit(_responses_stream, srv.url, srv.model, 2)
            assert _wait(lambda: len(streaming) == 3, 30)
            srv.proc.send_signal(signal.SIGTERM)
            stopped = time.time()
            results = [f.result(timeout=60) for f in futures]
            events = responses.result(timeout=60)
        srv.proc.wait(timeout=30)
        exited = time.time() - stopped
    finally:
        srv.stop()
    for r in results:
        assert r["error"] and r["done"] and r["ended"] - stopped < 5, r
        assert r["finish"] is None and r["tokens"] < 400  # cut, and said so
        assert "shutting down" in r["error"] and "replica" not in r["error"], r  # not a fault
    # The Responses API's stream ends with an error event and response.failed (what Codex
    # reads; it retried a stream that ended without response.completed).
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"], events[-3:]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and "shutting down" in failed["error"]["message"]
    assert failed["error"]["code"] and failed["output"][0]["type"] == "message", failed
    assert exited < 15, exited


def _hang_test(model_dir, tmp_path, rank: int) -> dict:
    """SIGSTOP one rank of a TP 2 replica mid-stream: a hang, not a death. Returns timings."""
    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-tp2.yaml"),
         "--step-timeout", "5"],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    streaming.clear()
    try:
        pids = rank_pids(srv)
        with cf.ThreadPoolExecutor(1) as pool:
            future = pool.submit(_stream, srv.url, srv.model, 0)
            assert _wait(lambda: 0 in streaming, 30)
            os.kill(pids[("r0", rank)], signal.SIGSTOP)
            stopped = time.time()
            result = future.result(timeout=120)
        ended = result["ended"] - stopped
        assert result["error"] and result["done"], result  # an error event, then [DONE]
        back = _wait(lambda: (r := status(srv)["replicas"][0])["restarts"] and r["state"] == "ready",
                     90, 0.5)  # fmt: skip
        ready = time.time() - stopped
        replica = status(srv)["replicas"][0]
        assert back and replica["restarts"] >= 1
        reply = srv.client().completions.create(model=srv.model, prompt="again", max_tokens=4)
        assert reply.choices[0].finish_reason in ("length", "stop")
        new = rank_pids(srv)
        os.kill(new[("r0", 1)], signal.SIGSTOP)  # shutdown leaves no rank behind, stopped or not
    finally:
        srv.stop()
    assert _wait(lambda: not rank_pids(srv), 15), rank_pids(srv)
    print(f"rank {rank} stopped: stream ended after {ended:.1f}s, ready after {ready:.1f}s")
    return {"ended": ended, "ready": ready, "reason": replica["reason"], "error": result["error"]}


def test_a_stopped_follower_ends_its_stream_and_the_replica_comes_back(model_dir, tmp_path):
    got = _hang_test(model_dir, tmp_path, rank=1)
    assert got["ended"] < 30 and got["ready"] < 60
    assert "hung" in got["error"] and "rank 1 is stopped" in got["reason"]


@pytest.mark.slow  # (the follower's twin stays in `make test`; about 20 s)
def test_a_stopped_leader_ends_its_stream_and_the_replica_comes_back(model_dir, tmp_path):
    got = _hang_test(model_dir, tmp_path, rank=0)
    assert got["ended"] < 30 and got["ready"] < 60
    assert "rank 0 is stopped" in got["reason"]


def test_an_idle_replica_that_cannot_generate_leaves_ready(model_dir, tmp_path):
    """A TP 2 replica whose follower is stopped while idle still answers Status; the idle
    probe (a one-token generation) finds it out before any user request does."""
    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-tp2.yaml"),
         "--step-timeout", "5", "--probe-seconds", "2"],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    try:
        os.kill(rank_pids(srv)[("r0", 1)], signal.SIGSTOP)
        stopped = time.time()
        assert _wait(lambda: status(srv)["replicas"][0]["state"] != "ready", 30, 0.2)
        left = time.time() - stopped
        back = _wait(lambda: (r := status(srv)["replicas"][0])["restarts"] and r["state"] == "ready",
                     60, 0.5)  # fmt: skip
        reason = status(srv)["replicas"][0]["reason"]
        assert back and "probe" in reason and "rank 1 is stopped" in reason, reason
        print(f"idle replica with a stopped follower left ready after {left:.1f}s")
    finally:
        srv.stop()


DROPS = {0: 0, 3: 2}
"""Which requests (i % 6) the client drops, after how many SSE lines."""


def test_tp2_under_32_staggered_streams_aborts_and_disconnects_leaks_nothing(model_dir, tmp_path):
    """32 streams arriving staggered on a TP 2 replica, a third of them dropped by their client
    mid-prefill or mid-decode: the ranks stay in lockstep (greedy output unchanged after) and
    no slot, KV cache or stream is left behind."""
    import random

    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-tp2.yaml")],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )
    probe = {"model": srv.model, "prompt": "def f(x):", "max_tokens": 16, "temperature": 0}
    rng = random.Random(3)

    def one(i):
        time.sleep(0.05 * i)  # staggered arrivals
        body = {"model": srv.model, "prompt": f"{i} " + "word " * rng.randrange(5, 400),
                "max_tokens": rng.randrange(4, 48), "stream": True, "ignore_eos": True}  # fmt: skip
        drop_after = DROPS.get(i % 6)  # a third dropped: 0 mid-prefill, 2 mid-decode
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=120) as r:
            for n, line in enumerate(r.iter_lines()):
                if drop_after is not None and n >= drop_after:
                    return "dropped"
                if line == "data: [DONE]":
                    return "done"
        return "ended"

    try:
        before = httpx.post(f"{srv.url}/v1/completions", json=probe, timeout=60).json()
        with cf.ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(one, range(32)))
        dropped = sum(i % 6 in DROPS for i in range(32))
        assert outcomes.count("dropped") == dropped and outcomes.count("done") == 32 - dropped

        def settled():
            r = status(srv)["replicas"][0]
            e = r["engine"]
            return (r["in_flight"], e["num_running"], e["num_waiting"], e["batch_kv_bytes"],
                    e["open_streams"]) == (0, 0, 0, 0, 0)  # fmt: skip

        assert _wait(settled, 30, 0.2), status(srv)["replicas"][0]
        after = httpx.post(f"{srv.url}/v1/completions", json=probe, timeout=60).json()
        assert after["choices"][0]["text"] == before["choices"][0]["text"]
        assert status(srv)["replicas"][0]["state"] == "ready"  # no rank diverged or hung
    finally:
        srv.stop()


def test_a_second_replica_failing_while_the_first_restarts_is_restarted_too(model_dir, tmp_path):
    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-2replicas.yaml")],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )
    try:
        pids = rank_pids(srv)
        os.kill(pids[("r0", 0)], signal.SIGKILL)
        assert _wait(lambda: status(srv)["replicas"][0]["state"] != "ready", 10, 0.05)
        os.kill(pids[("r1", 0)], signal.SIGKILL)  # while r0 is still coming back
        assert status(srv)["replicas"][0]["state"] != "ready"

        def both_back():
            replicas = status(srv)["replicas"]
            return all(r["state"] == "ready" and r["restarts"] == 1 for r in replicas)

        assert _wait(both_back, 90, 0.5), status(srv)["replicas"]
        r = srv.client().completions.create(model=srv.model, prompt="again", max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        srv.stop()


def test_ranks_exit_when_their_coordinator_is_killed_hard(model_dir, tmp_path):
    """kill -9 of `serve` gives it no chance to stop its ranks (each in its own process
    group): they once ran on, holding the model's memory for nobody. A rank started for this
    coordinator alone (no fixed gRPC port to re-attach to) exits once its parent is gone."""
    srv = Server(
        ["--model", str(model_dir), "--inventory", str(ROOT / "inventory/local-tp2.yaml")],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )
    try:
        pids = rank_pids(srv)
        assert len(pids) == 2
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)

        def gone() -> bool:
            return not any(_running(pid) for pid in pids.values())

        assert _wait(gone, 20), {k: _running(p) for k, p in pids.items()}
        logs = "".join(p.read_text() for p in (tmp_path / "home").glob("run/*/r0/rank*.log"))
        assert "is gone; this rank exits" in logs
    finally:
        for pid in rank_pids(srv).values():  # never leave one behind, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child of a dead parent may linger as one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serve_loading(model_dir, home: str, seconds: float, fault: str = "load_delay",
                   extra: tuple[str, ...] = ()):  # fmt: skip
    """`serve` of the fixture whose rank waits `seconds` before it loads (a test hook: GLM-5
    loads for minutes; `join_delay`: the last rank of a TP group joins it late), output
    piped."""
    import subprocess
    import sys

    from cluster.engine.runner import FAULT_ENV

    env = {**os.environ, "CLUSTER_HOME": home, FAULT_ENV: f"{fault}={seconds}"}
    return subprocess.Popen(
        [sys.executable, "-m", "cluster", "serve", "--port", "0", "--model", str(model_dir),
         *extra],  # fmt: skip
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
        start_new_session=True,
    )  # fmt: skip


def _http_url(proc) -> str:
    """The URL `serve` opened its HTTP port at, from its output (before the replicas load)."""
    for line in proc.stdout:
        if m := re.search(r"HTTP open on \S+ port (\d+)", line):
            return f"http://127.0.0.1:{m.group(1)}"
    raise AssertionError("no HTTP-open line")


def _until_serving(proc) -> None:
    """Read `serve`'s output until a replica serves."""
    for line in proc.stdout:
        if "serving" in line:
            return


def test_http_answers_while_the_replicas_load(model_dir, tmp_path):
    """GLM-5 loads for minutes: the HTTP port opens first, /health is 503 and /v1/status
    shows the replica starting, a request gets a 503 (Retry-After) that says the model is
    loading, not a refused connection; once the replica serves, so does the endpoint. The
    rank waits 8 s before it loads (a test hook) to keep the window open."""
    proc = _serve_loading(model_dir, str(tmp_path / "home"), seconds=8)
    try:
        url = _http_url(proc)
        health = httpx.get(f"{url}/health", timeout=5)
        assert health.status_code == 503 and health.json()["ready"] == []
        assert httpx.get(f"{url}/v1/status", timeout=5).json()["replicas"][0]["state"] == "starting"
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert "loading" in r.json()["error"]["message"]
        _until_serving(proc)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_rank_waiting_for_its_group_says_so(model_dir, tmp_path):
    """A TP rank whose peer never answers (a link down between the nodes) waited in MLX's
    group setup with nothing in its log or in status until the load timeout. Now its log
    says it is joining (and where its peers are) and status shows `joining_group`; once the
    late peer joins, the replica serves."""
    home = tmp_path / "home"
    proc = _serve_loading(model_dir, str(home), seconds=8, fault="join_delay",
                          extra=("--inventory", str(ROOT / "inventory/local-tp2.yaml")))  # fmt: skip
    try:
        url = _http_url(proc)

        def waiting():
            ranks = httpx.get(f"{url}/v1/status", timeout=5).json()["replicas"][0]["ranks"]
            return ranks[0].get("joining_group")

        assert _wait(waiting, 8, 0.2), httpx.get(f"{url}/v1/status").json()["replicas"][0]
        logs = "".join(p.read_text() for p in home.glob("run/*/r0/rank0.log"))
        assert "joining its group (ring: " in logs, logs
        _until_serving(proc)
        ranks = httpx.get(f"{url}/v1/status", timeout=5).json()["replicas"][0]["ranks"]
        assert [r["joining_group"] for r in ranks] == [False, False], ranks
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_stopping_while_the_replicas_load_leaves_no_rank(model_dir, tmp_path):
    """SIGTERM while a replica loads (minutes on GLM-5): serve exits at once and leaves no
    rank behind (a load still in flight once went on after the shutdown)."""
    from cluster.bench.cluster_process import rank_pids as pids_of

    home = str(tmp_path / "home")
    proc = _serve_loading(model_dir, home, seconds=60)
    try:
        assert _wait(lambda: pids_of(home).get(("r0", 0)), 30)
        proc.send_signal(signal.SIGTERM)
        stopped = time.time()
        proc.wait(timeout=30)
        assert time.time() - stopped < 15
        assert _wait(lambda: not pids_of(home), 15), pids_of(home)
    finally:
        if proc.poll() is None:
            proc.kill()
