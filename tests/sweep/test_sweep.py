"""`main.py sweep`: a grid file's points and names, bad files refused, and a real sweep on a tiny model that skips
finished points and resumes an interrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from main import main as entry
from tests.helpers import cli_args
from titlegen.errors import OptionError, run_main
from titlegen.sweep import runner
from titlegen.sweep.grid import load_sweep
from titlegen.sweep.runner import DONE, plan


def write_sweep(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def test_points_are_the_grids_product_with_readable_unique_names(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path / "s.yaml",
            configs=["full_lora.yaml"],
            grid={"model.learning_rate": [1e-4, 5e-4], "model.lora_scope": ["all", [0, 11]], "seed_everything": [1, 2]},
        )
    )
    assert sweep.experiment == "sweeps/s" and len(sweep.points) == 8
    names = [p.name for p in sweep.points]
    assert len(set(names)) == 8 and names[0] == "learning_rate=0.0001,lora_scope=all,seed_everything=1"
    assert "learning_rate=0.0005,lora_scope=0-11,seed_everything=2" in names
    assert sweep.points[-1].args() == [
        "--model.learning_rate=0.0005",
        "--model.lora_scope=[0, 11]",
        "--seed_everything=2",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"configs": ["full_lora.yaml"]}, "`grid` must map option names to lists"),
        ({"grid": {"model.lora_r": 8}}, r"grid option\(s\) \['model.lora_r'\] need a non-empty list"),
        ({"grid": {"model.lora_r": [8]}, "per_devices": 2}, r"unknown key\(s\) \['per_devices'\]"),
        ({"grid": {"model.lora_r": [8]}, "per_device": 0}, "per_device=0"),
        ({"grid": {"model.lora_r": [8]}, "fit": "no"}, "fit='no'"),
    ],
)
def test_bad_sweep_files_are_refused_with_the_key(tmp_path, fields, message):
    with pytest.raises(OptionError, match=message):
        load_sweep(write_sweep(tmp_path / "bad.yaml", **fields))


def test_a_test_only_sweep_plans_no_fit_and_needs_a_checkpoint(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "d.yaml", experiment="sweeps/d", fit=False, save_dir=str(tmp_path),
                             grid={"model.generation": ["greedy", "beam"]})  # fmt: skip
    sweep = load_sweep(sweep_file)
    plans = [plan(sweep, point, ["--ckpt_path=x.ckpt"]) for point in sweep.points]
    assert [p.fit for p in plans] == [None, None]
    assert (
        plans[1].test[0] == "test"
        and "--model.generation=beam" in plans[1].test
        and "--ckpt_path=x.ckpt" in plans[1].test
    )
    assert run_main(entry, ["sweep", "--config", str(sweep_file)]) == 2
    err = capsys.readouterr().err
    assert "fit: false" in err and "none is given" in err
    assert run_main(entry, ["sweep", "--config", str(sweep_file), "--ckpt_path", "last"]) == 2
    assert "--ckpt_path last names no checkpoint file" in capsys.readouterr().err
    # Tested on one checkpoint: done for it, not for another one.
    tested = tmp_path / "sweeps/d" / sweep.points[0].name / "version_0"
    tested.mkdir(parents=True)
    (tested / "metrics.json").write_text(json.dumps({"checkpoint": str(tmp_path / "a.ckpt")}))
    assert plan(sweep, sweep.points[0], ["--ckpt_path", str(tmp_path / "a.ckpt")]).test is None
    assert plan(sweep, sweep.points[0], [f"--ckpt_path={tmp_path / 'b.ckpt'}"]).test is not None


def test_a_missing_sweep_file_is_a_user_error(tmp_path, capsys):
    assert run_main(entry, ["sweep", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "error: --config" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_runs_skips_what_is_done_and_resumes_an_interrupted_point(tiny_model_dir, pairs_file, tmp_path, capsys):
    logs = tmp_path / "logs"
    run = cli_args(tiny_model_dir, tmp_path, source=pairs_file, batch_size=4, eval_batch_size=4, progress_bar=False)
    args = [a for a in run if not a.startswith("--trainer.logger.init_args.save_dir")]
    args += ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
             "--trainer.limit_test_batches=1", "--model.val_generate_samples=2"]  # fmt: skip
    sweep_file = write_sweep(tmp_path / "grid.yaml", experiment="sweeps/g", configs=["full_lora.yaml"], args=args,
                             save_dir=str(logs), per_device=2,
                             grid={"model.learning_rate": [1e-4, 1e-3], "model.lora_scope": ["all", [1]],
                                   "seed_everything": [1, 2]})  # fmt: skip
    sweep = load_sweep(sweep_file)
    # An interrupted point: its fit stopped at step 2 with a last.ckpt, and no fit.done marker.
    from titlegen.cli import main as lightning_cli

    interrupted = sweep.points[0]
    folder = logs / "sweeps/g" / interrupted.name
    logger = [
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--trainer.logger.init_args.name=sweeps/g/{interrupted.name}",
    ]
    lightning_cli(["fit", "--config", "full_lora.yaml", *args, *interrupted.args(), "--trainer.max_steps=2", *logger])
    assert (folder / "version_0/checkpoints/last.ckpt").is_file() and not (folder / DONE).exists()

    assert run_main(entry, ["sweep", "--config", str(sweep_file), "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "8 points, 0 done, 8 to run" in out and "all 8 points done" in out
    for point in sweep.points:
        tested = sorted((logs / "sweeps/g" / point.name).glob("version_*/metrics.json"))
        assert len(tested) == 1, point.name
        summary = json.loads(tested[0].read_text())
        assert summary["seed"] == int(point.name.rsplit("=", 1)[1])
    # The interrupted point resumed in its own version folder (no second fit folder) and trained to the end.
    import torch

    last = torch.load(folder / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4
    assert "Resuming from" in (folder / "sweep.log").read_text()
    assert [p.parent.name for p in folder.glob("version_*/checkpoints")] == ["version_0"]
    # Again: nothing left to run.
    assert run_main(entry, ["sweep", "--config", str(sweep_file), "--devices", "cpu"]) == 0
    assert "8 points, 8 done, 0 to run" in capsys.readouterr().out


class _Ended:
    """A point's process that has already exited with `returncode`."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode


