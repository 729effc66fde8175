"""Lane dropout: torch's dropout with cheaper masks, equal in distribution and reproducible."""

from __future__ import annotations

import torch

from taskloom.train.dropout import LaneDropout, use_lane_dropout


def test_keeps_one_minus_p_of_the_elements_scaled_by_its_inverse():
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    for p in (0.05, 0.1, 0.5):
        y = LaneDropout(p).train()(x)
        kept = y != 0
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
        assert abs(float(kept.float().mean()) - (1 - p)) < 0.003, p  # 400k draws: sd ~0.0005
        # every 16-bit lane of the 64-bit draws is used alike
        lanes = kept.flatten()[: 400_000].view(-1, 4).float().mean(0)
        assert float((lanes - (1 - p)).abs().max()) < 0.006, (p, lanes)


def test_the_gradient_flows_through_the_kept_elements_only():
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(1)
    y = LaneDropout(0.2).train()(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.equal(x.grad, kept.float() / 0.8)


def test_seeded_like_torch_and_off_in_eval():
    x = torch.randn(3, 5, 7)
    torch.manual_seed(3)
    a = LaneDropout(0.3).train()(x)
    torch.manual_seed(3)
    b = LaneDropout(0.3).train()(x)
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(LaneDropout(0.3).eval()(x), x)
    assert torch.equal(LaneDropout(0.0).train()(x), x)


def test_every_dropout_of_a_model_is_replaced_with_its_p_and_mode():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1), torch.nn.Sequential(torch.nn.Dropout(0.3)))
    model.eval()
    assert use_lane_dropout(model) == 2
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [type(m) for m in drops] == [LaneDropout, LaneDropout]
    assert [m.p for m in drops] == [0.1, 0.3] and not any(m.training for m in drops)
    assert use_lane_dropout(model) == 0  # already swapped
