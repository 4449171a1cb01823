"""Claude Code itself, the released binary from npm, against a real server on the trained
built-in model over `/v1/messages`: a tool loop (it reads the reply's `thinking` and `tool_use`
blocks, runs the tool, sends its `tool_result` back and takes the answer that ends the turn);
its whole default prompt and tools served; a rank stopped under its request costing it
nothing; the context limit it reads from our 400; its Ctrl-C stopping the reply on the replica.

Slow (`make test-slow`): it installs `@anthropic-ai/claude-code` with npm (about 430 MB, once
per machine, into ~/.cache) unless `CLAUDE_CODE_BIN` names a `claude` to use; skipped when
there is no npm or the registry cannot be reached.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import Server
from prometheus_client.parser import text_string_to_metric_families
from test_cluster import rank_pids

from cluster.model_store import TRAINED

pytestmark = pytest.mark.slow

VERSION = "2.1.337"
"""The Claude Code release the test pins: what it sends changes from release to release."""
MARKUP = ("<tool_call>", "</tool_call>", "<arg_key>", "<arg_value>", "<think>", "</think>")


def _claude() -> str:
    if given := os.environ.get("CLAUDE_CODE_BIN"):
        return given
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = cache / "cluster-tests" / f"claude-code-{VERSION}"
    binary = prefix / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        if shutil.which("npm") is None:
            pytest.skip("needs npm to install Claude Code (or CLAUDE_CODE_BIN)")
        prefix.mkdir(parents=True, exist_ok=True)
        cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
               f"@anthropic-ai/claude-code@{VERSION}"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not binary.exists():
            pytest.skip(f"could not install Claude Code from npm: {done.stderr[-500:]}")
    return str(binary)


def _server(home: Path, context: str | None = "65536") -> Server:
    """Claude Code's own system prompt and tools come to about 23K of the built-in model's
    tokens: past its 8,192, served at 65,536 (the plan says so); None: the model's own."""
    extra = ["--max-model-len", context] if context else []
    return Server(["--model", str(TRAINED), "--served-model-name", "glm-5", "claude-*", *extra],
                  env={"CLUSTER_HOME": str(home)})  # fmt: skip


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An empty project for Claude Code to work in, and its own HOME."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    return project, home


@pytest.fixture(scope="module")
def claude_server(tmp_path_factory):
    srv = _server(tmp_path_factory.mktemp("claude-code-home"))
    yield srv
    srv.stop()


