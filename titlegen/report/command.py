"""`python main.py report`: the study's comparison, from the experiments' `test` runs (and any sweeps) under
lightning_logs/, as OUT/summary.md with figures and OUT/summary.json with the same numbers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from titlegen.errors import OptionError
from titlegen.report import figures, records
from titlegen.report.document import Report, markdown
from titlegen.report.results import compare, summarize
from titlegen.report.runs import EXPERIMENTS, load_experiment
from titlegen.report.sweeps import load_sweep
from titlegen.report.tables import choose_examples


def build_report(
    logs: Path,
    experiments: list[str],
    sweeps: Sequence[str] = (),
    resamples: int = 2000,
    permutations: int = 9999,
    seed: int = 0,
    count: int = 5,
) -> Report:
    """Read the runs and compute every number; writes nothing."""
    loaded = {name: load_experiment(logs, name) for name in experiments}
    results = [summarize(experiment, resamples, seed) for experiment in loaded.values() if experiment is not None]
    found_sweeps = {name: load_sweep(logs, name, resamples, seed) for name in sweeps}
    for sweep in found_sweeps.values():
        if sweep is not None:
            sweep.compare_with_best(resamples, permutations, seed)
    return Report(
        logs=logs,
        results=results,
        comparisons=compare(results, resamples, permutations, seed),
        sweeps=[sweep for sweep in found_sweeps.values() if sweep is not None],
        missing_experiments=[name for name, experiment in loaded.items() if experiment is None],
        missing_sweeps=[name for name, sweep in found_sweeps.items() if sweep is None],
        examples=choose_examples(results, count, seed) if count > 0 else [],
        figures={},
        resamples=resamples,
        permutations=permutations,
        seed=seed,
    )


def draw_figures(report: Report, out: Path) -> None:
    """The figures there is data for; each one's file name and caption go into `report.figures`."""
    with_f1 = [result for result in report.results if "bertscore_f1" in result.estimates]
    if with_f1:
        figures.f1_bars(with_f1, out / "f1.png")
        report.figures["f1.png"] = "Test BERTScore F1 with 95% intervals"
    if report.results:
        figures.validation_curves(report.results, out / "val_curves.png")
        report.figures["val_curves.png"] = "Validation curves"
    for sweep in report.sweeps:
        name = f"sweep_{sweep.name}_lr.png"
        if figures.sweep_learning_rate(sweep, out / name) is not None:
            report.figures[name] = f"{sweep.experiment}: test F1 against the learning rate"


def write_report(report: Report, out: Path) -> Path:
    """Write out/summary.md, out/summary.json and the figures of a built report; returns the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    draw_figures(report, out)
    summary = out / "summary.md"
    summary.write_text(markdown(report), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(records.summary(report), indent=2) + "\n", encoding="utf-8")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py report",
        description="Compare the experiments' `test` runs (the newest per training seed) and tabulate sweeps: writes"
        " OUT/summary.md (means over seeds with 95% intervals, paired differences with p-values, hyperparameters,"
        " fit statistics, sweep tables, examples), OUT/summary.json (the same numbers) and the figures OUT/f1.png,"
        " OUT/val_curves.png and OUT/sweep_<name>_lr.png. Reads log files only: no model is loaded.",
    )
    parser.add_argument(
        "--logs", type=Path, default=Path("lightning_logs"), help="the runs' save_dir (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports"),
        help="folder for summary.md, summary.json and the figures (default: %(default)s)",
    )
    parser.add_argument(
        "--experiments",
        nargs="*",
        default=list(EXPERIMENTS),
        metavar="NAME",
        help="experiment (logger) names under --logs, in table order; none (`--experiments` alone) with --sweep"
        " reports only the sweeps (default: %(default)s)",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="EXPERIMENT",
        dest="sweeps",
        help="a sweep's experiment name under --logs, e.g. sweeps/lr_scope: a table of its points, the"
        " best setting per LoRA scope and a plot of F1 against the learning rate; repeatable",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="N",
        help="bootstrap resamples of the single-run intervals and of the paired differences' intervals"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=9999,
        metavar="N",
        help="sign-flip resamples of the paired permutation test; the test is exact when 2^titles is"
        " at most N (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every resample and of the example choice (default: %(default)s)"
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=5,
        metavar="N",
        help="example abstracts shown with every experiment's title; 0 for none (default: %(default)s)",
    )
    return parser


def main(args: list[str] | None = None) -> Path:
    parser = build_parser()
    options = parser.parse_args(args)
    for name in ("bootstrap", "permutations"):
        if getattr(options, name) < 1:
            raise OptionError(f"--{name} {getattr(options, name)}: need at least 1 resample. Fix: e.g. 2000.")
    if options.examples < 0:
        raise OptionError(f"--examples {options.examples}: must be 0 or more. Fix: e.g. 5.")
    report = build_report(options.logs, options.experiments, options.sweeps, options.bootstrap, options.permutations,
                          options.seed, options.examples)  # fmt: skip
    summary = write_report(report, options.out)
    print(f"Report written to {summary} and {summary.with_suffix('.json')}")
    return summary
