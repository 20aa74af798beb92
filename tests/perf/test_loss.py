"""The chunked LM-head cross-entropy equals the plain one, in value and in the gradient of the hidden states."""

from __future__ import annotations

import pytest
import torch

from titlegen.perf import loss as losses


def plain(hidden, head, targets):
    return torch.nn.functional.cross_entropy(head(hidden).float(), targets)


def value_and_grad(loss_fn, hidden, head, targets):
    hidden = hidden.detach().clone().requires_grad_(True)
    loss = loss_fn(hidden, head, targets)
    (loss * 3.0).backward()  # a non-unit upstream gradient, as a scaled or accumulated loss passes
    return loss.item(), hidden.grad


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_chunked_cross_entropy_equals_the_plain_one(monkeypatch, dtype, tolerance):
    torch.manual_seed(0)
    vocab, width, positions = 97, 16, 23
    head = torch.nn.Linear(width, vocab, bias=False).to(dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.normal_(0, 0.5)
    hidden = torch.randn(positions, width).to(dtype)
    targets = torch.randint(0, vocab, (positions,))
    monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", vocab * 5)  # 5 positions a chunk: 5 chunks, the last one short

    ref_loss, ref_grad = value_and_grad(plain, hidden, head, targets)
    loss, grad = value_and_grad(losses.head_cross_entropy, hidden, head, targets)

    assert loss == pytest.approx(ref_loss, rel=tolerance)
    assert grad.dtype == ref_grad.dtype
    relative = float((grad.float() - ref_grad.float()).norm() / ref_grad.float().norm())
    assert relative <= tolerance, f"hidden-state gradient differs by {relative:.2e}"


def test_a_trainable_head_takes_the_plain_path_and_gets_its_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden, targets = torch.randn(4, 8, requires_grad=True), torch.randint(0, 11, (4,))
    losses.head_cross_entropy(hidden, head, targets).backward()
    assert head.weight.grad is not None and head.weight.grad.norm() > 0
    assert hidden.grad is not None and hidden.grad.norm() > 0


def test_without_autograd_the_chunked_loss_has_the_same_value_and_no_graph(monkeypatch):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 13, bias=False).requires_grad_(False)
    hidden, targets = torch.randn(9, 8, requires_grad=True), torch.randint(0, 13, (9,))
    monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", 13 * 2)
    with torch.no_grad():
        loss = losses.head_cross_entropy(hidden, head, targets)
    assert loss.grad_fn is None
    assert loss.item() == pytest.approx(plain(hidden, head, targets).item(), rel=1e-6)


@pytest.mark.parametrize("trainable_head", [False, True], ids=["chunked", "plain"])
def test_weight_zero_padding_rows_change_neither_the_loss_nor_the_real_rows_gradients(monkeypatch, trainable_head):
    # stepgraph pads a batch's title positions to a fixed count so that one CUDA graph serves several batches.
    torch.manual_seed(0)
    vocab, width, real, padded = 97, 16, 23, 32
    head = torch.nn.Linear(width, vocab, bias=False).requires_grad_(trainable_head)
    with torch.no_grad():
        head.weight.normal_(0, 0.5)
    hidden = torch.randn(padded, width)
    targets = torch.randint(0, vocab, (padded,))
    weights = (torch.arange(padded) < real).float()
    monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", vocab * 5)  # the padding spans the last three chunks

    ref_loss, ref_grad = value_and_grad(plain, hidden[:real], head, targets[:real])
    loss, grad = value_and_grad(lambda h, m, t: losses.head_cross_entropy(h, m, t, weights), hidden, head, targets)

    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert torch.allclose(grad[:real], ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(grad[real:], torch.zeros_like(grad[real:])), "padding rows get no gradient"
