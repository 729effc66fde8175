"""The streaming merge: walk the base model one tensor at a time, ask the method for the merged Δ of
that tensor from every input's task vector, write W₀ + Δ (or its LoRA factors), publish atomically.
A tensor larger than BLOCK_BYTES is read, merged and written in blocks of rows (full output).

    taskloom merge merge.yaml --out runs/merged

Everything the user can get wrong (files, base model, shapes, parameters, weights) is checked before
anything is written; a NaN found while streaming removes the staging folder. `--out` is replaced
whole, and only if it is empty or a previous merge output.
"""

from __future__ import annotations

import errno
import math
import re
import resource
import shutil
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import cast

from taskloom.artifacts import (
    publish_dir,
    recorded_digest,
    save_safetensors,
    sha256_file,
    staging_dir,
    write_digest,
    write_json,
    write_text,
)
from taskloom.errors import UserError
from taskloom.jsonfiles import read_json
from taskloom.merge.factor import refactor
from taskloom.merge.finetuned import FineTunedModel
from taskloom.merge.lora import LoraAdapter
from taskloom.merge.methods import Delta, SearchMethod, TensorContext, get_method
from taskloom.merge.provenance import check_base, recorded_base
from taskloom.merge.search import run_search
from taskloom.merge.weights import (
    WEIGHT_SUFFIXES,
    KeyMatcher,
    ModelWeights,
    StreamingWriter,
    all_finite,
    is_float,
    weight_files,
)
from taskloom.models.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from taskloom.models.registry import resolve_base
from taskloom.specs import MergeSpec, load_merge

REPORT = "merge_report.json"
# A tensor larger than this (as float32) is merged in blocks of rows of about this size, by the
# methods that allow it: the peak memory is then a few blocks, not a few copies of the tensor.
BLOCK_BYTES = 1 << 20
HEAD_FILES = ("head.safetensors", "head.json", "task.json")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def merge_from_config(path: str | Path, out: str | Path) -> dict:
    """Load `merge.yaml`, check it, merge into `out`; returns the report (also in out/merge_report.json)."""
    path = Path(path)
    spec = load_merge(path)
    try:
        method = get_method(spec.method)
        method.check([a.weight for a in spec.adapters], method.parameters(spec.parameters))
        resolve_base(spec.base_model)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return merge_adapters(spec, Path(out))


def merge_adapters(spec: MergeSpec, out: Path, *, max_shard_bytes: int = 2 << 30, score=None) -> dict:
    """Merge the spec's inputs onto its base; write a full model or a merged adapter into `out`.

    `score(tok, model) -> {task: metric}` replaces the probe scoring of greedy_soup (optional)."""
    t0, started = time.perf_counter(), datetime.now(timezone.utc)
    out = Path(out)
    method = get_method(spec.method)
    params = method.parameters(spec.parameters)
    weights = [float(a.weight) for a in spec.adapters]
    method.check(weights, params)
    base_dir = resolve_base(spec.base_model)
    folders = spec.adapter_paths()
    _check_out(out, [base_dir, *folders])

    with ExitStack() as stack:
        base = ModelWeights(weight_files(base_dir), stack, f"base model {spec.base_model}")
        if not base.keys():
            raise UserError(f"base model {spec.base_model}: no safetensors weights in {base_dir}")
        matcher = KeyMatcher(base.keys())
        inputs = [
            _open_input(folder, f"adapter {ref.path}", spec.base_model, base_dir, base, matcher, stack)
            for ref, folder in zip(spec.adapters, folders)
        ]
        if spec.output == "adapter":
            for inp in inputs:
                if inp.kind != "lora":
                    raise UserError(f"{inp.label}: output: adapter needs LoRA adapters as inputs, this is a full model")

        search, per_tensor = None, None
        if getattr(method, "searches", False):  # a plugin may set `searches` without subclassing SearchMethod
            final_name = cast(SearchMethod, method).final
            chosen, search = run_search(method, spec, inputs, base, base_dir, params, score)
            per_tensor = search.pop("tensor_weights", None)
            search = {"final_method": final_name, "weights": chosen, **search}
            final = get_method(final_name)
            final_params = final.parameters({})
            final.check(chosen, final_params)
        else:
            chosen, final, final_params = weights, method, params

        staging = staging_dir(out)
        try:
            weights_of = (lambda key: per_tensor.get(key, chosen)) if per_tensor else (lambda key: chosen)
            if spec.output == "full":
                layers, extra = _write_full(
                    base, base_dir, inputs, final, final_params, weights_of, staging, max_shard_bytes
                )
            else:
                layers, extra = _write_adapter(
                    base, base_dir, inputs, final, final_params, weights_of, staging, spec.rank
                )
            if search is not None:
                extra["search"] = search
            heads = _copy_heads(inputs, weights, staging)
            report = _report(spec, method, params, base_dir, inputs, weights, layers, extra, heads, staging, out)
            report["started_at"] = started.isoformat(timespec="seconds")
            report["seconds"] = round(time.perf_counter() - t0, 3)
            report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            write_json(staging / REPORT, report)
            publish_dir(staging, out)
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"--out {out}: no space left on its device ({e.strerror}); nothing was changed"
                ) from None
            raise
    return report


