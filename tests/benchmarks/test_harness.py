"""The benchmark harness's Unsloth SFTTrainer variants (issue 25) on the CPU: `python -m benchmarks.run` runs
`unsloth-sft` and `unsloth-sft-padded` on a tiny random Qwen2 model, each in its own process as on a GPU, for one
warm-up step and two timed steps, and writes their results and the table.

On the CPU, Unsloth's fallback trains the real 4-bit LoRA model through TRL's SFTTrainer and keeps padded batches
whatever the padding choice (padding-free needs FlashAttention): the padding-free path itself runs only on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, build_tiny_model, synthetic_pairs, write_jsonl

SFT_VARIANTS = {"unsloth-sft": "auto", "unsloth-sft-padded": "padded"}
ON_CPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One `benchmarks.run` call over both variants, scope `all`, batch 2, 4 measured samples: (results, stdout)."""
    tmp = tmp_path_factory.mktemp("harness")
    model = build_tiny_model(tmp / "tiny-qwen2")
    pairs = write_jsonl(tmp / "pairs.jsonl", synthetic_pairs(40))
    results = tmp / "results.json"
    command = [
        sys.executable, "-m", "benchmarks.run", "--pairs", str(pairs), "--model", str(model), "--parts", "train",
        "--variants", *SFT_VARIANTS, "--scopes", "all", "--batch-sizes", "2", "--samples", "4",
        "--warmup-batches", "0", "--workdir", str(tmp / "work"), "--results", str(results),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(results.read_text()), proc.stdout


@pytest.mark.parametrize("variant", list(SFT_VARIANTS))
def test_sft_variant_trains_two_timed_steps(harness_run: tuple[dict, str], variant: str) -> None:
    results, _ = harness_run
    r = results["train"][f"{variant}/all/b2"]
    assert "error" not in r, r.get("log_tail")
    # One warm-up step (the measured pass's longest batch), then the two timed steps over the 4 measured samples.
    assert (r["warmup_steps"], r["steps"], r["optimizer_steps"]) == (1, 2, 3)
    assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"])
    assert r["lora_max_change"] > 0
    assert r["tokens"] > 0 and r["seconds"] > 0 and r["tokens_per_sec"] > 0
    # Which padding the trainer's collator used, read from it: padded on the CPU whatever was asked for; on a GPU,
    # padded where asked for, else Unsloth's choice.
    assert r["padding_requested"] == SFT_VARIANTS[variant]
    expected = {"padded"} if ON_CPU or variant == "unsloth-sft-padded" else {"padded", "padding_free"}
    assert r["padding"] in expected
    assert "SFTTrainer" in r["trainer"] and r["collator"].endswith("DataCollatorForLanguageModeling")
    assert (r["variant"], r["scope"], r["batch_size"], r["samples"]) == ("unsloth-sft", "all", 2, 4)
    assert (r["gpu"] == "cpu") == ON_CPU


def test_both_variants_train_the_same_samples_and_show_in_the_table(harness_run: tuple[dict, str]) -> None:
    results, stdout = harness_run
    auto, padded = (results["train"][f"{v}/all/b2"] for v in SFT_VARIANTS)
    assert auto["tokens"] == padded["tokens"]
    if ON_CPU:  # the same model, samples, order and seed, both padded: the same first (warm-up) loss
        assert auto["losses"][0] == pytest.approx(padded["losses"][0], rel=1e-4)
    for variant in SFT_VARIANTS:
        row = next(line for line in stdout.splitlines() if line.startswith(f"| {variant}/all/b2 |"))
        assert "unsloth-sft" in row.split("|")[-2]  # the baseline: the faster of the two SFTTrainer variants
    assert results["calls"][-1]["command"].startswith("python -m benchmarks.run ")
