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


def autocast(device: str):
    """bf16 autocast on CUDA (the GPU path of the same loop); nothing on CPU, which stays float32."""
    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
