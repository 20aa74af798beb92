"""`cuda_graphs auto` (`autograph`): the GPU busy fraction from eager wall times and replay GPU times, and the decision
it makes, on synthetic timings. A fit that decides on a real GPU is `tests/test_module.py`'s `gpu` test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from titlegen.perf import autograph
from titlegen.perf.autograph import AutoGraphs, Timing, busy_fraction, graphs_pay

TOKENS = 32 * 256  # a batch of 32 padded to 256


def test_a_host_bound_step_gets_graphs_and_a_gpu_bound_one_does_not():
    eager = [Timing(0.100, TOKENS), Timing(0.104, TOKENS), Timing(0.300, TOKENS)]  # one slowed by logging
    host_bound = busy_fraction(eager, [Timing(0.031, TOKENS), Timing(0.030, TOKENS)])
    assert host_bound == pytest.approx(0.0305 / 0.104) and graphs_pay(host_bound)
    gpu_bound = busy_fraction(eager, [Timing(0.095, TOKENS), Timing(0.094, TOKENS)])
    assert gpu_bound == pytest.approx(0.0945 / 0.104) and not graphs_pay(gpu_bound)
    # The host ran ahead of a GPU-bound step (no queue limit reached): never more than fully busy.
    assert busy_fraction(eager, [Timing(0.150, TOKENS)]) == 1.0
    assert not graphs_pay(autograph.BUSY_THRESHOLD) and graphs_pay(autograph.BUSY_THRESHOLD - 0.01)


def test_batches_of_other_widths_compare_per_padded_token():
    eager = [Timing(0.050, TOKENS // 2), Timing(0.100, TOKENS)]  # 6.1 microseconds a token, both
    replayed = [Timing(0.045, TOKENS * 3 // 2)]  # 3.7 microseconds a token
    assert busy_fraction(eager, replayed) == pytest.approx((0.045 / 1.5) / 0.100)
    assert busy_fraction(eager, []) is None and busy_fraction([], replayed) is None


class FakeEvent:
    """A CUDA event recorded at `ms` milliseconds."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.ms - self.ms


@pytest.mark.parametrize(
    ("replay_ms", "failures", "graphs", "said"),
    [
        (30.0, 0, True, "GPU busy 30% of the step over steps 2-13, so whole-step CUDA graphs on"),
        (95.0, 0, False, "GPU busy 95% of the step over steps 2-13, so eager steps (CUDA graphs off)"),
        (None, 1, False, "capturing the training step failed (warned above), so eager steps"),
    ],
)
def test_eager_steps_then_replays_then_one_decision(monkeypatch, replay_ms, failures, graphs, said):
    released = []
    runner = SimpleNamespace(failures=0, timed=None, release=lambda: released.append(True))
    monkeypatch.setattr(autograph.stepgraph, "runner_of", lambda causal_lm: runner)
    clock = SimpleNamespace(now=0.0, compiles=0)
    monkeypatch.setattr(autograph.time, "perf_counter", lambda: clock.now)
    monkeypatch.setattr(autograph.patches, "compiled_graph_count", lambda: clock.compiles)

    auto = AutoGraphs(causal_lm=None)
    due = []
    for step in range(autograph.EAGER_STEPS + autograph.PROBE_STEPS):
        assert auto.graphs is (step >= autograph.EAGER_STEPS), step
        auto.step_started()
        assert (runner.timed is not None) is (step >= autograph.EAGER_STEPS)
        clock.now += 0.100
        clock.compiles += step < 2  # the first two steps compile: not timed
        if step >= autograph.EAGER_STEPS and replay_ms is not None:
            runner.timed.append((FakeEvent(0.0), FakeEvent(replay_ms), TOKENS))
        due.append(auto.step_ended(TOKENS))
    assert due == [False] * (autograph.EAGER_STEPS + autograph.PROBE_STEPS - 1) + [True]
    assert auto.timed_steps == list(range(2, autograph.EAGER_STEPS))

    runner.failures = failures
    busy = auto.measured()
    assert busy == (pytest.approx(replay_ms / 100) if replay_ms is not None else None)
    assert auto.decide(busy) == f"cuda_graphs auto: {said}"
    assert auto.graphs is graphs and runner.timed is None and bool(released) is not graphs
    auto.step_started()
    assert auto.step_ended(TOKENS) is False and auto.graphs is graphs, "decided once for the rest of the fit"


def test_a_step_that_cannot_be_graphed_runs_eagerly_with_nothing_measured(monkeypatch):
    monkeypatch.setattr(autograph.stepgraph, "runner_of", lambda causal_lm: None)  # dropout, say
    auto = AutoGraphs(causal_lm=None)
    for _ in range(autograph.EAGER_STEPS + autograph.PROBE_STEPS + 1):
        auto.step_started()
        assert auto.step_ended(TOKENS) is False and auto.graphs is False


@pytest.mark.parametrize("decided", [False, True])
def test_a_fit_that_ends_before_the_decision_frees_the_probe_graphs(monkeypatch, decided):
    released = []
    runner = SimpleNamespace(failures=0, timed=None, release=lambda: released.append(True))
    monkeypatch.setattr(autograph.stepgraph, "runner_of", lambda causal_lm: runner)
    auto = AutoGraphs(causal_lm=None)
    for _ in range(autograph.EAGER_STEPS + 2):  # into the probe, short of its end: a 10-step fit
        auto.step_started()
        auto.step_ended(TOKENS)
    if decided:
        auto.decision = True  # graphs kept: nothing to free at the end of the fit
    auto.end()
    assert runner.timed is None and released == ([] if decided else [True])
