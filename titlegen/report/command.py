"""`python main.py report`: the study's comparison, from each experiment's newest `test` run under lightning_logs/,
as a markdown summary with figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from titlegen.report import figures
from titlegen.report.runs import EXPERIMENTS, SCORES, ExperimentRun, FitStats, choose_examples, load_run


# ----------------------------------------------------------------------------------------------- markdown
def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _score(run: ExperimentRun, name: str) -> str:
    interval = run.ci.get(name)
    bounds = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else " (no per-sample scores)"
    return f"{run.score(name):.3f}{bounds}"


def table(runs: list[ExperimentRun]) -> list[str]:
    lines = [
        "| experiment | test run | titles | BERTScore P [95% CI] | BERTScore R [95% CI] | BERTScore F1 [95% CI] |"
        " trainable params | training time | train tokens/s | peak GPU memory | adapter size |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        fit = run.fit or FitStats(run_dir=Path())
        cells = [
            f"**{run.experiment}**", run.run_dir.name, str(run.summary["samples"]),
            *(_score(run, name) for name in SCORES), f"{run.summary['trainable_params']:,}", _duration(fit.seconds),
            f"{fit.tokens_per_sec:,.0f}" if fit.tokens_per_sec else "—",
            f"{fit.peak_memory_gib:.2f} GiB" if fit.peak_memory_gib else "—",
            f"{fit.adapter_bytes / 1e6:.1f} MB" if fit.adapter_bytes else "—",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def examples(runs: list[ExperimentRun], ids: list[str], abstract_chars: int = 500) -> list[str]:
    """Each abstract (cut), then its reference and every run's title side by side."""
    by_run = [{row["id"]: row for row in run.rows} for run in runs]
    lines = []
    for number, sample_id in enumerate(ids, start=1):
        abstract = next((text for rows in by_run if (text := rows[sample_id].get("abstract"))), "(not recorded)")
        if len(abstract) > abstract_chars:
            abstract = abstract[:abstract_chars].rsplit(" ", 1)[0] + " …"
        titles = [_cell(rows[sample_id]["generated"]) or "*(empty)*" for rows in by_run]
        lines += [f"### {number}. `{sample_id}`", "", f"> {_cell(abstract)}", ""]
        lines += ["| reference | " + " | ".join(run.experiment for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        lines += [f"| {_cell(by_run[0][sample_id]['reference'])} | " + " | ".join(titles) + " |", ""]
    return lines


def write_report(
    logs: Path, out: Path, experiments: list[str], resamples: int = 1000, seed: int = 0, count: int = 5
) -> Path:
    """Write out/summary.md, out/f1.png and out/val_curves.png; returns the summary's path."""
    loaded = {name: load_run(logs, name, resamples, seed) for name in experiments}
    runs = [run for run in loaded.values() if run is not None]
    missing = [name for name, run in loaded.items() if run is None]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# titlegen: the study's report", ""]
    lines += [
        f"Newest `test` run of each experiment under `{logs}`, made by `python main.py report`. Intervals: 95%"
        f" percentile bootstrap over the test titles ({resamples} resamples, seed {seed}).",
        "",
    ]
    if runs:
        lines += table(runs) + [""]
        for label, value in (("base model", lambda s: s.get("model_name")),
                             ("BERTScore", lambda s: (s.get("bertscore") or {}).get("hash"))):  # fmt: skip
            values = sorted({str(value(run.summary)) for run in runs})
            warning = " — **the runs differ: their scores are not comparable**" if len(values) > 1 else ""
            lines.append(f"- {label}: " + "; ".join(f"`{v}`" for v in values) + warning)
        lines += [
            "- training time: the fit run's wall clock from its first to its last logged value (training and"
            " validations, not model loading); train tokens/s: mean of its `perf/tokens_per_sec` (real tokens, no"
            " padding); peak GPU memory: max of its `perf/peak_memory_gib` (logged on CUDA only); adapter size: its"
            " `adapter/*.safetensors`. A dash: the run recorded none (the baseline has no fit run).",
            "",
        ]
        figures.f1_bars(runs, out / "f1.png")
        figures.validation_curves(runs, out / "val_curves.png")
        lines += ["![BERTScore F1 with 95% intervals](f1.png)", "", "![Validation curves](val_curves.png)", ""]
    if missing:
        lines += ["## Missing", ""]
        lines += [
            f"- **{name}**: no `test` results (`{logs / name}/version_*/metrics.json`). Fix: `python main.py test"
            f" --config {name}.yaml` (after `fit` for a LoRA experiment)."
            for name in missing
        ]
        lines.append("")
    ids = choose_examples(runs, count, seed)
    if ids:
        lines += ["## Examples", "", f"{len(ids)} test abstracts every run titled, chosen with seed {seed}.", ""]
        lines += examples(runs, ids)
    summary = out / "summary.md"
    summary.write_text("\n".join(lines))
    return summary


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="main.py report",
        description="Compare the experiments' newest `test` runs: writes OUT/summary.md (table with bootstrap"
        " intervals, examples) and OUT/f1.png, OUT/val_curves.png.",
    )
    parser.add_argument("--logs", type=Path, default=Path("lightning_logs"), help="the runs' save_dir")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for summary.md and the figures")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), help="experiment (logger) names")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples and of the example choice")
    parser.add_argument("--examples", type=int, default=5, help="example abstracts shown with every run's title")
    options = parser.parse_args(args)
    if options.bootstrap < 1:
        parser.error(f"--bootstrap {options.bootstrap}: need at least 1 resample (e.g. 1000)")
    summary = write_report(options.logs, options.out, options.experiments, options.bootstrap, options.seed,
                           options.examples)  # fmt: skip
    print(f"Report written to {summary}")
    return summary
