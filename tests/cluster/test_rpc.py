"""The gRPC protocol: generated stubs are current, the cluster token is enforced, no pickle."""

import asyncio
import contextlib
import queue
from pathlib import Path

import grpc
import pytest

from cluster.config import EngineConfig
from cluster.engine.service import EngineService
from cluster.rpc import codegen
from cluster.rpc.client import GrpcEngineClient
from cluster.rpc.server import serve_grpc
from cluster.types import EngineRequest, RequestId, SamplingParams


def test_generated_stubs_are_current():
    assert codegen.stale() == []


def test_no_pickle_anywhere_in_the_package():
    root = Path(codegen.__file__).resolve().parents[1]
    offenders = [p for p in root.rglob("*.py") if "import pickle" in p.read_text()]
    assert offenders == []


@pytest.fixture(scope="module")
def service(model_dir):
    svc = EngineService(model_dir, EngineConfig(), "fixture")
    svc.start()
    yield svc
    svc.stop()


def test_grpc_round_trip_and_token(service):
    async def scenario():
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {"replica": "t"}, "s3cret")
        try:
            good = GrpcEngineClient(f"127.0.0.1:{port}", "s3cret")
            info = await good.connect()
            assert info.model_type == "glm_moe_dsa" and info.max_model_len > 0
            sampling = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, seed=3)
            request = EngineRequest(RequestId("x1"), (2, 4, 7, 100, 200), sampling)
            events = [e async for e in good.generate(request)]
            assert sum(len(e.token_ids) for e in events) == 5
            assert events[-1].finish_reason == "length" and events[-1].prompt_tokens == 5
            assert (await good.status())["replica"] == "t"
            # Cache events: a snapshot of the blocks the request above stored, then changes.
            events = good.cache_events(snapshot=True)
            first = await anext(events)
            assert first.snapshot_done
            long_prompt = tuple(range(10, 80))  # 70 tokens: four full blocks of 16
            request = EngineRequest(RequestId("x2"), long_prompt, sampling)
            _ = [e async for e in good.generate(request)]
            change = await asyncio.wait_for(anext(events), 10)
            assert len(change.stored) >= 4 and not change.snapshot_done
            await events.aclose()
            for token in (None, "wrong"):
                bad = GrpcEngineClient(f"127.0.0.1:{port}", token)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await bad.connect()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                await bad.close()
            await good.close()
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_a_request_starts_before_its_stream_is_read_and_closing_it_unread_aborts(service):
    """The coordinator sends a request as soon as it is routed (the engine prefills while the
    HTTP headers go out); a client gone before the first read must not leave it running."""

    async def open_streams(client) -> int:
        return (await client.status())["open_streams"]

    async def scenario():
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {}, None)
        client = GrpcEngineClient(f"127.0.0.1:{port}")
        try:
            sampling = SamplingParams(max_tokens=3000, temperature=0.0, ignore_eos=True)
            events = client.generate(EngineRequest(RequestId("unread"), (5, 6, 7), sampling))
            async with asyncio.timeout(10):
                while await open_streams(client) != 1:  # running, though never read
                    await asyncio.sleep(0.05)
            await events.aclose()
            closed = asyncio.get_running_loop().time()
            async with asyncio.timeout(10):
                while await open_streams(client) != 0:
                    await asyncio.sleep(0.05)
            assert asyncio.get_running_loop().time() - closed < 2  # aborted, not run to its end
            assert service.stats()["num_running"] == 0
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(scenario())


def test_a_refused_request_fails_with_its_status_and_leaves_its_replica_ready(
    service, model_dir, monkeypatch, caplog
):
    """A call the leader's gRPC refuses for this request (here an event over the coordinator's
    message limit) ends the request with an error that names the status; the replica is not
    blamed as lost, marked suspect or failed over from: another would refuse it too."""
    from cluster.coordinator.coordinator import Coordinator
    from cluster.coordinator.errors import EngineFailure
    from cluster.coordinator.tokenizer import PromptTokenizer
    from cluster.rpc import tls

    async def scenario():
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {}, None)
        monkeypatch.setattr(tls, "MESSAGE_LIMITS", [("grpc.max_receive_message_length", 16)])
        client = GrpcEngineClient(f"127.0.0.1:{port}")
        try:
            coordinator = Coordinator("fixture", PromptTokenizer(model_dir), max_queue=4)
            coordinator.replicas.declare("r0", max_num_seqs=4, plan={}, ranks=[])
            coordinator.replicas.up("r0", client, stats={})
            sampling = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
            completion = coordinator.start(RequestId("big"), [2, 4, 7, 100], sampling)
            with pytest.raises(EngineFailure) as info:
                async with asyncio.timeout(30):
                    async for _ in completion:
                        pass
            assert "RESOURCE_EXHAUSTED" in str(info.value) and "lost" not in str(info.value)
            replica = coordinator.replicas["r0"]
            assert (replica.state, replica.in_flight) == ("ready", 0)
            assert "replica r0 refused request big" in caplog.text  # the operator's log says so
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(scenario())


