"""Data-parallel gradient averaging as one all-reduce per optimizer step, in place of DDP's reducer.

DDP's reducer handles each gradient on its own. It copies the gradient into a bucket, scaled by 1/world, when autograd
produces it. After the bucket's all-reduce it copies the result back. With LoRA on every projection of Qwen2.5-0.5B
that is 336 small tensors (35 MB in all), so about 700 tiny kernels a step.
- Under `stepgraph`'s replayed steps the whole backward is one graph, and its gradients reach autograd at once at
  the end. Nothing is left to overlap the reducer's work with, so its copies and all-reduces run one after the
  other at the end of each step.
- Here the gradients are concatenated into one buffer per dtype, scaled by 1/world and all-reduced once before the
  optimizer step. That is a handful of kernels. With two ranks the result is DDP's, bit for bit (tested): DDP also
  multiplies by 1/world before a sum, and a sum of two terms has one order. With more ranks, NCCL may sum one
  buffer in another order than DDP's buckets: the same up to rounding.
- With the reducer off, DDP skips its per-forward broadcast of rank 0's buffers too. That is harmless here: the only
  buffers are the rotary `inv_freq` vectors, the same on every rank, and DDP still synchronizes parameters and
  buffers when it wraps the model.

Taken over only where nothing else depends on the reducer: automatic optimization under plain DDP, without a
communication hook, `find_unused_parameters` or `static_graph`, and without fp16's GradScaler (it unscales each
rank's own gradients before the module's `on_before_optimizer_step`, so the ranks could disagree on skipping a
step). Elsewhere DDP stays as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from titlegen.perf import patches


class FlatGradientSync:
    """Averages `params`' gradients over the ranks of `ddp`'s process group, which no longer does it itself."""

    def __init__(self, ddp: DistributedDataParallel, params: list[torch.Tensor]) -> None:
        self.ddp = ddp
        self.group = ddp.process_group
        self.world = dist.get_world_size(self.group)
        # One flat buffer per dtype and device; the trainable parameters are fixed for the fit, so grouped once.
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault((p.dtype, p.device), []).append(p)
        self.groups = [(group, [p.numel() for p in group]) for group in groups.values()]
        # DDP's reducer checks this flag in forward; Lightning's `no_sync` (gradient accumulation) saves and restores
        # it, so it stays off for the whole fit.
        ddp.require_backward_grad_sync = False

    def average(self) -> None:
        """Replace every gradient by its mean over the ranks; every rank must call it, as for any collective.

        A missing gradient counts as zeros and is replaced too, so that every rank sends the same sizes and ends
        with the same gradients (where DDP without `find_unused_parameters` would raise). A parameter without a
        gradient on every rank gets zeros, which AdamW would decay; every LoRA weight has a gradient each step.
        """
        for params, sizes in self.groups:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            flat.mul_(1.0 / self.world)  # as DDP's reducer scales: a multiplication, then a sum
            dist.all_reduce(flat, group=self.group)
            for p, averaged in zip(params, flat.split(sizes), strict=True):
                p.grad = averaged.view_as(p)  # views of the buffer: no copy back

    def release(self) -> None:
        """Hand the gradient averaging back to DDP's reducer."""
        self.ddp.require_backward_grad_sync = True


def take_over(strategy: Any, params: list[torch.Tensor]) -> FlatGradientSync | None:
    """A FlatGradientSync for the model that `strategy` (a Lightning strategy) runs under DDP with more than one rank;
    None, with DDP left as it is, anywhere else."""
    ddp = getattr(strategy, "model", None)
    if not isinstance(ddp, DistributedDataParallel) or not params:
        return None
    if not dist.is_initialized() or dist.get_world_size(ddp.process_group) < 2:
        return None
    # A communication hook (compression, local SGD) or DDP's unused-parameter search depends on the reducer.
    if patches.ddp_has_comm_hook(ddp) or ddp.find_unused_parameters or ddp.static_graph:
        return None
    # Manual optimization calls the reducer itself (Lightning turns it back on after each forward).
    module = getattr(strategy, "lightning_module", None)
    if module is not None and not module.automatic_optimization:
        return None
    # fp16's GradScaler unscales each rank's own gradients before the module's on_before_optimizer_step: averaged
    # later, the ranks could disagree on skipping a step.
    if getattr(getattr(strategy, "precision_plugin", None), "scaler", None) is not None:
        return None
    if not ddp.require_backward_grad_sync:  # turned off by someone else
        return None
    return FlatGradientSync(ddp, params)
