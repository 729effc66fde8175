"""Merge methods: each a small object with a name, a pydantic model of its parameters, and `merge`,
which turns the task vectors of ONE tensor into the merged Δ (the caller adds it to W₀).

Notation: Δᵢ the task vector of input i for this tensor (s·B·A for a LoRA adapter, W − W₀ for a full
model, 0 where the input leaves the tensor alone), wᵢ its weight, λ `lambda`.

- linear:          Δ = Σ wᵢΔᵢ / Σ wᵢ (model soup)
- task_arithmetic: Δ = λ·Σ wᵢΔᵢ
- ties:            trim each Δᵢ to `density` by magnitude, elect the sign of Σ wᵢΔ̃ᵢ, keep only the
                   entries that agree with it; Δ = λ·Σ wᵢΔ̃ᵢ[agree] / Σ wᵢ[agree] (disjoint mean)
- dare_linear:     drop entries of each Δᵢ at random (keep prob. `density`, seeded), rescale by 1/density;
                   Δ = λ·Σ wᵢΔ̃ᵢ
- dare_ties:       DARE's drop and rescale, then TIES's sign election (and, with normalize, its mean)
- magnitude_prune: TIES's trim without the sign election; Δ = λ·Σ wᵢΔ̃ᵢ
- delta_guided:    per-parameter weights from how far each input moved that parameter relative to the
                   others (CoDiEmb): αᵢ = wᵢ(|Δᵢ|/rmsᵢ)^γ / Σⱼ wⱼ(|Δⱼ|/rmsⱼ)^γ, Δ = λ·Σ αᵢΔᵢ, rmsᵢ the RMS
                   of Δᵢ over the tensor (1 with normalize: false)
- greedy_soup, self_positioning: choose the weights on probe rows first (merge/search.py), then
                   write `linear` / `task_arithmetic` with them

`normalize` (ties, dare_*, magnitude_prune) divides by the summed weights as mergekit does. The methods
stream over the inputs (TIES-like ones in two passes), so memory is a few tensors for any number of
inputs. A tensor larger than the merger's block size is merged in blocks of rows by the `blockwise`
methods (all but DARE's): what needs the whole tensor (TIES's trim threshold, delta_guided's RMS) is
found first by `tensor_stats` over the blocks, and the result is the same. `Delta.get()` recomputes a task vector; random drops are seeded by (seed, tensor name, input)
so both passes, and every run, see the same mask.

A new method is one file with a `Method` subclass and one entry point in the
`taskloom.merge_methods` group (taskloom's own are listed in pyproject.toml the same way).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from taskloom.errors import UserError
from taskloom.merge import sparsify
from taskloom.merge.weights import all_finite
from taskloom.plugins import Registry

# Sign-electing methods keep their inputs' sparsified tensors between passes up to this many bytes.
CACHE_BYTES = 512 << 20


class Delta:
    """One input's task vector for the tensor being merged, computed on demand and never kept."""

    def __init__(self, compute: Callable | None, shape: tuple[int, ...], label: str, key: str):
        self._compute, self.shape, self.label, self.key = compute, shape, label, key
        self.zero = compute is None
        self.norm = 0.0

    def get(self):
        import torch

        if self._compute is None:
            return torch.zeros(self.shape)
        t = self._compute()
        if not all_finite(t):
            raise UserError(f"{self.label}: tensor {self.key} has NaN or infinite values")
        self.norm = float(t.norm())
        return t


@dataclass
class TensorContext:
    """What a method may know about the tensor beyond its task vectors.

    A tensor too large to merge whole is merged in blocks of rows: `shape` is then the block's shape,
    `block` its number, and `stats[i]` what `Method.tensor_stats` found for input i over the whole
    tensor (None for an input that leaves it alone)."""

    key: str
    shape: tuple[int, ...]
    seed: int = 0
    block: int | None = None
    stats: list | None = None

    def generator(self, i: int):
        """A torch RNG for input i on this tensor: same numbers whatever the order of the walk."""
        import torch

        mixed = (self.seed * 1_000_003 + zlib.crc32(self.key.encode()) * 7_919 + i) % (2**63 - 1)
        return torch.Generator().manual_seed(mixed)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LinearParams(_Params):
    pass


