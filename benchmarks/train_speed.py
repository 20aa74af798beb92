"""One training-throughput measurement: real (non-padding) tokens/s and peak GPU memory over a fixed sample set.

    python -m benchmarks.train_speed --variant {titlegen,unsloth-sft,unsloth,hf} --scope {all,last} --model DIR \
        (--samples-dir DIR | --pairs JSONL)

Variants, all on the same samples, LoRA r=16 (alpha 16, no dropout) on q,k,v,o,gate,up,down of every decoder layer
(`all`) or of the last one (`last`), the same batch size, AdamW (at 2e-4; titlegen at its scope config's rate: the
rate changes no work in a step), gradients clipped at norm 1.0:
- titlegen: what `python main.py fit --config <the scope's config>` runs (titlegen.cli: its callbacks, logger, progress
  bar and defaults) on the benchmark's files, without validation. `--fit-option KEY=VALUE` adds one of main.py fit's
  options: `--fit-option model.cuda_graphs=false` is `--model.cuda_graphs false`. `--devices 2`: DDP, as
  `--trainer.devices 2 --trainer.strategy ddp`;
- unsloth-sft: Unsloth's `FastLanguageModel` and its patched `trl.SFTTrainer`, fed the same samples pre-tokenized
  (`input_ids` and `completion_mask`, `completion_only_loss=True`), TRL's defaults otherwise (bf16 on a GPU, fused
  AdamW, a log every 10 steps, its gradient checkpointing), no DataLoader workers. Unsloth chooses between padded and
  padding-free batches itself (`--padding-choice auto`: padding-free on an H100 or H200, where its rule has no
  measurement) unless `--padding-choice padded` (UNSLOTH_PADDING_CHOICE=padded: padded batches, each decoder layer a
  compiled region). The result's `padding` is the one the trainer's collator used, read after it was built;
- unsloth: a plain PyTorch loop over Unsloth's model, as an Unsloth notebook with TRL's defaults trains: random order,
  each batch padded to its longest sample, loss on the title tokens only, bf16 autocast, model(...).loss;
- hf: the same loop over transformers + peft + bitsandbytes (4-bit NF4, prepare_model_for_kbit_training).
Each variant first trains on the warm-up samples, then is timed over one pass of the measured samples (random order,
except titlegen, which groups by length as `main.py fit` does by default).
Run each variant in its own process: Unsloth patches transformers when imported, and the hf variant must not see it.

`--titlegen-src DIR`: the titlegen variant imports titlegen (and its configs) from DIR, another checkout such as an
older commit, instead of this one; the harness stays this checkout's. It needs `--samples-dir` (benchmarks.run writes
it with this checkout's data code) and uses nothing of titlegen but `titlegen.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _flag(name: str) -> str | None:
    """A flag's value read before argparse runs (`--name value` or `--name=value`): some act before the imports."""
    for i, arg in enumerate(sys.argv):
        if arg == name and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _bind_rank_gpu() -> None:
    """As main.py does before it imports Unsloth (titlegen.runtime.launch.bind_rank_gpu): a DDP worker's CUDA context
    on its own GPU, not on GPU 0. Kept here so that `--titlegen-src` needs nothing of titlegen but its CLI."""
    rank = os.environ.get("LOCAL_RANK", "")
    if rank.isdigit():
        import torch

        if torch.cuda.is_available() and int(rank) < torch.cuda.device_count():
            torch.cuda.set_device(int(rank))


if _flag("--titlegen-src"):  # before anything imports titlegen; DDP workers re-run this file with the same arguments
    sys.path.insert(0, str(Path(_flag("--titlegen-src") or "").resolve()))
if _flag("--variant") == "unsloth-sft":  # read by Unsloth's SFTTrainer; set before Unsloth's import, as a user would
    os.environ["UNSLOTH_PADDING_CHOICE"] = _flag("--padding-choice") or "auto"
if _flag("--variant") != "hf":
    _bind_rank_gpu()
    import unsloth  # noqa: F401  (before transformers, peft and trl, as Unsloth requires)

