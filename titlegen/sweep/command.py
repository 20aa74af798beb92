"""`python main.py sweep --config sweeps/<name>.yaml`: run a grid of `fit` + `test` points, resumable."""

from __future__ import annotations

import argparse

from titlegen.errors import OptionError, TitleGenError
from titlegen.sweep import runner
from titlegen.sweep.grid import load_sweep


class SweepFailed(TitleGenError):
    """Some points failed; each one's log says why."""

    exit_status = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py sweep",
        description="Run every point of a sweep file's grid as an ordinary `fit` then `test` (only `test`, of the"
        " checkpoint given with --ckpt_path, where the file says `fit: false`), logged under"
        " <save_dir>/<experiment>/<point>/. Points that finished are skipped; an interrupted one resumes from its"
        " last.ckpt; one that ran out of GPU memory beside others runs again at the end, alone on its device."
        " Options after the known ones are passed to every point (e.g. --trainer.max_steps 50).",
    )
    parser.add_argument("--config", required=True, help="the sweep file (sweeps/<name>.yaml)")
    parser.add_argument(
        "--devices", help="comma-separated GPU indices to use (default: every GPU this process sees; the CPU if none)"
    )
    parser.add_argument(
        "--per_device", type=int, help="points run at once on one device, >= 1 (default: the sweep file's, else 1)"
    )
    parser.add_argument("--dry_run", action="store_true", help="list the points and what each still needs, run none")
    return parser


def main(args: list[str]) -> None:
    options, extra = build_parser().parse_known_args(args)
    sweep = load_sweep(options.config)
    checkpoint = runner.ckpt_arg([*sweep.args, *extra])
    if not sweep.fit and (checkpoint is None or not checkpoint.endswith(".ckpt")):
        given = "none is given" if checkpoint is None else f"--ckpt_path {checkpoint} names no checkpoint file"
        raise OptionError(
            f"{options.config}: fit: false tests every point on one checkpoint, and {given}."
            " Fix: add --ckpt_path <run>/checkpoints/<file>.ckpt to the command."
        )
    per_device = options.per_device or sweep.per_device
    if per_device < 1:
        raise OptionError(f"--per_device {per_device}: must be 1 or more.")
    if options.dry_run:
        for point in sweep.points:
            todo = runner.plan(sweep, point, extra)
            state = "done" if not (todo.fit or todo.test) else "test" if not todo.fit else "fit + test"
            print(f"{point.name}: {state}")
        return
    devices = runner.devices(options.devices.split(",") if options.devices else None)
    failed = runner.run(sweep, extra, devices, per_device)
    if failed:
        raise SweepFailed(
            f"{len(failed)} of {len(sweep.points)} sweep points failed: {', '.join(p.point.name for p in failed)}."
            " Fix: read each point's sweep.log, then run the same command again (finished points are skipped)."
        )
    print(f"sweep {sweep.experiment}: all {len(sweep.points)} points done; `python main.py report --sweep"
          f" {sweep.experiment}` tabulates them.")  # fmt: skip
