"""Command line: `python -m cluster SUBCOMMAND`."""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .cli_models import add_model_file_commands
from .plan.spec_forecast import GLM5_ACCEPTANCE
from .serve_flags import add_engine_flags, add_serve_arguments, engine_config, template_args


def _serve(args) -> int:
    from .launch.blas import reexec_with_openblas

    reexec_with_openblas()
    from .serve import ServeOptions, serve

    env_key = os.environ.get("CLUSTER_API_KEY")  # set but empty is refused, not ignored
    options = ServeOptions(
        inventory=args.inventory,
        host=args.host,
        port=args.port,
        model=args.model,
        served_model_name=args.served_model_name[0] if args.served_model_name else None,
        model_aliases=tuple(args.served_model_name[1:]) if args.served_model_name else (),
        api_keys=(*(args.api_key or []), *([env_key] if env_key is not None else [])),
        routing=args.routing,
        launcher=args.launcher,
        chat_template_args=tuple(template_args(args.chat_template_args).items()),
        probe_seconds=args.probe_seconds,
        load_timeout=args.load_timeout,
        tool_call_grammar=not args.no_tool_call_grammar,
        thinking_budget=args.thinking_budget,
        default_max_tokens=args.default_max_tokens,
    )
    serve(options, engine_config(args))
    return 0


def _rank(args) -> int:
    from .launch.blas import reexec_with_openblas

    reexec_with_openblas()
    from .launch.rank import RankOptions, run_rank
    from .model_store import resolve_model

    options = RankOptions(
        model=str(resolve_model(args.model)[0]),
        model_id=args.model_id,
        rank=args.rank,
        world_size=args.world_size,
        backend=args.backend,
        hostfile=args.hostfile,
        grpc_host=args.grpc_host,
        grpc_port=args.grpc_port,
        replica=args.replica,
    )
    code = run_rank(options, engine_config(args))
    # Everything is stopped and written; leave without the interpreter's teardown, where
    # MLX's stream threads, destroyed while joinable, aborted the process after long runs
    # ("terminate called without an active exception" ending each rank's log).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _verify_cost(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 8.0:  # nan fails too
        raise argparse.ArgumentTypeError("a 2-token verify forward in plain decode steps: at "
                                          f"least 1 (one step), e.g. 1.2; not {text}")  # fmt: skip
    return value