def _check_out(out: Path, inputs: list[Path]) -> None:
    """`out` is replaced whole: refuse a folder that holds anything but an earlier merge, or an input."""
    resolved = out.resolve()
    for p in inputs:
        p = p.resolve()
        if resolved == p or resolved in p.parents or p in resolved.parents:
            raise UserError(f"--out {out}: overlaps an input folder ({p}); inputs are never modified")
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / REPORT).exists():
            raise UserError(f"--out {out}: folder exists and is not an earlier merge output; choose a new folder")


def _open_input(folder: Path, label: str, base_name: str, base_dir: Path, base, matcher, stack):
    """A LoRA adapter or a full model folder, checked against the base; tagged with its task."""
    try:
        found = folder.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise UserError(f"{label}: cannot read {folder} ({e.strerror})") from None
    if not found:
        raise UserError(f"{label}: folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"{label}: not a folder: {folder}")
    lora = (folder / ADAPTER_CONFIG).exists() or (folder / ADAPTER_WEIGHTS).exists()
    if not lora and not ((folder / "config.json").exists() and weight_files(folder)):
        raise UserError(
            f"{label}: {folder} holds neither a LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) "
            "nor a model (config.json + *.safetensors)"
        )
    base_check = check_base(recorded_base(folder, label), base_name, base_dir, label)  # before shapes: clearer
    inp: LoraAdapter | FineTunedModel
    if lora:
        inp = LoraAdapter(folder, base, matcher, stack, label)
    else:
        inp = FineTunedModel(folder, base_dir, base, stack, label)
    inp.base_check = base_check
    task = read_json(folder / "task.json", label) if (folder / "task.json").exists() else {}
    inp.task, inp.task_type = task.get("task"), task.get("type")
    return inp


def _merged_delta(key, w0, inputs, method, params, weights):
    """(Δ, input norms) for one base tensor."""
    shape = tuple(w0.shape)
    deltas = [
        Delta(partial(inp.delta, key, w0) if key in inp.keys() else None, shape, inp.label, key) for inp in inputs
    ]
    d = method.merge(deltas, weights, params, TensorContext(key, shape, seed=getattr(params, "seed", 0)))
    return d, [round(x.norm, 6) for x in deltas]


def _finite(t, what: str) -> None:
    if not all_finite(t):
        raise UserError(f"{what} has NaN or infinite values")


def _square_sum(t) -> float:
    """Σ t² in float64 (x·x is exactly what pow(2) computes; in place on a float64 copy, never on t)."""
    import torch

    d = t.to(torch.float64, copy=True)
    return float(d.mul_(d).sum())


def _row_blocks(shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Row ranges of about BLOCK_BYTES (as float32) for a tensor too large to merge whole, else None."""
    if len(shape) < 1 or shape[0] < 2 or math.prod(shape) * 4 <= BLOCK_BYTES:
        return None
    rows = max(1, BLOCK_BYTES // (4 * math.prod(shape[1:])))
    return [(i, min(i + rows, shape[0])) for i in range(0, shape[0], rows)]


def _merged_rows(key, base, inputs, method, params, weights, ranges, record: dict):
    """W₀ + Δ of one large tensor, yielded block by block in the base's dtype. What the method needs
    of each whole task vector (`tensor_stats`) is gathered first, in a pass over the blocks; `record`
    gets the tensor's norms once the last block is out."""
    shape = base.shape(key)
    touching = [inp if key in inp.keys() else None for inp in inputs]

    def blocks_of(inp):
        checked = False  # the first full walk checks every block; later walks see the same values

        def blocks():
            nonlocal checked
            for start, stop in ranges:
                d = inp.delta_rows(key, base.get_rows(key, start, stop), start, stop)
                if not checked:
                    _finite(d, f"{inp.label}: tensor {key}")
                yield d
            checked = True

        return blocks

    stats = [None if inp is None else method.tensor_stats(blocks_of(inp), math.prod(shape), params) for inp in touching]
    seed = getattr(params, "seed", 0)
    sq_inputs, sq_delta, sq_base = [0.0] * len(inputs), 0.0, 0.0
    for b, (start, stop) in enumerate(ranges):
        w0 = base.get_rows(key, start, stop)
        if is_float(base.dtype(key)):
            _finite(w0, f"base model: tensor {key}")
        part = tuple(w0.shape)
        deltas = [
            Delta(None if t is None else partial(t.delta_rows, key, w0, start, stop), part, inp.label, key)
            for t, inp in zip(touching, inputs)
        ]
        d = method.merge(deltas, weights, params, TensorContext(key, part, seed=seed, block=b, stats=stats))
        sq_inputs = [q + x.norm**2 for q, x in zip(sq_inputs, deltas)]
        sq_delta += _square_sum(d)
        sq_base += _square_sum(w0)
        w = d.add_(w0.float())
        del d
        _finite(w, f"merged tensor {key} (check lambda and the weights)")
        yield w.to(w0.dtype)
        del w, w0, deltas
    record.update(
        {
            "delta_norm": round(math.sqrt(sq_delta), 6),
            "base_norm": round(math.sqrt(sq_base), 6),
            "input_norms": [round(math.sqrt(q), 6) for q in sq_inputs],
            "blocks": len(ranges),
        }
    )


def _write_full(base, base_dir, inputs, method, params, weights_of, staging, max_shard_bytes):
    """W = W₀ + Δ for every tensor an input touches; every other base tensor copied as is. Each tensor
    goes to disk as soon as it is merged (the output keeps the base's names, dtypes and shapes); a
    large one is merged and written in blocks of rows when the method allows (`blockwise`)."""
    targeted = set().union(*(inp.keys() for inp in inputs))
    plan = [(key, base.dtype(key), base.shape(key)) for key in base.keys()]
    writer = StreamingWriter(staging, plan, max_shard_bytes)
    layers = {}
    try:
        for key in base.keys():
            ranges = _row_blocks(base.shape(key)) if key in targeted and method.blockwise else None
            if ranges is not None:
                layers[key] = {}
                writer.write_rows(
                    key, _merged_rows(key, base, inputs, method, params, weights_of(key), ranges, layers[key])
                )
                continue
            w0 = base.get(key)
            if is_float(base.dtype(key)):
                _finite(w0, f"base model: tensor {key}")
            if key in targeted:
                d, norms = _merged_delta(key, w0, inputs, method, params, weights_of(key))
                layers[key] = {
                    "delta_norm": round(float(d.norm()), 6),
                    "base_norm": round(float(w0.float().norm()), 6),
                    "input_norms": norms,
                }
                w = d.add_(w0.float())  # the merged Δ is the method's own new tensor: W₀ + Δ in its place
                _finite(w, f"merged tensor {key} (check lambda and the weights)")
                w0 = w.to(w0.dtype)
                del d, w
            writer.write(key, w0)
            del w0
        files = writer.close()
    finally:
        writer.abort()
    _copy_model_files(base_dir, staging)
    return layers, {"files": [f.name for f in files]}


def _write_adapter(base, base_dir, inputs, method, params, weights_of, staging, rank):
    """The merged Δ of each LoRA-targeted tensor re-factored as B·A at one rank (exact error reported);
    modules an input saved whole are written whole (`modules_to_save`)."""
    import torch

    whole = set().union(*(inp.replaced for inp in inputs))
    factors = {}  # base key -> Factor (kind, module, transpose) of the first input that targets it
    for inp in inputs:
        for key, f in inp.targets.items():
            factors.setdefault(key, f)
    need = max((sum(inp.rank(k) for inp in inputs) for k in factors), default=1)
    rank = int(rank or max(need, 1))

    tensors, layers, target_modules, saved_modules = {}, {}, set(), set()
    lora_bias = any(f.kind == "bias" for k, f in factors.items() if k not in whole)
    fan_in_fan_out = any(f.transpose for f in factors.values() if f.kind == "linear")
    sq_total = sq_err = 0.0
    for key in base.keys():
        if key not in whole and key not in factors:
            continue
        w0 = base.get(key)
        d, norms = _merged_delta(key, w0, inputs, method, params, weights_of(key))
        _finite(d, f"merged Δ of {key} (check lambda and the weights)")
        entry = {
            "delta_norm": round(float(d.norm()), 6),
            "base_norm": round(float(w0.float().norm()), 6),
            "input_norms": norms,
        }
        if key in whole:
            tensors[f"base_model.model.{key}"] = (w0.float() + d).to(w0.dtype)
            saved_modules.add(key.rsplit(".", 1)[0])
            entry["saved_whole"] = True
        else:
            f = factors[key]
            prefix = f"base_model.model.{f.module}"
            if f.kind == "bias":
                tensors[f"{prefix}.lora_B.bias"] = d.float()
            else:
                m = d.T if f.transpose else d
                b, a, rel, abs_err = refactor(m, rank)
                if f.kind == "embedding":
                    tensors[f"{prefix}.lora_embedding_A"], tensors[f"{prefix}.lora_embedding_B"] = a, b
                else:
                    tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
                target_modules.add(f.module)
                sq_total += _square_sum(d)
                sq_err += abs_err**2
                entry["relative_error"] = rel
        layers[key] = entry
    if lora_bias:  # PEFT gives every LoRA B a bias then: zeros where the merge has none
        for f in factors.values():
            name = f"base_model.model.{f.module}.lora_B.bias"
            if f.kind == "linear" and name not in tensors:
                tensors[name] = torch.zeros(tensors[f"base_model.model.{f.module}.lora_B.weight"].shape[0])
    save_safetensors(staging / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": str(base_dir),
        "r": rank,
        "lora_alpha": rank,  # scaling 1: the factors carry Δ itself
        "use_rslora": False,
        "target_modules": sorted(target_modules),
        "modules_to_save": sorted(saved_modules) or None,
        "fan_in_fan_out": fan_in_fan_out,
        "lora_bias": lora_bias,
        "bias": "none",
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "task_type": None,
    }
    write_json(staging / ADAPTER_CONFIG, config)
    overall = math.sqrt(sq_err / sq_total) if sq_total > 0 else 0.0
    worst = max((e.get("relative_error", 0.0) for e in layers.values()), default=0.0)
    return layers, {
        "files": [ADAPTER_WEIGHTS, ADAPTER_CONFIG],
        "refactor": {"rank": rank, "relative_error": overall, "max_layer_relative_error": worst},
    }


def _copy_model_files(base_dir: Path, staging: Path) -> None:
    """config.json, tokenizer and sentence-transformers files of the base; never its weights."""

    def is_weight(p: Path) -> bool:
        return p.name.endswith(WEIGHT_SUFFIXES)

    for src in sorted(base_dir.iterdir()):
        if src.name.startswith(".") or src.name == "README.md" or is_weight(src):
            continue
        if src.is_file():
            shutil.copy2(src, staging / src.name)
        elif src.is_dir() and not any(is_weight(p) for p in src.rglob("*")):
            shutil.copytree(src, staging / src.name)


def _task_name(inp) -> str:
    name = inp.task or (inp.folder.parent.name if inp.folder.name == "adapter" else inp.folder.name)
    if not _SAFE_NAME.match(str(name)):
        raise UserError(f"{inp.label}: task name {name!r} in task.json cannot name a folder")
    return str(name)


def _copy_heads(inputs, weights, staging: Path) -> dict:
    """out/heads/<task>/ for each input with a classification head (and heads of merged-model inputs).
    Two inputs of one task: the head of the larger weight is kept (the first on a tie)."""
    chosen: dict[str, tuple[float, Path]] = {}
    for inp, w in zip(inputs, weights):
        sources = []
        if (inp.folder / "head.safetensors").exists():
            sources.append((_task_name(inp), inp.folder))
        heads_dir = inp.folder / "heads"
        if heads_dir.is_dir():
            sources += [(p.name, p) for p in sorted(heads_dir.iterdir()) if (p / "head.safetensors").exists()]
        for task, src in sources:
            if task not in chosen or abs(w) > chosen[task][0]:
                chosen[task] = (abs(w), src)
    heads = {}
    for task, (_, src) in sorted(chosen.items()):
        dest = staging / "heads" / task
        dest.mkdir(parents=True)
        for name in HEAD_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, dest / name)
        write_digest(dest / "head.safetensors")
        heads[task] = str(src)
    return heads


def _sha256s(inp) -> dict:
    if inp.kind == "lora":
        names = [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
        return {n: sha256_file(inp.folder / n) for n in names}
    return {f.name: sha256_file(f) for f in inp.weights.files}


def _report(spec, method, params, base_dir, inputs, weights, layers, extra, heads, staging, out) -> dict:
    tasks = list(dict.fromkeys(t for t in (inp.task for inp in inputs) if t))
    total = math.sqrt(sum(e["delta_norm"] ** 2 for e in layers.values()))
    report = {
        "method": method.name,
        "parameters": params.model_dump(by_alias=True),
        "base_model": spec.base_model,
        "base_path": str(base_dir),
        "output": spec.output,
        "out": str(out),
        "adapters": [
            {
                "path": str(inp.folder),
                "weight": w,
                "task": inp.task,
                "type": inp.task_type,
                "base_check": inp.base_check,
                "sha256": _sha256s(inp),
                **inp.describe(),
            }
            for inp, w in zip(inputs, weights)
        ],
        "tasks": tasks,
        "heads": heads,
        "layers_merged": len(layers),
        "delta_norm": round(total, 6),
        "layers": layers,
        "files": {name: recorded_digest(staging / name) for name in extra.pop("files")},
        **extra,
    }
    write_text(staging / "README.md", _model_card(report), digest=False)
    return report


def _model_card(report: dict) -> str:
    lines = [
        "---",
        "library_name: transformers",
        "tags: [taskloom, merge, " + report["method"] + "]",
        "---",
        "",
        f"# Merged with taskloom ({report['method']})",
        "",
        f"Base: `{report['base_model']}`. Output: {report['output']}. Parameters: `{report['parameters']}`.",
        "",
        "| input | task | weight | kind |",
        "|---|---|---|---|",
    ]
    for a in report["adapters"]:
        lines.append(f"| `{a['path']}` | {a['task'] or '-'} | {a['weight']} | {a['kind']} |")
    lines += ["", "Per-layer norms and file digests: `merge_report.json`.", ""]
    return "\n".join(lines)
