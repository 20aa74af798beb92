"""What `main.py fit` prints: each message once, no third-party tips, a progress bar total of the steps the run
takes, and a summary as its last lines."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import REPO, cli_args
from titlegen.runtime.progress import StepsRichProgressBar, StepsTQDMProgressBar


@pytest.mark.parametrize("bar_class", [StepsRichProgressBar, StepsTQDMProgressBar])
@pytest.mark.parametrize(
    ("max_steps", "global_step", "accumulate", "expected"),
    [(-1, 0, 1, 9000), (80, 0, 1, 80), (80, 30, 1, 50), (80, 30, 4, 200), (20_000, 0, 1, 9000), (80, 80, 1, 0)],
)
def test_the_bar_total_is_what_this_epoch_will_train(bar_class, max_steps, global_step, accumulate, expected):
    bar = bar_class()
    bar._trainer = SimpleNamespace(max_epochs=1, max_steps=max_steps, global_step=global_step,
                                   accumulate_grad_batches=accumulate, num_training_batches=9000)  # fmt: skip
    assert bar.total_train_batches == expected


def test_fit_prints_each_message_once_no_tips_and_ends_with_its_summary(tiny_model_dir, pairs_file, tmp_path):
    args = cli_args(tiny_model_dir, tmp_path, source=pairs_file, batch_size=4, eval_batch_size=4)
    args += ["--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1",
             "--model.val_generate_samples=2"]  # fmt: skip
    run = subprocess.run([sys.executable, "main.py", "fit", "--config", "full_lora.yaml", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    printed = run.stdout + run.stderr
    assert run.returncode == 0, printed[-3000:]
    assert printed.count("Seed set to 3407") == 1, "every log line once (Unsloth also configures the root logger)"
    assert printed.count("trainable parameters") == 1
    for noise in ("💡 Tip", "seem to have been set", "is an Enum subclass", "kernels-community", "Traceback"):
        assert noise not in printed, noise
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("fit done: 3 steps, val/bertscore_f1 ")
    assert lines[-2].startswith("  adapter:") and "full_lora/version_0/adapter" in lines[-2]
    assert any(line.startswith("  checkpoints:") and "last.ckpt" in line for line in lines[-4:])
