"""The data path's arrows point one way (HTTP -> coordinator -> router -> rpc -> engine): a
package never imports from one above it (the running coordinator's MLX-free process is
checked in tests/cluster/test_server.py)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "cluster"
# package -> packages (and top-level modules) it must never import from
FORBIDDEN = {
    "engine": {"api", "coordinator", "router", "rpc", "launch", "serve"},
    "rpc": {"api", "coordinator", "router", "launch", "serve"},
    "router": {"api", "coordinator", "engine", "rpc", "launch", "serve"},
    "coordinator": {"api", "launch", "serve", "engine"},
    "types": {"api", "coordinator", "router", "rpc", "engine", "launch", "serve"},
    "wire": {"api", "coordinator", "router", "engine", "launch", "serve"},  # rpc: its protobuf
}


def imported(path: Path) -> set[str]:
    """The top-level cluster packages a module imports from, relative or absolute."""
    here = list(path.relative_to(PKG).with_suffix("").parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = here[: len(here) - node.level] + (node.module or "").split(".")
            parts = [p for p in parts if p]
            out |= {parts[0]} if parts else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cluster."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cluster.")}
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        if rel.parts[-1].endswith("_pb2.py") or rel.parts[-1].endswith("_pb2_grpc.py"):
            continue
        for target in imported(path) & FORBIDDEN.get(top, set()):
            found.append(f"{rel} imports from {target}/")
    return found


def test_no_package_imports_from_above_it():
    assert violations() == []


def test_the_checker_sees_an_upward_import():
    bad = PKG / "router" / "_upward_probe.py"
    bad.write_text("from ..coordinator.errors import Unavailable\n")
    try:
        assert "router/_upward_probe.py imports from coordinator/" in violations()
    finally:
        bad.unlink()
