"""PEFT's `add_weighted_adapter(..., combination_type="linear")` vs taskloom's exact merge, on real adapters.

    .venv/bin/python bench/merge_cross_terms.py            # --tasks rt-sentiment,chatterbot-qa --weights 0.5,0.5

Two real LoRA adapters (r=8, alpha=16, MiniLM, `train_adapter` for 20 steps each, cached in
.cache/bench-adapters/) are merged with weights wᵢ. The exact merge of the task vectors is
Δ = Σ wᵢ·sᵢ·Bᵢ·Aᵢ (PEFT's own `get_delta_weight` of each adapter, weighted). PEFT's "linear" combines
the factors separately, B = Σ √(wᵢsᵢ)·Bᵢ and A = Σ √(wᵢsᵢ)·Aᵢ, so B·A also holds the cross terms
√(wᵢsᵢwⱼsⱼ)·Bᵢ·Aⱼ (i ≠ j). Per LoRA layer and overall: ‖merged − exact‖_F / ‖exact‖_F for
- PEFT linear, and PEFT cat (its exact, rank-summing option) for reference;
- taskloom `task_arithmetic` (λ = 1, the same weights), output: full (Δ read back as W − W₀ from the
  float32 model file, so float rounding of W₀ + Δ shows), and output: adapter re-factored by SVD at
  rank 16 (= r₁ + r₂: exact) and at rank 8 (truncated: the error merge_report.json also reports).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_adapters import trained

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
    os.environ.setdefault(_k, _v)


def taskloom_deltas(adapters: list[Path], weights: list[float], work: Path) -> dict[str, dict]:
    """{"full" | "r16" | "r8": {base key: Δ}} from taskloom's merges (task_arithmetic, λ = 1)."""
    from safetensors.torch import load_file

    from taskloom.merge import merge_adapters
    from taskloom.models.registry import resolve_base
    from taskloom.specs import MergeSpec

    refs = [{"path": a, "weight": w} for a, w in zip(adapters, weights)]
    base = load_file(str(resolve_base("minilm") / "model.safetensors"))
    out = {}
    merge_adapters(MergeSpec(method="task_arithmetic", base_model="minilm", adapters=refs, output="full"), work / "full")
    merged = load_file(str(work / "full" / "model.safetensors"))
    out["full"] = {k: merged[k].float() - base[k].float() for k in base}
    for rank in (16, 8):
        spec = MergeSpec(method="task_arithmetic", base_model="minilm", adapters=refs, output="adapter", rank=rank)
        report = merge_adapters(spec, work / f"r{rank}")
        factors = load_file(str(work / f"r{rank}" / "adapter_model.safetensors"))
        deltas = {}
        for name, a in factors.items():
            if name.endswith(".lora_A.weight"):
                module = name[len("base_model.model."):-len(".lora_A.weight")]
                deltas[module + ".weight"] = factors[name.replace("lora_A", "lora_B")].float() @ a.float()  # alpha = r: s = 1
        out[f"r{rank}"] = deltas
        out[f"r{rank}_reported"] = report["refactor"]["relative_error"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="rt-sentiment,chatterbot-qa")
    ap.add_argument("--weights", default="0.5,0.5")
    ap.add_argument("--max-steps", type=int, default=20, help="training steps of each adapter (cached)")
    args = ap.parse_args()
    names = [t.strip() for t in args.tasks.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    assert len(names) == len(weights) >= 2, "one weight per task, at least two tasks"

    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from taskloom.merge.weights import KeyMatcher
    from taskloom.models.encoder import load_encoder

    adapters = [trained(n, args.max_steps) / "adapter" for n in names]
    _, enc = load_encoder("minilm")
    model = PeftModel.from_pretrained(enc, str(adapters[0]), adapter_name="t0")
    for i, a in enumerate(adapters[1:], 1):
        model.load_adapter(str(a), adapter_name=f"t{i}")
    ids = [f"t{i}" for i in range(len(adapters))]
    model.add_weighted_adapter(ids, weights, "peft_linear", combination_type="linear")
    model.add_weighted_adapter(ids, weights, "peft_cat", combination_type="cat")

    work = Path(tempfile.mkdtemp(prefix="cross-terms-"))
    try:
        tl = taskloom_deltas(adapters, weights, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base_keys = KeyMatcher(tl["full"].keys())

    cols = ["cross_terms", "peft_linear", "peft_cat", "full", "r16", "r8"]
    sq = {c: 0.0 for c in cols}
    sq_exact = 0.0
    rows = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or "t0" not in module.lora_A:
                continue
            exact = sum(w * module.get_delta_weight(i).float() for w, i in zip(weights, ids))
            key = base_keys.find(name.removeprefix("base_model.model.") + ".weight")
            got = {"peft_linear": module.get_delta_weight("peft_linear").float(),
                   "peft_cat": module.get_delta_weight("peft_cat").float(),
                   "full": tl["full"][key], "r16": tl["r16"][key], "r8": tl["r8"][key]}
            # the cross terms written out from the raw factors: PEFT linear's error should be exactly this
            c = [math.sqrt(w * module.scaling[i]) for w, i in zip(weights, ids)]
            cross = sum(c[p] * c[q] * (module.lora_B[ids[p]].weight.float() @ module.lora_A[ids[q]].weight.float())
                        for p in range(len(ids)) for q in range(len(ids)) if p != q)
            got["cross_terms"] = exact + cross
            n = float(exact.norm())
            errs = {c: float((got[c] - exact).norm()) for c in cols}
            for c in cols:
                sq[c] += errs[c] ** 2
            sq_exact += n**2
            short = key.removeprefix("encoder.layer.").removesuffix(".weight").replace("attention.", "")
            rows.append((short, n, {c: errs[c] / n for c in cols}))

    print(f"adapters: {', '.join(f'{n} ({a.parent.name})' for n, a in zip(names, adapters))}; weights {weights}; "
          f"r=8, alpha=16 (s=2)")
    print()
    print("| layer | ‖exact Δ‖_F | ‖Σᵢ≠ⱼ cross terms‖ | PEFT linear | PEFT cat | taskloom full | taskloom adapter r16 | taskloom adapter r8 |")
    print("|---|---|---|---|---|---|---|---|")
    for short, n, rel in rows:
        print(f"| {short} | {n:.4f} | " + " | ".join(f"{rel[c]:.2e}" for c in cols) + " |")
    overall = {c: math.sqrt(sq[c] / sq_exact) for c in cols}
    print(f"| **overall** | {math.sqrt(sq_exact):.4f} | " + " | ".join(f"**{overall[c]:.2e}**" for c in cols) + " |")
    print()
    worst = max(rows, key=lambda r: r[2]["peft_linear"])
    print("(every column: ‖merged Δ − exact Δ‖_F / ‖exact Δ‖_F; the cross-terms column is that norm computed by hand)")
    print(f"PEFT linear: overall relative error {overall['peft_linear']:.3f} (worst layer {worst[0]}: {worst[2]['peft_linear']:.3f}); "
          f"taskloom full: {overall['full']:.1e} (float32 rounding of W₀ + Δ), adapter r16: {overall['r16']:.1e}, "
          f"adapter r8: {overall['r8']:.3f} (merge_report.json says {tl['r8_reported']:.3f})")
    print(f"ratio: {overall['peft_linear'] / max(overall['full'], 1e-30):.0f}")


if __name__ == "__main__":
    main()