def make_ca_and_leaf(folder: Path, name: str) -> dict[str, Path]:
    """A CA and a certificate it signed for 127.0.0.1, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, issuer, key, signer, ca: bool, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = cert(f"{name} CA", f"{name} CA", ca_key, ca_key, ca=True)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    leaf = cert(f"{name} node", f"{name} CA", leaf_key, ca_key, ca=False, san=san)
    pem = serialization.Encoding.PEM
    paths = {
        "ca": folder / f"{name}-ca.pem",
        "cert": folder / f"{name}.pem",
        "key": folder / f"{name}.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(leaf.public_bytes(pem))
    paths["key"].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def use_tls(monkeypatch, paths: dict[str, Path] | None) -> None:
    for var, key in (
        ("CLUSTER_TLS_CA", "ca"),
        ("CLUSTER_TLS_CERT", "cert"),
        ("CLUSTER_TLS_KEY", "key"),
    ):
        if paths:
            monkeypatch.setenv(var, str(paths[key]))
        else:
            monkeypatch.delenv(var, raising=False)


def test_grpc_mutual_tls_refuses_plaintext_and_foreign_certificates(service, tmp_path, monkeypatch):
    cluster_pki = make_ca_and_leaf(tmp_path, "cluster")
    rogue_pki = make_ca_and_leaf(tmp_path, "rogue")

    async def status_with(port: int, paths) -> dict:
        use_tls(monkeypatch, paths)
        client = GrpcEngineClient(f"127.0.0.1:{port}", "s3cret")
        try:
            await client.connect(timeout=3)
            return await client.status()
        finally:
            await client.close()

    async def scenario():
        use_tls(monkeypatch, cluster_pki)
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {"replica": "tls"}, "s3cret")
        try:
            assert (await status_with(port, cluster_pki))["replica"] == "tls"
            # Plaintext; a client that trusts no cluster CA; a client whose own certificate
            # another CA signed (it verifies the leader, the leader refuses it).
            impostor = rogue_pki | {"ca": cluster_pki["ca"]}
            for paths in (None, rogue_pki, impostor):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await status_with(port, paths)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_partial_tls_configuration_names_what_is_missing(tmp_path, monkeypatch):
    from cluster.rpc.tls import TlsFiles

    use_tls(monkeypatch, None)
    monkeypatch.setenv("CLUSTER_TLS_CERT", str(tmp_path / "x.pem"))
    with pytest.raises(ValueError, match="CLUSTER_TLS_CA, CLUSTER_TLS_KEY not set"):
        TlsFiles.from_env()


def test_bench_calls_a_leader_directly_over_grpc(service, model_dir, monkeypatch):
    from cluster.bench.grpc_target import close_clients, one_grpc_request
    from cluster.bench.prompts import Prompt

    monkeypatch.setenv("CLUSTER_TOKEN", "s3cret")
    monkeypatch.setenv("CLUSTER_BENCH_TOKENIZER", str(model_dir))
    use_tls(monkeypatch, None)

    async def scenario():
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {}, "s3cret")
        try:
            result = await one_grpc_request(f"grpc://127.0.0.1:{port}", Prompt("p", "hi"), 6)
            await close_clients()
            assert result.ok and result.completion_tokens == 6, result.error
            assert 0 < result.ttft_s <= result.total_s and result.prompt_tokens > 1
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def _until_end(events: queue.Queue, timeout: float) -> list:
    """A request's events from its sink's queue, up to the one that ends it."""
    got = [events.get(timeout=timeout)]
    while not (got[-1].finish_reason or got[-1].error):
        got.append(events.get(timeout=timeout))
    return got


def test_an_engine_loop_that_fails_outside_a_step_says_so_and_refuses_new_work(
    model_dir, monkeypatch
):
    """An abort that raises (outside the step's own guard) used to end the engine thread with
    nothing said: every later request waited forever. Now the replica is broken (the
    supervisor's cue to restart it), in-flight requests end with an error, and new ones are
    refused at once."""
    from cluster.engine.engine import Engine

    service = EngineService(model_dir, EngineConfig(), "fixture")
    service.start()
    try:

        def abort(self, request_id):
            raise RuntimeError("abort failed")

        monkeypatch.setattr(Engine, "abort", abort)
        sampling = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
        first: queue.Queue = queue.Queue()
        service.submit(EngineRequest(RequestId("a"), (2, 4, 7), sampling), first.put)
        first.get(timeout=30)  # it decodes
        service.abort(RequestId("a"))
        events = _until_end(first, timeout=10)
        assert events[-1].error and "engine loop failed" in events[-1].error
        stats = service.stats()
        assert "abort failed" in stats["broken"]
        later: queue.Queue = queue.Queue()
        service.submit(EngineRequest(RequestId("b"), (2, 4, 7), sampling), later.put)
        assert (end := _until_end(later, timeout=5)[-1]).error and "abort failed" in end.error
    finally:
        monkeypatch.undo()
        service.stop()


@contextlib.asynccontextmanager
async def _coordinator(service, model_dir, names: tuple[str, ...]):
    """A coordinator whose replicas `names` are each a gRPC client of one leader server."""
    from cluster.coordinator.coordinator import Coordinator
    from cluster.coordinator.tokenizer import PromptTokenizer

    server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {}, None)
    clients = {n: GrpcEngineClient(f"127.0.0.1:{port}") for n in names}
    try:
        coordinator = Coordinator("fixture", PromptTokenizer(model_dir), max_queue=4)
        for name, client in clients.items():
            coordinator.replicas.declare(name, max_num_seqs=4, plan={}, ranks=[])
            coordinator.replicas.up(name, client, stats={})
        yield coordinator
    finally:
        for client in clients.values():
            await client.close()
        await server.stop(0)


async def _failure(completion, seconds: float) -> str:
    """The error a completion ends with (it must end with one within `seconds`)."""
    from cluster.coordinator.errors import EngineFailure

    with pytest.raises(EngineFailure) as info:
        async with asyncio.timeout(seconds):
            async for _ in completion:
                pass
    return str(info.value)


def test_a_requests_own_fault_ends_it_where_it_is(service, model_dir, monkeypatch, caplog):
    """A request whose own limits fail (its grammar or thinking budget) ends with an error on
    its replica: it is not moved to another, which would fail it alike, and no replica is
    blamed."""
    from cluster.engine.grammar import Limiter

    def follow(self, output):
        raise RuntimeError("limits broke")

    async def scenario():
        async with _coordinator(service, model_dir, ("r0", "r1")) as coordinator:
            sampling = SamplingParams(max_tokens=4, temperature=0.0, banned_token_ids=(5,))
            completion = coordinator.start(RequestId("own"), [2, 4, 7, 100], sampling)
            assert "limits broke" in await _failure(completion, 30)
            states = [(r.state, r.in_flight) for r in coordinator.replicas]
            assert states == [("ready", 0), ("ready", 0)]
            assert "re-routing" not in caplog.text

    monkeypatch.setattr(Limiter, "follow", follow)
    asyncio.run(scenario())


def test_a_request_that_fails_on_every_replica_ends_after_two_moves(model_dir, monkeypatch, caplog):
    """A request whose step fails wherever it goes (a fault the engine cannot pin on it) moves
    at most twice, then ends with the error: before, it bounced between replicas for as long
    as any came back ready."""
    from cluster.engine.engine import Engine

    step = Engine.step

    def poisoned(self, *args, **kwargs):
        if any(s.request_id == "poison" for s in self.scheduler.waiting):
            raise RuntimeError("step failed")
        return step(self, *args, **kwargs)

    service = EngineService(model_dir, EngineConfig(), "fixture")
    service.start()

    async def scenario():
        async with _coordinator(service, model_dir, ("r0", "r1", "r2", "r3")) as coordinator:
            sampling = SamplingParams(max_tokens=4, temperature=0.0)
            completion = coordinator.start(RequestId("poison"), [2, 4, 7, 100], sampling)
            assert "step failed" in await _failure(completion, 20)
            assert "failed on 3 replicas in turn" in caplog.text
            ready = [r.name for r in coordinator.replicas if r.state == "ready"]
            assert len(ready) == 2  # the last one tried, and one never tried

    try:
        monkeypatch.setattr(Engine, "step", poisoned)
        asyncio.run(scenario())
    finally:
        monkeypatch.undo()
        service.stop()


SILENT_LEADER = """
import asyncio, sys
import grpc
from cluster.rpc.gen import engine_pb2 as pb
from cluster.rpc.tls import ACCEPT_PINGS

async def generate(request, context):
    await asyncio.sleep(float(sys.argv[1]))  # a long prefill: nothing sent meanwhile
    yield pb.GenerateChunk(request_id=request.request_id, token_ids=[5], finish_reason="stop")

async def main():
    server = grpc.aio.server(options=ACCEPT_PINGS)
    method = grpc.unary_stream_rpc_method_handler(
        generate, pb.GenerateRequest.FromString, pb.GenerateChunk.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("cluster.engine.v1.Engine", {"Generate": method}),))
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


def test_keepalive_ends_calls_to_a_leader_that_stopped_and_spares_a_silent_one(monkeypatch):
    """The coordinator's channel pings its leader (here every second, 15 s as shipped): a call
    silent through a long prefill lives on, one whose leader was stopped (SIGSTOP: its socket
    stays open, nothing answers) ends with an error event instead of waiting forever. The
    leader stand-in is a bare gRPC server with the leader's ping settings."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cluster.rpc import tls

    names = ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms")
    fast = [(k, 1000 if k in names else v) for k, v in tls.KEEPALIVE]
    monkeypatch.setattr(tls, "KEEPALIVE", fast)
    root = Path(codegen.__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", SILENT_LEADER, "4"], cwd=root,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(proc.stdout.readline())
        sampling = SamplingParams(max_tokens=1)

        async def call(rid: str):
            client = GrpcEngineClient(f"127.0.0.1:{port}")
            try:
                request = EngineRequest(RequestId(rid), (1, 2), sampling)
                async with asyncio.timeout(30):
                    return [e async for e in client.generate(request)]
            finally:
                await client.close()

        silent = asyncio.run(call("silent"))  # 4 s of silence, 4 pings answered
        assert [(e.token_ids, e.finish_reason) for e in silent] == [((5,), "stop")]

        async def stopped():
            task = asyncio.create_task(call("stopped"))
            await asyncio.sleep(1)
            os.kill(proc.pid, signal.SIGSTOP)
            started = time.monotonic()
            events = await task
            return events, time.monotonic() - started

        events, took = asyncio.run(stopped())
        assert events[-1].error and "lost the replica's leader" in events[-1].error, events
        assert took < 10, took
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_second_leader_cannot_bind_a_running_leaders_port():
    """gRPC sets SO_REUSEPORT by default: a restarted coordinator that could not reach the
    leader it had attached to started another on the same fixed port, both bound it, and
    connections went to either. A leader's port is its own now."""
    import asyncio
    import subprocess
    import sys

    import grpc

    from cluster.rpc.tls import LEADER, MESSAGE_LIMITS

    child = ("import asyncio, grpc, sys\n"
             "from cluster.rpc.tls import LEADER, MESSAGE_LIMITS\n"
             "async def main():\n"
             "    s = grpc.aio.server(options=MESSAGE_LIMITS + LEADER)\n"
             "    try:\n"
             "        s.add_insecure_port('127.0.0.1:' + sys.argv[1]); print('bound')\n"
             "    except RuntimeError:\n"
             "        print('refused')\n"
             "asyncio.run(main())\n")  # fmt: skip

    async def run() -> str:
        server = grpc.aio.server(options=MESSAGE_LIMITS + LEADER)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", child, str(port)],
                                          capture_output=True, text=True, timeout=60)  # fmt: skip
            return out.stdout.strip()
        finally:
            await server.stop(0)

    assert asyncio.run(run()) == "refused"


def test_the_leaders_watchdog_weighs_each_step_it_runs(service):
    """The service tells its watchdog each step's work as the engine schedules it (a unit test
    of the bound alone could not catch that wire missing)."""

    async def scenario():
        server, port, _ = await serve_grpc(service, "127.0.0.1", 0, {}, None)
        client = GrpcEngineClient(f"127.0.0.1:{port}")
        try:
            sampling = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
            prompt = tuple(10 + i % 3000 for i in range(600))
            _ = [e async for e in client.generate(EngineRequest(RequestId("w"), prompt, sampling))]
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(scenario())
    assert service.watchdog.rates  # a 600-token prompt: its chunk's rate
