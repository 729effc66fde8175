"""Model weights on disk, one tensor at a time: lazy reading of safetensors folders (single file or
sharded index), matching tensor names across naming conventions, and sharded atomic writing.

Reading through `safe_open` maps the file and copies out only the tensor asked for, so a merge holds a
few tensors in memory whatever the size of the models.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import ExitStack
from pathlib import Path

from taskloom.artifacts import write_digest, write_json
from taskloom.errors import UserError

# Files that hold weights: never copied as "tokenizer/config" files, never pickles in our outputs.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".index.json")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder, in the order of its index when sharded."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{index}: not a safetensors index (needs a 'weight_map' mapping)") from None
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    return sorted(folder.glob("*.safetensors"))


class ModelWeights:
    """Tensors of one or more safetensors files by name; `get` reads one tensor, nothing is preloaded."""

    def __init__(self, files: list[Path], stack: ExitStack, label: str):
        from safetensors import safe_open

        self.label = label
        self.files = files
        self._where: dict[str, object] = {}
        for path in files:
            if not path.exists():
                raise UserError(f"{label}: missing weights file {path}")
            try:
                handle = stack.enter_context(safe_open(str(path), framework="pt"))
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise UserError(f"{path}: not a readable safetensors file ({e})") from None
            for key in handle.keys():
                self._where[key] = handle

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        """safetensors dtype name: F32, F16, BF16, I64, ..."""
        return self._where[key].get_slice(key).get_dtype()

    def get(self, key: str):
        return self._where[key].get_tensor(key)


def is_float(dtype: str) -> bool:
    return dtype.startswith("F") or dtype == "BF16"


def all_finite(t) -> bool:
    """No NaN and no ±inf in `t`. The sum is a fast screen (any NaN/inf makes it non-finite); only
    when it is not finite does the exact element-wise check run (a huge but finite sum can overflow)."""
    import torch

    if not t.is_floating_point():
        return True
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


class KeyMatcher:
    """Find a tensor name among `keys` when the two sides wrap the model differently.

    An adapter trained on `AutoModel` names `encoder.layer.0...`; one trained on a task wrapper names
    `bert.encoder.layer.0...`. Exact match first, then the name with leading parts dropped, then the
    one key that ends with `.name`. Ambiguity is no match: a wrong match would merge the wrong layer.
    """

    def __init__(self, keys):
        self.keys = set(keys)
        self._by_suffix: dict[str, list[str]] = {}
        for key in self.keys:
            parts = key.split(".")
            for i in range(1, len(parts)):
                self._by_suffix.setdefault(".".join(parts[i:]), []).append(key)

    def find(self, name: str) -> str | None:
        if name in self.keys:
            return name
        parts = name.split(".")
        for i in range(1, min(3, len(parts) - 1)):  # a wrapper adds one or two leading names
            shorter = ".".join(parts[i:])
            if shorter in self.keys:
                return shorter
        found = self._by_suffix.get(name, [])
        return found[0] if len(found) == 1 else None


class ShardWriter:
    """Collect output tensors and write them as safetensors shards of at most `max_shard_bytes`.

    One shard is written as `model.safetensors`; several as `model-0000i-of-0000n.safetensors` plus
    `model.safetensors.index.json` (the layout `from_pretrained` reads). Each file gets a sha256 beside
    it. Memory holds at most one shard.
    """

    def __init__(self, folder: Path, max_shard_bytes: int = 2 << 30, metadata: dict | None = None):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self._buffer: dict = {}
        self._size = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0

    def add(self, key: str, tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._size + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[key] = tensor.contiguous()
        self._size += nbytes
        self.total_size += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp = self.folder / f".shard-{len(self._shards) + 1:05d}.tmp"
        save_file(self._buffer, str(tmp), metadata=self.metadata)
        self._shards.append((tmp, list(self._buffer)))
        self._buffer, self._size = {}, 0

    def close(self) -> list[Path]:
        """Write what is left, give the shards their final names, return the files written."""
        if self._buffer or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            final = self.folder / "model.safetensors"
            os.replace(self._shards[0][0], final)
            write_digest(final)
            return [final]
        written, weight_map = [], {}
        for i, (tmp, keys) in enumerate(self._shards, start=1):
            final = self.folder / f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, final)
            write_digest(final)
            written.append(final)
            weight_map.update({k: final.name for k in keys})
        index = self.folder / "model.safetensors.index.json"
        write_json(index, {"metadata": {"total_size": self.total_size}, "weight_map": weight_map})
        return [*written, index]
