"""`main.py report` on hand-made run folders of the study: means over seeds with their intervals, paired
comparisons, hyperparameters, fit statistics, figures, the Missing section, examples and summary.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tests.report.mdtables import assert_tables_well_formed, interval, section, table_row
from tests.report.runfolders import per_title, write_fit_events, write_fit_run, write_test_run
from titlegen.report import command as report
from titlegen.report import runs

PERMUTATIONS = 999
F1 = np.random.default_rng(7).uniform(0.3, 0.6, 130)  # first_sentence's F1 of title s<i>, others are built on it
ALL_IDS = [f"s{i}" for i in range(130)]
SEED_SHIFT = {1: -0.01, 2: 0.0, 3: 0.02}


def ids_of(seed: int) -> list[str]:
    """full_lora's and last_layer_lora's test titles: s10-s129, except that seed 2's run lacks s10."""
    return ALL_IDS[11:] if seed == 2 else ALL_IDS[10:]


def f1_of(ids: list[str], shift: float) -> np.ndarray:
    return np.array([F1[int(i[1:])] for i in ids]) + shift


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """first_sentence and baseline (an old and a newer run) on s0-s119; full_lora and last_layer_lora with seeds 1-3
    on s10-s129, F1 = first_sentence's + 0.10 + the seed's shift, the same in both; an old-style experiment."""
    logs = tmp_path / "logs"
    first = ALL_IDS[:120]
    write_test_run(
        logs / "first_sentence" / "version_0",
        first,
        per_title(first, f1_of(first, 0), 1),
        "first",
        None,
        titles="first_sentence",
        scope="none",
    )
    write_test_run(logs / "baseline" / "version_0", first, per_title(first, f1_of(first, -0.2), 2), "stale", None)
    write_test_run(
        logs / "baseline" / "version_1",
        first,
        per_title(first, f1_of(first, 0.05), 3),
        "zero-shot",
        None,
        decoding={"strategy": "beam", "num_beams": 4},
        scope="none",
    )
    write_test_run(
        logs / "old_style" / "version_0", first, per_title(first, f1_of(first, 0.01), 4), "old", None, old=True
    )
    for seed, shift in SEED_SHIFT.items():
        version = 2 * (seed - 1)
        fit = logs / "full_lora" / f"version_{version}"
        checkpoint = write_fit_run(logs, fit, seed, accumulate=2)
        write_fit_events(fit, 1000.0, 100.0 * seed, [100.0 * seed], [1.0 + seed], {50: 0.4, 100: 0.4 + seed / 10}, ".a")
        (fit / "adapter").mkdir()
        (fit / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 1_000_000)
        ids = ids_of(seed)
        scores = per_title(ids, f1_of(ids, 0.10 + shift), 10 + seed)
        write_test_run(logs / "full_lora" / f"version_{version + 1}", ids, scores, f"tuned-{seed}", checkpoint, 4096)
        fit = logs / "last_layer_lora" / f"version_{version}"
        checkpoint = write_fit_run(
            logs, fit, seed, learning_rate=1e-3 if seed == 3 else 2e-4, scope="last", max_steps=50
        )
        write_test_run(
            logs / "last_layer_lora" / f"version_{version + 1}",
            ids,
            scores,
            f"last-{seed}",
            checkpoint,
            512,
            scope="last",
        )
    return logs


def run_report(logs: Path, out: Path, *extra: str) -> str:
    args = ["--logs", str(logs), "--out", str(out), "--permutations", str(PERMUTATIONS), *extra]
    return report.main(args).read_text()


EXPERIMENTS = ["--experiments", "baseline", "first_sentence", "full_lora", "last_layer_lora", "old_style"]


