"""Where training and evaluation run: one code path, CPU or CUDA (bf16 autocast on CUDA)."""

from __future__ import annotations

import contextlib

from taskloom.errors import UserError


def resolve_device(name: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; asking for CUDA without one is a UserError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda")
    return name


def autocast(device: str, precision: str = "auto"):
    """The matmul precision of a forward pass. "auto": bf16 autocast on CUDA (the GPU path of the same
    loop), float32 on CPU; "bf16": bf16 autocast on either (CPUs with AVX512-BF16 or AMX gain from it);
    "fp32": float32 everywhere. Weights, gradients and optimizer state stay float32 in every case."""
    import torch

    kind = device.split(":")[0]
    if precision == "bf16" or (precision == "auto" and kind == "cuda"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()
