"""Re-factor a merged Δ into LoRA factors at a chosen rank by truncated SVD.

Δ = U S Vᵀ; keep the top k singular triplets, B = U_k √S_k, A = √S_k V_kᵀ (so B·A is the best
rank-k approximation in Frobenius norm, Eckart–Young). The relative error ‖Δ − B·A‖ / ‖Δ‖ follows
from the dropped singular values. A merge of LoRA adapters by a linear method has rank ≤ Σ rᵢ, so at
that rank the re-factoring is exact up to float error.
"""

from __future__ import annotations

import math


def refactor(delta, rank: int):
    """(B, A, relative_error, abs_error) with B: out × rank, A: rank × in, float32; zero-padded when the
    matrix has fewer than `rank` singular values."""
    import torch

    m = delta.double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(m.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, m.shape[1], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    total = float(s.pow(2).sum())
    dropped = float(s[k:].pow(2).sum())
    abs_err = math.sqrt(dropped)
    rel = abs_err / math.sqrt(total) if total > 0 else 0.0
    return b.float(), a.float(), rel, abs_err
