"""Model weights on disk, one tensor at a time: reading safetensors folders (single file or sharded
index) tensor by tensor, matching tensor names across naming conventions, and writing the merged
model as it is produced.

Memory stays at a few tensors whatever the size or number of models:
- reading parses the safetensors header (8-byte length + JSON) and reads one tensor's bytes with a
  positional read; nothing is memory-mapped, so the pages of N input models never count against the
  process (an mmap reader's touched pages do);
- writing plans the output first (every tensor's name, dtype and shape is the base's), writes each
  shard's header up front and then each tensor's bytes the moment it is merged.
The files are plain safetensors: `safetensors.safe_open` and `from_pretrained` read them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from taskloom.artifacts import write_digest, write_json
from taskloom.errors import UserError

# Files that hold weights: never copied as "tokenizer/config" files, never pickles in our outputs.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".index.json")
_MAX_HEADER = 100 << 20


def _torch_dtypes() -> dict:
    import torch

    return {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }


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


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries by name, offset where the data starts), or UserError for a file that is not safetensors."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < n <= _MAX_HEADER:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        size = path.stat().st_size
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        header.pop("__metadata__", None)
        for key, e in header.items():
            start, end = e["data_offsets"]
            if e["dtype"] not in _torch_dtypes() or not (0 <= start <= end <= size - 8 - n):
                raise ValueError(f"bad entry {key}")
            e["shape"] = tuple(int(d) for d in e["shape"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    return header, 8 + n


class ModelWeights:
    """Tensors of one or more safetensors files by name; `get` reads one tensor, nothing is preloaded."""

    def __init__(self, files: list[Path], stack: ExitStack, label: str):
        self.label = label
        self.files = files
        self._where: dict[str, tuple[object, int, dict]] = {}
        for path in files:
            if not path.exists():
                raise UserError(f"{label}: missing weights file {path}")
            header, data_start = read_header(path)
            handle = stack.enter_context(open(path, "rb"))  # noqa: SIM115 (the ExitStack closes it)
            for key, entry in header.items():
                self._where[key] = (handle, data_start, entry)

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key][2]["shape"]

    def dtype(self, key: str) -> str:
        """safetensors dtype name: F32, F16, BF16, I64, ..."""
        return self._where[key][2]["dtype"]

    def get(self, key: str):
        """The tensor, read from disk into fresh memory (a positional read, no mmap)."""
        import torch

        handle, data_start, e = self._where[key]
        start, end = e["data_offsets"]
        dtype = _torch_dtypes()[e["dtype"]]
        if end == start:
            return torch.empty(e["shape"], dtype=dtype)
        return self._read(key, handle, data_start + start, end - start, dtype, e["shape"])

    def get_rows(self, key: str, start: int, stop: int):
        """Rows start:stop of the tensor (along its first dimension), read alone from disk."""
        import torch

        handle, data_start, e = self._where[key]
        shape = e["shape"]
        dtype = _torch_dtypes()[e["dtype"]]
        row = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        stop = min(stop, shape[0])
        part = (max(stop - start, 0), *shape[1:])
        if row * part[0] == 0:
            return torch.empty(part, dtype=dtype)
        return self._read(key, handle, data_start + e["data_offsets"][0] + start * row, row * part[0], dtype, part)

    def _read(self, key, handle, offset: int, size: int, dtype, shape):
        import torch

        buf = bytearray(size)
        got = os.preadv(handle.fileno(), [buf], offset)
        if got != size:
            raise UserError(f"{self.label}: {key}: file ended early (truncated safetensors?)")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)


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
    `bert.encoder.layer.0...`. Exact match first, then the name with one or two leading parts dropped,
    then the one key that ends with `.name`. Ambiguity is no match: a wrong match would merge the
    wrong layer.
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


class StreamingWriter:
    """Write a model as safetensors shards while it is produced, holding no tensor after `write`.

    `plan` is the output's [(name, dtype, shape)] in writing order. Shards of at most
    `max_shard_bytes` are planned up front: one is `model.safetensors`, several are
    `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` (what `from_pretrained`
    reads). Each shard's header is written first; `write` must follow the plan's order and
    dtypes/shapes exactly. Each file gets a sha256 beside it on `close`.
    """

    def __init__(
        self,
        folder: Path,
        plan: list[tuple[str, str, tuple]],
        max_shard_bytes: int = 2 << 30,
        metadata: dict | None = None,
    ):
        itemsize = {
            "F64": 8,
            "F32": 4,
            "F16": 2,
            "BF16": 2,
            "I64": 8,
            "I32": 4,
            "I16": 2,
            "I8": 1,
            "U8": 1,
            "BOOL": 1,
            "F8_E4M3": 1,
            "F8_E5M2": 1,
        }
        self.folder = folder
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[tuple[str, str, tuple, int]]] = [[]]
        size = 0
        for name, dtype, shape in plan:
            nbytes = math.prod(shape) * itemsize[dtype]
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, dtype, tuple(shape), nbytes))
            size += nbytes
        n = len(shards)
        self.names = (
            ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        )
        self._shards = shards
        self._order = [(s, name, dtype, shape) for s, shard in enumerate(shards) for name, dtype, shape, _ in shard]
        self._pos = 0
        self._file: BinaryIO | None = None
        self._shard = -1
        self.total_size = sum(nbytes for shard in shards for *_, nbytes in shard)

    def _open(self, s: int) -> None:
        if self._file is not None:
            self._finish()
        header, offset = {"__metadata__": self.metadata}, 0
        for name, dtype, shape, nbytes in self._shards[s]:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        self._file = open(self.folder / self.names[s], "wb")  # noqa: SIM115 (open across calls; closed per shard)
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._shard = s

    def _finish(self) -> None:
        f, self._file = self._file, None
        assert f is not None, "no shard open"
        f.flush()
        os.fsync(f.fileno())
        f.close()

    def write(self, name: str, tensor) -> None:
        self.write_rows(name, [tensor])

    def write_rows(self, name: str, blocks) -> None:
        """Write tensor `name` from its blocks of rows in order (each written, then dropped)."""
        import torch

        s, want, dtype, shape = self._order[self._pos]
        rows = 0
        for block in blocks:
            if (
                name != want
                or tuple(block.shape[1:]) != shape[1:]
                or block.dtype != _torch_dtypes()[dtype]
                or (len(shape) == 0 and rows > 0)
                or rows + (block.shape[0] if shape else 1) > (shape[0] if shape else 1)
            ):
                raise RuntimeError(
                    f"writer expected {want} {dtype} {shape}, got {name} {block.dtype} "
                    f"{tuple(block.shape)} after {rows} rows"
                )
            if s != self._shard:
                self._open(s)
            assert self._file is not None  # _open(s) opened shard s
            if block.numel():
                self._file.write(memoryview(block.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
            rows += block.shape[0] if shape else 1
        if name != want or rows != (shape[0] if shape else 1):
            raise RuntimeError(f"writer expected {want} {dtype} {shape}, got {name} with {rows} rows")
        self._pos += 1

    def close(self) -> list[Path]:
        """Finish the last shard, write digests (and the index when sharded); returns the files."""
        if self._pos != len(self._order):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._order)} tensors")
        if self._file is None:  # an empty plan still gives a valid (empty) file
            self._open(0)
        self._finish()
        files = [self.folder / name for name in self.names]
        for f in files:
            write_digest(f)
        if len(files) > 1:
            index = self.folder / "model.safetensors.index.json"
            weight_map = {name: self.names[s] for s, name, _, _ in self._order}
            write_json(index, {"metadata": {"total_size": self.total_size}, "weight_map": weight_map})
            files.append(index)
        return files

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
