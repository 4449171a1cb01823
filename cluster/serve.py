"""`cluster serve`: start the replicas of an inventory and one OpenAI endpoint in front of them."""

import asyncio
import logging
import signal
from dataclasses import dataclass

import uvicorn

from .api.app import create_app
from .config import EngineConfig
from .coordinator.coordinator import Coordinator, Replica
from .coordinator.tokenizer import PromptTokenizer
from .engine.client import LocalEngineClient
from .engine.service import EngineService
from .inventory import Inventory, load_inventory
from .models import resolve_model

log = logging.getLogger("cluster.serve")


@dataclass(frozen=True)
class ServeOptions:
    inventory: str | None = None
    host: str | None = None
    port: int | None = None
    model: str | None = None
    served_model_name: str | None = None


def build_coordinator(inventory: Inventory, options: ServeOptions, engine: EngineConfig):
    model_dir, name = resolve_model(options.model or inventory.model)
    name = options.served_model_name or name
    replicas = []
    for i in range(inventory.replicas):
        host = inventory.hosts[i % len(inventory.hosts)]
        service = EngineService(model_dir, engine, model_id=name)
        log.info("loading %s for replica r%d on %s", model_dir, i, host.name)
        service.start()
        ranks = [{"rank": 0, "node": host.name, "address": host.interconnect[0]}]
        replicas.append(Replica(f"r{i}", LocalEngineClient(service), engine.max_num_seqs, ranks))
    settings = {
        "engine": engine.__dict__,
        "inventory": inventory.source,
        "model_dir": str(model_dir),
    }
    return Coordinator(name, PromptTokenizer(model_dir), replicas, engine.max_queue, settings)


def serve(options: ServeOptions, engine: EngineConfig) -> None:
    inventory = load_inventory(options.inventory)
    host = options.host or inventory.coordinator_host
    port = options.port if options.port is not None else inventory.coordinator_port
    coordinator = build_coordinator(inventory, options, engine)
    app = create_app(coordinator)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    async def run():
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            print(f"serving {coordinator.model_name} at http://{host}:{bound}/v1", flush=True)
        await task
        await coordinator.close()

    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    asyncio.run(run())
    log.info("stopped")
