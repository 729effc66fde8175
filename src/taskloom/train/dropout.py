"""Dropout with cheaper masks on the CPU.

torch's CPU dropout draws one random number per element (`bernoulli_`), which took 15 % of MiniLM
LoRA training time there, more than any op but the matmuls. Here one 64-bit draw makes the masks of
four elements: each 16-bit lane is kept when below (1 − p)·2¹⁶, so p is exact to 1/65,536 and the
kept values are scaled by 1/(1 − p) as usual. The mask is a different random stream from torch's,
equal in distribution, and as reproducible (torch's generator, seeded the same way).
"""

from __future__ import annotations

import torch


class LaneDropout(torch.nn.Dropout):
    """nn.Dropout whose mask comes from 16-bit lanes of 64-bit draws (only `forward` differs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        lanes = draws.view(torch.int16)[:n].view(x.shape)
        keep = lanes < round((1.0 - self.p) * 65536) - 32768
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)


def use_lane_dropout(model: torch.nn.Module) -> int:
    """Replace every nn.Dropout in `model` by a LaneDropout of the same p; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout:
                lane = LaneDropout(child.p)
                lane.train(child.training)
                setattr(parent, name, lane)
                swapped += 1
    return swapped
