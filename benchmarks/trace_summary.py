"""Per-step summary of a `train_speed --trace` profile: batch width, GPU busy time, and kernel time per token.

    python -m benchmarks.trace_summary DIR/trace-rank0.json.gz DIR/trace-rank1.json.gz

A step is the stretch between two CUDA graph launches (a replayed training step each). The width comes from the
grid of Unsloth's SwiGLU kernel (`_fg_kernel`, one program per 1024 of batch x width x intermediate elements), so
the time of that kernel per 1,000 tokens compares kernels at different widths: equal values mean the GPU computed
as fast, and a longer step means more tokens (padding), not slower kernels.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path
from typing import Any

SWIGLU_BLOCK = 1024  # unsloth/kernels/swiglu.py: BLOCK_SIZE


def load(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def busy_ms(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """GPU time covered by at least one kernel or copy, on any stream, within [start, end)."""
    total, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total, reach = total + b - a, b
    return total / 1e3


def summary(path: Path, intermediate: int, batch_size: int) -> list[str]:
    events = load(path)
    gpu = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    launches = sorted(e["ts"] for e in events if e.get("cat") == "cuda_runtime" and "GraphLaunch" in e["name"])
    swiglu = [e for e in events if e.get("cat") == "kernel" and e["name"] == "_fg_kernel"]
    lines = [f"{path.name}: {len(launches)} graph launches"]
    for i, (start, end) in enumerate(zip(launches, launches[1:], strict=False)):
        mine = [e for e in swiglu if start <= e["ts"] < end]
        tokens = {e["args"]["grid"][0] * SWIGLU_BLOCK // intermediate for e in mine}
        per_k = [e["dur"] / (e["args"]["grid"][0] * SWIGLU_BLOCK / intermediate) * 1e3 for e in mine]
        widths = sorted(t // batch_size for t in tokens)
        lines.append(
            f"  step {i}: {(end - start) / 1e3:6.1f} ms between launches, GPU busy {busy_ms(gpu, start, end):6.1f} ms,"
            f" width {widths}, _fg_kernel {statistics.median(per_k) if per_k else float('nan'):.2f} us per 1k tokens"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", type=Path, nargs="+")
    parser.add_argument("--intermediate", type=int, default=4864, help="the MLP width (Qwen2.5-0.5B: 4864)")
    parser.add_argument("--batch-size", type=int, default=32)
    a = parser.parse_args()
    for path in a.traces:
        print("\n".join(summary(path, a.intermediate, a.batch_size)))


if __name__ == "__main__":
    main()
