"""float16's loss scale (`runtime.lossscale`): gradients unscaled before the step, an overflowed step skipped on the
device (also with the NaN guard's flag set), the scale halved then. torch's GradScaler runs on the CPU too."""

from __future__ import annotations

import torch

from titlegen.runtime import patches
from titlegen.runtime.lossscale import LossScale

INIT = 2.0**16  # GradScaler's initial scale


def scaled_backward(fused: bool = True) -> tuple[torch.nn.Parameter, torch.optim.Optimizer, LossScale]:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=fused)
    scale = LossScale("cpu")
    scale.scale((param * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    return param, optimizer, scale


def test_a_finite_step_is_unscaled_and_taken():
    param, optimizer, scale = scaled_backward()
    assert torch.equal(param.grad, torch.tensor([1.0, 2.0, 3.0]) * INIT)
    assert float(scale.seed(torch.device("cpu"))) == INIT, "a step graph's backward starts from the same scale"
    scale.unscale(optimizer)
    assert torch.equal(param.grad, torch.tensor([1.0, 2.0, 3.0]))
    optimizer.step()
    scale.update(optimizer)
    assert not torch.equal(param.detach(), torch.ones(3)) and float(optimizer.state[param]["step"]) == 1
    assert scale.state_dict()["scale"] == INIT and not hasattr(optimizer, "found_inf")


def test_an_overflowed_step_is_skipped_on_the_device_and_halves_the_scale():
    param, optimizer, scale = scaled_backward()
    param.grad[1] = float("inf")  # float16 activation gradients that overflowed at this scale
    scale.unscale(optimizer)
    optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3)) and float(optimizer.state[param]["step"]) == 0
    scale.update(optimizer)
    assert scale.state_dict()["scale"] == INIT / 2 and not hasattr(optimizer, "found_inf")

    restored = LossScale("cpu")
    restored.load_state_dict(scale.state_dict())  # a resumed fit goes on at the scale it had reached
    assert float(restored.seed(torch.device("cpu"))) == INIT / 2


def test_the_nan_guards_skip_flag_still_skips_a_finite_step():
    param, optimizer, scale = scaled_backward()
    patches.skip_update_where(optimizer, torch.tensor(1.0))  # the guard's hook runs before the module's
    scale.unscale(optimizer)
    optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3)), "the loss scale's flag replaced the guard's"


def test_an_unfused_optimizer_skips_an_overflowed_step_too():
    param, optimizer, scale = scaled_backward(fused=False)
    param.grad[0] = float("nan")
    scale.unscale(optimizer)
    optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3)) and param not in optimizer.state


def test_a_step_without_gradients_updates_nothing_and_does_not_fail():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
    scale = LossScale("cpu")
    scale.unscale(optimizer)  # no backward reached these parameters
    optimizer.step()
    scale.update(optimizer)  # GradScaler.update() alone would raise: no inf check was recorded
    assert scale.state_dict()["scale"] == INIT and torch.equal(param.detach(), torch.ones(3))
    param, optimizer, scale = scaled_backward()
    scale.unscale(optimizer)
    optimizer.step()
    scale.update(optimizer)
    assert float(optimizer.state[param]["step"]) == 1, "the next step with gradients is unscaled and taken"
