"""Running a sweep's points: each an ordinary `fit` then `test` (`test` alone where the sweep file says `fit: false`)
in its own process, several at once per device.

A point's state is read from its run folders, so running the sweep again skips what is done and goes on where it
stopped: `test` results present means done; a `fit.done` marker means only `test` is left; a `last.ckpt` without
the marker means an interrupted fit, resumed with `--ckpt_path last`. The same reading lets a point that ran out of
GPU memory beside others run again, alone, where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from titlegen.sweep.grid import Point, Sweep

DONE = "fit.done"
# Each point's process writes its output here, one run after another.
LOG = "sweep.log"


@dataclass
class Plan:
    """What one point still needs: the `fit` and `test` argument lists (None when that part is done)."""

    point: Point
    folder: Path
    fit: list[str] | None
    test: list[str] | None


def plan(sweep: Sweep, point: Point, extra: list[str]) -> Plan:
    name = f"{sweep.experiment}/{point.name}"
    folder = Path(sweep.save_dir, name)
    configs = [arg for config in sweep.configs for arg in ("--config", config)]
    logger = [f"--trainer.logger.init_args.save_dir={sweep.save_dir}", f"--trainer.logger.init_args.name={name}"]
    common = [*configs, *sweep.args, *point.args(), *logger, *extra]
    tested = _tested(folder, None if sweep.fit else ckpt_arg([*sweep.args, *extra]))
    fitted = (folder / DONE).is_file()
    started = any(folder.glob("version_*/checkpoints/last*.ckpt"))
    fit = None if fitted or tested or not sweep.fit else ["fit", *common, *(["--ckpt_path=last"] if started else [])]
    return Plan(point, folder, fit, None if tested else ["test", *common])


def ckpt_arg(args: list[str]) -> str | None:
    """The value of `--ckpt_path` among command-line arguments (`--ckpt_path=x` or `--ckpt_path x`), else None."""
    for i, arg in enumerate(args):
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
        if arg == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
    return None


def _tested(folder: Path, checkpoint: str | None) -> bool:
    """Whether the point has a test run; of `checkpoint` where one is given (a test-only sweep run again on
    another checkpoint tests it again, in a new version folder)."""
    for metrics in folder.glob("version_*/metrics.json"):
        if checkpoint is None:
            return True
        try:
            tested = json.loads(metrics.read_text()).get("checkpoint")
        except (OSError, json.JSONDecodeError):
            continue
        if tested and Path(tested).resolve() == Path(checkpoint).resolve():
            return True
    return False


def devices(requested: list[str] | None) -> list[str]:
    """The devices to spread points over: the GPUs this process sees (or `requested`), else the CPU."""
    if requested:
        return requested
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] or ["cpu"]


def run(sweep: Sweep, extra: list[str], device_list: list[str], per_device: int) -> list[Plan]:
    """Run every point that is not done, at most `per_device` at once on each device; return the points that failed.

    A point that ran out of GPU memory beside others is run once more after the rest, alone on its device: its
    `last.ckpt` (or its finished fit) lets it go on where it stopped."""
    plans = [plan(sweep, point, extra) for point in sweep.points]
    todo = [p for p in plans if p.fit or p.test]
    print(f"sweep {sweep.experiment}: {len(plans)} points, {len(plans) - len(todo)} done, {len(todo)} to run on"
          f" {len(device_list)} device(s) x {per_device}", flush=True)  # fmt: skip
    failed = _run_all(todo, device_list, per_device)
    crowded = [job for job, out_of_memory in failed if out_of_memory] if per_device > 1 else []
    if crowded:
        print(f"  {len(crowded)} point(s) ran out of GPU memory beside others: again, one at a time per device",
              flush=True)  # fmt: skip
        again = _run_all([plan(sweep, job.point, extra) for job in crowded], device_list, 1)
        failed = [f for f in failed if f[0] not in crowded] + again
    return [job for job, _ in failed]


def _run_all(todo: list[Plan], device_list: list[str], per_device: int) -> list[tuple[Plan, bool]]:
    """Run the plans, `per_device` at once per device; the failed ones, each with whether it ran out of memory."""
    todo = list(todo)
    slots = [device for device in device_list for _ in range(per_device)]
    running: dict[int, tuple[subprocess.Popen, Plan, float, int]] = {}
    failed: list[tuple[Plan, bool]] = []
    free = list(range(len(slots)))
    while todo or running:
        while todo and free:
            slot = free.pop(0)
            job = todo.pop(0)
            log_start = _log_size(job.folder)
            running[slot] = (_start(job, slots[slot]), job, time.perf_counter(), log_start)
            print(f"  start  {job.point.name} on {_where(slots[slot])}", flush=True)
        time.sleep(0.5)
        for slot, (process, job, started, log_start) in list(running.items()):
            if process.poll() is None:
                continue
            del running[slot]
            free.append(slot)
            minutes = (time.perf_counter() - started) / 60
            if process.returncode:
                failed.append((job, _ran_out_of_memory(job.folder, log_start)))
                print(f"  FAILED {job.point.name} (exit {process.returncode}, {minutes:.1f} min): see"
                      f" {job.folder / LOG}", flush=True)  # fmt: skip
            else:
                print(f"  done   {job.point.name} ({minutes:.1f} min)", flush=True)
    return failed


# What torch prints when the caching allocator cannot get the memory (torch.OutOfMemoryError's message).
_OUT_OF_MEMORY = ("CUDA out of memory", "OutOfMemoryError")


def _log_size(folder: Path) -> int:
    log = folder / LOG
    return log.stat().st_size if log.is_file() else 0


def _ran_out_of_memory(folder: Path, start: int) -> bool:
    """Whether the point's run, which wrote its sweep.log from byte `start` on, stopped for want of GPU memory."""
    with open(folder / LOG, "rb") as log:
        log.seek(start)
        text = log.read().decode("utf-8", errors="replace")
    return any(sign in text for sign in _OUT_OF_MEMORY)


def _where(device: str) -> str:
    return "the CPU" if device == "cpu" else f"GPU {device}"


def _start(job: Plan, device: str) -> subprocess.Popen:
    job.folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = device
    plan_file = job.folder / "sweep_point.json"
    plan_file.write_text(json.dumps({"fit": job.fit, "test": job.test, "done": str(job.folder / DONE)}))
    command = [sys.executable, "-m", "titlegen.sweep.worker", str(plan_file)]
    with open(job.folder / LOG, "a", encoding="utf-8") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
