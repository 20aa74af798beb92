"""Interruption and resume: a stopped run continues exactly; a NaN loss or an unusable log folder stops it cleanly.

The equivalence tests compare against one uninterrupted 6-step run of the tiny model with the same seed. On the CPU
the resumed run repeats the same float32 operations in the same order, so it matches bit for bit here; the test
allows max|w - w_ref| <= 1e-5 * max|w_ref| (TOLERANCE) so that a BLAS that reduces in another order on another
machine still passes, while a resume that repeats or skips even one batch is off by far more (asserted too).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import cli_args, synthetic_pairs, write_jsonl
from titlegen.cli import main
from titlegen.data.sampling import LengthGroupedSampler
from titlegen.errors import CheckpointError, OptionError
from titlegen.module import TitleGenModule
from titlegen.runtime.stopping import GracefulStop, NonFiniteLossError, NonFiniteLossGuard, TrainingInterrupted

STEPS = 6
TOLERANCE = 1e-5  # relative to the largest weight / optimizer moment


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume-data")
    return write_jsonl(root / "pairs.jsonl", synthetic_pairs(120)), root / "splits"


def fit_args(model_dir: Path, data: tuple[Path, Path], run_dir: Path, *extra: str) -> list[str]:
    pairs, splits = data
    options = [
        f"--trainer.max_steps={STEPS}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        # A large learning rate so that every step moves the weights visibly.
        "--model.learning_rate=0.01", "--model.warmup_steps=2",
    ]  # fmt: skip
    return [
        "fit", "--config", "full_lora.yaml",
        *cli_args(model_dir, run_dir, *options, *extra, source=pairs, data_dir=splits, fast_eval=False, batch_size=4,
                  progress_bar=False),
    ]  # fmt: skip


def training_state(cli) -> dict[str, torch.Tensor]:
    """LoRA weights, AdamW moments and the learning rate at the end of a run."""
    return module_state(cli.model)


def module_state(module: TitleGenModule) -> dict[str, torch.Tensor]:
    state = {f"weight/{k}": v.detach().clone() for k, v in module.state_dict().items()}
    optimizer = module.trainer.optimizers[0]
    for i, s in optimizer.state_dict()["state"].items():
        state[f"exp_avg/{i}"], state[f"exp_avg_sq/{i}"] = s["exp_avg"].clone(), s["exp_avg_sq"].clone()
    state["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
    return state


def max_relative_difference(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert state.keys() == reference.keys()
    worst = 0.0
    for kind in ("weight/", "exp_avg/", "exp_avg_sq/", "lr"):
        keys = [k for k in reference if k.startswith(kind)]
        scale = max(reference[k].abs().max().item() for k in keys) or 1.0  # the learning rate ends at 0
        worst = max(worst, max((state[k] - reference[k]).abs().max().item() for k in keys) / scale)
    return worst


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data, tmp_path_factory) -> dict[str, torch.Tensor]:
    cli = main(fit_args(tiny_model_dir, data, tmp_path_factory.mktemp("uninterrupted")))
    assert cli.trainer.global_step == STEPS
    return training_state(cli)


def signal_during_step(monkeypatch, step: int, signum: int) -> None:
    """Send `signum` to this process while the training step at `step` runs (before its optimizer step)."""
    original = TitleGenModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if self.global_step == step:
            os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(TitleGenModule, "training_step", training_step)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "logs/full_lora/version_0/checkpoints/last.ckpt", weights_only=True)


# ----------------------------------------------------------------------------------------------- signals
def test_sigint_saves_last_and_the_resumed_run_ends_like_an_uninterrupted_one(
    tiny_model_dir, data, tmp_path, reference, monkeypatch
):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        signal_during_step(patch, 2, signal.SIGINT)
        with pytest.raises(TrainingInterrupted) as stopped:
            main(fit_args(tiny_model_dir, data, tmp_path))
    # A string code: Python prints it and exits with status 1.
    assert stopped.value.code == (
        f"error: training interrupted by SIGINT at global step 3; resumable state saved to"
        f" {tmp_path}/logs/full_lora/version_0/checkpoints/last.ckpt. To continue: run the same `fit` command again"
        " with `--ckpt_path last`."
    )
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    saved = last_checkpoint(tmp_path)
    # The step that was running when the signal came finished, optimizer step included.
    assert saved["global_step"] == 3 and saved["TitleDataModule"] == {"train_epoch": 0, "train_batches_done": 3}
    shutil.copytree(tmp_path / "logs", tmp_path / "copy" / "logs")

    resumed = main(fit_args(tiny_model_dir, data, tmp_path, "--ckpt_path", "last"))
    assert resumed.trainer.global_step == STEPS
    assert Path(resumed.trainer.log_dir) == tmp_path / "logs/full_lora/version_0"  # one run, one folder
    assert not (tmp_path / "logs/full_lora/version_1").exists()
    difference = max_relative_difference(training_state(resumed), reference)
    assert difference <= TOLERANCE

    # Without the data position, the resumed run would train on the epoch's first batches again: far off.
    monkeypatch.setattr(LengthGroupedSampler, "resume", lambda self, epoch, done: None)
    restarted = main(fit_args(tiny_model_dir, data, tmp_path / "copy", "--ckpt_path", "last"))
    assert max_relative_difference(training_state(restarted), reference) > 100 * TOLERANCE


def test_sigterm_stops_at_the_next_step_boundary_with_last_ckpt(tiny_model_dir, data, tmp_path, monkeypatch):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        signal_during_step(patch, 1, signal.SIGTERM)
        with pytest.raises(TrainingInterrupted, match=r"interrupted by SIGTERM at global step 2; .*--ckpt_path last"):
            main(fit_args(tiny_model_dir, data, tmp_path))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    saved = last_checkpoint(tmp_path)
    assert saved["global_step"] == 2 and saved["TitleDataModule"]["train_batches_done"] == 2
    assert saved["optimizer_states"] and saved["lr_schedulers"][0]["last_epoch"] == 2


def test_second_ctrl_c_aborts_at_once_without_saving(tiny_model_dir, data, tmp_path, monkeypatch):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    original = TitleGenModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # in the middle of the step
            raise AssertionError("the second Ctrl+C did not stop the step")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TitleGenModule, "training_step", training_step)
    with pytest.raises(SystemExit) as aborted:  # Lightning's own KeyboardInterrupt exit
        main(fit_args(tiny_model_dir, data, tmp_path))
    assert aborted.value.code == 1
    assert not list(tmp_path.rglob("*.ckpt"))  # a state from the middle of a step is no resume point
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_lightnings_sigterm_handler_runs_once_per_process():
    """A DDP worker gets Ctrl+C from the terminal and SIGTERM from rank 0; Lightning's handler (which broadcasts to
    the other ranks) must run once, or the ranks' collectives no longer match."""
    calls: list[int] = []
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        stop = GracefulStop()
        stop.on_train_start(None, None)
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGINT, None)
        handler(signal.SIGTERM, None)
        assert calls == [signal.SIGTERM]
        assert stop.received == signal.SIGTERM
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def test_signal_during_validation_saves_last_and_exits_non_zero(tiny_model_dir, data, tmp_path, monkeypatch):
    original = TitleGenModule.validation_step

    def validation_step(self, batch, batch_idx):
        original(self, batch, batch_idx)
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TitleGenModule, "validation_step", validation_step)
    evaluate = [
        "--trainer.limit_val_batches=3", "--trainer.val_check_interval=2", "--data.eval_batch_size=2",
        "--model.val_generate_samples=1", "--model.max_new_tokens=4",
    ]  # fmt: skip
    # Lightning stops the validation at its next batch; the CLI turns its silent exit into the resume message.
    with pytest.raises(TrainingInterrupted, match=r"by SIGINT at global step 2; resumable state saved to .*last\.ckpt"):
        main(fit_args(tiny_model_dir, data, tmp_path, *evaluate))
    saved = last_checkpoint(tmp_path)
    assert saved["global_step"] == 2
    assert saved["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]["current"]["completed"] == 1


# ----------------------------------------------------------------------------------------------- non-finite loss
def test_nan_loss_skips_its_update_and_stops_with_the_weights_from_before_it(
    tiny_model_dir, data, tmp_path, reference, monkeypatch
):
    """The fused AdamW skips the bad step's update on the device; the guard reads the flag a step later (no wait for
    the GPU in each step) and stops before the next update. last.ckpt holds the weights from before the bad step."""
    before: dict[str, torch.Tensor] = {}
    with monkeypatch.context() as patch:
        original = TitleGenModule.forward

        def forward(self, batch):
            if self.training and self.global_step == 2 and not before:
                before.update(module_state(self))  # weights and moments before the bad step
            loss = original(self, batch)
            return loss * float("nan") if self.training and self.global_step == 2 else loss

        patch.setattr(TitleGenModule, "forward", forward)
        with pytest.raises(
            NonFiniteLossError,
            match=r"train/loss is nan at global step 2 \(epoch 0, batch 2\); its update was skipped, and training"
            r" stopped at global step 3\. The weights from before step 2 are saved in .*/version_0/checkpoints/"
            r"last\.ckpt\. Likely fixes: a lower --model\.learning_rate \(now 0\.01\) or more --model\.warmup_steps"
            r".* a resume would go on after the bad batch",
        ):
            main(fit_args(tiny_model_dir, data, tmp_path))
    saved = last_checkpoint(tmp_path)
    # The bad batch counts as trained (the loop, the data position, the schedule); its update does not.
    assert saved["global_step"] == 3 and saved["TitleDataModule"]["train_batches_done"] == 3
    assert saved["lr_schedulers"][0]["last_epoch"] == 3
    moments = saved["optimizer_states"][0]["state"]
    assert all(float(s["step"]) == 2 for s in moments.values()), "AdamW counts only the two updates it made"
    for name, weight in saved["state_dict"].items():
        assert torch.equal(weight, before[f"weight/{name}"]), f"{name} moved after step 1"
    for i, s in moments.items():
        assert torch.equal(s["exp_avg"], before[f"exp_avg/{i}"]) and torch.equal(
            s["exp_avg_sq"], before[f"exp_avg_sq/{i}"]
        )
    # Resumed (without the fault), the run ends as one that skipped the bad update and went on would.
    resumed = training_state(main(fit_args(tiny_model_dir, data, tmp_path, "--ckpt_path", "last")))
    with monkeypatch.context() as patch:
        patch.setattr(TitleGenModule, "forward", forward)
        patch.setattr(NonFiniteLossGuard, "_stop", lambda *args, **kwargs: None)  # skip the update, do not stop
        skipped = training_state(main(fit_args(tiny_model_dir, data, tmp_path / "skipped")))
    assert max_relative_difference(resumed, skipped) <= TOLERANCE
    assert max_relative_difference(skipped, reference) > 100 * TOLERANCE, "skipping a step changes the run"


# ----------------------------------------------------------------------------------------------- --ckpt_path last
def test_ckpt_path_last_with_nothing_to_resume(tiny_model_dir, data, tmp_path, no_model_load):
    with pytest.raises(
        CheckpointError,
        match=rf"--ckpt_path last: {tmp_path}/logs/full_lora/version_\*/checkpoints/ holds no last.ckpt of"
        rf" '{tiny_model_dir}', so there is nothing to resume\. Fix: run without --ckpt_path",
    ):
        main(fit_args(tiny_model_dir, data, tmp_path, "--ckpt_path", "last"))


# ----------------------------------------------------------------------------------------------- log folder
def test_unwritable_log_dir_fails_before_loading(tiny_model_dir, data, tmp_path, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = fit_args(tiny_model_dir, data, tmp_path, f"--trainer.logger.init_args.save_dir={blocker / 'logs'}")
    with pytest.raises(
        OptionError,
        match=rf"the log directory {blocker}/logs/full_lora cannot be created or written \(NotADirectoryError: .*\)\."
        r" Fix: make it writable, or pass --trainer.logger.init_args.save_dir DIR on a writable disk\.",
    ):
        main(args)


def test_full_disk_fails_before_loading(tiny_model_dir, data, tmp_path, no_model_load, monkeypatch):
    full = shutil._ntuple_diskusage(total=100 << 30, used=(100 << 30) - (100 << 20), free=100 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    with pytest.raises(
        OptionError,
        match=rf"the disk of the log directory {tmp_path}/logs/full_lora has 100 MiB free; `fit` needs at least 1\.0"
        r" GiB for checkpoints \(last\.ckpt and the best\) and logs\. Fix: free space, or pass"
        r" --trainer\.logger\.init_args\.save_dir DIR on a disk with room\.",
    ):
        main(fit_args(tiny_model_dir, data, tmp_path))


# ----------------------------------------------------------------------------------------------- data position
def test_sampler_resumes_after_the_trained_batches_once():
    lengths = [(i * 37) % 101 for i in range(50)]
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=7)
    sampler.set_epoch(1)
    whole = list(sampler)
    sampler.resume(1, 3)
    assert list(sampler) == whole[12:]  # one process: the loader simply ends where the epoch ends
    assert list(sampler) == whole and len(sampler) == 50  # only the interrupted epoch is shortened
    sampler.resume(0, 3)
    sampler.set_epoch(1)
    assert list(sampler) == whole  # a position of another epoch does not apply
    # Under DDP each rank skips its own trained batches and then sees what the uninterrupted run would have, the
    # samples topping up an uneven epoch included (51 and 49 samples), so the ranks' loaders end at the same step.
    for n, world in ((50, 2), (51, 2), (49, 3)):
        epoch = [(i * 37) % 101 for i in range(n)]
        ranks = [LengthGroupedSampler(epoch, batch_size=4, seed=7, num_replicas=world, rank=r) for r in range(world)]
        for each in ranks:
            each.set_epoch(2)
        whole = [list(each) for each in ranks]
        assert {len(w) for w in whole} == {len(ranks[0])} == {-(-n // world)}
        for each in ranks:
            each.resume(2, 3)
        assert [list(each) for each in ranks] == [w[12:] for w in whole], (n, world)


@pytest.mark.parametrize(("processed", "expected"), [(0, (4, 0)), (5, (4, 5)), (30, (5, 0))])
def test_datamodule_state_is_the_next_batch_to_train(processed, expected):
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from titlegen.data.datamodule import TitleDataModule

    dm = TitleDataModule()
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    dm.trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING), current_epoch=4, num_training_batches=30,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )  # fmt: skip
    state = dm.state_dict()
    assert (state["train_epoch"], state["train_batches_done"]) == expected
    fresh = TitleDataModule()
    fresh.load_state_dict(state)
    assert fresh._resume_at == expected
