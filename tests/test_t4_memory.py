"""The experiments' defaults inside a Colab T4's memory: each experiment's `fit` (with its validation) and `test` on the
Qwen2.5-0.5B shape, in a process capped at 15 GiB (`benchmarks/t4_memory.py` measures the whole runs)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.common import build_model
from benchmarks.t4_memory import GIB, cap
from tests.helpers import MINILM, build_tokenizer

CAP_GIB = 15.0


@pytest.fixture(scope="module")
def qwen_shape(tmp_path_factory: pytest.TempPathFactory):
    """Random weights in the Qwen2.5-0.5B shape (its 151,936-token vocabulary and LM head included), as the benchmarks
    build it, with the tests' tokenizer: it spells abstracts in more tokens than Qwen's, so batches reach
    `max_seq_length` more often."""
    tokenizer_dir = tmp_path_factory.mktemp("chatml-tokenizer")
    build_tokenizer().save_pretrained(tokenizer_dir)
    return build_model(tmp_path_factory.mktemp("qwen-shape"), str(tokenizer_dir))


@pytest.mark.gpu(reason="a memory cap on a CUDA GPU (run on the device)")
@pytest.mark.shared_data
@pytest.mark.parametrize("experiment", ["baseline", "full_lora", "last_layer_lora"])
def test_experiment_defaults_fit_and_test_inside_15_gib(experiment, qwen_shape, shared_pairs, tmp_path):
    from main import main

    common = [
        f"--config=configs/{experiment}.yaml", f"--model.model_name={qwen_shape}", f"--model.bertscore_model={MINILM}",
        "--model.bertscore_num_layers=6", f"--data.source={shared_pairs}", f"--data.data_dir={tmp_path / 'splits'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", f"--trainer.default_root_dir={tmp_path}",
        # Default batch sizes (32 to train, 128 to generate) and title budget; only fewer batches.
        "--trainer.limit_test_batches=2",
    ]  # fmt: skip
    fraction = cap(CAP_GIB)
    assert fraction < 1.0, "the GPU must be larger than the cap for the cap to mean anything"
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        if experiment != "baseline":
            main(["fit", *common, "--trainer.limit_train_batches=3", "--trainer.enable_progress_bar=false"])
        main(["test", *common, "--trainer.enable_progress_bar=false"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    peak_allocated, peak_reserved = torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
    print(f"{experiment}: peak {peak_allocated:.2f} GiB allocated, {peak_reserved:.2f} GiB reserved")
    assert peak_reserved <= CAP_GIB
    metrics = json.loads(next((tmp_path / "logs").glob(f"{experiment}/version_*/metrics.json")).read_text())
    assert metrics["samples"] == 256, "two test batches of 128 titles were generated and scored"
    assert 0.0 <= metrics["metrics"]["test/bertscore_f1"] <= 1.0
