"""`main.py report --sweep`: a row per point, the best setting per scope, and F1 against the learning rate, on point
folders named as `main.py sweep` names them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.report.mdtables import assert_tables_well_formed, interval, section, table_row
from tests.report.runfolders import per_title, write_fit_events, write_fit_run, write_test_run
from titlegen.report import command as report
from titlegen.report import figures, sweeps
from titlegen.sweep.grid import Point

IDS = [f"t{i}" for i in range(20)]
NOISE = np.random.default_rng(0).uniform(-0.05, 0.05, len(IDS))
BASE = {(1e-4, "all"): 0.40, (1e-3, "all"): 0.50, (1e-4, "last"): 0.45, (1e-3, "last"): 0.42}
SEED_SHIFT = {1: -0.01, 2: 0.01}
# Validation F1 at the end of each fit: it picks 0.001 for `last`, where the test F1 would pick 0.0001.
VAL = {(1e-4, "all"): 0.35, (1e-3, "all"): 0.45, (1e-4, "last"): 0.40, (1e-3, "last"): 0.44}


def point_name(**values: object) -> str:
    keys = {"learning_rate": "model.learning_rate", "lora_scope": "model.lora_scope", "lora_r": "model.lora_r"}
    return Point(tuple((keys.get(k, k), v) for k, v in values.items())).name


def write_point(logs: Path, sweep: str, name: str, seed: int, f1: float | None, val_f1: float, **fit: object) -> None:
    folder = logs / sweep / name
    checkpoint = write_fit_run(logs, folder / "version_0", seed, **fit)
    write_fit_events(folder / "version_0", 0.0, 10.0, [1.0], [1.0], {10: 0.1, 20: val_f1}, ".a")
    if f1 is not None:
        write_test_run(
            folder / "version_1",
            IDS,
            per_title(IDS, NOISE + f1, seed),
            "x",
            checkpoint,
            scope=str(fit.get("scope", "all")),
        )


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    for (rate, scope), f1 in BASE.items():
        for seed, shift in SEED_SHIFT.items():
            name = point_name(learning_rate=rate, lora_scope=scope, seed_everything=seed)
            write_point(
                logs,
                "sweeps/lr_scope",
                name,
                seed,
                f1 + shift,
                VAL[rate, scope] + shift,
                learning_rate=rate,
                scope=scope,
            )
    # Fitted, never tested; and a folder that is no point.
    write_point(
        logs,
        "sweeps/lr_scope",
        point_name(learning_rate=0.01, lora_scope="all", seed_everything=1),
        1,
        None,
        0.2,
        learning_rate=0.01,
    )
    (logs / "sweeps" / "lr_scope" / "notes").mkdir()
    for r, f1 in ((8, 0.3), (16, 0.35)):
        write_point(logs, "sweeps/rank", point_name(lora_r=r), 3407, f1, f1 - 0.05, lora_r=r, scope="last")
    return logs


def test_point_names_read_back_as_the_grid_values():
    assert sweeps.parse_point("learning_rate=0.0005,lora_scope=all,seed_everything=1") == {
        "learning_rate": 0.0005,
        "lora_scope": "all",
        "seed_everything": 1,
    }
    assert sweeps.parse_point(point_name(learning_rate=2e-3, lora_r=16)) == {"learning_rate": 0.002, "lora_r": 16}
    assert sweeps.parse_point("target_modules=q_proj-v_proj") == {"target_modules": "q_proj-v_proj"}
    assert sweeps.parse_point("version_0") is None and sweeps.parse_point("a=1,b") is None


def test_sweep_table_best_settings_and_figure(logs, tmp_path):
    out = tmp_path / "out"
    text = report.main(
        [
            "--logs",
            str(logs),
            "--out",
            str(out),
            "--sweep",
            "sweeps/lr_scope",
            "--sweep",
            "sweeps/rank",
            "--sweep",
            "sweeps/none",
            "--permutations",
            "99",
        ]
    ).read_text()
    assert assert_tables_well_formed(section(text, "Sweeps")) == 6, "points, best settings, paired: two sweeps"
    part = section(text, "Sweeps").split("### `sweeps/rank`")[0]
    assert table_row(part, "learning_rate")[:5] == [
        "learning_rate",
        "lora_scope",
        "seed_everything",
        "seeds",
        "BERTScore F1",
    ]
    rows = [line for line in part.splitlines() if line.startswith("| 0.0")]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| 0.0001", "all", "1"],
        ["| 0.0001", "all", "2"],
        ["| 0.0001", "last", "1"],
        ["| 0.0001", "last", "2"],
        ["| 0.001", "all", "1"],
        ["| 0.001", "all", "2"],
        ["| 0.001", "last", "1"],
        ["| 0.001", "last", "2"],
        ["| 0.01", "all", "1"],
    ], "numeric order of the learning rate, then scope, then seed"
    best_all = table_row(part, "0.001 | all | 2")
    assert best_all[4] == f"{0.51 + NOISE.mean():.3f}" and best_all[-2:] == ["0.460", "version_1"]
    assert table_row(part, "0.01 | all | 1")[3:5] == ["—", "no test run"]

    best = part.split("Best setting per LoRA scope", 1)[1]
    for scope, rate, f1, val in (("all", 0.001, 0.50, 0.45), ("last", 0.001, 0.42, 0.44)):
        row = table_row(best, scope)
        assert row[1:3] == [f"learning_rate={rate}, lora_scope={scope}", "1, 2"]
        mean, low, high = interval(row[3])
        half = 12.7062 * np.std([f1 - 0.01, f1 + 0.01], ddof=1) / np.sqrt(2)  # t(0.975, 1 degree of freedom)
        assert (mean, low, high) == pytest.approx(
            (f1 + NOISE.mean(), f1 + NOISE.mean() - half, f1 + NOISE.mean() + half), abs=6e-4
        )
        assert row[4:] == ["t over 2 seeds", f"{val:.3f}"]
    # Paired against each scope's best: the per-title differences are constant here, so the interval is a point.
    paired = best.split("Each scope's best setting against", 1)[1]
    for scope, diff in (("all", "+0.100"), ("last", "-0.030")):  # last's best by val F1 is worse on test
        row = table_row(paired, f"learning_rate=0.001,lora_scope={scope} − learning_rate=0.0001,lora_scope={scope}")
        assert row[1] == "20" and row[4] == f"{diff} [{diff}, {diff}]" and float(row[5]) < 0.05
    assert "](sweep_lr_scope_lr.png)" in text
    assert (out / "sweep_lr_scope_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rank = section(text, "Sweeps").split("### `sweeps/rank`")[1]
    assert table_row(rank, "8")[1:3] == ["3407", f"{0.3 + NOISE.mean():.3f}"]
    assert table_row(rank, "16")[2] == f"{0.35 + NOISE.mean():.3f}"
    assert table_row(rank.split("Best setting", 1)[1], "last")[1] == "lora_r=16"
    assert not (out / "sweep_rank_lr.png").exists(), "no learning rate in that grid"
    assert "- sweep **sweeps/none**: no point folders" in section(text, "Missing")

    data = json.loads((out / "summary.json").read_text())["sweeps"]
    assert list(data) == ["sweeps/lr_scope", "sweeps/rank"] and len(data["sweeps/lr_scope"]["points"]) == 9
    assert data["sweeps/lr_scope"]["best"]["all"]["values"] == {"learning_rate": 0.001, "lora_scope": "all"}
    against = data["sweeps/lr_scope"]["against_best"]
    assert [(c["a"], c["b"], round(c["diff"], 6)) for c in against] == [
        ("learning_rate=0.001,lora_scope=all", "learning_rate=0.0001,lora_scope=all", 0.1),
        ("learning_rate=0.001,lora_scope=last", "learning_rate=0.0001,lora_scope=last", -0.03),
    ]
    assert [(c["a"], c["b"]) for c in data["sweeps/rank"]["against_best"]] == [("lora_r=16", "lora_r=8")]


def test_learning_rate_lines_average_the_seeds(logs):
    sweep = sweeps.load_sweep(logs, "sweeps/lr_scope", resamples=10, seed=0)
    lines = figures.sweep_lines(sweep)
    assert list(lines) == ["lora_scope=all", "lora_scope=last"]
    expected = {
        scope: [
            (rate, f1 + NOISE.mean(), f1 - 0.01 + NOISE.mean(), f1 + 0.01 + NOISE.mean())
            for (rate, s), f1 in sorted(BASE.items())
            if s == scope
        ]
        for scope in ("all", "last")
    }
    for scope, points in lines.items():
        assert points == [pytest.approx(p) for p in expected[scope.split("=")[1]]]
    assert sweeps.load_sweep(logs, "sweeps/none", 10, 0) is None


def test_a_test_only_sweep_chooses_on_test_f1(tmp_path):
    # Every point tests one fit run: its validation F1 is the same for all and chooses nothing.
    logs = tmp_path / "logs"
    checkpoint = write_fit_run(logs, logs / "full_lora" / "version_0", 3407)
    write_fit_events(logs / "full_lora" / "version_0", 0.0, 10.0, [1.0], [1.0], {10: 0.5}, ".a")
    for strategy, f1 in (("beam", 0.40), ("greedy", 0.45), ("mbr", 0.42)):
        folder = logs / "sweeps/decoding" / point_name(**{"model.generation": strategy})
        write_test_run(folder / "version_0", IDS, per_title(IDS, NOISE + f1, 3407), "x", checkpoint)
    sweep = sweeps.load_sweep(logs, "sweeps/decoding", resamples=10, seed=0)
    assert [s.val_f1 for s in sweep.settings] == [0.5, 0.5, 0.5]
    assert sweep.best()["all"].values == {"generation": "greedy"}
    found = sweep.compare_with_best(resamples=10, permutations=99, seed=0)
    assert [(c.a, c.b, round(c.test.diff, 6), c.test.n) for c in found] == [
        ("generation=greedy", "generation=beam", 0.05, 20),
        ("generation=greedy", "generation=mbr", 0.03, 20),
    ]
    assert sweep.comparisons == found

    # `--experiments` with no name reports the sweep alone: no experiment is missing.
    out = tmp_path / "out"
    args = [
        "--logs",
        str(logs),
        "--out",
        str(out),
        "--experiments",
        "--sweep",
        "sweeps/decoding",
        "--permutations",
        "99",
    ]
    text = report.main(args).read_text()
    assert "## Missing" not in text and "## Hyperparameters" not in text
    assert table_row(text, "generation=greedy − generation=mbr")[4] == "+0.030 [+0.030, +0.030]"
