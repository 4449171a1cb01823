"""`cluster serve`: start the replicas of an inventory and one OpenAI endpoint in front of them."""

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn

from . import aio
from .api.app import create_app
from .api.chat import ChatDefaults
from .config import EngineConfig
from .coordinator.coordinator import Coordinator
from .coordinator.tokenizer import PromptTokenizer
from .coordinator.tool_grammar import warm as warm_tool_grammar
from .engine.speculation import has_mtp_weights
from .inventory import load_inventory
from .launch.local import LocalLauncher, ServiceLauncher, SshLauncher
from .launch.rank import shared_token
from .launch.supervisor import Supervisor
from .model_store import cache_home, resolve_model
from .models.tp_shards import split_tp
from .plan.model_config import (
    load_timeout,
    missing_files,
    mtp_file_problem,
    read_config,
    stored_bits,
    unrunnable,
)
from .plan.planner import make_plan
from .plan.render import render_plan
from .rpc.tls import TlsFiles

log = logging.getLogger("cluster.serve")
SHUTDOWN_GRACE = 5.0
"""Seconds the HTTP server waits at shutdown for responses to finish once the replicas' calls
have been ended (each stream then sends its error event and closes)."""


class PlanRefused(ValueError):
    pass


@dataclass(frozen=True)
class ServeOptions:
    inventory: str | None = None
    host: str | None = None
    port: int | None = None
    model: str | None = None
    served_model_name: str | None = None
    model_aliases: tuple[str, ...] = ()
    """Further model names requests may use for the served model."""
    api_keys: tuple[str, ...] = ()
    routing: str = "prefix_affinity"
    launcher: str | None = None
    """Overrides the inventory's launcher (deployed services use `service`)."""
    chat_template_args: tuple[tuple[str, object], ...] = ()
    """The chat template's defaults, e.g. (("enable_thinking", False),); requests override."""
    probe_seconds: float = 30.0
    """An idle replica generates one token this often, or leaves ready (0: never)."""
    load_timeout: float | None = None
    """Seconds a replica may take to load; default from the checkpoint's size per rank."""
    tool_call_grammar: bool = True
    """Keep the model's tool calls to the offered tools' names, keys and listed values."""
    thinking_budget: int | None = None
    """Thinking tokens a reply may take when its request sets no budget (None: no limit)."""
    default_max_tokens: int | None = None
    """Tokens a reply may take when its request sets no cap (None: the context's room; Codex
    sends none, so a reply that loops runs to the context's end)."""

    def __post_init__(self):
        checks = {
            "--port": (self.port is None or 0 <= self.port <= 65535, "a port from 1 to 65535 "
                       "(0: any free one)"),
            "--served-model-name": (self.served_model_name is None
                                    or bool(self.served_model_name.strip())
                                    and all(a.strip() for a in self.model_aliases),
                                    "names that are not empty"),
            "--probe-seconds": (self.probe_seconds >= 0, "seconds >= 0 (0: never probe)"),
            "--load-timeout": (self.load_timeout is None or self.load_timeout > 0,
                               "seconds > 0"),
            "--thinking-budget": (self.thinking_budget is None or self.thinking_budget >= 0,
                                  "tokens >= 0"),
            "--default-max-tokens": (self.default_max_tokens is None
                                     or self.default_max_tokens >= 1, "tokens >= 1"),
        }  # fmt: skip
        for flag, (ok, wanted) in checks.items():
            if not ok:
                raise ValueError(f"{flag}: {wanted} (got {getattr(self, _attr(flag))!r})")


