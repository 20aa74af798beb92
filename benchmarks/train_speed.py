"""One training-throughput measurement: real (non-padding) tokens/s and peak GPU memory over a fixed sample set.

    python -m benchmarks.train_speed --variant {titlegen,unsloth,hf} --scope {all,last} --model DIR --pairs JSONL

Variants, all on the same samples, LoRA r=16 on q,k,v,o,gate,up,down, the same batch size:
- titlegen: this project's DataModule + LightningModule under the Lightning Trainer (what `main.py fit` runs);
- unsloth: a plain PyTorch loop over Unsloth's model, as an Unsloth notebook with TRL's defaults trains: random
  order, each batch padded to its longest sample, loss on the title tokens only, bf16 autocast, model(...).loss;
- hf: the same loop over transformers + peft + bitsandbytes (4-bit NF4, prepare_model_for_kbit_training).
Each variant first trains on separate warm-up batches, then is timed over one pass of the measured samples.
Run each variant in its own process: Unsloth patches transformers when imported, and the hf variant must not see it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MAX_SEQ_LENGTH,
    SCOPE_CONFIGS,
    Stopwatch,
    by_length,
    config_value,
    emit,
    examples,
    sample_records,
    write_jsonl,
)

if "--no-unsloth-block-compile" in sys.argv:  # read by Unsloth when it patches the decoder layers
    os.environ["UNSLOTH_BLOCK_COMPILE"] = "0"
if "--unbound-ranks" not in sys.argv:  # DDP workers: each one's CUDA context on its own GPU (titlegen.launch)
    from titlegen.runtime.launch import bind_rank_gpu

    bind_rank_gpu()
if "--variant" in sys.argv and sys.argv[sys.argv.index("--variant") + 1] != "hf":
    import unsloth  # noqa: F401  (before transformers and peft, as Unsloth requires)

import lightning as L  # noqa: E402
import torch  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def layers_for(scope: str, model_dir: Path) -> list[int] | None:
    from transformers import AutoConfig

    return None if scope == "all" else [AutoConfig.from_pretrained(model_dir).num_hidden_layers - 1]


# ------------------------------------------------------------------------------------------------- raw loops
def load_unsloth(model_dir: Path, scope: str) -> Any:
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        str(model_dir), max_seq_length=MAX_SEQ_LENGTH, dtype=None, load_in_4bit=True, use_exact_model_name=True
    )
    return FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0, target_modules=TARGETS, bias="none",
        layers_to_transform=layers_for(scope, model_dir), use_gradient_checkpointing="unsloth", random_state=3407,
    )  # fmt: skip


def load_hf(model_dir: Path, scope: str) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    config = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, layers_to_transform=layers_for(scope, model_dir),
        bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, config)


def raw_loop(args: argparse.Namespace, model: Any, warmup: list[Any], measured: list[Any]) -> dict[str, Any]:
    from titlegen.data.collate import Collator
    from titlegen.data.tokenization import chat_tokens, load_tokenizer

    collate = Collator(chat_tokens(load_tokenizer(str(args.model))).pad_id, for_generation=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    model.train()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def step(items: list[Any]) -> int:
        cpu_batch = collate(list(enumerate(items)))
        tokens = int(cpu_batch["attention_mask"].sum())  # counted on the CPU: no GPU sync inside the timed loop
        # Pinned in the main thread, as TRL's DataLoader does by default (dataloader_pin_memory, no workers). Copied
        # with non_blocking for Unsloth, which patches TRL's trainer to do so (`_unsloth_non_blocking_batches`);
        # accelerate's default copy (hf) blocks.
        pin = device == "cuda"
        batch = {
            k: (v.pin_memory() if pin else v).to(device, non_blocking=pin and args.variant == "unsloth")
            for k, v in cpu_batch.items()
        }
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            # The model's own loss on the full batch, as TRL computes it (titlegen's extra `label_positions` unused).
            loss = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens

    b = args.batch_size
    for i in range(0, len(warmup), b):
        step(warmup[i : i + b])
    # TRL's default: a random order, each batch padded to its own longest sample.
    order = torch.randperm(len(measured), generator=torch.Generator().manual_seed(args.seed)).tolist()
    watch = Stopwatch()
    watch.start()
    tokens = 0
    for i in range(0, len(order), b):
        tokens += step([measured[j] for j in order[i : i + b]])
        watch.lap()
    watch.stop()
    return {"tokens": tokens, "seconds": watch.elapsed, "peak_gib": watch.peak_gib, "steps": -(-len(order) // b),
            **watch.details()}  # fmt: skip


# ------------------------------------------------------------------------------------------------- titlegen
def titlegen_fit(args: argparse.Namespace, warm_file: Path, measured_file: Path) -> dict[str, Any] | None:
    timer = FitTimer()
    for data_file, callbacks in ((warm_file, []), (measured_file, [timer])):
        L.seed_everything(args.seed)
        if args.read_loss_each_step and callbacks:
            callbacks = [*callbacks, LossReadEachStep()]
        if (args.no_sigterm_broadcast or args.no_step_waits) and callbacks:
            callbacks = [*callbacks, NoSigtermBroadcast()]
        if args.trace and callbacks:
            callbacks = [*callbacks, StepTrace(args.trace)]
        phases = StepPhases() if args.phases and callbacks else None
        if phases:
            callbacks = [*callbacks, phases]
        # A fresh module for the timed fit: Lightning's teardown moves the finished one to the CPU, and a 4-bit
        # model does not come back from that round trip as it was loaded. The warm-up fit has compiled the kernels.
        # The warm-up is always the bare Trainer: warming up is about kernels, and it keeps the end-of-fit callbacks
        # out of it (under DDP their rank-0-only `log_dir` read, since fixed, hung the first try of main_fit).
        build = main_fit if args.as_main_fit and callbacks else bare_fit
        trainer, module, datamodule = build(args, data_file, warm_file)
        if args.no_step_waits and callbacks:
            from titlegen.runtime.stopping import GracefulStop, NonFiniteLossGuard

            waits = (GracefulStop, NonFiniteLossGuard)
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, waits)]
        trainer.callbacks.extend(callbacks)
        trainer.fit(module, datamodule)
    if phases and timer.result:
        timer.result["phases"] = phases.summary()
    return timer.result if trainer.is_global_zero else None


def bare_fit(args: argparse.Namespace, train_file: Path, eval_file: Path) -> tuple[L.Trainer, Any, Any]:
    """The DataModule and LightningModule under a plain Trainer: no logger, progress bar or callbacks."""
    from titlegen.data.datamodule import TitleDataModule
    from titlegen.module import TitleGenModule

    module = TitleGenModule(
        model_name=str(args.model), lora_scope=args.scope, max_seq_length=MAX_SEQ_LENGTH,
        gradient_checkpointing=args.gradient_checkpointing, cuda_graphs=not args.no_cuda_graphs,
    )  # fmt: skip
    datamodule = TitleDataModule(
        train_file=str(train_file), validation_file=str(eval_file), test_file=str(eval_file),
        model_name=str(args.model), max_seq_length=MAX_SEQ_LENGTH, batch_size=args.batch_size,
        group_by_length=not args.no_grouping, pad_to_multiple_of=args.pad_to_multiple_of, pin_memory=args.pin_memory,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="auto", devices=args.devices, strategy=ddp_strategy(args.ddp) if args.devices > 1 else "auto",
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
        enable_model_summary=False, gradient_clip_val=1.0, logger=False, enable_progress_bar=False,
    )  # fmt: skip
    return trainer, module, datamodule


def main_fit(args: argparse.Namespace, train_file: Path, eval_file: Path) -> tuple[L.Trainer, Any, Any]:
    """What `main.py fit --config <the scope's config>` builds (titlegen.cli: its callbacks, TensorBoard logger,
    progress bar and trainer defaults), on the benchmark's files and options, without validation. Its end-of-epoch
    checkpoint and adapter export come after the last step, outside the timed window (`FitTimer`)."""
    from titlegen.cli import main

    strategy: Any = ddp_strategy(args.ddp) if args.devices > 1 else "auto"
    if not isinstance(strategy, str):  # as a config would give it
        strategy = json.dumps({"class_path": f"{type(strategy).__module__}.{type(strategy).__name__}",
                               "init_args": DDP_OPTIONS[args.ddp]})  # fmt: skip
    options = {
        "seed_everything": args.seed, "model.model_name": args.model, "model.lora_scope": args.scope,
        "model.gradient_checkpointing": args.gradient_checkpointing, "model.cuda_graphs": not args.no_cuda_graphs,
        "data.train_file": train_file, "data.validation_file": eval_file, "data.test_file": eval_file,
        "data.max_seq_length": MAX_SEQ_LENGTH, "data.batch_size": args.batch_size,
        "data.group_by_length": not args.no_grouping, "data.pad_to_multiple_of": args.pad_to_multiple_of,
        "data.pin_memory": args.pin_memory, "trainer.devices": args.devices, "trainer.strategy": strategy,
        "trainer.max_epochs": 1, "trainer.limit_val_batches": 0, "trainer.num_sanity_val_steps": 0,
        "trainer.logger.init_args.save_dir": args.workdir / "lightning_logs",
    }  # fmt: skip
    argv = ["--config", SCOPE_CONFIGS[args.scope]]
    for key, value in options.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    cli = main(argv, run=False)
    return cli.trainer, cli.model, cli.datamodule


class LossReadEachStep(L.Callback):
    """Reads the step's loss on the host after every step, as Lightning does for a `prog_bar=True` value (what
    titlegen logged until 2026-11-26d): the host waits for the GPU once a step."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        float(outputs["loss"])