def _fake_points(monkeypatch, outcomes: dict[str, list[str]]) -> list[str]:
    """Replace the point processes: each start of a point appends its next line of `outcomes` to its sweep.log and
    exits 0 where that line is "ok", else 1. Returns the names of the points started, in order."""
    started: list[str] = []

    def start(job, device):
        job.folder.mkdir(parents=True, exist_ok=True)
        line = outcomes[job.point.name][started.count(job.point.name)]
        started.append(job.point.name)
        with open(job.folder / "sweep.log", "a", encoding="utf-8") as log:
            log.write(line + "\n")
        return _Ended(0 if line == "ok" else 1)

    monkeypatch.setattr(runner, "_start", start)
    return started


OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_a_point_out_of_gpu_memory_beside_others_runs_again_alone(tmp_path, monkeypatch, capsys):
    sweep = load_sweep(write_sweep(tmp_path / "m.yaml", experiment="sweeps/m", save_dir=str(tmp_path),
                                   grid={"model.lora_r": [8, 16, 32]}))  # fmt: skip
    # lora_r=32 ran out of memory in an earlier sweep; this time it fails otherwise, and is not run again.
    (tmp_path / "sweeps/m/lora_r=32").mkdir(parents=True)
    (tmp_path / "sweeps/m/lora_r=32/sweep.log").write_text(OOM + "\n")
    started = _fake_points(monkeypatch, {"lora_r=8": ["ok"], "lora_r=16": [OOM, "ok"], "lora_r=32": ["ValueError"]})
    failed = runner.run(sweep, [], ["0"], 3)
    assert started == ["lora_r=8", "lora_r=16", "lora_r=32", "lora_r=16"]
    assert [job.point.name for job in failed] == ["lora_r=32"]
    assert "1 point(s) ran out of GPU memory beside others: again, one at a time per device" in capsys.readouterr().out


def test_a_point_out_of_gpu_memory_alone_is_not_run_again(tmp_path, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path / "m.yaml", experiment="sweeps/m", save_dir=str(tmp_path),
                                   grid={"model.lora_r": [8, 16]}))  # fmt: skip
    started = _fake_points(monkeypatch, {"lora_r=8": ["ok"], "lora_r=16": [OOM, "ok"]})
    failed = runner.run(sweep, [], ["0"], 1)
    assert started == ["lora_r=8", "lora_r=16"] and [job.point.name for job in failed] == ["lora_r=16"]


SWEEP_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@pytest.mark.parametrize("path", sorted(SWEEP_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_opens_with_its_command_and_its_points_parse(path, tmp_path):
    from titlegen.cli import main as lightning_cli

    assert path.read_text().startswith("# python main.py sweep --config sweeps/"), "the first line runs it"
    sweep = load_sweep(path)
    sweep.save_dir = str(tmp_path)
    for point in sweep.points:
        todo = plan(sweep, point, [] if sweep.fit else [f"--ckpt_path={tmp_path / 'x.ckpt'}"])
        # run=False parses and instantiates without a subcommand, which has no --ckpt_path.
        args = [a for a in (todo.fit or todo.test)[1:] if not a.startswith("--ckpt_path")]
        config = lightning_cli(args, run=False).config
        for key, value in point.values:
            if key == "config":  # a grid over experiment configs: the point's file is parsed last of them
                assert Path(config[key][-1]).name == value, point.name
            else:
                assert config[key] == value, (point.name, key)
