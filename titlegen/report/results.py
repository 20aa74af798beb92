"""From loaded runs to the report's numbers: each experiment's means with intervals, its hyperparameters, and the
paired comparisons between experiments. Plain data, which tables.py writes as markdown and command.py as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from titlegen.report.runs import METRICS, Experiment, TestRun
from titlegen.report.stats import Estimate, Paired, estimate, paired_test

# The floors every experiment is compared with, and the study's one comparison between two trained experiments.
REFERENCES = ("first_sentence", "baseline")
EXTRA_PAIRS = (("full_lora", "last_layer_lora"),)
# The values each measure can take, where a t-interval over few seeds could reach past them.
BOUNDS = {"rouge_l": (0.0, 1.0), "copy_rate": (0.0, 1.0), "stop_rate": (0.0, 1.0), "title_words": (0.0, np.inf)}


@dataclass
class Result:
    """An experiment's runs and, per metric, its mean with interval (a metric no run measured is absent)."""

    experiment: Experiment
    estimates: dict[str, Estimate]

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def runs(self) -> list[TestRun]:
        return self.experiment.runs


@dataclass
class Comparison:
    """Experiment a against b on per-title BERTScore F1; `test` is None where it cannot be made, `why` says why."""

    a: str
    b: str
    test: Paired | None = None
    why: str = ""


def summarize(experiment: Experiment, resamples: int, seed: int, bootstrap: bool = True) -> Result:
    """Each metric's mean over seeds with its interval; `bootstrap=False` leaves a single run without one (a sweep's
    rows show means only, and bootstrapping every measure of every point would dominate the report's time)."""
    estimates = {}
    for metric in METRICS:
        per_seed = [value for run in experiment.runs if (value := run.value(metric)) is not None]
        one = experiment.runs[0].sample_values(metric) if len(experiment.runs) == 1 and bootstrap else None
        found = estimate(per_seed, one, resamples, seed, BOUNDS.get(metric, (-np.inf, np.inf)))
        if found is not None:
            estimates[metric] = found
    return Result(experiment, estimates)


def pairs(names: list[str]) -> list[tuple[str, str]]:
    """Each experiment against each floor present (a floor against a later one too), then the extra pairs."""
    found = []
    for reference in REFERENCES:
        if reference in names:
            found += [(name, reference) for name in names if name != reference and (reference, name) not in found]
    found += [(a, b) for a, b in EXTRA_PAIRS if a in names and b in names]
    return found


def compare_pair(a: Result, b: Result, resamples: int, permutations: int, seed: int) -> Comparison:
    """a against b over the test ids both titled, each title's F1 averaged over the seeds' runs."""
    scores_a, scores_b = a.experiment.per_title(), b.experiment.per_title()
    if scores_a is None or scores_b is None:
        missing = a.name if scores_a is None else b.name
        return Comparison(a.name, b.name, why=f"{missing} has no per-title F1 (predictions.jsonl)")
    common = sorted(set(scores_a) & set(scores_b))
    if not common:
        return Comparison(a.name, b.name, why="no test id in common")
    test = paired_test([scores_a[i] for i in common], [scores_b[i] for i in common], resamples, permutations, seed)
    return Comparison(a.name, b.name, test)


def compare(results: list[Result], resamples: int, permutations: int, seed: int) -> list[Comparison]:
    by_name = {result.name: result for result in results}
    return [compare_pair(by_name[a], by_name[b], resamples, permutations, seed) for a, b in pairs(list(by_name))]


def _shown(values: list[Any]) -> str:
    """One value, or each distinct value in order of first appearance; "—" for none."""
    distinct = list(dict.fromkeys(str(v) for v in values if v is not None and v != ""))
    return " / ".join(distinct) if distinct else "—"