import lightning as L  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from benchmarks.common import (  # noqa: E402
    MAX_SEQ_LENGTH,
    SCOPE_CONFIGS,
    Stopwatch,
    emit,
    examples,
    git_commit,
    prepare_samples,
    read_jsonl,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 2e-4
STEP_GRAPHS = "_titlegen_step_graphs"  # titlegen.perf.stepgraph.ATTRIBUTE: where a CausalLM keeps its step graphs


def layers_for(scope: str, model_dir: Path) -> list[int] | None:
    from transformers import AutoConfig

    return None if scope == "all" else [AutoConfig.from_pretrained(model_dir).num_hidden_layers - 1]


def random_order(n: int, seed: int) -> list[int]:
    """TRL's default order: random, each batch then padded to its own longest sample."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def lora_weights(model: torch.nn.Module) -> torch.Tensor:
    """Every trainable weight, flattened, in float32 on the CPU (off the GPU: it must not count in the peak)."""
    return torch.cat([p.detach().float().flatten().cpu() for p in model.parameters() if p.requires_grad])


# ------------------------------------------------------------------------------------------------- Unsloth, hf
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
    optimizer = torch.optim.AdamW(params, lr=LR)
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
    order = random_order(len(measured), args.seed)
    watch = Stopwatch()
    watch.start()
    tokens = 0
    for i in range(0, len(order), b):
        tokens += step([measured[j] for j in order[i : i + b]])
        watch.lap()
    watch.stop()
    return {"tokens": tokens, "seconds": watch.elapsed, "peak_gib": watch.peak_gib, "steps": -(-len(order) // b),
            **watch.details()}  # fmt: skip


# ------------------------------------------------------------------------------------------------- Unsloth + TRL
class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy: Unsloth announces its padding choice with print()."""

    def __init__(self, out: Any) -> None:
        self.out, self.copy = out, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def printed_lines() -> Iterator[list[str]]:
    """The lines printed inside the block (still shown), in the list yielded, once the block ends."""
    lines: list[str] = []
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield lines
    lines += tee.copy.getvalue().splitlines()


def sft_run(args: argparse.Namespace, model: Any, warmup: list[Any], measured: list[Any]) -> dict[str, Any]:
    """Unsloth's patched `trl.SFTTrainer` (as `from trl import SFTTrainer` gives it after `import unsloth`) over the
    warm-up samples then the measured ones in a random order, in one `train()`; timed from the end of the last warm-up
    step to the end of the last step (`SftStepTimer`)."""
    from trl import SFTConfig, SFTTrainer

    from datasets import Dataset
    from titlegen.data.tokenization import load_tokenizer

    b = args.batch_size
    if not warmup or len(warmup) % b:
        raise SystemExit(f"{len(warmup)} warm-up samples: give one or more whole batches of {b}")
    rows = warmup + [measured[j] for j in random_order(len(measured), args.seed)]
    dataset = Dataset.from_dict(
        {
            "input_ids": [ex.prompt_ids + ex.target_ids for ex in rows],
            # Loss on the title and its end-of-turn only, as titlegen's labels (TRL builds its labels from this mask).
            "completion_mask": [[0] * len(ex.prompt_ids) + [1] * len(ex.target_ids) for ex in rows],
        }
    )
    cuda = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(args.workdir / f"sft-{os.getpid()}"), per_device_train_batch_size=b,
        gradient_accumulation_steps=1, num_train_epochs=1, learning_rate=LR, max_grad_norm=1.0,
        bf16=cuda, fp16=False,  # TRL's default on a GPU; float32 on the CPU (the CPU test)
        optim="adamw_torch_fused" if cuda else "adamw_torch",  # AdamW, as titlegen: Unsloth's default is 8-bit
        completion_only_loss=True, packing=False, max_length=MAX_SEQ_LENGTH, dataloader_num_workers=0,
        # The rows are already in a random order, warm-up first: the sampler must keep it.
        train_sampling_strategy="sequential", report_to=[], save_strategy="no", seed=args.seed,
    )  # fmt: skip
    with printed_lines() as printed:
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=load_tokenizer(
            str(args.model)))  # fmt: skip
    collator = trainer.data_collator
    padding_free = bool(getattr(collator, "padding_free", False))
    warm_steps, timed_steps = len(warmup) // b, -(-len(measured) // b)
    timer = SftStepTimer(warm_steps, warm_steps + timed_steps)
    trainer.add_callback(timer)
    # Each micro-step's loss, kept on the GPU (no host sync) and read once after training.
    losses: list[torch.Tensor] = []
    training_step = trainer.training_step

    def recorded_step(*a: Any, **k: Any) -> torch.Tensor:
        loss = training_step(*a, **k)
        losses.append(loss.detach())
        return loss

    trainer.training_step = recorded_step
    before = lora_weights(model)
    trainer.train()
    # Real tokens of the timed steps: the rows' lengths, in the order the sequential sampler took them.
    lengths = [len(ex.prompt_ids) + len(ex.target_ids) for ex in rows[len(warmup) :]]
    tokens = sum(lengths[: timer.timed_steps * b])
    return {
        "tokens": tokens, "seconds": timer.watch.elapsed, "peak_gib": timer.watch.peak_gib,
        "steps": timer.timed_steps, "optimizer_steps": trainer.state.global_step, "warmup_steps": warm_steps,
        **timer.watch.details(),
        "losses": [float(x) for x in torch.stack(losses).float().cpu()] if losses else [],
        "lora_max_change": float((lora_weights(model) - before).abs().max()),
        # What ran, read from the trainer after it was built, not what was asked for.
        "padding": "padding_free" if padding_free else "padded",
        "padding_requested": os.environ.get("UNSLOTH_PADDING_CHOICE"),
        "padding_free_arg": getattr(trainer.args, "padding_free", None),
        "padding_log": [line for line in printed if "padd" in line.lower()],
        "collator": f"{type(collator).__module__}.{type(collator).__qualname__}",
        "trainer": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "bf16": bool(trainer.args.bf16), "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "unsloth_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("UNSLOTH_")},
    }  # fmt: skip


