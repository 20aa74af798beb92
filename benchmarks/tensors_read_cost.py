"""Host time of `stepgraph.tensors_read`, which runs before every training step on a GPU.

    python -m benchmarks.tensors_read_cost --layers 24

It walks the model for the addresses a captured step reads (weights, buffers, 4-bit states, rotary tables). Under
DDP, Lightning's per-step host syncs make the host's per-step work add to each step rather than overlap the GPU's,
so this cost matters there. The model is a Qwen2 with the module structure of Qwen2.5-0.5B (24 layers, LoRA on
q,k,v,o,gate,up,down) at a tiny width: the walk's cost depends on the number of modules and tensors, not their size.
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
    from titlegen import modeling, stepgraph

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", "qwen2", layers=args.layers)
        base = modeling.load_base_model(str(model_dir), 512)
        model = modeling.apply_lora(base, "all", 16, 16, 0.0, modeling.DEFAULT_TARGET_MODULES, "offload", 0)
    causal_lm = model.get_base_model()
    reads = stepgraph.tensors_read(causal_lm)
    start = time.perf_counter()
    for _ in range(args.calls):
        stepgraph.tensors_read(causal_lm)
    ms = 1000 * (time.perf_counter() - start) / args.calls
    print(f"{args.layers} layers, {len(reads)} addresses: {ms:.2f} ms a call (mean of {args.calls})")


if __name__ == "__main__":
    main()