def test_summary_means_intervals_and_paired_differences(study, tmp_path):
    text = run_report(study, tmp_path / "out", *EXPERIMENTS)
    assert assert_tables_well_formed(text) == 4 + 5, "summary, pairs, hyperparameters, fit statistics, 5 examples"
    summary = section(text, None)
    head = table_row(summary, "experiment")
    assert (
        " | ".join(head[3:11])
        == "BERTScore F1 [95% CI] | P | R | ROUGE-L | words | copy rate | stop rate | 95% CI from"
    )
    assert head[11:] == ["ΔF1 vs first_sentence [95% CI], p", "ΔF1 vs baseline [95% CI], p"]

    full = table_row(summary, "**full_lora**")
    per_seed = [f1_of(ids_of(seed), 0.10 + shift).mean() for seed, shift in SEED_SHIFT.items()]
    half = scipy_stats.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / np.sqrt(3)
    mean, low, high = interval(full[3])
    assert (mean, low, high) == pytest.approx(
        (np.mean(per_seed), np.mean(per_seed) - half, np.mean(per_seed) + half), abs=6e-4
    )
    assert full[1:3] == ["3", "120 / 119"] and full[10] == "t over 3 seeds"
    # Every title's F1 is first_sentence's + 0.10 + the mean seed shift (1/300): a constant difference.
    shift = 0.10 + np.mean(list(SEED_SHIFT.values()))
    assert full[11] == f"+{shift:.3f} [+{shift:.3f}, +{shift:.3f}], p={2 / (PERMUTATIONS + 1):.2g} (n=109)"
    assert full[12] == f"+{shift - 0.05:.3f} [+{shift - 0.05:.3f}, +{shift - 0.05:.3f}], p=0.002 (n=109)"

    first = table_row(summary, "**first_sentence**")
    values = per_title(ALL_IDS[:120], f1_of(ALL_IDS[:120], 0), 1)
    for cell, metric in zip(first[3:9], runs.METRICS, strict=False):
        mean, low, high = interval(cell)
        sample = values[metric]
        half = 1.96 * sample.std() / np.sqrt(120)  # a bootstrap of a mean of 120 values is close to the normal
        scale = 1 if metric == "title_words" else 0.001
        assert mean == pytest.approx(sample.mean(), abs=scale / 2)
        assert (low, high) == pytest.approx((sample.mean() - half, sample.mean() + half), abs=0.1 * half + scale)
    assert first[9] == "—" and first[10] == "bootstrap over 120 titles" and first[11] == "—"
    assert first[12] == "-0.050 [-0.050, -0.050], p=0.002 (n=120)", "baseline − first_sentence from the other side"

    base = table_row(summary, "**baseline**")
    assert base[11] == "+0.050 [+0.050, +0.050], p=0.002 (n=120)", "the newest run (version_1), not the stale one"
    old = table_row(summary, "**old_style**")
    assert interval(old[3])[0] == pytest.approx(F1[:120].mean() + 0.01, abs=5e-4)
    assert old[4:10] == ["—"] * 6 and old[11].startswith("+0.010 [+0.010, +0.010]")
    assert "not comparable" not in summary, "one base model, one encoder, and the old run recorded neither"
    titles = [
        "120 titles (baseline, first_sentence, old_style)",
        "120 titles (full_lora, last_layer_lora)",
        "119 titles (full_lora, last_layer_lora)",
    ]
    assert "- test titles: `" + "`; `".join(titles) + "` — **the runs differ: compare" in summary

    pairs = section(text, "Paired comparisons (BERTScore F1)")
    same = table_row(pairs, "full_lora − last_layer_lora")
    assert same[1] == "119" and same[4:] == ["+0.000 [+0.000, +0.000]", "1"]
    expected = ["120", f"{F1[:120].mean() + 0.05:.3f}", f"{F1[:120].mean():.3f}"]
    assert table_row(pairs, "baseline − first_sentence")[1:4] == expected
    names = re.findall(r"^\| (\w+ − \w+) \|", pairs, flags=re.MULTILINE)[1:]  # after the header
    expected = (
        "baseline − first_sentence, full_lora − first_sentence, last_layer_lora − first_sentence,"
        " old_style − first_sentence, full_lora − baseline, last_layer_lora − baseline, old_style − baseline,"
        " full_lora − last_layer_lora"
    )
    assert ", ".join(names) == expected