class SftStepTimer(TrainerCallback):
    """The Stopwatch starts at the end of the last warm-up optimizer step, laps at the end of each later one, and
    stops (GPU synchronised) at the end of the last one, or of training."""

    def __init__(self, warm_steps: int, last_step: int) -> None:
        self.warm_steps, self.last_step = warm_steps, last_step
        self.watch = Stopwatch()
        self.timed_steps = 0
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.warm_steps:
            self.watch.start()
        elif state.global_step > self.warm_steps and not self.stopped:
            self.watch.lap()
            self.timed_steps += 1
            if state.global_step == self.last_step:
                self._stop()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if not self.stopped and self.timed_steps:
            self.watch.stop()
        self.stopped = True


# ------------------------------------------------------------------------------------------------- titlegen
def titlegen_fit(args: argparse.Namespace, warm_file: Path, measured_file: Path) -> dict[str, Any] | None:
    timer = FitTimer()
    for data_file, callbacks in ((warm_file, []), (measured_file, [timer])):
        # A fresh module for the timed fit: Lightning's teardown moves the finished one to the CPU, and a 4-bit
        # model does not come back from that round trip as it was loaded. The warm-up fit has compiled the kernels.
        cli = main_fit(args, data_file, warm_file)
        cli.trainer.callbacks.extend(callbacks)
        cli.trainer.fit(cli.model, cli.datamodule)
    if not cli.trainer.is_global_zero:
        return None
    return {**timer.result, "settings": fit_settings(cli)}


def main_fit(args: argparse.Namespace, train_file: Path, eval_file: Path) -> Any:
    """The LightningCLI that `main.py fit --config <the scope's config>` builds (titlegen.cli: its callbacks,
    TensorBoard logger, progress bar and defaults) with the benchmark's files, batch size and devices, without
    validation, plus `--fit-option`s. Its end-of-epoch checkpoint and adapter export come after the last step,
    outside the timed window (`FitTimer`)."""
    from titlegen.cli import main

    options = {
        "seed_everything": args.seed, "model.model_name": args.model, "data.train_file": train_file,
        "data.validation_file": eval_file, "data.test_file": eval_file, "data.max_seq_length": MAX_SEQ_LENGTH,
        "data.batch_size": args.batch_size, "trainer.devices": args.devices,
        "trainer.strategy": "ddp" if args.devices > 1 else "auto", "trainer.max_epochs": 1,
        "trainer.limit_val_batches": 0, "trainer.num_sanity_val_steps": 0,
        "trainer.logger.init_args.save_dir": args.workdir / "lightning_logs",
    }  # fmt: skip
    argv = ["--config", SCOPE_CONFIGS[args.scope]]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    for option in args.fit_option:
        key, value = option.split("=", 1)
        argv += [f"--{key.removeprefix('--')}", value]
    return main(argv, run=False)


def fit_settings(cli: Any) -> dict[str, Any]:
    """The settings the fit ran with, as the CLI resolved them (config, defaults and options)."""
    model = {k: v for k, v in dict(cli.model.hparams).items() if isinstance(v, str | int | float | bool | None)}
    data = {k: v for k, v in dict(cli.datamodule.hparams).items() if isinstance(v, str | int | float | bool | None)}
    keep_model = ("lora_scope", "lora_r", "lora_alpha", "gradient_checkpointing", "cuda_graphs", "learning_rate")
    keep_data = ("batch_size", "pad_to_multiple_of", "group_by_length", "pin_memory", "num_workers", "max_seq_length")
    return {
        **{f"model.{k}": model[k] for k in keep_model if k in model},
        **{f"data.{k}": data[k] for k in keep_data if k in data},
        "trainer.precision": str(cli.trainer.precision),
        "trainer.gradient_clip_val": cli.trainer.gradient_clip_val,
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
        }  # fmt: skip