def _command(claude: str, server: Server, prompt: str, bare: bool, max_tokens: int, home: Path):
    """Claude Code headless (`-p`), streaming its events as JSON lines, and its environment.
    bare: its tools cut to Read and a one-line system prompt (what the built-in model trained
    on); else Claude Code's own prompt and tools, whole."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_AUTH_TOKEN": "none",
        "ANTHROPIC_MODEL": "glm-5",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max_tokens),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    cmd = [claude, "-p", prompt, "--max-turns", "3", "--output-format", "stream-json",
           "--verbose", "--no-session-persistence"]  # fmt: skip
    if bare:
        cmd += ["--bare", "--tools", "Read", "--system-prompt", "You are a helpful assistant."]
    return cmd, env


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _session(claude: str, server: Server, project: Path, home: Path, prompt: str,
             bare: bool = True, max_tokens: int = 512) -> list[dict]:  # fmt: skip
    """One headless Claude Code session to its end: its stream-json events."""
    cmd, env = _command(claude, server, prompt, bare, max_tokens, home)
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or not bare, done.stdout[-2000:] + done.stderr[-2000:]
    return _events(done.stdout)


def _blocks(events: list[dict], role: str) -> list[dict]:
    return [b for e in events if e.get("type") == role for b in e["message"]["content"]
            if isinstance(b, dict)]  # fmt: skip


def _samples(server: Server):
    """The samples of the server's /metrics, read with prometheus_client's parser."""
    text = httpx.get(f"{server.url}/metrics").text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _metric(server: Server, name: str, **labels: str) -> float:
    """The value of `cluster:NAME` with those labels (the first such sample), else 0."""
    return next((s.value for s in _samples(server) if s.name == f"cluster:{name}"
                 and labels.items() <= s.labels.items()), 0.0)  # fmt: skip


def _served(server: Server) -> dict[str, float]:
    """Requests the server finished, by finish reason, and `prompt_tokens`, from /metrics."""
    out = {}
    for s in _samples(server):
        if s.name == "cluster:request_success_total":
            out[s.labels["finished_reason"]] = s.value
        elif s.name == "cluster:prompt_tokens_total":
            out["prompt_tokens"] = s.value
    return out


def test_claude_code_runs_a_tool_loop_against_the_cluster(claude_server, tmp_path):
    claude = _claude()
    before = _served(claude_server)
    project, home = _dirs(tmp_path)
    (project / "hello.py").write_text('print("hello")\n')
    events = _session(claude, claude_server, project, home,
                      "Please read the file with file_path hello.py.")  # fmt: skip

    result = events[-1]
    assert result["type"] == "result" and result["subtype"] == "success", result
    assert not result["is_error"] and result["stop_reason"] == "end_turn", result
    replies = _blocks(events, "assistant")
    calls = [b for b in replies if b["type"] == "tool_use"]
    assert [(c["name"], c["input"]) for c in calls] == [("Read", {"file_path": "hello.py"})]
    # Claude Code ran our tool_use and sent its result back under the same id.
    results = [b for b in _blocks(events, "user") if b.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [calls[0]["id"]]
    assert 'print("hello")' in str(results[0]["content"]) and not results[0].get("is_error")
    # Reasoning came back as thinking blocks, the last turn as text; no markup anywhere.
    kinds = [b["type"] for b in replies]
    assert kinds[0] == "thinking" and kinds[-1] == "text", kinds
    for b in replies:
        text = b.get("text") or b.get("thinking") or json.dumps(b.get("input", {}))
        assert text.strip() and not any(m in text for m in MARKUP), b
    # The second request reused the first's prompt from the replica's prefix cache.
    assert result["usage"]["cache_read_input_tokens"] > 0, result["usage"]
    after = _served(claude_server)
    served = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    served.pop("prompt_tokens")
    assert served == {"tool_calls": 1, "stop": 1}  # the tool call, then the answer


def test_claude_codes_whole_prompt_and_tools_are_served(claude_server, tmp_path):
    """Claude Code as it runs by default: its own system prompt (cache_control on its blocks),
    every tool it offers, its betas and metadata. The built-in model cannot follow that prompt
    (its replies run to the 64 tokens allowed, which Claude Code retries), but every request is
    served: no HTTP error reaches Claude Code, and each turn reads the one before it from the
    prefix cache."""
    claude = _claude()
    project, home = _dirs(tmp_path)
    before = _served(claude_server)
    events = _session(claude, claude_server, project, home, "hi", bare=False, max_tokens=64)
    result = events[-1]
    assert result["type"] == "result" and result["api_error_status"] is None, result
    after = _served(claude_server)
    served = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    prompts = served.pop("prompt_tokens")
    requests = sum(served.values())
    assert requests and set(served) <= {"stop", "length", "tool_calls"}, served
    assert prompts / requests > 8192  # the whole of Claude Code's prompt, every time
    assert result["usage"]["cache_read_input_tokens"] > 0, result["usage"]


def test_a_rank_that_hangs_under_claude_codes_request_costs_it_nothing(tmp_path):
    """The fault agents meet: the replica's rank stops answering (SIGSTOP: a hung process, a
    node asleep) while Claude Code's first request prefills. The supervisor finds it silent,
    restarts it, and the coordinator moves the request, which had no token yet, to the
    restarted replica: Claude Code sees no error and its session goes on."""
    claude = _claude()
    project, home = _dirs(tmp_path)
    srv = _server(tmp_path / "cluster-home")
    session = None
    try:
        cmd, env = _command(claude, srv, "hi", bare=False, max_tokens=64, home=home)
        session = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 120
        while _metric(srv, "num_requests_running", replica="r0") < 1:  # prefilling ~23K
            assert time.time() < deadline and session.poll() is None, "no request came"
            time.sleep(0.05)
        os.kill(rank_pids(srv)[("r0", 0)], signal.SIGSTOP)
        out, err = session.communicate(timeout=300)
        result = _events(out)[-1]
        assert result["type"] == "result" and result["api_error_status"] is None, result
        texts = [b.get("text", "") for b in _blocks(_events(out), "assistant")]
        # Claude Code's own cap on output (64 tokens here) is the only error it reports.
        assert all("output token maximum" in t for t in texts if "API Error" in t), texts
        assert _metric(srv, "routing_decisions_total", reason="failover") == 1
        assert _metric(srv, "request_success_total", finished_reason="error") == 0
    finally:
        if session is not None and session.poll() is None:
            session.kill()
        srv.stop()
    rest = srv.proc.stdout.read()
    assert "rank 0 is stopped (SIGSTOP); restarting it" in rest, rest[-3000:]


def test_claude_code_reads_the_context_limit_from_our_400(tmp_path):
    """At the built-in model's own 8,192 tokens Claude Code's default prompt does not fit: the
    400 (Anthropic's `prompt is too long: N tokens > 8192 maximum`) is what Claude Code parses
    to tell its user the limit and why (it compacts a longer conversation on the same error)."""
    claude = _claude()
    project, home = _dirs(tmp_path)
    srv = _server(tmp_path / "cluster-home", context=None)
    try:
        result = _session(claude, srv, project, home, "hi", bare=False, max_tokens=64)[-1]
    finally:
        srv.stop()
    assert result["api_error_status"] == 400, result
    assert result["terminal_reason"] == "prompt_too_long", result
    assert "limit 8192" in result["result"], result["result"]


def test_claude_code_interrupted_mid_reply_frees_the_replica(claude_server, tmp_path):
    """A user interrupts Claude Code (Ctrl-C) while a long reply is being written: its
    connection closes, and the replica stops the request at once (counted as an abort) instead
    of writing the rest of its 4,096 tokens for no one."""
    claude = _claude()
    project, home = _dirs(tmp_path)
    aborted = _metric(claude_server, "request_success_total", finished_reason="abort")
    cmd, env = _command(claude, claude_server, "hi", bare=False, max_tokens=4096, home=home)
    session = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while _metric(claude_server, "num_requests_running", replica="r0") < 1:
            assert time.time() < deadline and session.poll() is None, "no request came"
            time.sleep(0.05)
        time.sleep(3)  # past the prompt (cached from the test before, or prefilled) into the reply
        session.send_signal(signal.SIGINT)
        session.wait(timeout=30)
    finally:
        if session.poll() is None:
            session.kill()
    deadline = time.time() + 10
    while _metric(claude_server, "num_requests_running", replica="r0") > 0:
        assert time.time() < deadline, "the replica kept generating for a client that left"
        time.sleep(0.1)
    after = _metric(claude_server, "request_success_total", finished_reason="abort")
    assert after == aborted + 1