def _attr(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::"}


def physical_gb() -> float | None:
    """This machine's memory in GB (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def check_bind(host: str, port: int) -> None:
    """Refuse a host or port the coordinator cannot bind, before any replica loads (a real
    GLM-5 takes minutes to load)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise PlanRefused(f"--host {host!r}: not an address of this machine ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise PlanRefused(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                              "free the port or choose another") from None  # fmt: skip


def cluster_token(persistent: bool) -> str:
    """The gRPC token: CLUSTER_TOKEN (or CLUSTER_TOKEN_FILE) if set; kept in CLUSTER_HOME when
    replicas may outlive this coordinator (fixed ports), so the next one can re-attach; else new
    for each run."""
    if token := shared_token():
        return token
    if not persistent:
        return secrets.token_hex(16)
    return stored_token(cache_home() / "cluster-token")


def stored_token(path: Path) -> str:
    """A token kept in a file readable by its owner only, made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip()


def make_launcher(inventory, run_dir, model: str, name: str, engine: EngineConfig, token: str):
    args = (run_dir, model, name, engine, token)
    if inventory.launcher == "service":
        return ServiceLauncher(*args)
    if inventory.launcher == "ssh":
        hosts = {h.name: h for h in inventory.hosts}
        return SshLauncher(*args, hosts=hosts, base_port=inventory.ring_base_port)
    if inventory.launcher == "ray":
        from .launch.ray_launcher import RayLauncher

        return RayLauncher(*args, address=inventory.ray_address, base_port=inventory.ring_base_port)
    return LocalLauncher(*args)


def serve(options: ServeOptions, engine: EngineConfig) -> None:
    for key in options.api_keys:  # an unset $KEY in `--api-key "$KEY"` left the server open
        if not key.strip() or key != key.strip():
            raise PlanRefused(f"--api-key / CLUSTER_API_KEY {key!r}: an empty key would serve "
                              "without one and a key with spaces around it cannot be sent: "
                              "give a key, or neither")  # fmt: skip
    inventory = load_inventory(options.inventory)
    if options.launcher:
        inventory = replace(inventory, launcher=options.launcher)
    engine = inventory.engine_config(engine)
    if engine.speculation_required and engine.speculation == "none":
        raise PlanRefused("--speculation-required needs --speculation (or the inventory's "
                          "speculation) other than none")  # fmt: skip
    model_dir, name = resolve_model(options.model or inventory.model)
    config = read_config(model_dir)
    if why := unrunnable(config):
        raise PlanRefused(f"{model_dir}: {why}")
    local = inventory.launcher == "local"  # the ranks read these files here, not on nodes
    if local and (why := missing_files(model_dir)):
        raise PlanRefused(why)
    given = engine.mtp_weights
    checkable = bool(given) and (local or Path(given).expanduser().exists())
    if checkable and (why := mtp_file_problem(given, config)):
        raise PlanRefused(f"--mtp-weights: {why}")
    mtp = bool(engine.mtp_weights) or has_mtp_weights(model_dir, config)
    if engine.speculation in ("mtp", "mtp+ngram") and not mtp:
        layer = config.get("num_hidden_layers")
        why = (f"--speculation {engine.speculation}: {model_dir} has no MTP layer "
               f"(model.layers.{layer}.*) and no --mtp-weights")  # fmt: skip
        if engine.speculation_required:  # known now: no replica needs to load to say so
            raise PlanRefused(f"{why} (no_mtp_weights); --speculation-required refuses to "
                              "serve without it")  # fmt: skip
        log.warning("%s: speculation will be off (no_mtp_weights)", why)
    if engine.draft_model and engine.speculation != "draft":
        log.warning("--draft-model %s is not used: --speculation is %s, not draft",
                    engine.draft_model, engine.speculation)  # fmt: skip
    elif engine.draft_model and local:  # found before the main model loads (minutes for GLM-5)
        draft = Path(engine.draft_model).expanduser()
        why = (f"{draft} does not exist" if not draft.exists()
               else missing_files(draft) if (draft / "config.json").is_file()
               else f"{draft} has no config.json")  # fmt: skip
        if why:
            raise PlanRefused(f"--draft-model: {why}")
    if engine.speculation == "draft" and not engine.draft_model:
        why = "--speculation draft needs --draft-model (a small model with the same vocabulary)"
        if engine.speculation_required:
            raise PlanRefused(f"{why} (no_draft_model); --speculation-required refuses to "
                              "serve without it")  # fmt: skip
        log.warning("%s: speculation will be off (no_draft_model)", why)
    bits = stored_bits(config) or inventory.quantization_bits
    plan = make_plan(config, bits, inventory, mtp, split_tp(model_dir),
                     draft_model=bool(engine.draft_model),
                     max_model_len=engine.max_model_len)  # fmt: skip
    why = plan.unservable()
    log.info("plan:\n%s", render_plan(plan, verdict=why is None))  # the error says why
    if why:
        raise PlanRefused(why)
    plans = list(plan.replicas)
    names = ((options.served_model_name, *options.model_aliases) if options.served_model_name
             else inventory.served_model_names)  # fmt: skip
    name, aliases = (names[0], tuple(names[1:])) if names else (name, ())
    host = options.host or inventory.coordinator_host
    port = options.port if options.port is not None else inventory.coordinator_port
    check_bind(host, port)
    if host not in LOOPBACK and not options.api_keys:
        log.warning("listening on %s with no --api-key: anyone who reaches port %d of this "
                    "machine can use the cluster", host, port)  # fmt: skip
    if local and (have := physical_gb()):  # every rank runs here: the plan's memory is ours
        for h in inventory.hosts:
            if h.memory_gb > 1.05 * have:
                log.warning("host %s says memory_gb %g, but this machine has %.0f GB: the "
                            "plan's KV budget counts memory that is not there (set memory_gb "
                            "to what the host has)", h.name, h.memory_gb, have)  # fmt: skip
    run_dir = cache_home() / "run" / str(os.getpid())
    ports = inventory.fixed_grpc_ports([p.name for p in plans])
    here = LOOPBACK | {host} if host in LOOPBACK | WILDCARD else {host}
    if clash := sorted(p.name for p in plans if ports.get(p.name) == port
                       and (p.leader.address in here or host in WILDCARD)):  # fmt: skip
        raise PlanRefused(f"the coordinator's port {port} is also replica {clash[0]}'s gRPC port "
                          "(grpc_base_port): give them different ports")  # fmt: skip
    token = cluster_token(bool(ports))
    launcher = make_launcher(inventory, run_dir, str(model_dir), name, engine, token)
    tls = TlsFiles.from_env()  # a partial TLS setup fails here, before any replica starts
    event_loop = aio.loop_name()  # so does a bad CLUSTER_EVENT_LOOP
    log.info("gRPC to replicas: %s", "mutual TLS" if tls else "plaintext, cluster token")
    settings = {
        "grpc_tls": tls is not None,
        "event_loop": event_loop,
        "engine": engine.__dict__,
        "inventory": inventory.source,
        "model_dir": str(model_dir),
        "chat_template_args": dict(options.chat_template_args),
        "tool_call_grammar": options.tool_call_grammar,
        "thinking_budget": options.thinking_budget,
        "default_max_tokens": options.default_max_tokens,
    }

    try:
        tokenizer = PromptTokenizer(model_dir)
    except Exception as e:  # a tokenizer file cut short or of another format
        raise PlanRefused(f"{model_dir}: its tokenizer cannot be read ({type(e).__name__}: "
                          f"{e}): download tokenizer.json and tokenizer_config.json "
                          "again") from None  # fmt: skip
    if clash := sorted(set(dict(options.chat_template_args)) & tokenizer.reserved_args):
        raise SystemExit(f"--chat-template-args: {', '.join(clash)} is set by the server from "
                         "each request, not a template variable")  # fmt: skip
    if tokenizer.markers is not None:
        warm_tool_grammar(tokenizer)
    settings["sampling_defaults"] = tokenizer.generation_defaults  # generation_config.json's
    coordinator = Coordinator(
        name,
        tokenizer,
        engine.max_queue,
        settings,
        policy=options.routing,
        block_size=engine.block_size,
        aliases=aliases,
        default_max_tokens=options.default_max_tokens,
    )
    supervisor = Supervisor(
        launcher,
        coordinator.replicas,
        token,
        engine.max_num_seqs,
        ports,
        probe_every=options.probe_seconds,
        probe_timeout=max(engine.step_timeout, 10.0) + 10.0,
        load_timeout=options.load_timeout
        or load_timeout(model_dir, min((len(p.ranks) for p in plans), default=1)),
    )

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: its terminal closed
            loop.add_signal_handler(sig, stop.set)
        defaults = ChatDefaults(
            dict(options.chat_template_args), options.tool_call_grammar, options.thinking_budget
        )
        app = create_app(coordinator, frozenset(options.api_keys), defaults)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=SHUTDOWN_GRACE,
            )
        )
        # Our handlers stop the cluster (below); uvicorn's would wait on open streams first.
        server.install_signal_handlers = lambda: None  # uvicorn before 0.29
        server.capture_signals = contextlib.nullcontext
        # HTTP opens before the replicas load (minutes for GLM-5): /health is 503 and
        # /v1/status shows the load until one serves; requests get a 503 meanwhile.
        task = asyncio.create_task(server.serve())
        stopped = asyncio.create_task(stop.wait())
        starting = None
        try:
            while not server.started and not task.done():
                await asyncio.sleep(0.05)
            if task.done():
                task.result()
                return
            bound = server.servers[0].sockets[0].getsockname()[1]
            log.info("HTTP open on %s port %d while the replicas load (503 until one serves)",
                     host, bound)  # fmt: skip
            starting = asyncio.create_task(supervisor.start(plans, supervisor.load_timeout))
            # A replica that serves is watched while the others still load.
            supervisor.watch([p.name for p in plans])
            await asyncio.wait({starting, stopped, task}, return_when="FIRST_COMPLETED")
            if task.done():  # the HTTP server ended while the replicas loaded: its error
                task.result()
                return
            if not starting.done():  # stopped while loading
                return
            starting.result()  # raises when no replica started: the reason, and exit
            coordinator.watch_caches()
            also = f" (aliases: {', '.join(coordinator.aliases)})" if coordinator.aliases else ""
            print(f"serving {name} at http://{host}:{bound}/v1{also}", flush=True)
            await asyncio.wait({task, stopped}, return_when="FIRST_COMPLETED")
        finally:
            coordinator.stopping = True
            supervisor.stopping = True  # no start or retry after this (a load in flight ends)
            if starting is not None and not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            try:
                await supervisor.end_calls()  # open streams end with an error event, not a cut
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
            finally:
                await supervisor.stop()  # the ranks stop whatever happened before
                log.info("stopped")

    aio.run(run())
