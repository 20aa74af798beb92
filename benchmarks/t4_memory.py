"""Peak GPU memory of one `main.py` command with the process capped at a T4's usable memory.

    python -m benchmarks.t4_memory --cap-gib 15 --results peaks.jsonl -- fit --config full_lora.yaml [options]

A Colab T4 has 15 GiB usable of its 16 GB. On a bigger GPU, `torch.cuda.set_per_process_memory_fraction` makes the
caching allocator refuse more than the cap, so a command that needs more fails with an out-of-memory error here as
it would on a T4 (what the cap cannot mimic: a T4's slower kernels, and its lack of bf16, which `--model.compute_dtype
float16` covers). The command runs in this process, so the peak counts everything it put on the GPU: model,
training, validation and test generation, BERTScore. One JSON line per command goes to stdout and `--results`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

GIB = 2**30


def cap(gib: float, device: int = 0) -> float:
    """Limit this process's CUDA allocations on `device` to `gib`; returns the fraction of the GPU that is."""
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap-gib", type=float, default=15.0, help="allocation cap in GiB (default: %(default)s)")
    parser.add_argument("--results", type=Path, help="append the JSON line to this file too")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then main.py's arguments")
    options = parser.parse_args()
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command or not torch.cuda.is_available():
        parser.error("needs a CUDA GPU and a main.py command after --")
    fraction = cap(options.cap_gib)
    torch.cuda.reset_peak_memory_stats()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from main import main as titlegen_main

    start, error = time.perf_counter(), None
    try:
        titlegen_main(command)
    except torch.OutOfMemoryError as err:  # the finding, not a crash of the harness
        error = f"out of memory: {str(err).splitlines()[0]}"
    result = {
        "command": command,
        "gpu": torch.cuda.get_device_name(0),
        "cap_gib": options.cap_gib,
        "cap_fraction": round(fraction, 4),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
        "seconds": round(time.perf_counter() - start, 1),
        "error": error,
    }
    line = json.dumps(result)
    print(line, flush=True)
    if options.results:
        with options.results.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
