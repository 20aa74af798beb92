"""Host time of `stepgraph.tensors_read`, which runs before every training step on a GPU.

    python -m benchmarks.tensors_read_cost --layers 24

It walks the model for the addresses a captured step reads (weights, buffers, 4-bit states, rotary tables), before
the replay's launch. After a per-step host wait (the NaN guard's, on one GPU too; Lightning's SIGTERM broadcast
under DDP) the GPU idles until that launch, so this cost adds to each step (docs/performance.md, 2026-11-26g).

The model is a Qwen2 with the module structure of Qwen2.5-0.5B (24 layers, LoRA on q,k,v,o,gate,up,down) at a tiny
width: the walk's cost depends on the number of modules and tensors, not their size.
Runs on the CPU (Unsloth's fallback loads the 4-bit model there too).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import unsloth  # noqa: F401  (before transformers and peft, as Unsloth requires)


def main() -> None:
    from tests.conftest import build_tiny_model
    from titlegen.model import loading, lora
    from titlegen.perf import stepgraph

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", "qwen2", layers=args.layers)
        base = loading.load_base_model(str(model_dir), 512)
        model = lora.apply_lora(base, "all", 16, 16, 0.0, lora.DEFAULT_TARGET_MODULES, "offload", 0)
    causal_lm = model.get_base_model()
    reads = stepgraph.tensors_read(causal_lm)
    start = time.perf_counter()
    for _ in range(args.calls):
        stepgraph.tensors_read(causal_lm)
    ms = 1000 * (time.perf_counter() - start) / args.calls
    print(f"{args.layers} layers, {len(reads)} addresses: {ms:.2f} ms a call (mean of {args.calls})")


if __name__ == "__main__":
    main()
