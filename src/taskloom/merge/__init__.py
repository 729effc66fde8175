"""Model merging: a registry of methods (`methods.METHODS`), exact LoRA algebra (Δ = s·B·A), a
streaming per-tensor merge into a full model or a merged adapter, and the promotion gate.

    taskloom merge merge.yaml --out runs/merged
"""

from taskloom.merge.merger import merge_adapters, merge_from_config

__all__ = ["merge_adapters", "merge_from_config"]
