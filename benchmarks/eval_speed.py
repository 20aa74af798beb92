"""Evaluation speed: batched greedy titles vs one-by-one `generate`, and BERTScore's share of a validation.

    python -m benchmarks.eval_speed --model DIR --encoder DIR --pairs JSONL

Titles are generated for the validation cap (`val_generate_samples`, 200) through titlegen's own path (left-padded
prompts, greedy, stop at end-of-turn) at several batch sizes, and one by one for a subset (the rate per title is the
same for every sample of a one-by-one loop, so a subset measures it). Then one real `Trainer.validate` of the
LightningModule is timed, with the time spent inside BERTScore.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning as L
import torch
import unsloth  # noqa: F401  (before transformers and peft, as Unsloth requires)

from benchmarks.common import (
    MAX_NEW_TOKENS,
    MAX_SEQ_LENGTH,
    Stopwatch,
    emit,
    examples,
    sample_records,
    write_jsonl,
)


def generation_rates(args: argparse.Namespace, items: list[Any]) -> dict[str, Any]:
    from titlegen.data.collate import Collator
    from titlegen.data.tokenization import chat_tokens, load_tokenizer
    from titlegen.model import generation, loading, lora

    chat = chat_tokens(load_tokenizer(str(args.model)))
    device_map = {"": 0} if torch.cuda.is_available() else "sequential"
    base = loading.load_base_model(str(args.model), MAX_SEQ_LENGTH, device_map)
    model = lora.apply_lora(base, "all", 16, 16, 0.0, lora.DEFAULT_TARGET_MODULES, "unsloth", 3407)
    collate = Collator(chat.pad_id, for_generation=True)
    device = next(model.parameters()).device

    def run(batch_items: list[Any]) -> int:
        batch = collate(list(enumerate(batch_items)))
        out = generation.generate(
            model, batch["prompt_ids"].to(device), batch["prompt_attention_mask"].to(device), MAX_NEW_TOKENS,
            chat.end_of_turn_id, chat.pad_id,
        )  # fmt: skip
        return sum(map(len, out))

    run(items[:4])  # warm-up: kernels, caches
    watch = Stopwatch()
    watch.start()
    single_tokens = sum(run([ex]) for ex in items[: args.single])
    watch.stop()
    single = {"titles": args.single, "seconds": watch.elapsed, "new_tokens": single_tokens}
    single["titles_per_sec"] = args.single / watch.elapsed
    batched = []
    for size in args.batch_sizes:
        run(items[:size])
        watch.start()
        new_tokens = sum(run(items[i : i + size]) for i in range(0, len(items), size))
        watch.stop()
        batched.append(
            {"batch_size": size, "titles": len(items), "seconds": watch.elapsed, "new_tokens": new_tokens,
             "peak_gib": watch.peak_gib, "titles_per_sec": len(items) / watch.elapsed,
             "speedup_vs_single": len(items) / watch.elapsed / single["titles_per_sec"]}
        )  # fmt: skip
    return {"single": single, "batched": batched}


class ValidationTimer(L.Callback):
    def __init__(self) -> None:
        self.watch = Stopwatch()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch.start()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch.stop()


def validation_share(args: argparse.Namespace, val_file: Path) -> dict[str, Any]:
    """Wall time of one `Trainer.validate` and the part of it spent in BERTScore."""
    from titlegen.data.datamodule import TitleDataModule
    from titlegen.metrics import BERTScoreMetric
    from titlegen.module import TitleGenModule

    spent = {"bertscore": 0.0}
    original = BERTScoreMetric.score

    def timed(self: BERTScoreMetric, *a: Any, **k: Any) -> Any:
        watch = Stopwatch()
        watch.start()
        try:
            return original(self, *a, **k)
        finally:
            spent["bertscore"] += watch.stop()

    BERTScoreMetric.score = timed
    module = TitleGenModule(
        model_name=str(args.model), max_seq_length=MAX_SEQ_LENGTH, val_generate_samples=args.val_samples,
        bertscore_model=str(args.encoder), bertscore_num_layers=args.encoder_layer,
    )  # fmt: skip
    datamodule = TitleDataModule(
        train_file=str(val_file), validation_file=str(val_file), test_file=str(val_file), model_name=str(args.model),
        max_seq_length=MAX_SEQ_LENGTH, eval_batch_size=args.eval_batch_size,
    )  # fmt: skip
    timer = ValidationTimer()
    trainer = L.Trainer(
        accelerator="auto", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )  # fmt: skip
    trainer.validate(module, datamodule)  # first one: loads the model and BERTScore's encoder
    spent["bertscore"] = 0.0
    trainer.validate(module, datamodule)
    total = timer.watch.elapsed
    return {
        "validation_seconds": total, "bertscore_seconds": spent["bertscore"],
        "bertscore_share": spent["bertscore"] / total, "eval_batch_size": args.eval_batch_size,
        "generated": args.val_samples, "validation_samples": args.val_samples,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--encoder", type=Path, required=True, help="BERTScore encoder (benchmarks.run builds one)")
    parser.add_argument("--encoder-layer", type=int, default=17, help="roberta-large's default BERTScore layer")
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--val-samples", type=int, default=200, help="the validation cap (val_generate_samples)")
    parser.add_argument("--single", type=int, default=16, help="titles generated one by one")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--eval-batch-size", type=int, default=64, help="batch size of the timed validation")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/titlegen-bench"))
    parser.add_argument("--json")
    args = parser.parse_args()

    records = sample_records(args.pairs, args.val_samples, seed=args.seed + 1)
    result = {"generation": generation_rates(args, examples(records, args.model))}
    result["validation"] = validation_share(
        args, write_jsonl(args.workdir / f"validation-{args.val_samples}-{args.seed}.jsonl", records)
    )
    result["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    emit(result, args.json)


if __name__ == "__main__":
    main()