class ScaledParams(_Params):
    lambda_: float = Field(
        default=1.0, alias="lambda", allow_inf_nan=False, description="λ: scale of the merged task vector"
    )


class SparseParams(ScaledParams):
    density: float = Field(default=0.5, description="share of each task vector's entries kept, in (0, 1]")
    normalize: bool = Field(default=False, description="divide by the summed weights (of agreeing entries)")
    rescale: bool = Field(default=False, description="divide kept entries by density")
    seed: int = Field(default=0, description="seed of the random drop (DARE)")

    @field_validator("density")
    @classmethod
    def _density_range(cls, v: float) -> float:
        if not (0.0 < v <= 1.0):
            raise ValueError(f"must be in (0, 1], got {v}")
        return v


class TiesParams(SparseParams):
    normalize: bool = True


class DareParams(SparseParams):
    rescale: bool = True


class DeltaGuidedParams(ScaledParams):
    gamma: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="sharpness: αᵢ ∝ wᵢ|Δᵢ|^γ")
    normalize: bool = Field(
        default=True,
        description="measure each |Δᵢ| in units of its own RMS over the tensor, "
        "so a task trained longer does not claim every parameter",
    )


class Method:
    """A merge method. Subclasses set `name`, `Params`, and implement `merge`."""

    name: ClassVar[str]
    Params: ClassVar[type[_Params]] = LinearParams
    # False: the method needs the whole tensor at once (e.g. a random mask drawn for its full shape)
    blockwise: ClassVar[bool] = True

    def parameters(self, given: dict) -> _Params:
        """The method's parameters from the merge spec, defaults filled, or UserError naming the field."""
        known = {f.alias or n for n, f in self.Params.model_fields.items()}
        for name in given:
            if name not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise UserError(f"parameters.{name}: not a parameter of {self.name} (it takes: {listed})")
        try:
            return self.Params.model_validate(given)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise UserError(f"parameters.{field}: {err['msg'].removeprefix('Value error, ')}") from None

    def check(self, weights: list[float], p) -> None:
        """Refuse weights the method cannot use (before anything is written)."""

    def tensor_stats(self, blocks, numel: int, p):
        """What `merge` needs to know about one input's whole task vector when the tensor is merged in
        blocks; `blocks()` returns that vector's blocks of rows in order. None: nothing."""
        return None

    def merge(self, deltas: list[Delta], weights: list[float], p, ctx: TensorContext):
        raise NotImplementedError


class Linear(Method):
    """Model soup: the weighted mean of the fine-tuned models, W₀ + Σ wᵢΔᵢ / Σ wᵢ."""

    name = "linear"

    def check(self, weights, p):
        if abs(sum(weights)) < 1e-12:
            raise UserError("linear: the adapter weights sum to zero, so Σ wᵢΔᵢ / Σ wᵢ is undefined")

    def merge(self, deltas, weights, p, ctx):
        acc = _weighted_sum(deltas, weights)
        return acc / sum(weights)


class TaskArithmetic(Method):
    """Task vectors added: W₀ + λ·Σ wᵢΔᵢ (Ilharco et al., 2023)."""

    name = "task_arithmetic"
    Params = ScaledParams

    def merge(self, deltas, weights, p, ctx):
        return _weighted_sum(deltas, weights) * p.lambda_