def step_kinds(kind: list[int], seconds: list[float], tokens: list[int]) -> dict[str, dict[str, Any]]:
    """Steps, seconds (this rank's laps) and tokens (all ranks') of each kind of step in `kind` (`FitTimer`). A lap is
    host time; `main.py fit`'s host runs about one step ahead of the GPU (its stop decisions read a step late), so
    the laps are shifted by about a step against the GPU's."""
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
    """This rank's whole-step CUDA graphs (titlegen's `StepGraphs`): captured, replayed, failed to capture. Read by
    attribute name, without importing titlegen.perf, so that another titlegen source (`--titlegen-src`) works too."""
    model = getattr(module, "model", None)
    if model is None:
        return {}
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # titlegen.perf.unwrapped
    runner = causal_lm.__dict__.get(STEP_GRAPHS)
    if not runner:
        return {}
    return {"step_graphs": len(runner.graphs), "step_graph_captures": runner.captures,
            "step_graph_replays": runner.replays, "step_graph_failures": runner.failures}  # fmt: skip


# ------------------------------------------------------------------------------------------------- main
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "bitsandbytes", "lightning"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def main() -> None:
    # No abbreviations: --variant, --padding-choice and --titlegen-src are also read from sys.argv before the imports.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--variant", choices=["titlegen", "unsloth-sft", "unsloth", "hf"], required=True)
    parser.add_argument("--scope", choices=["all", "last"], default="all")
    parser.add_argument("--model", type=Path, required=True, help="the Qwen2.5-0.5B-shaped model (benchmarks.run)")
    samples = parser.add_mutually_exclusive_group(required=True)
    samples.add_argument("--samples-dir", type=Path, help="warm.jsonl and measured.jsonl (common.prepare_samples)")
    samples.add_argument("--pairs", type=Path, help="JSONL of abstract/title pairs: draw the samples here")
    parser.add_argument("--samples", type=int, default=1024, help="with --pairs: measured samples (one pass)")
    parser.add_argument("--warmup-batches", type=int, default=6, help="with --pairs: random warm-up batches")
    parser.add_argument("--batch-size", type=int, default=32, help="per device; titlegen's default")
    parser.add_argument("--devices", type=int, default=1, help="titlegen: GPUs (DDP when > 1)")
    parser.add_argument(
        "--fit-option", action="append", default=[], metavar="KEY=VALUE",
        help="titlegen: one more option of main.py fit, e.g. model.cuda_graphs=false (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--padding-choice", choices=["auto", "padded"], default="auto",
        help="unsloth-sft: UNSLOTH_PADDING_CHOICE (auto: Unsloth's own choice)",
    )  # fmt: skip
    parser.add_argument("--titlegen-src", type=Path, help="titlegen: import titlegen from this source tree instead")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/titlegen-bench"))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.variant != "titlegen" and (args.fit_option or args.titlegen_src or args.devices != 1):
        parser.error("--fit-option, --titlegen-src and --devices are for --variant titlegen")
    if args.titlegen_src and not args.samples_dir:
        parser.error("--titlegen-src needs --samples-dir: the samples are drawn with this checkout's titlegen")
    for option in args.fit_option:
        if "=" not in option:
            parser.error(f"--fit-option {option}: give KEY=VALUE, e.g. model.cuda_graphs=false")

    if args.samples_dir is None:
        per_step = args.batch_size * args.devices
        args.samples_dir = prepare_samples(args.pairs, args.model, args.samples, args.warmup_batches, per_step,
                                           args.seed, args.workdir)  # fmt: skip
    warm_file, measured_file = args.samples_dir / "warm.jsonl", args.samples_dir / "measured.jsonl"
    source: dict[str, Any] = {}
    if args.variant == "titlegen":
        import titlegen

        root = Path(titlegen.__file__).resolve().parents[1]
        if args.titlegen_src and root != args.titlegen_src.resolve():
            raise SystemExit(f"titlegen was imported from {root}, not from --titlegen-src {args.titlegen_src}")
        source = {"titlegen_src": str(root), "titlegen_commit": git_commit(root), "fit_options": args.fit_option}
        result = titlegen_fit(args, warm_file, measured_file)
        if result is None:  # a DDP rank other than 0
            return
    else:
        warm, measured = examples(read_jsonl(warm_file), args.model), examples(read_jsonl(measured_file), args.model)
        if args.variant == "unsloth-sft":
            result = sft_run(args, load_unsloth(args.model, args.scope), warm, measured)
        else:
            model = (load_unsloth if args.variant == "unsloth" else load_hf)(args.model, args.scope)
            result = raw_loop(args, model, warm, measured)
    result.update(
        variant=args.variant, scope=args.scope, batch_size=args.batch_size, devices=args.devices,
        samples=len(read_jsonl(measured_file)), tokens_per_sec=result["tokens"] / result["seconds"], **source,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", versions=versions(),
    )  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
