"""Multi-process cluster tests: tensor parallelism over MLX ring, several replicas, rank death."""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ROOT, Server

PROMPTS = [
    "What is the capital of France?",
    "Explain TCP vs UDP.",
    "def is_prime(n):",
    "한국의 수도는?",
    "import os\nimport sys\n" * 30,
    "Write a haiku about AI",
]


def inventory(tmp_path: Path, hosts: int, replicas: int) -> Path:
    host = {"interconnect": ["127.0.0.1"], "memory_gb": 8, "chip": "cpu"}
    host |= {"memory_bandwidth_gbs": 20, "ansible_connection": "local"}
    data = {
        "all": {
            "vars": {"replicas": replicas, "mlx_backend": "ring"},
            "hosts": {f"node{i}": dict(host) for i in range(hosts)},
        }
    }
    path = tmp_path / f"inv-{hosts}-{replicas}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(model_dir, tmp_path, inv: Path | str) -> Server:
    return Server(
        ["--model", str(model_dir), "--inventory", str(inv)],
        env={"CLUSTER_HOME": str(tmp_path / "home")},
    )


TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "required": ["unit"],
        "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                       "city": {"type": "string"}}}}}
    for name in ("get_weather", "get_forecast")
]  # fmt: skip


def greedy_outputs(srv: Server) -> list[str]:
    """Greedy completions of PROMPTS, then a forced tool call (the tool-call grammar keeps
    every rank's masks alike: the random weights write a valid call), then the likeliest
    token at each position of an echoed prompt (its logprobs computed on every rank)."""
    client = srv.client()
    outs = []
    for p in PROMPTS:
        r = client.completions.create(
            model=srv.model, prompt=p, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        outs.append(r.choices[0].text)
    r = client.chat.completions.create(
        model=srv.model, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        messages=[{"role": "user", "content": "Get the weather with city paris and unit celsius."}],
        max_tokens=40, temperature=0,
    )  # fmt: skip
    [call] = r.choices[0].message.tool_calls
    assert json.loads(call.function.arguments)["unit"] in ("celsius", "fahrenheit")
    outs.append(call.function.name + call.function.arguments)
    r = client.completions.create(
        model=srv.model, prompt=PROMPTS[0], max_tokens=1, temperature=0, echo=True, logprobs=2
    )
    tops = r.choices[0].logprobs.top_logprobs[1:]
    assert len(tops) == r.usage.prompt_tokens and all(len(t) >= 1 for t in tops)
    outs.append(" ".join(max(top, key=top.get) for top in tops))
    return outs


def status(srv: Server) -> dict:
    return httpx.get(f"{srv.url}/v1/status", timeout=5).json()


def rank_pids(srv: Server) -> dict[tuple[str, int], int]:
    """(replica, rank) → pid of this server's rank processes (read from /proc)."""
    from cluster.bench.cluster_process import rank_pids as pids_of

    return pids_of(srv.env["CLUSTER_HOME"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def tp1_outputs(model_dir, tmp_path_factory):
    srv = start(model_dir, tmp_path_factory.mktemp("tp1"), ROOT / "inventory/local.yaml")
    try:
        return greedy_outputs(srv)
    finally:
        srv.stop()


def test_tp2_over_ring_matches_tp1_token_for_token(model_dir, tmp_path, tp1_outputs):
    srv = start(model_dir, tmp_path, ROOT / "inventory/local-tp2.yaml")
    try:
        replica = status(srv)["replicas"][0]
        assert replica["plan"]["tensor_parallel"] == 2 and len(replica["ranks"]) == 2
        assert replica["engine"]["world_size"] == 2 and replica["engine"]["backend"] == "ring"
        assert len(rank_pids(srv)) == 2
        assert greedy_outputs(srv) == tp1_outputs
        # Idle, the follower sleeps on the leader's doorbell instead of spinning in a collective.
        assert status(srv)["replicas"][0]["engine"]["sleeping_followers"] == 1
        gauge = 'cluster:lockstep_sleeping_followers{model_name="glm5-fixture",replica="r0"} 1.0'
        assert gauge in httpx.get(f"{srv.url}/metrics").text
        follower = rank_pids(srv)[("r0", 1)]
        time.sleep(1)
        before = cpu_seconds(follower)
        time.sleep(3)
        assert cpu_seconds(follower) - before < 0.3  # of 3 s; it spun at a whole core before
        assert greedy_outputs(srv)[:2] == tp1_outputs[:2]  # and wakes for the next request
    finally:
        assert srv.stop() == 0
    assert rank_pids(srv) == {}  # no orphans


@pytest.mark.slow
def test_tp4_over_ring_matches_tp1(model_dir, tmp_path, tp1_outputs):
    srv = start(model_dir, tmp_path, inventory(tmp_path, hosts=4, replicas=1))
    try:
        assert greedy_outputs(srv) == tp1_outputs
    finally:
        srv.stop()


def test_two_replicas_behind_one_coordinator_share_the_load(model_dir, tmp_path, tp1_outputs):
    srv = start(model_dir, tmp_path, ROOT / "inventory/local-2replicas.yaml")
    try:
        replicas = status(srv)["replicas"]
        assert [(r["name"], r["state"], r["plan"]["tensor_parallel"]) for r in replicas] == [
            ("r0", "ready", 1),
            ("r1", "ready", 1),
        ]
        assert greedy_outputs(srv) == tp1_outputs
        served = [r["served"] for r in status(srv)["replicas"]]
        assert sum(served) == len(PROMPTS) + 2 and min(served) >= 2  # + the tool call and echo
        _a_growing_session_stays_on_its_replica(srv)
        _new_sessions_sharing_a_tools_block_spread(srv)
    finally:
        srv.stop()


def _new_sessions_sharing_a_tools_block_spread(srv: Server) -> None:
    """Agents' sessions open with the same system prompt and tools; one decoding on the
    replica that holds them, the next opens on the other replica (`spread`), and its second
    turn stays there. They once all followed the shared block to one replica."""
    system = {"role": "system", "content": "You are a careful coding agent. Tools follow. " * 40}
    client = srv.client()
    raw = client.chat.completions.with_raw_response.create(
        model=srv.model, max_tokens=4, messages=[system, {"role": "user", "content": "A?"}]
    )
    home = raw.headers["x-replica"]
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", timeout=60, json={
            "model": srv.model, "max_tokens": 2500, "ignore_eos": True, "stream": True,
            "temperature": 0,
            "messages": [system, {"role": "user", "content": "Write a lot."}]}) as busy:  # fmt: skip
        assert busy.headers["x-replica"] == home
        lines = busy.iter_lines()  # kept: a dropped iterator closes the stream (an abort)
        next(lines)  # decoding now
        assert _in_flight(srv) == {home: 1, ({"r0", "r1"} - {home}).pop(): 0}
        opened = [system, {"role": "user", "content": "B?"}]
        raw = client.chat.completions.with_raw_response.create(model=srv.model, max_tokens=4,
                                                               messages=opened)  # fmt: skip
        other = raw.headers["x-replica"]
        assert other != home, (home, other)
        reply = raw.parse().choices[0].message.content or "ok"
        turn = opened + [{"role": "assistant", "content": reply},
                         {"role": "user", "content": "And C?"}]  # fmt: skip
        raw = client.chat.completions.with_raw_response.create(model=srv.model, max_tokens=4,
                                                               messages=turn)  # fmt: skip
        assert raw.headers["x-replica"] == other  # its later turn follows its transcript
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'reason="spread"' in metrics


def _a_growing_session_stays_on_its_replica(srv: Server) -> None:
    """An agent's session without x-session-id: each turn's prompt extends the last, and
    the router follows the prefix. The shared blocks once left the router's index at every
    turn (the superseded entry was reported evicted), so turns moved between replicas."""
    client, prompt, homes, last = srv.client(), "Session notes. " * 40, [], 0
    for turn in range(4):
        before = [r["served"] for r in status(srv)["replicas"]]
        raw = client.completions.with_raw_response.create(model=srv.model, prompt=prompt,
                                                          max_tokens=8, temperature=0)  # fmt: skip
        r, after = raw.parse(), status(srv)["replicas"]
        homes.append(next(i for i, x in enumerate(after) if x["served"] > before[i]))
        assert raw.headers["x-replica"] == after[homes[-1]]["name"]  # the reply names it
        if turn:  # the last turn's prompt, but its last partial block and the reply's seam
            assert r.usage.prompt_tokens_details.cached_tokens >= last - 32
        last = r.usage.prompt_tokens

        def caught_up(i=homes[-1]):  # the router's index holds what the replica's cache holds
            x = status(srv)["replicas"][i]
            return x["routing"]["indexed_blocks"] >= x["engine"]["prefix_cache"]["blocks"]

        assert _wait(caught_up, 5), status(srv)["replicas"][homes[-1]]
        prompt += r.choices[0].text + f" Turn {turn}: more notes follow here. " * 4
    assert len(set(homes)) == 1, homes


def _in_flight(srv: Server) -> dict[str, int]:
    return {r["name"]: r["in_flight"] for r in status(srv)["replicas"]}


def _stream(srv: Server, max_tokens: int = 3000):
    body = {
        "model": srv.model,
        "prompt": "Keep going, and do not stop. " * 12,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    return httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=30)


def _wait(predicate, timeout: float, step: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    return predicate()


def test_follower_death_ends_stream_with_error_and_other_replica_serves(model_dir, tmp_path):
    srv = start(model_dir, tmp_path, inventory(tmp_path, hosts=4, replicas=2))
    try:
        st = status(srv)
        assert [r["state"] for r in st["replicas"]] == ["ready", "ready"]
        pids = rank_pids(srv)
        assert len(pids) == 4
        with _stream(srv) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                got += line.startswith("data: {")
                if got == 3:
                    break
            replicas = {x["name"]: x for x in status(srv)["replicas"]}
            victim = next(n for n, x in replicas.items() if x["in_flight"] == 1)
            other = next(n for n in replicas if n != victim)
            # The prompt's blocks reached the coordinator's index through CacheEvents.
            indexed = _wait(
                lambda: status(srv)["replicas"][int(victim[1])]["routing"]["indexed_blocks"], 5
            )
            assert indexed >= 3
            os.kill(pids[(victim, 1)], signal.SIGKILL)
            killed = time.time()
            rest = list(lines)
        elapsed = time.time() - killed
        assert elapsed < 5
        errors = [json.loads(x[6:]) for x in rest if x.startswith("data: {") and '"error"' in x]
        assert errors and victim in errors[0]["error"]["message"]
        assert [x for x in rest if x][-1] == "data: [DONE]"

        def victim_state():
            states = {r["name"]: r for r in status(srv)["replicas"]}
            return states if states[victim]["restarts"] == 1 else None

        states = _wait(victim_state, 10)
        assert states and "rank 1" in states[victim]["reason"]
        assert states[other]["state"] == "ready"
        client = srv.client()
        for _ in range(3):
            r = client.completions.create(model=srv.model, prompt="hi", max_tokens=4)
            assert r.choices[0].finish_reason in ("length", "stop")
        # The supervisor restarts the replica; it serves again, its index entries start over.
        back = _wait(lambda: status(srv)["replicas"][int(victim[1])]["state"] == "ready", 60, 0.5)
        assert back
        after = status(srv)["replicas"][int(victim[1])]
        assert after["restarts"] == 1
        assert _wait(
            lambda: status(srv)["replicas"][int(victim[1])]["routing"]["indexed_blocks"] == 0, 5
        )
    finally:
        srv.stop()


def test_no_ready_replica_is_503(model_dir, tmp_path):
    srv = start(model_dir, tmp_path, ROOT / "inventory/local.yaml")
    try:
        (pid,) = rank_pids(srv).values()
        os.kill(pid, signal.SIGSTOP)  # a hung leader: alive, not answering
        deadline = time.time() + 10
        while time.time() < deadline and status(srv)["replicas"][0]["state"] == "ready":
            time.sleep(0.2)
        r = httpx.post(
            f"{srv.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_replica_ready"
        assert httpx.get(f"{srv.url}/health").status_code == 503
        with contextlib.suppress(ProcessLookupError):  # the supervisor SIGKILLs a stopped rank
            os.kill(pid, signal.SIGCONT)
    finally:
        srv.stop()


def test_ssh_launcher_runs_the_same_rank_command_on_each_host(model_dir, tmp_path, tp1_outputs):
    import sys

    from cluster.launch.local import free_port

    base = free_port()
    host = {"interconnect": ["127.0.0.1"], "memory_gb": 8, "chip": "cpu"}
    host |= {"memory_bandwidth_gbs": 20, "ansible_host": "127.0.0.1", "ansible_user": "ops"}
    host |= {"cluster_python": sys.executable}
    data = {
        "all": {
            "vars": {"replicas": 1, "launcher": "ssh", "ring_base_port": base},
            "hosts": {"mac1": dict(host), "mac2": dict(host)},
        }
    }
    inv = tmp_path / "ssh.yaml"
    inv.write_text(yaml.safe_dump(data))
    shims = str(ROOT / "tests/shims")
    srv = Server(
        ["--model", str(model_dir), "--inventory", str(inv)],
        env={"CLUSTER_HOME": str(tmp_path / "home"), "PATH": f"{shims}:{os.environ['PATH']}"},
    )
    try:
        replica = status(srv)["replicas"][0]
        assert replica["plan"]["tensor_parallel"] == 2
        assert replica["engine"]["world_size"] == 2
        assert greedy_outputs(srv)[:2] == tp1_outputs[:2]
    finally:
        srv.stop()


def _staggered(srv: Server, lengths: list[int]) -> list[str]:
    """Greedy completions of PROMPTS[:len(lengths)], sent 0.05 s apart (close enough for the
    first to be decoding when the last arrives), each its own length."""
    from concurrent.futures import ThreadPoolExecutor

    client = srv.client()

    def one(i: int) -> str:
        time.sleep(0.05 * i)
        r = client.completions.create(model=srv.model, prompt=PROMPTS[i], max_tokens=lengths[i],
                                      temperature=0, extra_body={"ignore_eos": True})  # fmt: skip
        return r.choices[0].text

    with ThreadPoolExecutor(len(lengths)) as pool:
        return list(pool.map(one, range(len(lengths))))


def test_tp2_followers_take_the_leaders_draft_length(tmp_path):
    """The governors change the draft length between steps (each probe tries one fewer); under
    TP the leader's length rides with the step: output still plain decoding's, every 4 steps."""
    env = {"CLUSTER_HOME": str(tmp_path / "home")}
    body = dict(prompt="class Foo:\n    def __init__(self", max_tokens=96, temperature=0,
                extra_body={"ignore_eos": True})  # fmt: skip
    plain = Server(["--inventory", str(ROOT / "inventory/local.yaml")], env=env)
    try:
        expected = plain.client().completions.create(model=plain.model, **body).choices[0].text
    finally:
        plain.stop()
    spec = Server(
        ["--inventory", str(ROOT / "inventory/local-tp2.yaml"), "--speculation", "mtp",
         "--num-speculative-tokens", "2", "--speculation-probe-every", "4",
         "--speculation-probe-steps", "4", "--speculation-probe-losses", "100"],
        env=env,
    )  # fmt: skip
    try:
        raw = spec.client().completions.with_raw_response.create(model=spec.model, **body)
        assert raw.parse().choices[0].text == expected
        assert raw.headers["x-speculation"].startswith("mtp;k=1-2")  # both lengths ran
        probe = status(spec)["replicas"][0]["engine"]["speculation"]["last_probe"]
        assert probe["batch size 1"]["tried"]["k"] in (1, 2)
    finally:
        spec.stop()


@pytest.mark.parametrize(
    "k", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(3, marks=pytest.mark.slow)]
)
def test_mtp_under_tp2_is_token_identical_and_counted(tmp_path, k):
    """Seed 003 asked for this: MTP at TP 2, really speculating, lossless, and visible."""
    env = {"CLUSTER_HOME": str(tmp_path / "home")}
    plain = Server(["--inventory", str(ROOT / "inventory/local.yaml")], env=env)

    def repeated(srv):  # the MTP layer keeps nearly every draft here: queued guesses hold
        r = srv.client().completions.create(
            model=srv.model, prompt="class Foo:\n    def __init__(self", max_tokens=120,
            temperature=0, extra_body={"ignore_eos": True},
        )  # fmt: skip
        return r.choices[0].text

    try:
        expected = greedy_outputs(plain)[:3]
        batch_expected = _staggered(plain, [40] * 4)
        repeated_expected = repeated(plain)
    finally:
        plain.stop()
    spec = Server(
        ["--inventory", str(ROOT / "inventory/local-tp2.yaml"), "--speculation", "mtp",
         "--num-speculative-tokens", str(k), "--queue-ahead", "always"],
        env=env,
    )  # fmt: skip
    try:
        engine = status(spec)["replicas"][0]["engine"]
        assert engine["world_size"] == 2
        assert engine["speculation"]["active"] and engine["speculation"]["summary"] == f"mtp;k={k}"
        client = spec.client()
        outs = []
        for p in PROMPTS[:3]:
            raw = client.completions.with_raw_response.create(
                model=spec.model,
                prompt=p,
                max_tokens=24,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            assert raw.headers["x-speculation"] == f"mtp;k={k}"
            completion = raw.parse()
            outs.append(completion.choices[0].text)
            # What happened to this request: its accepted and proposed draft tokens.
            accepted, drafted = map(int, raw.headers["x-speculation-accepted"].split("/"))
            details = completion.usage.completion_tokens_details
            assert drafted > 0 and drafted % k == 0 and 0 <= accepted <= drafted
            assert details.accepted_prediction_tokens == accepted
            assert details.rejected_prediction_tokens == drafted - accepted
        assert outs == expected
        # Every step queued ahead on the guess that every draft is kept (--queue-ahead
        # always), guesses kept and cancelled: the ranks queue and cancel alike.
        assert repeated(spec) == repeated_expected
        shown = status(spec)["replicas"][0]["engine"]["speculation"]
        assert shown["queued_steps"] > shown["queued_wasted"] > 0
        assert shown["queue_ahead"] == {"mode": "always", "break_even": {}}  # as configured
        # A batch speculates row by row: rows join and leave mid-flight, output unchanged.
        before = status(spec)["replicas"][0]["engine"]["speculation"]["drafts"]
        lengths = [40, 24, 36, 30]  # long enough for 3-4 rows to overlap, k = 3 included
        got = _staggered(spec, lengths)
        for out, full, n in zip(got, batch_expected, lengths, strict=True):
            assert full.startswith(out) and out, (n, out, full)
        spec_stats = status(spec)["replicas"][0]["engine"]["speculation"]
        assert spec_stats["drafts"] - before >= sum(lengths) // (k + 1)
        assert "batch size 3-4" in spec_stats["by_batch_size"]  # a governor of its own
        assert spec_stats["drafts"] > 0 and spec_stats["accepted_tokens"] > 0
        metrics = httpx.get(f"{spec.url}/metrics").text
        assert "cluster:spec_decode_num_drafts_total" in metrics
        last = f'position="{k - 1}"'
        assert (
            f'cluster:spec_decode_num_accepted_tokens_per_pos_total{{model_name="glm-5-fixture",{last}'
            in metrics
        )
    finally:
        spec.stop()