class GeneralizedTaskArithmetic(Method):
    """Sparsify each task vector, optionally keep only sign-agreeing entries, sum, normalise, scale."""

    sparsify: ClassVar[str]  # "magnitude" | "random"
    consensus: ClassVar[bool]
    Params = SparseParams

    def check(self, weights, p):
        if p.normalize and not self.consensus and abs(sum(weights)) < 1e-12:
            raise UserError(f"{self.name}: normalize needs weights that do not sum to zero")

    def tensor_stats(self, blocks, numel, p):
        return sparsify.magnitude_cut(blocks, numel, p.density) if self.sparsify == "magnitude" else None

    def _sparse(self, deltas, i, p, ctx, weight: float):
        """weight · sparsified Δᵢ, a new tensor (the task vector itself is left as it is)."""
        x = deltas[i].get()
        if self.sparsify == "magnitude" and ctx.stats is not None:
            x = sparsify.trim_block(x, ctx.stats[i], ctx.block, p.density, rescale=p.rescale)
        elif self.sparsify == "magnitude":
            x = sparsify.trim_by_magnitude(x, p.density, rescale=p.rescale)
        else:
            x = sparsify.drop_at_random(x, p.density, ctx.generator(i), rescale=p.rescale)
        return x.mul_(weight)

    def merge(self, deltas, weights, p, ctx):
        import torch

        live = [i for i, d in enumerate(deltas) if not d.zero]
        if not self.consensus:
            acc = torch.zeros(ctx.shape)
            for i in live:
                acc += self._sparse(deltas, i, p, ctx, weights[i])
            if p.normalize:
                acc /= sum(weights)
            return acc.mul_(p.lambda_)
        # Pass 1 elects the sign, pass 2 merges what agrees. Within the budget the sparsified vectors
        # of pass 1 are kept for pass 2; beyond it they are recomputed (same seeds, same result).
        keep = len(live) * math.prod(ctx.shape) * 4 <= CACHE_BYTES
        cache: dict[int, object] = {}
        acc = torch.zeros(ctx.shape)
        for i in live:
            x = self._sparse(deltas, i, p, ctx, weights[i])
            acc += x
            if keep:
                cache[i] = x
            del x
        # The elected sign as ±1 (sparsify.elect_sign: 0 counts as +). r = max(x·sign, 0) is |x| where
        # x is non-zero and agrees with it (a zero entry agrees with neither sign), else 0: r·sign is
        # then x or ±0 (adding ±0 to a sum that starts at +0 changes nothing), sign(r) the 0/1 mask.
        # Float arithmetic only: a select on a random pattern is several times slower.
        sign = (acc >= 0).float().mul_(2.0).sub_(1.0)
        acc.zero_()
        divisor = torch.zeros(ctx.shape) if p.normalize else None
        for i in live:
            x = cache.pop(i) if keep else self._sparse(deltas, i, p, ctx, weights[i])
            r = x.mul_(sign).clamp_min_(0.0)
            acc.addcmul_(r, sign)
            if divisor is not None:
                divisor.add_(r.sign_(), alpha=weights[i])
            del x, r
        if divisor is not None:
            divisor.masked_fill_(divisor.abs() < 1e-12, 1.0)
            acc /= divisor
        return acc.mul_(p.lambda_)


class Ties(GeneralizedTaskArithmetic):
    """TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean."""

    name, sparsify, consensus, Params = "ties", "magnitude", True, TiesParams


class DareLinear(GeneralizedTaskArithmetic):
    """DARE (Yu et al., 2024) with a plain weighted sum."""

    name, sparsify, consensus, Params = "dare_linear", "random", False, DareParams
    blockwise = False  # the random mask is drawn for the whole shape at once


class DareTies(GeneralizedTaskArithmetic):
    """DARE's random drop and rescale, then TIES's sign election."""

    name, sparsify, consensus, Params = "dare_ties", "random", True, DareParams
    blockwise = False


class MagnitudePrune(GeneralizedTaskArithmetic):
    """Keep each task vector's largest entries, then add: TIES without the sign election."""

    name, sparsify, consensus, Params = "magnitude_prune", "magnitude", False, SparseParams