def _length(run: TestRun) -> str | None:
    if run.fit is None:
        return None
    trainer = run.fit.config.get("trainer") or {}
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    parts = [f"{epochs} ep" if epochs not in (None, -1) else "", f"{steps} steps" if steps not in (None, -1) else ""]
    return ", ".join(part for part in parts if part) or None


def _batch(run: TestRun) -> str | None:
    if run.fit is None:
        return None
    size = run.fit.setting("data", "batch_size")
    accumulate = (run.fit.config.get("trainer") or {}).get("accumulate_grad_batches") or 1
    return None if size is None else f"{size} x {accumulate} accum" if accumulate != 1 else str(size)


def _decoding(run: TestRun) -> str | None:
    if run.summary.get("titles") == "first_sentence":
        return "first sentence"
    decoding = run.summary.get("decoding")
    if not decoding:
        return None
    strategy = decoding.get("strategy")
    return f"{strategy} ({decoding.get('num_beams')} beams)" if strategy == "beam" else strategy


def settings(result: Result) -> dict[str, str]:
    """The hyperparameters shown, from the fit runs' hparams.yaml and config.yaml and the test runs' metrics.json:
    "—" where no run recorded one, "x / y" where the seeds' runs differ."""
    runs = result.runs

    def fit(key: str) -> str:
        return _shown([run.fit.hparams.get(key) for run in runs if run.fit])

    scopes = [run.summary.get("lora_scope") or (run.fit.hparams.get("lora_scope") if run.fit else None) for run in runs]
    return {
        "learning rate": fit("learning_rate"),
        "LoRA r": fit("lora_r"),
        "LoRA alpha": fit("lora_alpha"),
        "scope": _shown(scopes),
        "epochs / steps": _shown([_length(run) for run in runs]),
        "batch size": _shown([_batch(run) for run in runs]),
        "seeds": _shown([", ".join(str(s) for s in result.experiment.seeds)]),
        "decoding": _shown([_decoding(run) for run in runs]),
        "trainable params": _shown([f"{p:,}" if isinstance(p := run.summary.get("trainable_params"), int) else p
                                    for run in runs]),
        "test runs": ", ".join(run.run_dir.name for run in runs),
    }  # fmt: skip


def fit_summary(result: Result) -> dict[str, float | None]:
    """The fit runs' statistics, averaged over seeds (peak memory: the highest)."""
    stats = [run.fit.stats for run in result.runs if run.fit]

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return float(np.mean(present)) if present else None

    peaks = [s.peak_memory_gib for s in stats if s.peak_memory_gib is not None]
    return {
        "fit_runs": len(stats),
        "seconds": mean([s.seconds for s in stats]),
        "tokens_per_sec": mean([s.tokens_per_sec for s in stats]),
        "peak_memory_gib": max(peaks) if peaks else None,
        "adapter_bytes": mean([s.adapter_bytes for s in stats]),
        "final_val_f1": mean([s.final_val_f1 for s in stats]),
    }


def comparability(results: list[Result]) -> dict[str, list[str]]:
    """What must be the same for scores to be comparable, with each distinct value the runs recorded: the base
    model, the BERTScore encoder (its hash) and the set of test titles (named by the experiments that used it). A run
    that did not record one (older metrics.json) is left out of it rather than counted as different."""
    runs = [run for result in results for run in result.runs]
    title_sets: dict[frozenset[str], list[str]] = {}
    for result in results:
        for run in result.runs:
            users = title_sets.setdefault(frozenset(row["id"] for row in run.rows), [])
            if result.name not in users:
                users.append(result.name)
    single = len(title_sets) == 1
    hashes = [(run.summary.get("bertscore") or {}).get("hash") for run in runs]
    return {
        "base model": sorted({str(name) for run in runs if (name := run.summary.get("model_name"))}),
        "BERTScore": sorted({str(found) for found in hashes if found}),
        "test titles": [f"{len(ids)} titles" + ("" if single else f" ({', '.join(users)})")
                        for ids, users in title_sets.items()],
    }  # fmt: skip
