"""A sweep file: the configs and options every point shares, and the grid of option values; its points and names."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from titlegen.errors import OptionError

_KEYS = {"experiment", "configs", "args", "grid", "per_device", "save_dir", "fit"}


@dataclass(frozen=True)
class Point:
    """One run of the grid: its option values, in the grid's key order."""

    values: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        """Folder-safe, readable, unique within the grid: `learning_rate=0.0005,lora_scope=all,seed_everything=1`."""
        return ",".join(f"{key.rsplit('.', 1)[-1]}={_shown(value)}" for key, value in self.values)

    def args(self) -> list[str]:
        """The point's options as command-line arguments (values as JSON, which jsonargparse parses)."""
        return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in self.values]


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "-".join(map(_shown, value))
    return re.sub(r"[^0-9A-Za-z.+-]", "_", str(value))


@dataclass
class Sweep:
    """What `sweeps/<name>.yaml` holds."""

    path: Path
    experiment: str
    configs: list[str]
    args: list[str]
    grid: dict[str, list[Any]]
    per_device: int = 1
    save_dir: str = "lightning_logs"
    # False: every point only tests (a checkpoint given with --ckpt_path), e.g. decoding options on one model.
    fit: bool = True
    points: list[Point] = field(default_factory=list)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem is an `OptionError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"--config {path}: no such sweep file. Fix: give a YAML file such as sweeps/lr_scope.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise OptionError(f"{path}: not valid YAML ({err}). Fix: correct the file.") from err
    if not isinstance(raw, dict):
        raise OptionError(f"{path}: expected a mapping with `experiment`, `configs` and `grid`.")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise OptionError(f"{path}: unknown key(s) {unknown}. Fix: use only {sorted(_KEYS)}.")
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise OptionError(f"{path}: `grid` must map option names to lists of values, e.g. model.learning_rate: [1e-4].")
    bad = [key for key, values in grid.items() if not isinstance(values, list) or not values]
    if bad:
        raise OptionError(f"{path}: grid option(s) {bad} need a non-empty list of values.")
    experiment = raw.get("experiment") or f"sweeps/{path.stem}"
    per_device = raw.get("per_device", 1)
    if not isinstance(per_device, int) or per_device < 1:
        raise OptionError(f"{path}: per_device={per_device!r}: points run at once on one device must be 1 or more.")
    fit = raw.get("fit", True)
    if not isinstance(fit, bool):
        raise OptionError(f"{path}: fit={fit!r}: must be true (fit then test each point) or false (test only).")
    sweep = Sweep(
        path=path, experiment=str(experiment), configs=[str(c) for c in raw.get("configs") or []],
        args=[str(a) for a in raw.get("args") or []], grid=grid, per_device=per_device,
        save_dir=str(raw.get("save_dir") or "lightning_logs"), fit=fit,
    )  # fmt: skip
    keys = list(grid)
    sweep.points = [Point(tuple(zip(keys, combo, strict=True))) for combo in itertools.product(*grid.values())]
    return sweep
