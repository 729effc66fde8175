"""Re-factor a merged Δ into LoRA factors at a chosen rank: the best rank-k approximation.

With Δ = U S Vᵀ, the top k singular directions give the Frobenius-optimal rank-k approximation
(Eckart–Young). They are found from the small Gram matrix (ΔᵀΔ, or ΔΔᵀ when Δ is wide) by a
symmetric eigendecomposition in float64, several times faster than a full SVD on CPU:
B = Δ·V_k, A = V_kᵀ (or B = U_k, A = U_kᵀ·Δ), so B·A is Δ projected on those directions. The
relative error ‖Δ − B·A‖ / ‖Δ‖ is measured on the result, not inferred. A merge of LoRA adapters by
a linear method has rank ≤ Σ rᵢ, so at that rank the re-factoring is exact up to float error.
"""

from __future__ import annotations


def refactor(delta, rank: int):
    """(B, A, relative_error, abs_error): B out × rank, A rank × in (float32), zero-padded when Δ has
    fewer than `rank` dimensions; errors in float64."""
    import torch

    m = delta.double()
    rows, cols = m.shape
    k = min(rank, rows, cols)
    if cols <= rows:
        _, vecs = torch.linalg.eigh(m.T @ m)  # ascending eigenvalues: the last k are the top ones
        v = vecs[:, -k:].flip(1)
        b_k, a_k = m @ v, v.T
    else:
        _, vecs = torch.linalg.eigh(m @ m.T)
        u = vecs[:, -k:].flip(1)
        b_k, a_k = u, u.T @ m
    b = torch.zeros(rows, rank, dtype=torch.float64)
    a = torch.zeros(rank, cols, dtype=torch.float64)
    b[:, :k], a[:k] = b_k, a_k
    total = float(m.norm())
    abs_err = float((m - b_k @ a_k).norm())
    rel = abs_err / total if total > 0 else 0.0
    return b.float(), a.float(), rel, abs_err
