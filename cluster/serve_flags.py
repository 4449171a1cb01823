"""The `serve` command's options: one definition for the command line and for an
inventory's `serve_args` (the options a deployed cluster's coordinator and ranks run with)."""

import argparse
import json
from dataclasses import fields

from .config import EngineConfig

INVENTORY_OWNED = {
    "--inventory": "the inventory itself",
    "--launcher": "vars.launcher",
    "--host": "vars.coordinator_host",
    "--port": "vars.coordinator_port",
    "--model": "vars.model",
    "--served-model-name": "vars.served_model_name",
    "--speculation": "vars.speculation",
    "--num-speculative-tokens": "vars.num_speculative_tokens",
    "--mtp-weights": "vars.mtp_weights",
}
"""`serve` options an inventory sets with a var of its own, so not in its serve_args."""


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    for f in fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":  # --flag / --no-flag
            action = argparse.BooleanOptionalAction
            p.add_argument(flag, action=action, default=f.default, help=f.metadata["help"])
            continue
        kind = float if "float" in str(f.type) else int if "int" in str(f.type) else str
        shown = f.metadata["help"] + " (default: %(default)s)"
        p.add_argument(flag, type=kind, default=f.default, help=shown)


def engine_config(args) -> EngineConfig:
    return EngineConfig(**{f.name: getattr(args, f.name) for f in fields(EngineConfig)})


def template_args(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--chat-template-args is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(
            "--chat-template-args must be a JSON object, e.g. '{\"enable_thinking\": false}'"
        )
    return value


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Every `serve` option (the subcommand and serve_args parse alike)."""
    p.add_argument("--inventory", help="inventory YAML (default: the embedded local.yaml)")
    p.add_argument("--host", help="address to bind (default: the inventory's, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default: the inventory's, 8000)")
    p.add_argument("--model", help="model directory (default: the inventory's model)")
    p.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="model name clients use (default: dir name); further names are "
                        "accepted as aliases (e.g. the ones an agent asks for; '*' matches "
                        "any text: 'claude-*')")  # fmt: skip
    p.add_argument(
        "--load-timeout",
        type=float,
        help="seconds a replica may take to load (default: from the checkpoint's size per rank, "
        "at least 600)",
    )
    p.add_argument(
        "--probe-seconds",
        type=float,
        default=30.0,
        help="an idle replica generates one token this often, or leaves ready (0: never)",
    )
    p.add_argument(
        "--chat-template-args",
        help="JSON defaults for the chat template, e.g. '{\"enable_thinking\": false}'; "
        "a request's chat_template_kwargs override them",
    )
    p.add_argument(
        "--thinking-budget",
        type=int,
        default=None,
        help="thinking tokens a reply may take before the server writes </think>, for requests "
        "that set no budget of their own (default: no limit)",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=None,
        help="tokens a reply may take when its request sets no max_tokens (default: the room "
        "the context leaves; Codex sends none, so a reply that loops would run that far)",
    )
    p.add_argument(
        "--no-tool-call-grammar",
        action="store_true",
        help="let the model write tool calls freely (default: each call is kept to an offered "
        "tool's name, its keys and the values its schema lists)",
    )
    p.add_argument(
        "--routing",
        default="prefix_affinity",
        choices=["prefix_affinity", "round_robin", "least_loaded"],
        help="how requests pick a replica (default prefix_affinity; x-session-id sticks)",
    )
    p.add_argument(
        "--launcher",
        choices=["local", "ssh", "ray", "service"],
        help="how ranks start (default: the inventory's; service: attach to launchd/systemd ranks)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        help="require this bearer key (repeatable; or CLUSTER_API_KEY)",
    )
    add_engine_flags(p)


class _Refused(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits; an inventory's caller says where
        raise ValueError(message)


def parse_serve_args(argv: list[str] | tuple[str, ...]) -> argparse.Namespace:
    """An inventory's serve_args as `serve` reads them; ValueError naming what is wrong."""
    for arg in argv:
        flag = str(arg).split("=", 1)[0]
        if flag in INVENTORY_OWNED:
            raise ValueError(f"{flag} is set by {INVENTORY_OWNED[flag]}, not in serve_args")
    parser = _Refused(prog="serve_args", add_help=False, allow_abbrev=False)
    add_serve_arguments(parser)
    args = parser.parse_args([str(a) for a in argv])
    template_args(args.chat_template_args)
    engine_config(args)  # its checks, now
    return args
