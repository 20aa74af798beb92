"""`--model.cuda_graphs auto`: the whole-step CUDA graphs (`stepgraph`) only where a training step is bound by the host.

A graph takes away the host's work of launching the step's kernels, none of the GPU's: it pays where the GPU waits
for the host (a small model or batch, a slow CPU), and where the GPU is busy anyway it only costs a memory pool of a
step's size and a capture per batch shape. Which a run is depends on the model, the batch, the GPU and the CPU, so
the first steps of each fit measure it (`AutoGraphs`):

- steps [0, EAGER_STEPS) run eagerly; the host wall time of each one that compiled nothing is kept;
- steps [EAGER_STEPS, EAGER_STEPS + PROBE_STEPS) go through the step graphs, each replay timed on the GPU by CUDA
  events. A replay runs the step's kernels back to back: its time is the GPU's work of an eager step without the
  gaps where the GPU waited for the host;
- the GPU busy fraction of an eager step is then the replays' GPU time over the eager steps' wall time, each per
  padded token (batches come in several widths), medians (`busy_fraction`). Below BUSY_THRESHOLD the graphs stay;
  otherwise they are dropped with their memory (`StepGraphs.release`) and the fit goes on eagerly.

Not events around an eager step: they time its GPU span, from its first kernel to its last, which holds every wait
for the host, so a host-bound step reads as fully busy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from titlegen.perf import patches, stepgraph

# Step 0 compiles Unsloth's regions and a new batch width may recompile in the next few; steps that compiled are not
# timed. 8 leaves some 5 timed steps, whose median one step slowed by logging or the garbage collector does not move.
EAGER_STEPS = 8
# The runner runs a shape it has not seen eagerly once (the probe's first step), then captures each new shape, which
# costs about 4 steps' time: a short probe, whose 6 steps give about 5 timed replays.
PROBE_STEPS = 6
# Graphs save at most the idle share (1 - busy) of a step. Their captures cost about 4 steps each per batch shape (7
# shapes at batch 32 on the arXiv titles: some 5% of a 560-step epoch) and the medians move by a few percent from run
# to run: with less than 15% of the step idle, that is not worth a step's memory in the graphs' pool.
BUSY_THRESHOLD = 0.85


@dataclass(frozen=True)
class Timing:
    """One training step: its time in seconds and its batch's padded tokens (batch x width)."""

    seconds: float
    tokens: int


def busy_fraction(eager: Sequence[Timing], replayed: Sequence[Timing]) -> float | None:
    """The share of an eager step's wall time during which the GPU works: the replays' GPU time over the eager steps'
    wall time, each per padded token, medians; at most 1. None without a timing of each kind."""
    if not eager or not replayed:
        return None
    gpu = statistics.median(t.seconds / t.tokens for t in replayed)
    wall = statistics.median(t.seconds / t.tokens for t in eager)
    return min(1.0, gpu / wall)


def graphs_pay(busy: float) -> bool:
    """Whether the whole-step graphs are worth their memory at this GPU busy fraction: the step is host-bound."""
    return busy < BUSY_THRESHOLD


class AutoGraphs:
    """Decides `cuda_graphs auto` over a fit's first EAGER_STEPS + PROBE_STEPS training steps, for `causal_lm` (the
    CausalLM inside the PEFT wrapper, in training mode). The caller runs each step with `graphs` as `cuda_graphs`,
    calls `step_started` and `step_ended` around it, and, when `step_ended` says so, `decide(measured())`.

    The steps of the two phases are counted, not looked at, so that every DDP rank decides at the same step (the
    caller may average `measured()` over the ranks first). A step that cannot be graphed (`stepgraph.runner_of`:
    dropout, another gradient checkpoint, trainable embeddings) runs eagerly with nothing measured.
    """

    def __init__(self, causal_lm: torch.nn.Module) -> None:
        self.runner = stepgraph.runner_of(causal_lm)
        self.step = 0  # training batches ended in this fit
        self.eager: list[Timing] = []
        self.timed_steps: list[int] = []  # the eager steps in `eager`
        self.decision: bool | None = None if self.runner is not None else False
        self._started = 0.0
        self._compiles = 0

    @property
    def graphs(self) -> bool:
        """Whether this step goes through the step graphs."""
        return self.decision if self.decision is not None else self.step >= EAGER_STEPS

    def step_started(self) -> None:
        if self.decision is not None:
            return
        if self.step == EAGER_STEPS and self.runner is not None:
            self.runner.timed = []
        self._compiles = patches.compiled_graph_count()
        self._started = time.perf_counter()

    def step_ended(self, tokens: int) -> bool:
        """Count the step that ended (its batch had `tokens` padded tokens); True once: the probe is over."""
        if self.decision is not None:
            return False
        seconds = time.perf_counter() - self._started
        if self.step < EAGER_STEPS and patches.compiled_graph_count() == self._compiles:
            self.eager.append(Timing(seconds, tokens))
            self.timed_steps.append(self.step)
        self.step += 1
        return self.step == EAGER_STEPS + PROBE_STEPS

    def measured(self) -> float | None:
        """This process's GPU busy fraction (`busy_fraction`); waits once for the GPU to finish the timed replays."""
        timed = (self.runner.timed if self.runner is not None else None) or []
        if timed:
            timed[-1][1].synchronize()  # one stream: every earlier event has completed too
        replayed = [Timing(start.elapsed_time(end) / 1000, tokens) for start, end, tokens in timed]
        return busy_fraction(self.eager, replayed)

    def end(self) -> None:
        """The fit ended before the decision (it had fewer than EAGER_STEPS + PROBE_STEPS steps): stop timing
        replays and free the graphs the probe captured, which nothing decided to keep."""
        if self.runner is not None:
            self.runner.timed = None
            if self.decision is None:
                self.runner.release()

    def decide(self, busy: float | None) -> str:
        """Fix the decision for the rest of the fit (dropping the graphs if eager); returns the line that says it."""
        assert self.runner is not None, "nothing to decide: the step cannot be graphed"
        failed = self.runner.failures > 0
        self.decision = busy is not None and graphs_pay(busy) and not failed
        self.runner.timed = None
        if not self.decision:
            self.runner.release()
        first, last = (self.timed_steps or [EAGER_STEPS])[0], EAGER_STEPS + PROBE_STEPS - 1
        if failed:
            return "cuda_graphs auto: capturing the training step failed (warned above), so eager steps"
        if busy is None:
            return f"cuda_graphs auto: no step of steps {first}-{last} was timed both ways, so eager steps"
        graphs = "whole-step CUDA graphs on" if self.decision else "eager steps (CUDA graphs off)"
        return f"cuda_graphs auto: GPU busy {busy:.0%} of the step over steps {first}-{last}, so {graphs}"
