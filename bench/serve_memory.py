"""Memory of serving N LoRA adapters: one taskloom model holding all of them vs one model per adapter.

    .venv/bin/python bench/serve_memory.py              # 8 adapters
    .venv/bin/python bench/serve_memory.py --adapters 4

Each Triton python-backend model instance is its own process holding torch and a copy of the base
encoder, so the naive layout (a model per adapter) pays that N times; taskloom serves every adapter
beside one base in one process. Both layouts run on the bundled tritonserver with the same N real
PEFT LoRA adapters (rank 8 on MiniLM's attention, random non-zero weights); memory is the resident
set (RSS, /proc) of the server and of its stub processes after loading and one request per adapter
(PSS too: shared library pages split between the processes that share them).
Both must give the same embedding per adapter (cosine >= 0.999). Last line: `ratio: X`, the
separate models' total RSS over taskloom's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

TEXT = "A quietly devastating film, beautifully acted."


def make_adapters(root: Path, n: int, rank: int = 8) -> dict[str, Path]:
    """n PEFT LoRA folders on MiniLM with their sha256, as `taskloom train` writes them (no head)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from taskloom.artifacts import write_digest
    from taskloom.models.encoder import load_encoder
    from taskloom.train.lora import TARGET_MODULES

    _, base = load_encoder("minilm")
    out = {}
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGET_MODULES,
                                                               init_lora_weights=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.3)
        folder = root / f"task{i}"
        model.save_pretrained(str(folder))
        write_digest(folder / "adapter_model.safetensors")
        (folder / "task.json").write_text(json.dumps({"task": f"task{i}", "type": "retrieval", "base": "minilm"}))
        out[f"task{i}"] = folder
    return out


def measure(repo: Path, requests: list[tuple[str, str | None]], log_dir: Path) -> tuple[dict, list[np.ndarray]]:
    """Start the server on `repo`, send one request per (model, adapter), return memory and embeddings."""
    from taskloom.serve.client import TritonClient
    from taskloom.serve.launcher import TritonServer

    with TritonServer(repo, log_dir=log_dir) as server:
        embs = []
        for model, adapter in requests:
            with TritonClient(server.grpc_url, model=model, protocol="grpc", timeout=120) as c:
                embs.append(c.infer([TEXT], adapter=adapter)["embedding"][0])
        return {"rss": server.memory("Rss"), "pss": server.memory("Pss")}, embs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=8)
    args = ap.parse_args(argv)

    from taskloom.serve.repository import build_repository

    mib = 1 << 20
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        tmp = Path(tmp)
        adapters = make_adapters(tmp / "adapters", args.adapters)
        one = build_repository("minilm", tmp / "one", adapters=adapters)
        many = tmp / "many"
        for name, folder in adapters.items():
            build_repository("minilm", many, name=name, adapters={name: folder})
        mem_one, emb_one = measure(one, [("taskloom", a) for a in adapters], tmp / "logs-one")
        mem_many, emb_many = measure(many, [(a, a) for a in adapters], tmp / "logs-many")
    cos = min(float(a @ b) for a, b in zip(emb_one, emb_many))
    for label, mem in ((f"taskloom: 1 model, {args.adapters} adapters", mem_one),
                       (f"naive: {args.adapters} models, 1 adapter each", mem_many)):
        for kind in ("rss", "pss"):
            m = mem[kind]
            stubs = sorted(m["stubs"].values())
            print(f"{label:<34} {kind.upper()}  processes {1 + len(stubs):>2}  server {m['server'] / mib:5.0f} MiB  "
                  f"stubs {sum(stubs) / mib:6.0f} MiB ({', '.join(f'{s / mib:.0f}' for s in stubs)})  "
                  f"total {m['total'] / mib:6.0f} MiB", flush=True)
    print(f"min cosine per adapter, one model vs separate models: {cos:.6f} (need >= 0.999)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"PSS ratio (shared library pages counted once): {mem_many['pss']['total'] / mem_one['pss']['total']:.2f}")
    print(f"ratio: {mem_many['rss']['total'] / mem_one['rss']['total']:.2f}")
    return 0 if cos >= 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