class StepPhases(L.Callback):
    """Where a step's time goes: host time (perf_counter) and GPU time (CUDA events on the current stream) between
    Lightning's per-step hooks, medians over the steps after the first 8. Runs after the other callbacks' hooks, so
    `after_backward>before_optimizer_step` holds the NaN guard's work (until 2026-11-27b its wait for the GPU), and
    `batch_end>batch_start` the next batch (and, until then, Lightning's SIGTERM broadcast under DDP)."""

    MARKS = ("batch_start", "before_backward", "after_backward", "before_optimizer_step", "batch_end")

    def __init__(self) -> None:
        self.steps: list[list[tuple[float, torch.cuda.Event]]] = []

    def _mark(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.steps[-1].append((time.perf_counter(), event))

    def on_train_batch_start(self, *_: Any) -> None:
        self.steps.append([])
        self._mark()

    def on_before_backward(self, *_: Any) -> None:
        self._mark()

    def on_after_backward(self, *_: Any) -> None:
        self._mark()

    def on_before_optimizer_step(self, *_: Any) -> None:
        self._mark()

    def on_train_batch_end(self, *_: Any) -> None:
        self._mark()

    def summary(self) -> dict[str, dict[str, float]]:
        torch.cuda.synchronize()
        steps = [marks for marks in self.steps[8:] if len(marks) == len(self.MARKS)]
        spans = {
            f"{a}>{b}": [(marks[i], marks[i + 1]) for marks in steps]
            for i, (a, b) in enumerate(zip(self.MARKS, self.MARKS[1:], strict=False))
        }
        # From one step's end to the next step's start.
        spans["batch_end>batch_start"] = [(done[-1], then[0]) for done, then in zip(steps, steps[1:], strict=False)]
        return {
            span: {
                "host_ms": round(statistics.median((y[0] - x[0]) * 1e3 for x, y in pairs), 2),
                "gpu_ms": round(statistics.median(x[1].elapsed_time(y[1]) for x, y in pairs), 2),
            }
            for span, pairs in spans.items()
        }


class StepTrace(L.Callback):
    """torch.profiler over `count` training steps from batch `first`, on every rank: one Chrome trace per rank
    (kernels with their streams and times), to tell kernels that ran longer apart from gaps and waits."""

    def __init__(self, out: Path, first: int = 12, count: int = 4) -> None:
        self.out, self.first, self.count = out, first, count
        self.profiler: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if i == self.first:
            torch.cuda.synchronize()
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.profiler is not None and args[-1] == self.first + self.count - 1:
            torch.cuda.synchronize()
            self.profiler.__exit__(None, None, None)
            self.out.mkdir(parents=True, exist_ok=True)
            self.profiler.export_chrome_trace(str(self.out / f"trace-rank{trainer.global_rank}.json"))
            self.profiler = None


class NoSigtermBroadcast(L.Callback):
    """Skips Lightning's per-step SIGTERM broadcast under DDP (`_broadcast_sigterm_tensor`: rank 0's flag sent to
    every rank and read back with `.item()`, so every step starts with the host waiting for the GPU). A diagnosis
    only: Lightning's SIGTERM handler still broadcasts, and without the loop's broadcast on the other ranks to
    match it, a SIGTERM may hang the run."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None


def ddp_strategy(name: str) -> Any:
    """`ddp`: Lightning's default, as `--trainer.strategy=ddp` runs. `ddp-static`: the LoRA gradients' buckets are
    views of the gradients (no copy into them), and the graph is declared static (DDP records which parameters get
    gradients, and in what order, on the first step and reuses that). `ddp-no-buffer-broadcast`: DDP does not
    broadcast rank 0's module buffers before each forward (a diagnosis of DDP's per-step host work: titlegen's
    buffers, the rotary tables, are the same on every rank anyway)."""
    from lightning.pytorch.strategies import DDPStrategy

    options = DDP_OPTIONS[name]
    return "ddp" if options is None else DDPStrategy(**options)


DDP_OPTIONS: dict[str, dict[str, Any] | None] = {
    "ddp": None,
    "ddp-static": {"static_graph": True, "gradient_as_bucket_view": True},
    "ddp-no-buffer-broadcast": {"broadcast_buffers": False},
}


class FitTimer(L.Callback):
    """Times one `fit` on every rank, from its first batch to the end of its last (so without end-of-epoch saves); at
    the end, sums the tokens and compares the LoRA weights across ranks."""

    def __init__(self) -> None:
        self.watch = Stopwatch()
        self.steps = 0
        self.stopped = False
        self.result: dict[str, Any] = {}
        # Each step's kind on this rank (0: a graph replayed, 1: a new graph captured, 2: eager) and tokens (GPU
        # tensors while running: int() on each step would sync the GPU). A pass of a few hundred steps pays an eager
        # step or a capture per new batch shape, and under DDP every rank waits for any rank's; steps that all ranks
        # replayed are what the rest of a long run costs.
        self.kinds: list[int] = []
        self.step_tokens: list[torch.Tensor] = []
        self._graphs_before = (0, 0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        # From the first batch on, as the raw loops are timed: DataLoader workers start before it, in both.
        if self.steps == 0:
            trainer.strategy.barrier()
            self.watch.start()
        self._graphs_before = graph_state(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        self.step_tokens.append(batch["attention_mask"].sum())
        self.steps += 1
        self.watch.lap()
        (captures, replays), (captures_before, replays_before) = graph_state(pl_module), self._graphs_before
        self.kinds.append(1 if captures > captures_before else 0 if replays > replays_before else 2)
        if self.steps == trainer.num_training_batches:
            self._stop()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # An epoch that ended before its last batch (max_steps, a resumed epoch, a stop signal). Lightning runs this
        # hook of monitoring callbacks (ModelCheckpoint's save) after the other callbacks' and the module's.
        self._stop()

    def _stop(self) -> None:
        if not self.stopped:
            self.watch.stop()
            self.stopped = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()
        strategy = trainer.strategy
        weights = torch.cat([p.detach().float().flatten() for p in pl_module.parameters() if p.requires_grad])
        gathered = strategy.all_gather(weights).reshape(trainer.world_size, -1)
        # Every rank ran the same number of steps (DistributedSampler's even shares).
        device = pl_module.device
        kinds = torch.tensor(self.kinds, dtype=torch.long, device=device)
        no_steps = torch.zeros(0, dtype=torch.long, device=device)
        step_tokens = torch.stack(self.step_tokens) if self.step_tokens else no_steps
        kinds = strategy.all_gather(kinds).reshape(trainer.world_size, -1)
        step_tokens = strategy.all_gather(step_tokens).reshape(trainer.world_size, -1).sum(0)
        tokens = int(step_tokens.sum())
        # A step's kind for the run: replayed on every rank, else a capture on some rank, else eager on some rank.
        kind = torch.where((kinds == 0).all(0), 0, torch.where((kinds == 1).any(0), 1, 2)).tolist()
        self.result = {
            "tokens": tokens, "seconds": self.watch.elapsed, "peak_gib": self.watch.peak_gib,
            "steps": self.steps, "world_size": trainer.world_size,
            # 0.0 when every rank ends with the same LoRA weights (DDP kept them in sync).
            "lora_max_rank_diff": float((gathered - gathered[0]).abs().max()),
            "lora_checksum": float(weights.double().abs().sum()),
            **self.watch.details(),
            **step_graph_counts(pl_module),
            "step_kinds": step_kinds(kind, self.watch.laps, step_tokens.tolist()),
            # Who averaged the gradients: FlatGradientSync (titlegen.gradsync) or NoneType (DDP's reducer, one GPU).
            "gradient_sync": type(getattr(pl_module, "_grad_sync", None)).__name__,
        }  # fmt: skip


def step_kinds(kind: list[int], seconds: list[float], tokens: list[int]) -> dict[str, dict[str, Any]]:
    """Steps, seconds (this rank's laps) and tokens (all ranks') of each kind of step in `kind` (`FitTimer`). A lap is
    host time: a step's time where each step waits for the GPU (`main.py fit`'s NaN guard did until 2026-11-27b);
    since then the stop decisions' reads one step late keep the host about a step ahead, and the laps are shifted by
    about a step against the GPU's."""
    out: dict[str, dict[str, Any]] = {}
    for code, t, n in zip(kind, seconds, tokens, strict=True):
        entry = out.setdefault(("replay", "capture", "eager")[code], {"steps": 0, "seconds": 0.0, "tokens": 0})
        entry["steps"] += 1
        entry["seconds"] += t
        entry["tokens"] += int(n)
    return out


