"""Shared fixtures: the fixture model, a loaded engine model, a real server subprocess."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    from cluster.fixture.model import write_fixture

    return write_fixture(tmp_path_factory.mktemp("model") / "glm5-fixture", seed=0)


@pytest.fixture(scope="session")
def loaded(model_dir):
    from cluster.engine.build import load_model

    model, tokenizer, config = load_model(model_dir)
    return model, tokenizer, config


class Server:
    """`python -m cluster serve` in a subprocess, stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict | None = None, timeout: float = 180):
        cmd = [sys.executable, "-m", "cluster", "serve", "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if m := re.search(r"serving (\S+) at (http://\S+)", line):
                self.model, self.base_url = m.group(1), m.group(2)
                self.url = self.base_url.removesuffix("/v1")
                return
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="none", max_retries=0, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    srv = Server(["--model", str(model_dir)], env={"CLUSTER_HOME": str(home)})
    yield srv
    srv.stop()


def reference_prompt_logprobs(model, prompt: list[int]) -> list[float]:
    """Each prompt token's log-probability from one plain mlx-lm forward over the prompt."""
    import mlx.core as mx

    logits = model(mx.array(prompt)[None])[0].astype(mx.float32)
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(lp[:-1], mx.array(prompt[1:])[:, None], axis=-1)[:, 0].tolist()