class DeltaGuided(Method):
    """Per-parameter weights from each input's deviation from the base, relative to the others
    (CoDiEmb's delta-guided fusion): a parameter comes mostly from the task that moved it most.

    With `normalize` (the default) a deviation is measured against that input's RMS deviation over
    the tensor: inputs trained for different lengths move their weights by different amounts
    overall, and raw magnitudes would hand nearly every parameter to the one trained longest."""

    name = "delta_guided"
    Params = DeltaGuidedParams

    def check(self, weights, p):
        if any(w <= 0 for w in weights):
            raise UserError("delta_guided: adapter weights must be positive")

    def tensor_stats(self, blocks, numel, p):
        if not p.normalize:
            return None
        return math.sqrt(sum(float(x.double().pow(2).sum()) for x in blocks()) / max(numel, 1))

    def merge(self, deltas, weights, p, ctx):
        import torch

        num, den = torch.zeros(ctx.shape), torch.zeros(ctx.shape)
        for i, d in enumerate(deltas):
            if d.zero:
                continue
            x = d.get()
            mag = x.abs()
            if p.normalize:
                rms = ctx.stats[i] if ctx.stats is not None else self.tensor_stats(lambda x=x: [x], x.numel(), p)
                if rms > 0:
                    mag.div_(rms)
            a = weights[i] * mag.pow_(p.gamma)
            num += a * x
            den += a
        out = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
        return out * p.lambda_


class GreedySoupParams(_Params):
    probe_rows: int = Field(
        default=64, ge=2, description="validation rows per task to score candidates on (train rows without one)"
    )
    seed: int = 0


class SelfPositioningParams(_Params):
    probe_rows: int = Field(
        default=64, ge=2, description="validation rows per task in the probe set (train rows without one)"
    )
    batch_rows: int = Field(default=24, ge=2, description="rows (distill: texts) per task per step")
    steps: int = Field(default=60, ge=1, description="Adam steps on the coefficients")
    lr: float = Field(default=0.05, gt=0, allow_inf_nan=False, description="Adam learning rate for λ")
    max_length: int = Field(default=64, ge=8, description="tokens per text")
    objective: Literal["task_loss", "distill"] = Field(
        default="task_loss",
        description="task_loss: each task's training objective on its probe rows; distill: on "
        "each task's probe texts, the merged embeddings match those of that task's own adapter",
    )
    granularity: Literal["task", "layer", "tensor"] = Field(
        default="tensor", description="one coefficient per input (task), per input and layer, or per input and tensor"
    )
    seed: int = 0


class SearchMethod(Method):
    """A method that chooses the weights by evaluating on probe rows (taskloom.merge.search), then
    writes them with an exact per-tensor method (`final`)."""

    searches: ClassVar[bool] = True
    final: ClassVar[str]

    def merge(self, deltas, weights, p, ctx):
        raise TypeError(f"{self.name} chooses weights first; the merge runs {self.final}")


class GreedySoup(SearchMethod):
    """Add an input to the soup only if the mean probe score does not drop (Wortsman et al., 2022)."""

    name, final, Params = "greedy_soup", "linear", GreedySoupParams


class SelfPositioning(SearchMethod):
    """Learn the task-vector coefficients by gradient descent on a probe set balanced across tasks."""

    name, final, Params = "self_positioning", "task_arithmetic", SelfPositioningParams


def _weighted_sum(deltas: list[Delta], weights: list[float]):
    import torch

    acc = None
    for w, d in zip(weights, deltas):
        if d.zero:
            continue
        x = d.get()
        acc = x * w if acc is None else acc.add_(x, alpha=w)
    return acc if acc is not None else torch.zeros(deltas[0].shape)


# name → method: taskloom's own and every installed plugin's, through the `taskloom.merge_methods`
# entry points (pyproject.toml; see taskloom.plugins)
METHODS: Mapping[str, Method] = Registry("taskloom.merge_methods", Method, "merge method")


def get_method(name: str) -> Method:
    """The method called `name`, or UserError listing the known ones."""
    if name not in METHODS:
        raise UserError(f"method: unknown merge method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]
