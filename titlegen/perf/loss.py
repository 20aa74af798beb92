"""The training loss: next-token cross-entropy on the title positions only, through the LM head in chunks.

`causal_lm_loss` computes what `model(..., labels=labels).loss` computes, with the same value and gradients, but
- the LM head (151,936 x 896 on Qwen2.5-0.5B, a quarter of the model's FLOPs per token) and the softmax run only
  where a label exists: the title, under a tenth of each sequence, instead of every prompt position;
- decoder layers below the first adapted one run without autograd when they have nothing to train (LoRA on the last
  layer only), so the backward pass starts at that layer instead of crossing every frozen layer (`prefix`);
- with `cuda_graphs`, in training on a GPU, the whole step, backward included, replays as a CUDA graph per batch
  shape (`stepgraph`).

The head's cross-entropy runs one chunk of positions at a time, so the logits never exist all at once.

At batch 32 a title batch has some 600 labelled positions; their logits over Qwen2.5's 151,936-token vocabulary
take 180 MB in bf16, and the float copy, the log-softmax kept for backward and its gradient bring the loss to about
1 GB of GPU memory, the largest transient of the step (Unsloth's own loss avoids it by chunking too). Here each
chunk's logits live only inside the forward: the chunk's gradient with respect to the hidden states is computed
right away (softmax minus one-hot, times the head's weight) and kept, which is all that backward needs, because the
head's weight is frozen.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from titlegen.data.collate import flat_label_positions
from titlegen.perf import patches, prefix, stepgraph

# Elements of one chunk's logits: 2**25 floats is 128 MiB, about 220 positions of a 151,936-token vocabulary.
LOGITS_PER_CHUNK = 2**25


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        with_grad: bool,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        rows = max(1, LOGITS_PER_CHUNK // weight.shape[0])
        ctx.input_dtype = hidden.dtype
        hidden = hidden.to(weight.dtype)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            logits = (hidden[start : start + rows] @ weight.t()).float()  # as `lm_head(h).float()` computes them
            chunk_targets = targets[start : start + rows, None]
            log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            losses = log_norm - logits.gather(1, chunk_targets)
            chunk_weights = weights[start : start + rows, None] if weights is not None else None
            total += (losses if chunk_weights is None else losses * chunk_weights).sum()
            if grad_hidden is not None:
                probs = logits.sub_(log_norm).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, chunk_targets, torch.full_like(chunk_targets, -1, dtype=probs.dtype))
                if chunk_weights is not None:
                    probs.mul_(chunk_weights)
                grad_hidden[start : start + rows] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        # A tensor with weights: a CUDA graph (`stepgraph`) replays this with other counts and must not read it.
        ctx.count = hidden.shape[0] if weights is None else weights.sum()
        return total / ctx.count

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None, None
        # The 1/N scale in float32, as the plain loss applies it: rounded to bf16 it would be off by up to 0.4%.
        scale = grad_output.float() / ctx.count
        return (grad_hidden.float() * scale).to(ctx.input_dtype), None, None, None, None


def head_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` against `targets`: (positions, hidden) and (positions,) in, a scalar out.

    `weights` (positions,), float32: a weighted mean instead, sum(w * loss) / sum(w). `stepgraph` pads the positions
    of a batch to a fixed count with weight-0 rows, so that one CUDA graph serves several batches.

    Chunked when the head is a frozen, bias-free linear layer (an LM head); otherwise the plain computation. Every
    target must be a class index (no -100: the caller picks the labelled positions). Without autograd (validation)
    the chunks still bound the memory, and no gradient is computed.
    """
    plain = (
        type(head) is not torch.nn.Linear
        or head.bias is not None
        or head.weight.requires_grad
        or not head.weight.is_floating_point()
        or hidden.shape[0] == 0
    )
    if plain and weights is None:
        return torch.nn.functional.cross_entropy(head(hidden).float(), targets)
    if plain:
        losses = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
        return (losses * weights).sum() / weights.sum()
    with_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _ChunkedLinearCrossEntropy.apply(hidden, head.weight, targets, with_grad, weights)


def unwrapped(model: Any) -> Any:
    """The transformers CausalLM inside a PEFT wrapper (or the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last decoder layer's hidden states (batch, length, hidden) of a right-padded batch; no LM head."""
    backbone = unwrapped(model).model
    patches.mark_labelled_batch(backbone)
    return backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]


def causal_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    label_positions: torch.Tensor | None = None,
    cuda_graphs: bool = False,
    grad_seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions, as `model(..., labels=labels).loss` computes it.

    `label_positions` (from `data.collate.Collator`): flat indices into the (batch * length) hidden states of the
    positions whose next token is a label; computed from `labels` when not given. `grad_seed`: the gradient the
    caller's backward gives the loss (float16's loss scale, a 0-dim tensor on the GPU), which a graphed step's
    backward starts from (`stepgraph`); None for 1.
    """
    causal_lm = unwrapped(model)
    if patches.needs_models_own_loss(causal_lm.config):
        # Logit softcapping or scaling (Gemma 2, Cohere, Granite, ...) lives inside the model's own loss: use it
        # rather than copy it. Unsloth's own table decides, so the two cannot disagree on which models need it.
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    if label_positions is None:
        label_positions = flat_label_positions(labels)
    targets = labels.reshape(-1).index_select(0, label_positions + 1)
    if cuda_graphs and input_ids.is_cuda and torch.is_grad_enabled() and causal_lm.training:
        runner = stepgraph.runner_of(causal_lm)
        if runner is not None:
            body = functools.partial(title_loss, causal_lm)
            loss = runner(causal_lm, body, input_ids, attention_mask, label_positions, targets, grad_seed)
            if loss is not None:
                return loss
    return title_loss(causal_lm, input_ids, attention_mask, label_positions, targets)


def title_loss(
    causal_lm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (weighted) mean cross-entropy of `targets` at the flat hidden-state `positions` (`causal_lm_loss`'s body)."""
    backbone = causal_lm.model
    patches.mark_labelled_batch(backbone)
    first = prefix.first_trainable_layer(backbone) if torch.is_grad_enabled() and backbone.training else 0
    with prefix.frozen_prefix(backbone, first):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    return head_cross_entropy(picked, causal_lm.lm_head, targets, weights)
