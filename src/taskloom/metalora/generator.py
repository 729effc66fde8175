"""The meta-LoRA generator: a task's description (and optionally k examples) in, LoRA weights out.

LoRA factors are not unique (B·A = (B·M)(M⁻¹·A) for any invertible M), so regressing the raw A and B of
independently trained adapters fits noise. The generator works on ΔW = s·B·A instead, in a basis fit
on the seen bank: per adapted module, the leading column space U (out × R) and row space V (in × R) of
all seen ΔWs, so ΔW ≈ U·C·Vᵀ with an R × R core C. The seen adapters' cores (all modules, one
vector per adapter) are centred on their mean and reduced to their principal components; a small
network maps the condition (the base model's embedding of the description, the mean embedding of k
examples when given, and a flag) to the coefficients over those components, each scaled to unit
variance on the seen bank. The loss weights each coefficient by its component's variance, so it is
the squared Frobenius error of ΔW inside the basis. That network is then fine-tuned through the
encoder on the seen tasks' own objectives (metalora/sft.py). A core becomes a LoRA of rank R by an
R × R SVD, so emitting weights costs a few milliseconds.

Training sees tier "seen" only; the "val" tasks pick the basis size, the network's shape and weight
decay, and how long to fine-tune (`train_generator`). Saved as `generator.safetensors` (+ sha256)
and `generator.json`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskloom.artifacts import publish_dir, save_safetensors, sha256_file, staging_dir, verify_digest, write_json
from taskloom.data.rows import load_rows
from taskloom.errors import UserError
from taskloom.jsonfiles import read_json
from taskloom.merge.weights import weight_files
from taskloom.models.adapter import ADAPTER_WEIGHTS, factor_scaling, read_config, split_keys
from taskloom.models.encoder import embed_texts, load_encoder
from taskloom.models.registry import CATALOG, resolve_base
from taskloom.specs import load_task
from taskloom.tasks.types import TASK_TYPES

VERSION = 1
CONFIG = "generator.json"
WEIGHTS = "generator.safetensors"
MAX_PARAMS = 10_000_000
SHOTS = (4, 8, 16)  # example counts the generator is trained with
SHOT_DRAWS = 4  # example subsets per seen task and per count
EMBED_ROWS = 256  # at most this many train rows per task are embedded for example subsets
# (basis size R, hidden width, activation, weight decay): tried in this order on the val tasks
CANDIDATES = ((32, 128, "gelu", 1e-2), (32, 128, "gelu", 1.0), (32, 64, "none", 1e-1), (16, 128, "gelu", 1e-2))
STEPS = 600
SFT_CANDIDATES = ((0, 0.0), (100, 1e-3), (300, 3e-4))  # fine-tuning (steps, lr) tried on the val tasks
LR = 1e-3
INPUT_NOISE = 0.02  # Gaussian noise on the condition while training: nearby descriptions, nearby adapters


# ---- the bank ----------------------------------------------------------------------------------
def read_bank(bank_dir: str | Path) -> dict:
    """bank.json, checked for the fields the generator needs."""
    bank_dir = Path(bank_dir)
    path = bank_dir / "bank.json"
    if not path.is_file():
        raise UserError(f"--bank {bank_dir}: no bank.json (not an adapter bank, or not finished)")
    bank = read_json(path)
    for key in ("base", "rank", "targets", "tasks"):
        if key not in bank:
            raise UserError(f"{path}: missing field {key!r}")
    if not any(t.get("tier") == "seen" for t in bank["tasks"]):
        raise UserError(f"{path}: no task of tier 'seen' to train on")
    return bank


def adapter_folder(bank_dir: Path, entry: dict) -> Path:
    """The PEFT folder of a bank task (`adapters/<name>` is a train run; its PEFT files sit in adapter/)."""
    run = bank_dir / entry["adapter"]
    return run / "adapter" if (run / "adapter" / "adapter_config.json").exists() else run


def read_delta(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module → (s·B, A) in float64 from a PEFT adapter folder (ΔW = s·B·A)."""
    from safetensors.numpy import load_file

    cfg = read_config(folder)
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    parts, _plain = split_keys(tensors)
    out = {}
    for module, p in parts.items():
        if "lora_A" not in p or "lora_B" not in p:
            continue
        a, b = tensors[p["lora_A"]].astype(np.float64), tensors[p["lora_B"]].astype(np.float64)
        _rank, s = factor_scaling(cfg, module, a.shape, b.shape, str(folder))
        out[module] = (s * b, a)
    if not out:
        raise UserError(f"{folder}: no LoRA factors")
    return out


