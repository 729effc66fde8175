"""Typed specs validated at the boundary: a task.yaml or merge.yaml either becomes one of these or a
UserError naming the file and field. Nothing past this module re-checks user input shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from taskloom.errors import UserError

TaskType = Literal["classification", "pair_similarity", "retrieval", "generation"]
TASK_TYPES: tuple[str, ...] = ("classification", "pair_similarity", "retrieval", "generation")


class DataFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: Path = Field(description="training rows, JSONL or Parquet, relative to the task file")
    eval: Path = Field(description="held-out rows for metrics, JSONL or Parquet, relative to the task file")


class TaskSpec(BaseModel):
    """A task as users write it in `task.yaml`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="task id (lowercase, - _ .)")
    type: TaskType
    description: str = Field(min_length=1, description="what the task is, in words (drives meta-LoRA)")
    labels: list[str] | None = Field(default=None, description="the label set; classification only")
    data: DataFiles
    base_model: str = Field(default="minilm", description="a catalog name or a local model folder")
    root: Path = Field(default=Path("."), exclude=True, description="folder of the task file")

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v):
        if v is not None:
            if len(v) < 2:
                raise ValueError("needs at least two labels")
            if len(set(v)) != len(v):
                raise ValueError("labels must be unique")
        return v

    @model_validator(mode="after")
    def _labels_iff_classification(self):
        if self.type == "classification" and not self.labels:
            raise ValueError("labels: required for a classification task")
        if self.type != "classification" and self.labels:
            raise ValueError(f"labels: only classification tasks have labels, not {self.type}")
        return self

    @property
    def train_path(self) -> Path:
        return (self.root / self.data.train).resolve()

    @property
    def eval_path(self) -> Path:
        return (self.root / self.data.eval).resolve()


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, or raise UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a YAML file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level")
    return doc


def load_task(path: str | Path) -> TaskSpec:
    """Load and check `task.yaml`; data paths resolve relative to the file; files must exist."""
    path = Path(path)
    doc = read_yaml(path)
    try:
        spec = TaskSpec.model_validate({**doc, "root": path.parent.resolve()})
    except ValidationError as e:
        raise UserError(f"{path}: {_first_error(e)}") from None
    for split, p in (("train", spec.train_path), ("eval", spec.eval_path)):
        if not p.exists():
            raise UserError(f"{path}: data.{split}: file not found: {p}")
        if p.suffix.lower() not in (".jsonl", ".json", ".parquet"):
            raise UserError(f"{path}: data.{split}: expected a .jsonl or .parquet file, got {p.name}")
    return spec


class TrainSpec(BaseModel):
    """How to train one LoRA adapter (one task or a mix). Defaults train a ~1,000-row task well on 2 CPU
    cores; `None` means the base kind's default (encoder or causal LM, see train/lora.py)."""

    model_config = ConfigDict(extra="forbid")
    base: str | None = Field(default=None, description="override the task's base model")
    epochs: int = Field(default=2, ge=1, description="passes over the training rows")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    rank: int = Field(default=8, ge=1, description="LoRA rank r")
    alpha: float = Field(default=16.0, gt=0, description="LoRA alpha (scaling = alpha / r)")
    lr: float | None = Field(default=None, gt=0, description="AdamW learning rate (encoder 1e-3, causal LM 2e-3)")
    batch_size: int = Field(default=32, ge=1, description="rows per optimizer step (the global batch under torchrun)")
    max_length: int | None = Field(default=None, ge=8, description="tokens per text in training, truncated beyond "
                                   "(encoder 64, causal LM 96; encoder eval uses 128)")
    max_train_rows: int | None = Field(default=None, ge=1, description="subsample each task's training rows (seeded)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto: bf16 autocast on CUDA and on "
                                                       "CPUs with AMX or AVX512-BF16, float32 elsewhere")
    temperature: float = Field(default=2.0, gt=0, description="multi-task: sample task i with p ∝ n_i^(1/T)")
    mixing: Literal["task", "mixed"] = Field(default="task", description="multi-task: one task per step, or "
                                             "every task in every step")
    key_weight: float = Field(default=1.0, gt=0, description="generation: loss weight of the answer's key tokens "
                              "(1 = every answer token alike)")
    dropout: bool = Field(default=True, description="False: no dropout in the base or LoRA, so runs with any "
                          "number of processes follow the same loss curve")
    checkpoint_every: int = Field(default=50, ge=0, description="write a resumable checkpoint every N steps (0: never)")


class AdapterRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="a PEFT LoRA adapter folder, or a full fine-tuned model folder of the same base")
    weight: float = Field(default=1.0, allow_inf_nan=False, description="wᵢ: how much of this task vector to take")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, v):
        # `adapters: [runs/a/adapter, runs/b/adapter]` means weight 1 each.
        return {"path": v} if isinstance(v, (str, Path)) else v


class MergeSpec(BaseModel):
    """A merge as users write it in `merge.yaml` (adapter paths relative to the file)."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="a name of taskloom.merge.methods.METHODS")
    base_model: str = Field(default="minilm", description="the base every adapter was trained on (name or folder)")
    adapters: list[AdapterRef] = Field(min_length=1, description="inputs: LoRA adapter or full model folders")
    parameters: dict[str, float | int | str | bool] = Field(default_factory=dict, description="the method's parameters")
    output: Literal["full", "adapter"] = Field(default="full", description="full: merged weights; adapter: merged LoRA")
    rank: int | None = Field(default=None, ge=1, description="output: adapter only: LoRA rank of the re-factored Δ "
                             "(default: the sum of the input ranks, which is exact for linear merges)")
    tasks: list[Path] = Field(default_factory=list, description="task.yaml files whose train rows probe candidates "
                              "(self_positioning, greedy_soup); relative to the file")
    root: Path = Field(default=Path("."), exclude=True)

    def adapter_paths(self) -> list[Path]:
        return [(self.root / a.path).resolve() for a in self.adapters]

    def task_paths(self) -> list[Path]:
        return [(self.root / t).resolve() for t in self.tasks]


def load_merge(path: str | Path) -> MergeSpec:
    path = Path(path)
    doc = read_yaml(path)
    try:
        return MergeSpec.model_validate({**doc, "root": path.parent.resolve()})
    except ValidationError as e:
        raise UserError(f"{path}: {_first_error(e)}") from None