def _acceptance(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if not values or any(not 0 <= v <= 1 for v in values) or list(values) != sorted(values)[::-1]:
        raise argparse.ArgumentTypeError("shares between 0 and 1, not increasing: 0.9,0.7,0.5")
    return values


def _plan(args) -> int:
    from .engine.speculation import has_mtp_weights
    from .inventory import load_inventory
    from .model_store import resolve_model
    from .models.tp_shards import split_tp
    from .plan.model_config import (
        given_config,
        missing_files,
        mtp_file_problem,
        read_config,
        stored_bits,
        unrunnable,
    )
    from .plan.planner import make_plan
    from .plan.presets import PRESETS
    from .plan.render import render_plan

    inventory = load_inventory(args.inventory)
    mtp = split = None  # not knowable without the checkpoint
    name = args.model or inventory.model
    if args.model_config:  # a file, or a preset's name (as deploy takes it)
        config = given_config(args.model_config)
    elif name in PRESETS:
        config = PRESETS[name]
    else:
        if name != "default" and not Path(name).expanduser().exists():
            whose = "the inventory's model" if not args.model else "--model"
            near = [p for p in PRESETS if p.replace("-", "") == name.lower().replace("-", "")]
            hint = f"did you mean the preset {near[0]}? " if near else ""
            print(f"error: {whose} {name} is not on this machine (a path on the nodes?): "
                  f"{hint}plan with --model and a preset ({', '.join(PRESETS)}), a local "
                  "copy, or --model-config CONFIG.json", file=sys.stderr)  # fmt: skip
            return 1
        model_dir = resolve_model(name)[0]
        config = read_config(model_dir)
        if why := missing_files(model_dir):  # what serve would refuse: say it before
            print(f"error: {why}", file=sys.stderr)
            return 1
        mtp = has_mtp_weights(model_dir, config)
        split = split_tp(model_dir)
    if why := unrunnable(config):
        print(f"error: {why}", file=sys.stderr)
        return 1
    unseen = None
    if given := args.mtp_weights or inventory.mtp_weights:  # a path on the nodes: read at serve
        mtp = True
        if not Path(given).expanduser().exists():
            unseen = (f"note: the MTP weights {given} are not on this machine: planned as if "
                      "every node has them (serve fails to load a replica whose node does "
                      "not)")  # fmt: skip
        elif why := mtp_file_problem(given, config):
            print(f"error: --mtp-weights: {why}", file=sys.stderr)
            return 1
    stored = stored_bits(config)
    bits = args.bits or stored or inventory.quantization_bits
    notes = [unseen] if unseen else []
    if args.bits and stored and args.bits != stored:
        notes.append(f"note: the checkpoint stores {stored}-bit weights and serve runs them so; "
                     f"this plan is for a {args.bits}-bit copy you would make first")  # fmt: skip
    try:
        plan = make_plan(config, bits, inventory, mtp, split, args.mtp_acceptance,
                         args.verify_cost)  # fmt: skip
    except (KeyError, TypeError) as e:  # a config.json missing a field or mistyped
        print(f"error: the model config lacks or mistypes a field the planner reads ({e!r}); "
              "check it against the checkpoint's own config.json", file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps(plan.to_json(), indent=2) if args.json else render_plan(plan))
    for note in notes:
        print(note, file=sys.stderr if args.json else sys.stdout)
    return 0 if plan.unservable() is None else 1


def _status(args) -> int:
    from .status_view import fetch_status, render_status

    url = args.url
    if url is None:  # where the inventory's coordinator listens
        from .inventory import load_inventory

        inv = load_inventory(args.inventory)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(inv.coordinator_host, inv.coordinator_host)
        url = f"http://{host}:{inv.coordinator_port}"
    key = args.api_key or os.environ.get("CLUSTER_API_KEY")
    try:
        status = fetch_status(url, api_key=key)
    except OSError as e:
        hint = ("; give --api-key (or CLUSTER_API_KEY)" if "401" in str(e) and not key
                else "; is it serving there? (--url, or --inventory for its port)")  # fmt: skip
        print(f"error: cannot read {url}/v1/status: {e}{hint}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def _bench(args) -> int:
    from .bench.main import run

    return run(args)


def _deploy(args) -> int:
    from .deploy.main import deploy_command

    return deploy_command(args)


def _deploy_render(args) -> int:
    from .deploy.main import render_command

    return render_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster", description="Serve GLM-5 across Apple-silicon Macs, one OpenAI endpoint."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="start the replicas of an inventory and the OpenAI endpoint")
    add_serve_arguments(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("plan", help="show how an inventory would place the model, or why not")
    p.add_argument("--inventory", help="inventory YAML (default: the embedded local.yaml)")
    p.add_argument(
        "--model",
        help="model directory, or a preset to plan before downloading: glm-5, glm-5.1, "
        "deepseek-v3.2 "
        "(default: the inventory's model)",
    )
    p.add_argument(
        "--model-config", help="a config.json instead of a model directory, or a preset (glm-5)"
    )
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 5, 6, 8, 16, 32),
                   help="bits per weight (default: checkpoint or inventory)")  # fmt: skip
    p.add_argument(
        "--mtp-acceptance",
        type=_acceptance,
        default=GLM5_ACCEPTANCE,
        help="for the MTP forecast: the share of steps whose first 1, 2, ... drafts are accepted, "
        "e.g. 0.9,0.7,0.5 (default: GLM-5's published 0.938,0.769,0.572)",
    )
    p.add_argument(
        "--verify-cost",
        type=_verify_cost,
        help="for the MTP forecast: a measured 2-token verify forward, in plain decode steps "
        "(default: from the bytes it reads)",
    )
    p.add_argument(
        "--mtp-weights",
        help="a safetensors file with the MTP layer, for a checkpoint without it (default: the "
        "inventory's mtp_weights)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)

    p = sub.add_parser("status", help="nodes, replicas, ranks and state of a running cluster")
    p.add_argument("--url", help="the coordinator's URL (default: the inventory's)")
    p.add_argument("--inventory", help="inventory YAML whose coordinator to ask (default: the "
                   "embedded local.yaml, http://127.0.0.1:8000)")  # fmt: skip
    p.add_argument("--api-key", help="the cluster's key, if it has one (or CLUSTER_API_KEY)")
    p.add_argument("--json", action="store_true", help="print /v1/status as JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser("bench", help="benchmark OpenAI endpoints; reports like the seeds'")
    p.add_argument(
        "--base-url",
        required=True,
        help="endpoint to measure (comma-separated: several; grpc://HOST:PORT: a leader directly)",
    )
    p.add_argument("--compare", help="more endpoints to run interleaved with the first")
    p.add_argument("--names", help="comma-separated names for the endpoints in reports")
    p.add_argument("--phases", default="sequential,concurrent,prefix-cache", help="phases to run")
    p.add_argument("--concurrency", type=int, default=4, help="parallel requests, concurrent phase")
    p.add_argument("--prompts", help="JSON list of prompts (default: the built-in set)")
    p.add_argument("--max-tokens", type=int, default=256, help="max tokens per request")
    p.add_argument(
        "--warmup", type=int, default=2, help="unmeasured requests per target before the phases"
    )
    p.add_argument(
        "--alternate",
        action="store_true",
        help="sequential phases: request i on every target (in a shuffled order), then request "
        "i+1 (fair on a machine whose speed drifts)",
    )
    p.add_argument("--model", help="model name to send (default: none, the server's own)")
    p.add_argument("--out", default="bench-out", help="directory for reports, JSON and plots")
    p.set_defaults(func=_bench)

    p = sub.add_parser("rank", help="run one rank of a replica (launchers start this)")
    p.add_argument("--model", required=True, help='model directory, or "default"')
    p.add_argument("--model-id", required=True, help="served model name (seeds block hashes)")
    p.add_argument("--replica", default="r0", help="replica name")
    p.add_argument("--rank", type=int, default=0, help="this rank; 0 is the leader")
    p.add_argument("--world-size", type=int, default=1, help="ranks in the replica")
    p.add_argument("--backend", default="ring", help="MLX distributed backend: ring|jaccl|mpi")
    p.add_argument("--hostfile", help="MLX hostfile: a path, or its JSON inline")
    p.add_argument("--grpc-host", default="127.0.0.1", help="leader: address for gRPC")
    p.add_argument("--grpc-port", type=int, default=0, help="leader: port for gRPC")
    add_engine_flags(p)
    p.set_defaults(func=_rank)

    p = sub.add_parser("deploy", help="install the cluster on an inventory's hosts (Ansible)")
    p.add_argument("--inventory", required=True, help="inventory YAML of the hosts to deploy to")
    p.add_argument("--check", action="store_true", help="dry run: show what would change")
    p.add_argument("--limit", help="only these hosts (Ansible's --limit pattern)")
    p.add_argument("--prefix", help="where on each host (default /opt/cluster)")
    p.add_argument(
        "--model-config",
        help="the model's config.json, or a preset (glm-5, glm-5.1), "
        "when the model is not on this machine",
    )
    p.add_argument(
        "--no-services", action="store_true", help="write service files but do not start them"
    )
    p.add_argument(
        "--remove", action="store_true", help="stop and remove this cluster's services instead"
    )
    p.add_argument("ansible_args", nargs="*", help="more ansible-playbook arguments, after --")
    p.set_defaults(func=_deploy)

    p = sub.add_parser("deploy-render", help="the files a deploy writes, as JSON (playbook)")
    p.add_argument("--inventory", required=True, help="inventory YAML")
    p.add_argument("--prefix", default="/opt/cluster", help="where on each host")
    p.add_argument(
        "--model-config",
        help="the model's config.json, or a preset (glm-5, glm-5.1), "
        "when the model is not on this machine",
    )
    p.add_argument("--wheel-dir", help="build this package's wheel into this directory")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.set_defaults(func=_deploy_render)

    add_model_file_commands(sub)
    return parser


def _with_serve_args(argv: list[str] | None, inventory: str | None) -> list[str]:
    from .inventory import load_inventory

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = list(load_inventory(inventory).serve_args)
    if any(a.split("=")[0] == "--api-key" for a in argv):  # repeatable: given here, it replaces
        extra = _without("--api-key", extra)
    at = argv.index("serve") + 1
    return [*argv[:at], *extra, *argv[at:]]


def _without(flag: str, args: list[str]) -> list[str]:
    """args without `flag VALUE` and `flag=VALUE`."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":  # the inventory's serve_args first: flags given here win
            args = parser.parse_args(_with_serve_args(argv, args.inventory))
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before serve's own handlers are in place
        print("interrupted", file=sys.stderr)
        return 130
