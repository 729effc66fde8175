"""Where training and evaluation run: one code path, CPU or CUDA, bf16 autocast where the chip has it."""

from __future__ import annotations

import contextlib
import functools
import os

from taskloom.errors import UserError

# Set on pipeline steps that request an nvidia.com/gpu (pipelines.placement.on_gpu): such a step must
# find CUDA, or stop with one line (exit 2 from the CLI) rather than silently train on the CPU.
REQUIRE_CUDA_ENV = "TASKLOOM_REQUIRE_CUDA"


def cuda_required() -> bool:
    """$TASKLOOM_REQUIRE_CUDA is set (not 0/false/no) and this process runs in a Kubernetes pod, where the
    nvidia.com/gpu request was honoured. kfp.local hands a task's environment variables to its
    subprocess but ignores its resource requests, so a local run (no KUBERNETES_SERVICE_HOST, which
    Kubernetes sets in every container) trains wherever it can."""
    asked = os.environ.get(REQUIRE_CUDA_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return asked and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def check_required_cuda() -> None:
    """A UserError when CUDA is required here (see cuda_required) and torch sees no CUDA device."""
    if not cuda_required():
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"{REQUIRE_CUDA_ENV}={os.environ[REQUIRE_CUDA_ENV]}: this step asked for an nvidia.com/gpu "
            "but no CUDA device is visible (CUDA torch build, NVIDIA driver, device plugin?); "
            "not training on the CPU instead"
        )


def resolve_device(name: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; asking for CUDA without one is a UserError,
    and so is any device when $TASKLOOM_REQUIRE_CUDA is set and no GPU is visible."""
    import torch

    check_required_cuda()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda")
    return name


@functools.lru_cache(maxsize=1)  # asked on every training step; the CPU's flags never change
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16): there bf16 autocast
    trains MiniLM LoRA about 1.7-2x faster at an equal eval loss (BENCHMARKS.md); elsewhere it is slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(device: str, precision: str = "auto") -> str:
    """ "auto" → "bf16" on CUDA and on CPUs with native bf16, else "fp32"; "fp32"/"bf16" as asked."""
    if precision != "auto":
        return precision
    return "bf16" if device.split(":")[0] == "cuda" or native_bf16() else "fp32"


def autocast(device: str, precision: str = "auto"):
    """The matmul precision of a forward pass (see resolve_precision); "fp32": float32 everywhere.
    Weights, gradients and optimizer state stay float32 in every case."""
    import torch

    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def frozen_in_bf16(model, device: str, precision: str = "auto"):
    """Under bf16 autocast, hold the frozen Linear weights in bf16 for the duration.

    Autocast casts a weight to bf16 on every call, and it caches only tensors that need gradients, so a
    frozen base was cast again in every chunk's forward (MiniLM LoRA on CPU: `copy_` fell from 2.6 to
    1.7 s of a 31 s profile).
    The held copies are the very values autocast would make, so training is bit-identical; the
    float32 weights come back on exit. A weight shared with another module (a tied embedding) stays.
    """
    import torch

    if resolve_precision(device, precision) != "bf16":
        yield
        return
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    in_linears = {id(p) for m in linears for p in m.parameters(recurse=False)}
    elsewhere = {
        id(p)
        for m in model.modules()
        if not isinstance(m, torch.nn.Linear)
        for p in m.parameters(recurse=False)
        if id(p) in in_linears
    }
    held = []
    for m in linears:
        for p in (m.weight, m.bias):
            if p is not None and not p.requires_grad and p.dtype == torch.float32 and id(p) not in elsewhere:
                held.append((p, p.data))
                p.data = p.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for p, data in held:
            p.data = data


def eval_autocast(device: str):
    """Scoring: bf16 on CUDA, float32 on CPU whatever precision trained, so CPU metrics compare exactly."""
    return autocast(device, "auto" if device.split(":")[0] == "cuda" else "fp32")