def test_hyperparameters_and_fit_statistics(study, tmp_path):
    text = run_report(study, tmp_path / "out")
    table = section(text, "Hyperparameters")
    assert " | ".join(table_row(table, "experiment")[1:]) == (
        "learning rate | LoRA r | LoRA alpha | scope | epochs / steps | batch size | seeds | decoding"
        " | trainable params | test runs"
    )
    assert " | ".join(table_row(table, "**full_lora**")[1:]) == (
        "0.0002 | 16 | 32 | all | 2 ep | 8 x 2 accum | 1, 2, 3 | greedy | 4,096 | version_1, version_3, version_5"
    )
    last = table_row(table, "**last_layer_lora**")
    assert last[1] == "0.0002 / 0.001" and last[4:6] == ["last", "2 ep, 50 steps"]
    baseline = " | ".join(table_row(table, "**baseline**")[1:])
    assert baseline == "— | — | — | none | — | — | — | beam (4 beams) | 0 | version_1"
    assert table_row(table, "**first_sentence**")[8] == "first sentence"

    fits = section(text, "Fit statistics")
    # Means over seeds 1-3 of 100/200/300 s, 100/200/300 tokens/s and final val F1 0.5/0.6/0.7; the highest peak.
    assert table_row(fits, "**full_lora**")[1:] == ["3", "3 min 20 s", "200", "4.00 GiB", "1.0 MB", "0.600"]
    assert table_row(fits, "**last_layer_lora**")[1:] == ["3", "—", "—", "—", "—", "—"]
    assert table_row(fits, "**baseline**")[1:] == ["0", "—", "—", "—", "—", "—"]


def test_summary_json_holds_the_same_numbers(study, tmp_path):
    text = run_report(study, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(data["experiments"]) == ["baseline", "first_sentence", "full_lora", "last_layer_lora"]
    for name, found in data["experiments"].items():
        f1 = found["metrics"]["bertscore_f1"]
        cell = f"{f1['mean']:.3f} [{f1['low']:.3f}, {f1['high']:.3f}]"
        assert table_row(section(text, None), f"**{name}**")[3] == cell
    full = data["experiments"]["full_lora"]
    assert full["seeds"] == [1, 2, 3] and full["metrics"]["bertscore_f1"]["interval"] == "t"
    assert [run["metrics"]["bertscore_f1"] for run in full["runs"]] == pytest.approx(
        [f1_of(ids_of(seed), 0.10 + shift).mean() for seed, shift in SEED_SHIFT.items()]
    )
    assert full["runs"][0]["fit_run"] == str(study / "full_lora" / "version_0")
    same = next(c for c in data["comparisons"] if (c["a"], c["b"]) == ("full_lora", "last_layer_lora"))
    assert (same["n"], same["diff"], same["p"]) == (119, 0.0, 1.0)
    assert data["missing"] == {"experiments": [], "sweeps": []}
    assert data["comparability"]["BERTScore"] == ["minilm_L6"]


def test_figures_and_examples(study, tmp_path):
    text = run_report(study, tmp_path / "out", "--examples", "4")
    for png in ("f1.png", "val_curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    blocks = section(text, "Examples").split("\n### ")[1:]
    assert len(blocks) == 4
    for block in blocks:
        sample_id = re.match(r"\d\. `(s\d+)`", block).group(1)
        assert 10 <= int(sample_id[1:]) < 120, "titled by every experiment's first seed"
        assert f"> abstract of {sample_id} word" in block and block.count("word") < 150, "long abstracts are cut"
        assert "| reference | baseline | first_sentence | full_lora (seed 1) | last_layer_lora (seed 1) |" in block
        assert f"| reference {sample_id} | zero-shot {sample_id} | first {sample_id} | tuned-1 {sample_id} |" in block


def test_report_is_deterministic_and_the_seed_matters(study, tmp_path):
    first = run_report(study, tmp_path / "a", "--seed", "1")
    again = run_report(study, tmp_path / "b", "--seed", "1")
    other = run_report(study, tmp_path / "c", "--seed", "2")
    assert first.replace(str(tmp_path / "a"), "") == again.replace(str(tmp_path / "b"), "")
    ids = lambda text: re.findall(r"^### \d\. `(s\d+)`", text, flags=re.MULTILINE)  # noqa: E731
    assert len(ids(first)) == 5 and ids(first) != ids(other)
    lows = [
        json.loads((tmp_path / out / "summary.json").read_text())["experiments"]["first_sentence"]["metrics"][
            "bertscore_f1"
        ]["low"]
        for out in ("a", "b", "c")
    ]
    assert lows[0] == lows[1] != lows[2], "the bootstrap interval follows --seed"


def test_differing_models_or_encoders_are_flagged(study, tmp_path):
    path = study / "baseline" / "version_1" / "metrics.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "model_name": "other", "bertscore": {"hash": "roberta_L17"}}))
    summary = section(run_report(study, tmp_path / "out"), None)
    assert "- base model: `other`; `tiny` — **the runs differ" in summary
    assert "- BERTScore: `minilm_L6`; `roberta_L17` — **the runs differ" in summary
