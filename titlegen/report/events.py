"""What a fit run's TensorBoard event files recorded: training time, tokens/s, peak memory, validation curves, and
its adapter's size on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CURVES = ("val/bertscore_f1", "val/loss")


@dataclass
class FitStats:
    """What the fit run of a tested checkpoint recorded; None where it recorded nothing (peak memory on a CPU)."""

    run_dir: Path
    seconds: float | None = None
    tokens_per_sec: float | None = None
    peak_memory_gib: float | None = None
    adapter_bytes: int | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def final_val_f1(self) -> float | None:
        """Validation BERTScore F1 at the fit's last validation (the curve's highest step)."""
        points = self.curves.get("val/bertscore_f1") or []
        return float(points[-1][1]) if points else None


def read_scalars(run_dir: Path) -> list[dict[str, list[tuple[int, float, float]]]]:
    """The scalars of each TensorBoard event file in the run folder (one file per process that logged there, so a
    resumed fit adds one): [{tag: [(step, value, wall time)]}], in the order the files were written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = []
    for events in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name)):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        files.append({tag: [(e.step, e.value, e.wall_time) for e in accumulator.Scalars(tag)] for tag in tags})
    return files


def fit_stats(run_dir: Path) -> FitStats:
    files = read_scalars(run_dir)
    # Per event file, from on_fit_start (trainable parameters, logged at step 0) to its last value: training and
    # validations, not model loading; summed over files, so the pause before a resume does not count.
    spans = [[wall for series in scalars.values() for _, _, wall in series] for scalars in files]

    def values(tag: str) -> list[float]:
        return [value for scalars in files for _, value, _ in scalars.get(tag, [])]

    tokens, memory = values("perf/tokens_per_sec"), values("perf/peak_memory_gib")
    # A resumed run may log a step again: the later file's value wins.
    curves = {
        tag: sorted({step: v for scalars in files for step, v, _ in scalars.get(tag, [])}.items()) for tag in CURVES
    }
    seconds = sum(max(walls) - min(walls) for walls in spans if walls)
    adapter = sum(f.stat().st_size for f in (run_dir / "adapter").glob("*.safetensors"))
    return FitStats(
        run_dir=run_dir,
        seconds=seconds or None,
        tokens_per_sec=float(np.mean(tokens)) if tokens else None,
        peak_memory_gib=max(memory) if memory else None,
        adapter_bytes=adapter or None,
        curves=curves,
    )