def graph_state(module: Any) -> tuple[int, int]:
    """This rank's (captures, replays) so far; (0, 0) without a runner. Captures, not the graphs held: a capture that
    moved a tensor the step reads drops the other graphs."""
    counts = step_graph_counts(module)
    return counts.get("step_graph_captures", 0), counts.get("step_graph_replays", 0)


def step_graph_counts(module: Any) -> dict[str, int]:
    """This rank's whole-step CUDA graphs (`titlegen.stepgraph`): captured, replayed, failed to capture."""
    from titlegen.perf.loss import unwrapped
    from titlegen.perf.stepgraph import ATTRIBUTE

    runner = unwrapped(module.model).__dict__.get(ATTRIBUTE) if getattr(module, "model", None) is not None else None
    if not runner:
        return {}
    return {"step_graphs": len(runner.graphs), "step_graph_captures": runner.captures,
            "step_graph_replays": runner.replays, "step_graph_failures": runner.failures}  # fmt: skip


def main() -> None:
    # No abbreviations: --no-unsloth-block-compile is also read from sys.argv before the import of Unsloth.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--variant", choices=["titlegen", "unsloth", "hf"], required=True)
    parser.add_argument("--scope", choices=["all", "last"], default="all")
    parser.add_argument("--model", type=Path, required=True, help="the Qwen2.5-0.5B-shaped model (benchmarks.run)")
    parser.add_argument("--pairs", type=Path, required=True, help="JSONL of abstract/title pairs")
    parser.add_argument("--samples", type=int, default=1024, help="measured samples (one pass)")
    parser.add_argument("--warmup-batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8, help="per device; the configs' default")
    parser.add_argument("--devices", type=int, default=1, help="GPUs for the titlegen variant (DDP when > 1)")
    parser.add_argument("--ddp", choices=list(DDP_OPTIONS), default="ddp", help="the strategy when --devices > 1")
    parser.add_argument("--no-grouping", action="store_true", help="titlegen without length-grouped batches")
    parser.add_argument("--gradient-checkpointing", choices=["offload", "gpu", "unsloth"], default="offload",
                        help="titlegen's checkpoint implementation (the module's default: offload)")  # fmt: skip
    parser.add_argument(
        "--no-unsloth-block-compile",
        action="store_true",
        help="UNSLOTH_BLOCK_COMPILE=0: Unsloth's decoder layers run eagerly, not as compiled regions",
    )
    parser.add_argument("--pin-memory", action="store_true", help="titlegen with --data.pin_memory true")
    parser.add_argument(
        "--traced-lora-mlp", action="store_true",
        help="titlegen with Unsloth's fused LoRA MLP traced into its compiled blocks, as before 2026-11-27c",
    )  # fmt: skip
    parser.add_argument(
        "--ddp-reducer", action="store_true",
        help="titlegen under DDP with DDP's own reducer averaging the gradients (a copy per tensor into its buckets and"
        " back), as before 2026-11-27d, not titlegen.gradsync's one all-reduce",
    )  # fmt: skip
    parser.add_argument("--as-main-fit", action="store_true", help="titlegen with main.py fit's per-step extras")
    parser.add_argument(
        "--read-loss-each-step", action="store_true", help="titlegen reading its loss on the host after every step"
    )
    parser.add_argument("--no-cuda-graphs", action="store_true", help="titlegen without CUDA graphs")
    parser.add_argument("--phases", action="store_true", help="titlegen: host and GPU time between the step's hooks")
    parser.add_argument(
        "--no-sigterm-broadcast", action="store_true",
        help="titlegen under DDP without Lightning's per-step SIGTERM broadcast (a diagnosis: its 2 host waits a step)",
    )  # fmt: skip
    parser.add_argument(
        "--no-step-waits", action="store_true",
        help="titlegen main fit without the NaN guard and the stop-signal decisions (a diagnosis: until 2026-11-27b"
        " each made the host wait for the GPU every step; now it bounds what their one-step-late reads still cost)",
    )  # fmt: skip
    parser.add_argument("--trace", type=Path, help="titlegen: a profiler trace of 4 steps per rank, in this folder")
    parser.add_argument(
        "--unbound-ranks", action="store_true",
        help="DDP workers import Unsloth before their GPU is selected, as main.py did until 2026-11-26h (a diagnosis)",
    )  # fmt: skip
    parser.add_argument("--pad-to-multiple-of", type=int, help="titlegen; default: as the scope's config pads")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/titlegen-bench"))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.pad_to_multiple_of is None:  # as the scope's config pads (64 for last_layer_lora.yaml's graphs)
        from titlegen.data.datamodule import TitleDataModule

        default = inspect.signature(TitleDataModule).parameters["pad_to_multiple_of"].default
        args.pad_to_multiple_of = config_value(args.scope, "data", "pad_to_multiple_of", default)

    warm_n = args.warmup_batches * args.batch_size * args.devices
    records = sample_records(args.pairs, warm_n + args.samples, seed=args.seed)
    warm, measured = records[:warm_n], records[warm_n:]
    # Every variant also warms up on the pass's longest samples (one batch of them, per rank): the memory pools then
    # have grown to the pass's largest batch before the timer starts. Without this, titlegen's timed window, which
    # starts with that batch (length grouping puts it first), paid for ~24 new pinned blocks and ~90 cudaMallocs
    # that the raw loop's long random warm-up batches had already paid for (2026-11-26d).
    items = examples(measured, args.model)
    warm += [measured[i] for i in by_length(items, list(range(len(items))))[-args.batch_size * args.devices :]]
    if args.traced_lora_mlp:
        from titlegen.perf import patches

        patches.run_lora_mlp_eagerly = lambda model: 0
    if args.ddp_reducer:  # in main(): Lightning's launcher runs this script again for rank 1
        from titlegen.perf import gradsync

        gradsync.take_over = lambda strategy, params: None
    if args.variant == "titlegen":
        # Each rank writes the same files; the names carry the pid of the launching process, so ranks agree.
        tag = os.environ.get("TITLEGEN_BENCH_TAG", str(os.getpid()))
        os.environ["TITLEGEN_BENCH_TAG"] = tag
        warm_file = write_jsonl(args.workdir / f"warm-{tag}.jsonl", warm)
        measured_file = write_jsonl(args.workdir / f"measured-{tag}.jsonl", measured)
        result = titlegen_fit(args, warm_file, measured_file)
        if result is None:
            return
    else:
        model = (load_unsloth if args.variant == "unsloth" else load_hf)(args.model, args.scope)
        result = raw_loop(args, model, examples(warm, args.model), items)
    result.update(
        variant=args.variant, scope=args.scope, batch_size=args.batch_size, samples=args.samples,
        grouped=args.variant == "titlegen" and not args.no_grouping, devices=args.devices,
        ddp=args.ddp if args.devices > 1 else None, as_main_fit=args.as_main_fit,
        read_loss_each_step=args.read_loss_each_step, step_waits=not args.no_step_waits,
        sigterm_broadcast=not (args.no_sigterm_broadcast or args.no_step_waits),
        ranks_bound=not args.unbound_ranks,
        unsloth_block_compile=None if args.variant == "hf" else os.environ.get("UNSLOTH_BLOCK_COMPILE", "1") != "0",
        eager_lora_mlp=args.variant == "titlegen" and not args.traced_lora_mlp,
        pin_memory=args.pin_memory if args.variant == "titlegen" else torch.cuda.is_available(),
        checkpointing=args.gradient_checkpointing if args.variant == "titlegen" else "unsloth",
        cuda_graphs=args.variant == "titlegen" and not args.no_cuda_graphs,
        pad_to_multiple_of=args.pad_to_multiple_of if args.variant == "titlegen" else 1,
        tokens_per_sec=result["tokens"] / result["seconds"],
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