def _orth_svd(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SVD of B·A from its factors: (U, S, V) with B·A = U·diag(S)·Vᵀ."""
    qb, rb = np.linalg.qr(b)
    qa, ra = np.linalg.qr(a.T)
    u, s, vt = np.linalg.svd(rb @ ra.T)
    return qb @ u, s, qa @ vt.T


def fit_basis(deltas: list[dict], size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per module: the leading `size` directions of the seen ΔWs' columns and rows, weighted by energy."""
    basis = {}
    for module in sorted(deltas[0]):
        cols, rows = [], []
        for d in deltas:
            u, s, v = _orth_svd(*d[module])
            cols.append(u * s)
            rows.append(v * s)
        uu = np.linalg.svd(np.concatenate(cols, 1), full_matrices=False)[0]
        vv = np.linalg.svd(np.concatenate(rows, 1), full_matrices=False)[0]
        r = min(size, uu.shape[1], vv.shape[1])
        basis[module] = (_pad(uu[:, :r], size), _pad(vv[:, :r], size))
    return basis


def _pad(m: np.ndarray, size: int) -> np.ndarray:
    """Zero columns up to `size` (a bank smaller than the basis)."""
    return m if m.shape[1] == size else np.concatenate([m, np.zeros((m.shape[0], size - m.shape[1]))], 1)


def cores(delta: dict, basis: dict) -> np.ndarray:
    """ΔW in the basis: every module's Uᵀ·ΔW·V, flattened in module order."""
    out = []
    for module in sorted(basis):
        u, v = basis[module]
        b, a = delta[module]
        out.append(((u.T @ b) @ (a @ v)).ravel())
    return np.concatenate(out)


def delta_energy(delta: dict) -> float:
    """‖ΔW‖²_F summed over modules (from the factors)."""
    return float(sum(np.sum(_orth_svd(b, a)[1] ** 2) for b, a in delta.values()))


# ---- conditions ----------------------------------------------------------------------------------
def shot_mean(embeddings: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
    """The examples' condition: the mean embedding (of the per-label means when labelled), unit length."""
    if labels is not None:
        groups = sorted(set(labels))
        embeddings = np.stack([embeddings[[i for i, lab in enumerate(labels) if lab == g]].mean(0) for g in groups])
    m = embeddings.mean(0)
    return (m / max(float(np.linalg.norm(m)), 1e-9)).astype(np.float32)


def condition(description: np.ndarray, shots: np.ndarray | None) -> np.ndarray:
    """[description embedding, examples' mean embedding (zeros without), 1 if examples were given]."""
    dim = description.shape[-1]
    extra = np.zeros(dim, dtype=np.float32) if shots is None else shots.astype(np.float32)
    return np.concatenate([description.astype(np.float32), extra, [0.0 if shots is None else 1.0]]).astype(np.float32)


# ---- the network -----------------------------------------------------------------------------------
def build_net(d_in: int, hidden: int, d_out: int, activation: str):
    import torch

    act = torch.nn.GELU() if activation == "gelu" else torch.nn.Identity()
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden), act, torch.nn.Linear(hidden, hidden), act, torch.nn.Linear(hidden, d_out)
    )


