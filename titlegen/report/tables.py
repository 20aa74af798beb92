"""The report's markdown tables: the summary (means, intervals, paired differences), the paired comparisons, the
hyperparameters, the fit statistics, a sweep's points and best settings, and the example titles."""

from __future__ import annotations

import random
from typing import Any

from titlegen.report.results import REFERENCES, Comparison, Result, fit_summary, settings
from titlegen.report.runs import METRICS
from titlegen.report.stats import Estimate, Paired
from titlegen.report.sweeps import SEED_KEY, Sweep

DASH = "—"


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row(cells: list[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def header(cells: list[str]) -> list[str]:
    return [row(cells), "|" + "---|" * len(cells)]


def number(value: float | None, metric: str = "bertscore_f1") -> str:
    if value is None:
        return DASH
    return f"{value:.1f}" if metric == "title_words" else f"{value:.3f}"


def estimate(found: Estimate | None, metric: str = "bertscore_f1") -> str:
    """`mean [low, high]`; the mean alone where there is no interval."""
    if found is None:
        return DASH
    interval = f" [{number(found.low, metric)}, {number(found.high, metric)}]" if found.low is not None else ""
    return number(found.mean, metric) + interval


def interval_kind(found: Estimate | None) -> str:
    if found is None or found.method is None:
        return "none (one run, no per-title scores)"
    return f"t over {found.n} seeds" if found.method == "t" else f"bootstrap over {found.n} titles"


def p_value(p: float) -> str:
    return f"{p:.2g}"


def difference(test: Paired) -> str:
    return f"{test.diff:+.3f} [{test.low:+.3f}, {test.high:+.3f}]"


def _distinct(values: list[Any]) -> str:
    return " / ".join(dict.fromkeys(str(v) for v in values)) or DASH


def summary_table(results: list[Result], comparisons: list[Comparison]) -> list[str]:
    names = {result.name for result in results}
    references = [name for name in REFERENCES if name in names]
    by_pair = {(c.a, c.b): c for c in comparisons}
    lines = header([
        "experiment", "seeds", "titles", *(f"{label} [95% CI]" if metric == "bertscore_f1" else label
                                           for metric, label in METRICS.items()),
        "95% CI from", *(f"ΔF1 vs {name} [95% CI], p" for name in references),
    ])  # fmt: skip
    for result in results:
        f1 = result.estimates.get("bertscore_f1")
        titles = _distinct([run.samples for run in result.runs])
        cells = [f"**{result.name}**", len(result.experiment.seeds) or DASH, titles]
        cells += [estimate(result.estimates.get(metric), metric) for metric in METRICS]
        cells.append(interval_kind(f1))
        for reference in references:
            found = by_pair.get((result.name, reference))
            mirrored = by_pair.get((reference, result.name))
            # first_sentence against baseline is the pair baseline - first_sentence seen from the other side.
            test = found.test if found else mirrored.test.reversed() if mirrored and mirrored.test else None
            if test is None:
                cells.append(found.why if found else mirrored.why if mirrored else DASH)
            else:
                cells.append(f"{difference(test)}, p={p_value(test.p)} (n={test.n})")
        lines.append(row(cells))
    return lines


def comparison_table(comparisons: list[Comparison]) -> list[str]:
    lines = header(["a − b", "titles in common", "F1 of a", "F1 of b", "ΔF1 [95% CI]", "p (two-sided)"])
    for c in comparisons:
        pair = f"{c.a} − {c.b}"
        if c.test is None:
            lines.append(row([pair, 0, DASH, DASH, c.why, DASH]))
            continue
        t = c.test
        lines.append(row([pair, t.n, f"{t.mean_a:.3f}", f"{t.mean_b:.3f}", difference(t), p_value(t.p)]))
    return lines


def settings_table(results: list[Result]) -> list[str]:
    shown = [settings(result) for result in results]
    keys = list(shown[0]) if shown else []
    lines = header(["experiment", *keys])
    for result, values in zip(results, shown, strict=True):
        lines.append(row([f"**{result.name}**", *(values[key] for key in keys)]))
    return lines


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def fit_table(results: list[Result]) -> list[str]:
    lines = header(["experiment", "fit runs", "training time", "train tokens/s", "peak GPU memory", "adapter size",
                    "val F1 at the end"])  # fmt: skip
    for result in results:
        fit = fit_summary(result)
        lines.append(row([
            f"**{result.name}**", fit["fit_runs"], duration(fit["seconds"]),
            f"{fit['tokens_per_sec']:,.0f}" if fit["tokens_per_sec"] else DASH,
            f"{fit['peak_memory_gib']:.2f} GiB" if fit["peak_memory_gib"] else DASH,
            f"{fit['adapter_bytes'] / 1e6:.1f} MB" if fit["adapter_bytes"] else DASH, number(fit["final_val_f1"]),
        ]))  # fmt: skip
    return lines


def sweep_points_table(sweep: Sweep) -> list[str]:
    lines = header([*sweep.keys, "seeds", *METRICS.values(), "val F1 at the end", "test runs"])
    for point in sweep.points:
        grid = [point.values.get(key, DASH) for key in sweep.keys]
        if point.result is None:
            lines.append(row([*grid, DASH, "no test run", *[DASH] * (len(METRICS) - 1), DASH, DASH]))
            continue
        means = [number(e.mean if (e := point.result.estimates.get(m)) else None, m) for m in METRICS]
        seeds = ", ".join(map(str, point.result.experiment.seeds)) or DASH
        runs = ", ".join(run.run_dir.name for run in point.result.runs)
        lines.append(row([*grid, seeds, *means, number(point.val_f1), runs]))
    return lines


def sweep_best_table(sweep: Sweep) -> list[str]:
    lines = header(["LoRA scope", "best setting", "seeds", "test F1 [95% CI]", "95% CI from", "val F1 at the end"])
    for scope, best in sweep.best().items():
        f1 = best.result.estimates["bertscore_f1"]
        setting = ", ".join(f"{k}={v}" for k, v in best.values.items() if k != SEED_KEY)
        seeds = ", ".join(map(str, best.result.experiment.seeds)) or DASH
        lines.append(row([scope, setting or DASH, seeds, estimate(f1), interval_kind(f1), number(best.val_f1)]))
    return lines


def choose_examples(results: list[Result], count: int, seed: int) -> list[str]:
    """Ids every experiment titled (in its first seed's run), `count` of them chosen with the seed, sorted."""
    sets = [{row["id"] for row in result.runs[0].rows} for result in results]
    common = sorted(set.intersection(*sets)) if sets else []
    return sorted(random.Random(seed).sample(common, min(count, len(common))))


def examples(results: list[Result], ids: list[str], abstract_chars: int = 500) -> list[str]:
    """Each abstract (cut), then its reference and every experiment's title (its first seed's) side by side."""
    by_run = [{row["id"]: row for row in result.runs[0].rows} for result in results]
    names = [f"{r.name} (seed {r.runs[0].seed})" if r.runs[0].seed is not None else r.name for r in results]
    lines = []
    for index, sample_id in enumerate(ids, start=1):
        abstract = next((text for rows in by_run if (text := rows[sample_id].get("abstract"))), "(not recorded)")
        if len(abstract) > abstract_chars:
            abstract = abstract[:abstract_chars].rsplit(" ", 1)[0] + " …"
        titles = [rows[sample_id]["generated"] or "*(empty)*" for rows in by_run]
        lines += [f"### {index}. `{sample_id}`", "", f"> {cell(abstract)}", ""]
        lines += header(["reference", *names]) + [row([by_run[0][sample_id]["reference"], *titles]), ""]
    return lines
