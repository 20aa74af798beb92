"""summary.md: the report's sections in order, from the numbers that command.py gathered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from titlegen.report import tables
from titlegen.report.results import Comparison, Result, comparability
from titlegen.report.sweeps import Sweep


@dataclass
class Report:
    """Everything a report shows; `figures` maps each written figure's file name to its caption."""

    logs: Path
    results: list[Result]
    comparisons: list[Comparison]
    sweeps: list[Sweep]
    missing_experiments: list[str]
    missing_sweeps: list[str]
    examples: list[str]
    figures: dict[str, str]
    resamples: int
    permutations: int
    seed: int


def _method(report: Report) -> list[str]:
    return [
        f"Per experiment, the newest `test` run of each training seed under `{report.logs}` (the fit run's"
        " `seed_everything`; an experiment without a fit run has one run). Means are over the seeds. 95% intervals:"
        " a t-interval over the seeds' means where there are two seeds or more (how much the result moves with the"
        " training seed, on this test set); for a single run, the percentile bootstrap over its test titles"
        f" ({report.resamples} resamples). The column *95% CI from* says which.",
        "",
        "Paired comparisons (ΔF1 = a − b) are over the test ids both experiments titled, with each title's F1"
        " averaged over the experiment's seeds: the mean per-title difference, its 95% paired percentile bootstrap"
        f" interval (titles resampled, {report.resamples} resamples) and a two-sided sign-flip permutation test of"
        f" that mean (`scipy.stats.permutation_test`, {report.permutations} resamples, exact when 2^titles is"
        f" fewer). Every draw is seeded with {report.seed}.",
        "",
    ]


_DIFFER = {
    "test titles": " — **the runs differ: compare their means with care; the paired comparisons use only the titles"
    " both experiments have**",
}


def _comparability(results: list[Result]) -> list[str]:
    lines = []
    for label, values in comparability(results).items():
        differ = _DIFFER.get(label, " — **the runs differ: their scores are not comparable**")
        warning = differ if len(values) > 1 else ""
        lines.append(f"- {label}: " + "; ".join(f"`{v}`" for v in values) + warning)
    return lines


def _sweep(sweep: Sweep, figure: str | None) -> list[str]:
    lines = [f"### `{sweep.experiment}`", "", f"{len(sweep.points)} points; each row is one point's newest test run"
             " per seed (means over seeds where a point has several).", ""]  # fmt: skip
    lines += tables.sweep_points_table(sweep) + [""]
    if sweep.best():
        lines += [
            "Best setting per LoRA scope: the highest mean validation F1 over its seeds (chosen on the validation"
            " split, reported on the test split; the test F1 where the points share one fit or ran no validation):",
            "",
        ]
        lines += tables.sweep_best_table(sweep) + [""]
    if sweep.comparisons:
        lines += [
            "Each scope's best setting against its other settings, paired over the test titles (bootstrap interval"
            " and permutation test as for experiments). Where the best was chosen on test F1, its lead over the"
            " runner-up is biased upward: read the p-value as a screen, not a confirmation.",
            "",
            *tables.comparison_table(sweep.comparisons),
            "",
        ]
    if figure:
        lines += [f"![Test F1 against the learning rate]({figure})", ""]
    return lines


def _missing(report: Report) -> list[str]:
    lines = [
        f"- **{name}**: no `test` results (`{report.logs / name}/version_*/metrics.json`). Fix: `python main.py test"
        f" --config {name}.yaml` (after `fit` for a LoRA experiment; `fit --seed_everything S` then `test` for each"
        " further seed)."
        for name in report.missing_experiments
    ]
    lines += [
        f"- sweep **{name}**: no point folders (`key=value,...`) under `{report.logs / name}`. Fix: `python main.py"
        f" sweep --config sweeps/{Path(name).name}.yaml`, or give the sweep's `experiment` name."
        for name in report.missing_sweeps
    ]
    return ["## Missing", "", *lines, ""] if lines else []


def markdown(report: Report) -> str:
    lines = ["# titlegen: the study's report", "", *_method(report)]
    if report.results:
        lines += tables.summary_table(report.results, report.comparisons) + [""]
        lines += _comparability(report.results) + [""]
    if report.comparisons:
        lines += ["## Paired comparisons (BERTScore F1)", "", *tables.comparison_table(report.comparisons), ""]
    if report.results:
        lines += ["## Hyperparameters", "", *tables.settings_table(report.results), ""]
        lines += [
            "From each fit run's `hparams.yaml` and `config.yaml` and each test run's `metrics.json`; a dash: not"
            " recorded or not applicable (no fit run); `x / y`: the seeds' runs differ.",
            "",
            "## Fit statistics",
            "",
            *tables.fit_table(report.results),
            "",
            "Means over the fit runs (peak memory: the highest). Training time: a fit run's wall clock from its first"
            " to its last logged value (training and validations, not model loading); train tokens/s: mean of its"
            " `perf/tokens_per_sec` (real tokens, no padding); peak GPU memory: max of its `perf/peak_memory_gib`"
            " (logged on CUDA only); adapter size: its `adapter/*.safetensors`; val F1: its last validation.",
            "",
        ]
    for name in ("f1.png", "val_curves.png"):
        if name in report.figures:
            lines += [f"![{report.figures[name]}]({name})", ""]
    if report.sweeps:
        lines += ["## Sweeps", ""]
        for sweep in report.sweeps:
            figure = f"sweep_{sweep.name}_lr.png"
            lines += _sweep(sweep, figure if figure in report.figures else None)
    lines += _missing(report)
    if report.examples:
        count = f"{len(report.examples)} test abstract{'s' if len(report.examples) > 1 else ''}"
        lines += ["## Examples", "", f"{count} every experiment titled, chosen with"
                  f" seed {report.seed}; an experiment's titles are those of its first seed.", ""]  # fmt: skip
        lines += tables.examples(report.results, report.examples)
    return "\n".join(lines)