def _fit_net(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    hidden: int,
    activation: str,
    weight_decay: float,
    seed: int,
    steps: int = STEPS,
):
    """Train the network on (condition, unit-variance coefficients) pairs, each coefficient's error
    weighted by its share of the seen bank's variance; full batches, AdamW, deterministic."""
    import torch

    torch.manual_seed(seed)
    net = build_net(x.shape[1], hidden, y.shape[1], activation)
    with torch.no_grad():
        net[-1].weight.mul_(0.1)
        net[-1].bias.zero_()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float32)
    wt = torch.as_tensor(weight / weight.sum(), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    dim = (x.shape[1] - 1) // 2
    for _ in range(steps):
        noise = torch.randn(xt.shape, generator=gen) * INPUT_NOISE
        noise[:, -1] = 0
        noise[:, dim:-1] *= xt[:, -1:]  # no noise on an absent example embedding
        loss = (((net(xt + noise) - yt) ** 2) * wt).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return net


def count_params(net, basis: dict, components: np.ndarray) -> int:
    """Everything the generator stores: the network, the basis, the components and the statistics."""
    n_net = sum(p.numel() for p in net.parameters())
    n_basis = sum(u.size + v.size for u, v in basis.values())
    return int(n_net + n_basis + components.size + components.shape[1])


def predict_cores(net, mean, components, modules: list[str], size: int, cond) -> dict:
    """module → the R × R core the network makes for the condition `cond` (torch; with gradients when
    the caller has them): the coefficients, back through the components, cut into one core per module."""
    import torch

    z = net(torch.as_tensor(cond, dtype=torch.float32)[None])[0]
    flat = mean + z @ components
    n = size * size
    return {m: flat[i * n : (i + 1) * n].reshape(size, size) for i, m in enumerate(modules)}


@dataclass
class Generator:
    """A loaded generator: the config, the network, the basis, the components and the statistics."""

    config: dict
    net: object
    basis: dict  # module → (U (out × R), V (in × R)) as float32 torch tensors
    mean: object  # the seen cores' mean (D)
    components: object  # principal components of the seen cores (K × D), each row scaled by its std

    @property
    def modules(self) -> list[str]:
        return sorted(self.basis)

    def factors(self, cond: np.ndarray, rank: int | None = None) -> dict[str, tuple]:
        """module → (A (r × in), B (out × r)) of a LoRA with scaling 1 for the condition `cond`."""
        import torch

        rank = rank or int(self.config["rank"])
        size = int(self.config["basis_size"])
        with torch.no_grad():
            out = {}
            for module, core in predict_cores(self.net, self.mean, self.components, self.modules, size, cond).items():
                p, s, qt = torch.linalg.svd(core)
                root = s[:rank].sqrt()
                u, v = self.basis[module]
                out[module] = ((root[:, None] * qt[:rank]) @ v.T, (u @ p[:, :rank]) * root[None])
        return out


# ---- saving and loading ----------------------------------------------------------------------------
def weight_digest(folder: Path) -> str:
    """sha256 of a model folder's weights (of the files' digests, in order, when sharded)."""
    import hashlib

    files = weight_files(folder)
    if not files:
        raise UserError(f"base model {folder}: no safetensors weights")
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def base_identity(base: str) -> dict:
    """How the generator names its base: the catalog name (or folder) and the sha256 of its weights."""
    folder = resolve_base(base)
    return {"name": base if base in CATALOG else str(folder), "weights_sha256": weight_digest(folder)}


def save_generator(out_dir: str | Path, gen: Generator) -> Path:
    """Write the generator folder atomically: generator.safetensors (+ sha256), then generator.json."""
    import torch

    tensors = {f"net.{k}": v.detach().float() for k, v in gen.net.state_dict().items()}  # type: ignore[attr-defined]
    for module, (u, v) in gen.basis.items():
        tensors[f"basis.{module}.U"] = torch.as_tensor(u, dtype=torch.float32)
        tensors[f"basis.{module}.V"] = torch.as_tensor(v, dtype=torch.float32)
    tensors["norm.mean"] = torch.as_tensor(gen.mean, dtype=torch.float32)
    tensors["norm.components"] = torch.as_tensor(gen.components, dtype=torch.float32)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    stage = staging_dir(out)
    save_safetensors(stage / WEIGHTS, tensors)
    write_json(stage / CONFIG, {**gen.config, "weights_sha256": sha256_file(stage / WEIGHTS)})
    return publish_dir(stage, out)


def load_generator(folder: str | Path) -> Generator:
    """A generator folder, checked: present, config readable and of this version, weights intact."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    where = f"--generator {folder}"
    if not folder.is_dir():
        raise UserError(f"{where}: no such folder")
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise UserError(f"{where}: not a generator folder: missing {name}")
    config = read_json(folder / CONFIG, "the generator")
    if config.get("version") != VERSION:
        raise UserError(f"{where}: generator version {config.get('version')!r}, this taskloom reads {VERSION}")
    need = ("base", "rank", "targets", "task_types", "basis_size", "hidden", "activation", "input_dim", "modules")
    missing = [k for k in need if k not in config]
    if missing:
        raise UserError(f"{folder / CONFIG}: missing field {missing[0]!r}")
    weights = folder / WEIGHTS
    if config.get("weights_sha256") != sha256_file(weights) or (
        weights.with_name(WEIGHTS + ".sha256").exists() and not verify_digest(weights)
    ):
        raise UserError(f"{weights}: sha256 does not match the one recorded (corrupted or replaced file)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a readable safetensors file ({e})") from None
    size, modules = int(config["basis_size"]), list(config["modules"])
    try:
        basis = {m: (tensors[f"basis.{m}.U"], tensors[f"basis.{m}.V"]) for m in modules}
        mean, components = tensors["norm.mean"], tensors["norm.components"]
        if mean.shape != (len(modules) * size * size,) or components.shape[1:] != mean.shape:
            raise KeyError("norm.mean/norm.components: wrong shape")
        net = build_net(int(config["input_dim"]), int(config["hidden"]), components.shape[0], config["activation"])
        net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{weights}: does not match {CONFIG} ({str(e).splitlines()[0]})") from None
    net.eval()
    return Generator(config, net, basis, mean, components)


# ---- training ----------------------------------------------------------------------------------------
@dataclass
class _Task:
    entry: dict
    delta: dict
    description: np.ndarray
    shot_embeddings: np.ndarray  # base-model embeddings of `rows`' main texts
    shot_labels: list[str] | None
    spec: object  # the TaskSpec
    rows: list[dict]  # up to EMBED_ROWS train rows (examples, and fine-tuning batches on seen tasks)
    all_rows: list[dict]  # train + eval rows (a val task is scored on all of them)


def _load_tasks(bank_dir: Path, entries: list[dict], tok, model) -> list[_Task]:
    out = []
    for e in entries:
        task = load_task(bank_dir / "tasks" / e["name"] / "task.yaml")
        kind = TASK_TYPES[task.type]
        train = load_rows(task.train_path, task.type, task.labels)
        rows = random.Random(e["name"]).sample(train, min(len(train), EMBED_ROWS))
        texts = [r[kind.main_text] for r in rows]
        shot_x = embed_texts(texts, model=model, tok=tok) if texts else np.zeros((0, 384), np.float32)
        desc = embed_texts([task.description], model=model, tok=tok)[0]
        labels = [r["label"] for r in rows] if kind.labelled else None
        every = train + load_rows(task.eval_path, task.type, task.labels)
        out.append(_Task(e, read_delta(adapter_folder(bank_dir, e)), desc, shot_x, labels, task, rows, every))
    return out


def _examples(t: _Task, rng: random.Random) -> list[np.ndarray]:
    """Conditions for one task: the description alone, and with several drawn example subsets."""
    conds = [condition(t.description, None)]
    n = len(t.shot_embeddings)
    for k in SHOTS:
        for _ in range(SHOT_DRAWS if n > k else 0):
            idx = rng.sample(range(n), k)
            labels = [t.shot_labels[i] for i in idx] if t.shot_labels else None
            conds.append(condition(t.description, shot_mean(t.shot_embeddings[idx], labels)))
    return conds


def _dataset(tasks: list[_Task], basis: dict, seed: int):
    rng = random.Random(seed)
    xs, ys = [], []
    for t in tasks:
        c = cores(t.delta, basis)
        for cond in _examples(t, rng):
            xs.append(cond)
            ys.append(c)
    return np.stack(xs), np.stack(ys)


def _fit(
    seen: list[_Task], size: int, hidden: int, activation: str, weight_decay: float, seed: int, steps: int = STEPS
):
    """(net, basis, mean, components) fit on `seen` alone; components carry their std (K × D)."""
    basis = fit_basis([t.delta for t in seen], size)
    x, y = _dataset(seen, basis, seed)
    per_task = np.stack([cores(t.delta, basis) for t in seen])
    mean = per_task.mean(0)
    _u, sv, vt = np.linalg.svd(per_task - mean, full_matrices=False)
    keep = sv > 1e-6 * max(float(sv[0]), 1e-30)
    if not keep.any():
        keep[:1] = True
    std = sv[keep] / math.sqrt(len(seen))
    rows = vt[keep]
    z = ((y - mean) @ rows.T) / std
    net = _fit_net(x, z.astype(np.float32), std**2, hidden, activation, weight_decay, seed, steps)
    return net, basis, mean, rows * std[:, None]


def _relative_error(net, basis, mean, components, tasks: list[_Task]) -> tuple[float, float]:
    """Mean over tasks of ‖ΔŴ − ΔW‖² / ‖ΔW‖² from the description alone: (generator, mean adapter)."""
    import torch

    gen_err, mean_err = [], []
    for t in tasks:
        c = cores(t.delta, basis)
        total = delta_energy(t.delta)
        outside = total - float(np.sum(c**2))  # what the basis cannot hold
        with torch.no_grad():
            z = net(torch.as_tensor(condition(t.description, None))[None])[0].double().numpy()
        pred = mean + z @ components
        gen_err.append((float(np.sum((pred - c) ** 2)) + outside) / total)
        mean_err.append((float(np.sum((mean - c) ** 2)) + outside) / total)
    return float(np.mean(gen_err)), float(np.mean(mean_err))


def train_generator(
    bank_dir: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    candidates: tuple[tuple[int, int, str, float], ...] = CANDIDATES,
    steps: int = STEPS,
    progress: bool = True,
    sft: tuple[tuple[int, float], ...] = SFT_CANDIDATES,
) -> dict:
    """Fit a generator on the bank's "seen" adapters, choose its shape on the "val" ones, then fine-tune
    it through the encoder (metalora/sft.py) for the number of steps the val tasks score best; save it
    to `out_dir`; returns the summary written into the config (`selection`: each candidate's val
    error; `sft`: each fine-tuning length's val metric)."""
    import torch

    from taskloom.metalora.sft import Tuner

    bank_dir = Path(bank_dir)
    bank = read_bank(bank_dir)
    say = print if progress else (lambda *_a, **_k: None)
    seen_e = [t for t in bank["tasks"] if t.get("tier") == "seen"]
    val_e = [t for t in bank["tasks"] if t.get("tier") == "val"]
    types = sorted({t["type"] for t in seen_e})
    for t in types:
        if TASK_TYPES[t].base_kind != "encoder":
            raise UserError(f"{bank_dir}/bank.json: {t} tasks are not on a sentence encoder; the generator needs one")
    torch.manual_seed(seed)
    tok, model = load_encoder(bank["base"])
    seen = _load_tasks(bank_dir, seen_e, tok, model)
    val = _load_tasks(bank_dir, val_e, tok, model)
    dim = int(seen[0].description.shape[0])
    modules = sorted(seen[0].delta)
    for t in seen + val:
        if sorted(t.delta) != modules:
            raise UserError(f"{bank_dir}/{t.entry['adapter']}: adapts other modules than the first seen adapter")
    selection = []
    chosen = candidates[0]
    if val and len(candidates) > 1:
        best = math.inf
        for cand in candidates:
            net, basis, mean, comps = _fit(seen, cand[0], cand[1], cand[2], cand[3], seed=seed, steps=steps)
            err, err_mean = _relative_error(net, basis, mean, comps, val)
            selection.append(
                {
                    "basis_size": cand[0],
                    "hidden": cand[1],
                    "activation": cand[2],
                    "weight_decay": cand[3],
                    "val_error": round(err, 6),
                    "val_error_mean_adapter": round(err_mean, 6),
                }
            )
            say(
                f"candidate R={cand[0]} hidden={cand[1]} {cand[2]} wd={cand[3]}: val ΔW error {err:.4f} (mean adapter {err_mean:.4f})"
            )
            if err < best:
                best, chosen = err, cand
    size, hidden, activation, weight_decay = chosen
    net, basis, mean, comps = _fit(seen, size, hidden, activation, weight_decay, seed=seed, steps=steps)
    tuning: dict = {"chosen_steps": 0, "candidates": []}
    if val and sft:
        tuner = Tuner(tok, model, basis, mean, comps, INPUT_NOISE, SHOTS)
        try:
            tuning["val_metric_base"] = round(tuner.val_metric(None, val), 6)
            best, tuned = -math.inf, net
            for n_steps, lr in sft:
                candidate = tuner.fit(net, seen, n_steps, lr, weight_decay, seed)
                score = tuner.val_metric(candidate, val)
                tuning["candidates"].append({"steps": n_steps, "lr": lr, "val_metric": round(score, 6)})
                say(
                    f"fine-tuned {n_steps} steps at lr {lr:g}: val metric {score:.4f} (base {tuning['val_metric_base']:.4f})"
                )
                if score > best:
                    best, tuned, tuning["chosen_steps"], tuning["chosen_lr"] = score, candidate, n_steps, lr
        finally:
            tuner.close()
        net = tuned
    seen_err, seen_mean_err = _relative_error(net, basis, mean, comps, seen)
    config = {
        "version": VERSION,
        "base": base_identity(bank["base"]),
        "rank": size,  # the generated LoRA holds the whole U·C·Vᵀ (rank <= R), as fine-tuning saw it
        "bank_rank": int(bank["rank"]),
        "targets": bank["targets"],
        "task_types": types,
        "modules": modules,
        "basis_size": size,
        "hidden": hidden,
        "activation": activation,
        "weight_decay": weight_decay,
        "input_dim": 2 * dim + 1,
        "condition": "description embedding (base model, mean-pooled, L2-normalised) + examples' mean embedding + flag",
        "shots_trained": list(SHOTS),
        "seed": seed,
        "steps": steps,
        "seen_tasks": [t["name"] for t in seen_e],
        "val_tasks": [t["name"] for t in val_e],
        "seen_error": round(seen_err, 6),
        "seen_error_mean_adapter": round(seen_mean_err, 6),
        "selection": selection,
        "sft": tuning,
        "normalisation": "seen adapters' cores: mean (norm.mean) and principal components scaled by "
        "their std (norm.components); the network predicts unit-variance coefficients",
    }
    t_basis = {
        m: (torch.as_tensor(u, dtype=torch.float32), torch.as_tensor(v, dtype=torch.float32))
        for m, (u, v) in basis.items()
    }
    gen = Generator(
        config, net, t_basis, torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(comps, dtype=torch.float32)
    )
    n = count_params(net, basis, comps)
    assert n < MAX_PARAMS, f"generator has {n} parameters, over the {MAX_PARAMS} budget"
    config["parameters"] = n
    save_generator(out_dir, gen)
    return config
