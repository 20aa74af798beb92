"""`fit` under Lightning DDP with two CPU processes (gloo): the real Unsloth path, the length-grouped sampler and
the fast loss, end to end. Both ranks must train on different batches and end with identical LoRA weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO, synthetic_pairs, write_jsonl

SCRIPT = textwrap.dedent(
    """
    import unsloth  # noqa: F401  (before transformers and peft)
    import json, sys
    import lightning as L
    import torch
    from titlegen.data import TitleDataModule
    from titlegen.module import TitleGenModule

    model_dir, train, val, out = sys.argv[1:5]

    class Check(L.Callback):
        tokens = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.tokens.append(int(batch["attention_mask"].sum()))

        def on_train_end(self, trainer, pl_module):
            weights = torch.cat([p.detach().flatten() for p in pl_module.parameters() if p.requires_grad])
            gathered = trainer.strategy.all_gather(weights)
            tokens = trainer.strategy.all_gather(torch.tensor(self.tokens))
            if trainer.is_global_zero:
                json.dump({"rank_diff": float((gathered[0] - gathered[1]).abs().max()),
                           "lora_b_norm": float(sum(p.norm() for n, p in pl_module.named_parameters()
                                                    if "lora_B" in n)),
                           "tokens": tokens.tolist(), "world": trainer.world_size, "steps": trainer.global_step},
                          open(out, "w"))

    L.seed_everything(3407)
    module = TitleGenModule(model_name=model_dir, lora_scope="last", max_seq_length=512, learning_rate=1e-2)
    data = TitleDataModule(train_file=train, validation_file=val, test_file=val, model_name=model_dir,
                           batch_size=4, num_workers=0, max_seq_length=512)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Check()])
    trainer.fit(module, data)
    """
)


@pytest.mark.slow
def test_two_process_ddp_fit_keeps_the_ranks_in_sync(tiny_llama_dir, tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    rows = synthetic_pairs(48, seed=4)
    for i, row in enumerate(rows):  # different lengths, so that grouping and per-rank batches matter
        row["abstract"] = " ".join([row["abstract"]] * (1 + i % 3))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(4, seed=5))
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_llama_dir), str(train), str(val), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["steps"] == 4
    assert result["lora_b_norm"] > 0, "training changed the adapters"
    assert result["rank_diff"] == 0.0, "DDP averaged the gradients, so both ranks hold the same weights"
    rank0, rank1 = result["tokens"]
    assert rank0 != rank1, "each rank trained on its own share of the batches"
