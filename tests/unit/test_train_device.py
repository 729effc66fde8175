"""Frozen weights held in bf16 for the training loop: the same numbers autocast makes, float32 after."""

from __future__ import annotations

import pytest
import torch

from taskloom.train.device import frozen_in_bf16


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 16)
    frozen, trained, tied = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 50, bias=False)
    tied.weight = emb.weight  # an output layer tied to the embedding, as causal LMs do
    for p in [*frozen.parameters(), emb.weight]:
        p.requires_grad_(False)
    return torch.nn.ModuleDict({"emb": emb, "frozen": frozen, "trained": trained, "tied": tied})


def _step(model: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    ids = torch.arange(12).reshape(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model["trained"](torch.relu(model["frozen"](model["emb"](ids))))
        logits = model["tied"](h)
    loss = logits.float().logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad.clone() for p in model["trained"].parameters()]
    model.zero_grad()
    return loss.detach(), grads


def test_training_is_bit_identical_and_float32_comes_back():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain_loss, plain_grads = _step(model)
    with frozen_in_bf16(model, "cpu", "bf16"):
        assert model["frozen"].weight.dtype == torch.bfloat16 and model["frozen"].bias.dtype == torch.bfloat16
        assert model["trained"].weight.dtype == torch.float32  # trained weights stay float32
        assert model["emb"].weight.dtype == torch.float32  # tied to a Linear: left alone
        held_loss, held_grads = _step(model)
    assert torch.equal(plain_loss, held_loss)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, held_grads))
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n


def test_float32_training_holds_nothing():
    model = _model()
    with frozen_in_bf16(model, "cpu", "fp32"):
        assert model["frozen"].weight.dtype == torch.float32


def test_weights_come_back_after_an_error():
    model = _model()
    with pytest.raises(RuntimeError), frozen_in_bf16(model, "cpu", "bf16"):
        raise RuntimeError("a step failed")
    assert model["frozen"].weight.dtype == torch.float32
