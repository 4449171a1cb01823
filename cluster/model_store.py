"""Where models live: a directory given by the operator, or the built-in fixture model."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from . import __version__

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "glm-5-fixture"


def cache_home() -> Path:
    root = os.environ.get("CLUSTER_HOME") or Path.home() / ".cache" / "cluster"
    return Path(root)


TRAINED = Path(__file__).with_name("fixture") / "trained"


def default_model_dir(seed: int = 0) -> Path:
    """The trained fixture shipped in the package; else a random one built on first use."""
    if seed == 0 and (TRAINED / "model.safetensors").exists():
        return TRAINED
    target = cache_home() / "models" / f"glm5-fixture-v{__version__}-seed{seed}"
    if (target / "model.safetensors").exists():
        return target
    from .fixture.model import write_fixture

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        write_fixture(tmp, seed=seed)
        with contextlib.suppress(OSError):  # another process may have finished first
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_name(model: str) -> str:
    """The name a model spec is served under; needs no files (deploys name remote models)."""
    if model in (DEFAULT_MODEL, ""):
        return DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    return path.name if path.name not in ("", "..") else path.resolve().name  # `--model .`


def resolve_model(model: str) -> tuple[Path, str]:
    """(directory, served name) for a model spec."""
    if model in (DEFAULT_MODEL, ""):
        return default_model_dir(), model_name(model)
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist (a local checkpoint "
                                "directory, or 'default' for the built-in model)")  # fmt: skip
    if path.is_file():
        raise FileNotFoundError(f"{path} is a file: pass the model directory that holds it "
                                f"({path.parent})")  # fmt: skip
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    return path, model_name(model)
