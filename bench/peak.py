"""This machine's matmul rate at a benchmark's own shapes, measured in the benchmark's run (its limit).

    .venv/bin/python bench/peak.py            # fp32 and bf16 at 4096x384 @ 384x1536, torch's threads
"""

from __future__ import annotations

import time


def matmul_gflops(dtype, m: int, k: int, n: int, seconds: float = 1.5) -> float:
    """Best GFLOP/s of (m x k) @ (k x n) in torch, in `dtype`, on the current threads."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


if __name__ == "__main__":
    import torch

    for dtype in (torch.float32, torch.bfloat16):
        print(f"{dtype}: {matmul_gflops(dtype, 4096, 384, 1536):.1f} GFLOP/s ({torch.get_num_threads()} threads)")
