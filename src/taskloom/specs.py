"""Typed specs validated at the boundary: a task.yaml or merge.yaml either becomes one of these or a
UserError naming the file and field. Nothing past this module re-checks user input shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from taskloom.data.rows import MAX_BAD_SHARE
from taskloom.errors import UserError
from taskloom.tasks.types import TASK_TYPES


def _no_nul(v: Path) -> Path:
    """A path with a NUL byte names no file anywhere (and makes the OS calls raise): refuse it here."""
    if "\x00" in str(v):
        raise ValueError("a path cannot contain a NUL byte")
    return v


class DataFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: Path = Field(description="training rows, JSONL or Parquet, relative to the task file")
    eval: Path = Field(description="held-out rows for metrics, JSONL or Parquet, relative to the task file")
    validation: Path | None = Field(
        default=None,
        description="optional held-out rows for choosing options (never the eval rows you report), JSONL or Parquet",
    )

    _paths = field_validator("train", "eval", "validation")(_no_nul)


Severity = Literal["error", "warning", "off"]


class CheckPolicy(BaseModel):
    """How much one validation check matters: error fails validation, warning is reported, off skips it."""

    model_config = ConfigDict(extra="forbid")
    severity: Severity = Field(description="error | warning | off")


class SharePolicy(CheckPolicy):
    """A check with an allowance: up to `max_share` of a split's rows is a warning, more is `severity`."""

    max_share: float = Field(default=0.01, ge=0.0, le=1.0, description="share of a split's rows tolerated as a warning")


class MinRowsPolicy(CheckPolicy):
    severity: Severity = "error"
    train: int = Field(default=20, ge=1, description="fewest train rows (after bad rows are dropped)")
    eval: int = Field(default=10, ge=1, description="fewest eval rows (after bad rows are dropped)")
    validation: int = Field(default=10, ge=1, description="fewest validation rows, when there is a validation split")


class TextLengthsPolicy(CheckPolicy):
    severity: Severity = "error"
    max_chars: int = Field(default=10_000, ge=1, description="longest text; longer catches pasted files")


class ValidationPolicy(BaseModel):
    """The `validation:` block of task.yaml: each check's severity and threshold. Real corpora repeat short
    texts ("Yes.", "OK."), so repeats only warn; contradictions and unreadable rows fail beyond a small share."""

    model_config = ConfigDict(extra="forbid")
    duplicates: CheckPolicy = Field(
        default_factory=lambda: CheckPolicy(severity="warning"),
        description="the same row more than once in a split (same text and label; for pairs the same pair)",
    )
    conflicts: SharePolicy = Field(
        default_factory=lambda: SharePolicy(severity="error", max_share=0.01),
        description="the same text with different labels (pairs: different scores); up to max_share only warns",
    )
    leakage: CheckPolicy = Field(
        default_factory=lambda: CheckPolicy(severity="warning"),
        description="held-out rows (eval, validation) whose text also appears in an earlier split, named by file and row",
    )
    bad_rows: SharePolicy = Field(
        default_factory=lambda: SharePolicy(severity="error", max_share=MAX_BAD_SHARE),
        description="unreadable rows (malformed JSON, not UTF-8, too deep, wrong type, blank text, unknown "
        "label): up to max_share are dropped wherever the data is read, and counted; more is `severity`",
    )
    min_rows: MinRowsPolicy = Field(default_factory=MinRowsPolicy, description="enough rows to train and score")
    text_lengths: TextLengthsPolicy = Field(default_factory=TextLengthsPolicy, description="texts not too long")
    class_balance: CheckPolicy = Field(
        default_factory=lambda: CheckPolicy(severity="warning"),
        description="smallest class far below an even share (labelled tasks)",
    )


class TaskSpec(BaseModel):
    """A task as users write it in `task.yaml`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="task id (lowercase, - _ .)")
    type: str = Field(description="a name of taskloom.tasks.types.TASK_TYPES (built-in or a plugin's)")
    description: str = Field(min_length=1, description="what the task is, in words (drives meta-LoRA)")
    labels: list[str] | None = Field(default=None, description="the label set; classification only")
    data: DataFiles
    base_model: str = Field(default="minilm", description="a catalog name or a local model folder")
    validation: ValidationPolicy = Field(
        default_factory=ValidationPolicy, description="severity and threshold of each data check"
    )
    root: Path = Field(default=Path("."), exclude=True, description="folder of the task file")

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, v):
        if not (isinstance(v, str) and v in TASK_TYPES):
            names = [repr(n) for n in TASK_TYPES]
            raise ValueError(f"Input should be {', '.join(names[:-1])} or {names[-1]}")
        return v

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
        labelled = TASK_TYPES[self.type].labelled
        if labelled and not self.labels:
            raise ValueError(f"labels: required for a {self.type} task")
        if not labelled and self.labels:
            labelled_types = " and ".join(n for n, t in TASK_TYPES.items() if t.labelled)
            raise ValueError(f"labels: only {labelled_types} tasks have labels, not {self.type}")
        return self

    @property
    def train_path(self) -> Path:
        return self.split_path("train")

    @property
    def eval_path(self) -> Path:
        return self.split_path("eval")

    @property
    def splits(self) -> list[str]:
        """The task's splits in order: train, validation (when given), eval."""
        return ["train", *(["validation"] if self.data.validation is not None else []), "eval"]

    def split_path(self, split: str) -> Path:
        """The file of one of `splits`."""
        name = getattr(self.data, split) if split in self.splits else None
        if name is None:
            raise UserError(f"task {self.name}: no {split} split (task.yaml data: has {', '.join(self.splits)})")
        return (self.root / name).resolve()


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, or raise UserError naming the file."""
    path = Path(path)
    try:
        found, folder = path.exists(), path.is_dir()
    except OSError as e:  # e.g. a name too long for the file system
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not found:
        raise UserError(f"{path}: file not found")
    if folder:
        raise UserError(f"{path}: is a folder, expected a YAML file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:  # unreadable: permissions, a special file
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # a reader error spans lines
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: malformed YAML: nested too deeply") from None
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
    for split in spec.splits:
        try:
            p = spec.split_path(split)
            found = p.exists()
        except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system
            reason = getattr(e, "strerror", None) or str(e)
            raise UserError(f"{path}: data.{split}: not a usable file path ({reason})") from None
        if not found:
            raise UserError(f"{path}: data.{split}: file not found: {p}")
        if p.suffix.lower() not in (".jsonl", ".json", ".parquet"):
            raise UserError(f"{path}: data.{split}: expected a .jsonl or .parquet file, got {p.name}")
    if spec.data.validation is not None:
        for other in ("train", "eval"):
            if spec.split_path("validation").samefile(spec.split_path(other)):
                raise UserError(f"{path}: data.validation: the same file as data.{other}; it must be rows of neither")
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
    max_length: int | None = Field(
        default=None,
        ge=8,
        description="tokens per text in training, truncated beyond (encoder 64, causal LM 96; encoder eval uses 128)",
    )
    max_train_rows: int | None = Field(default=None, ge=1, description="subsample each task's training rows (seeded)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA and on CPUs with AMX or AVX512-BF16, float32 elsewhere"
    )
    sampling: Literal["random", "grouped"] = Field(
        default="random",
        description="random: each batch a random mix of lengths; grouped: batches of similar length (less padding)",
    )
    temperature: float = Field(default=2.0, gt=0, description="multi-task: sample task i with p ∝ n_i^(1/T)")
    mixing: Literal["task", "mixed"] = Field(
        default="task", description="multi-task: one task per step, or every task in every step"
    )
    key_weight: float = Field(
        default=1.0,
        gt=0,
        description="generation: loss weight of the answer's key tokens (1 = every answer token alike)",
    )
    dropout: bool = Field(
        default=True,
        description="False: no dropout in the base or LoRA, so runs with any "
        "number of processes follow the same loss curve",
    )
    checkpoint_every: int = Field(default=50, ge=0, description="write a resumable checkpoint every N steps (0: never)")


class AdapterRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="a PEFT LoRA adapter folder, or a full fine-tuned model folder of the same base")
    weight: float = Field(default=1.0, allow_inf_nan=False, description="wᵢ: how much of this task vector to take")

    _path = field_validator("path")(_no_nul)

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
    rank: int | None = Field(
        default=None,
        ge=1,
        description="output: adapter only: LoRA rank of the re-factored Δ "
        "(default: the sum of the input ranks, which is exact for linear merges)",
    )
    tasks: list[Path] = Field(
        default_factory=list,
        description="task.yaml files whose train rows probe candidates "
        "(self_positioning, greedy_soup); relative to the file",
    )
    root: Path = Field(default=Path("."), exclude=True)

    @field_validator("tasks")
    @classmethod
    def _tasks_no_nul(cls, v: list[Path]) -> list[Path]:
        return [_no_nul(p) for p in v]

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


# The pipeline stages' options. One model per stage: `taskloom.steps` takes it, the CLI and the demo
# build it, and each KFP component declares exactly its fields as flat parameters (KFP needs flat
# parameters; tests/components checks that names and defaults agree). KFP has no "unset", so 0 and ""
# mean "the default" where a field says so. Values are checked where they are used (TrainSpec, the gate,
# the detector), so a bad one is the same UserError from a pipeline step as from the CLI.


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileSpec(StepSpec):
    """Profile the training rows; with a Feast repository, store the profile and the drift reference."""

    feature_repo: str = Field(default="", description='Feast repository to write to ("": none)')
    adapter_id: str = Field(default="", description='id the drift reference is stored under ("": the task name)')


class TrainRunSpec(StepSpec):
    """One training run as a pipeline step sees it: the common TrainSpec options (0 or "": TrainSpec's
    default), where to record the metrics, and how many workers."""

    max_steps: int = Field(default=0, description="stop after this many optimizer steps (0: epochs decide)")
    epochs: int = Field(default=0, description="passes over the training rows (0: the default)")
    rank: int = Field(default=0, description="LoRA rank r (0: the default)")
    base: str = Field(default="", description="override the task's base model (\"\": the task's)")
    device: str = Field(default="auto", description="auto | cpu | cuda")
    seed: int = Field(default=0, description="seed of sampling, initialisation and dropout")
    sampling: str = Field(default="", description='random | grouped (batches of similar length) ("": random)')
    feature_repo: str = Field(default="", description='Feast repository for the adapter\'s metrics ("": none)')
    adapter_id: str = Field(default="", description='id of the adapter\'s metrics ("": the task name)')
    nodes: int = Field(default=1, description="nodes; more than one worker runs a Kubeflow Trainer TrainJob")
    gpus_per_node: int = Field(default=0, description="GPUs per node (0: one CPU worker)")
    run_id: str = Field(default="", description="the KFP run id, labels a TrainJob")

    def train_spec(self) -> TrainSpec:
        """The TrainSpec these options select (0 and "" left to TrainSpec's defaults)."""
        given = {k: getattr(self, k) for k in TRAIN_OPTIONS if k in type(self).model_fields}
        try:
            return TrainSpec(**{k: v for k, v in given.items() if v not in (0, "", None) or k == "seed"})
        except ValidationError as e:
            raise UserError(f"train {_first_error(e)}") from None


class JointTrainRunSpec(TrainRunSpec):
    """A training run of one adapter on several tasks."""

    temperature: float = Field(default=0.0, description="sample task i with p ∝ n_i^(1/T) (0: the default)")
    mixing: str = Field(default="", description='task | mixed ("": the default, task)')


# The TrainSpec options a pipeline can set.
TRAIN_OPTIONS = ("max_steps", "epochs", "rank", "base", "device", "seed", "sampling", "temperature", "mixing")


class MergeStepSpec(StepSpec):
    """Merge the adapters of several runs into one full model, weight 1 each."""

    method: str = Field(default="task_arithmetic", description="a merge method name")
    parameters: str = Field(default="", description='the method\'s parameters as a JSON object ("": none)')


class GateSpec(StepSpec):
    """Promote a merged model only if every task keeps `share` of its gain."""

    share: float = Field(default=0.9, description="share of each task's gain the merge must keep")
    feature_repo: str = Field(default="", description='Feast repository to record a promoted model in ("": none)')
    model_name: str = Field(default="taskloom", description="prefix of the model's content-addressed id")


class DeploySpec(StepSpec):
    """Publish a full model for Triton."""

    model_name: str = Field(default="taskloom", description="model name in the Triton repository")
    head_task: str = Field(default="", description='classification head to serve ("": the model\'s only head)')
    model_repository: str = Field(default="", description='repository Triton serves from ("": none, build only)')
    server_url: str = Field(default="", description='a running Triton to hot-load into ("": write files only)')
    model_deployment: str = Field(
        default="",
        description="a ModelDeployment to declare the new version in and wait for (its operator loads it; "
        '"": not through Kubernetes)',
    )
    namespace: str = Field(default="", description="the ModelDeployment's namespace (\"\": the pod's own)")
    timeout: float = Field(default=900.0, description="seconds to wait for the ModelDeployment to be Ready")


class GenerateSpec(StepSpec):
    """Generate an adapter from the task's description (and k examples) with a meta-LoRA generator."""

    generator: str = Field(default="", description="the generator folder (`taskloom metalora build`); required")
    shots: int = Field(default=0, ge=0, description="labelled train examples to condition on (0: description only)")
    seed: int = Field(default=0, description="seed of the example draw")
    min_gain: float = Field(
        default=0.0, description="ship the generated adapter only when tuned - base exceeds this on the eval split"
    )


class MonitorSpec(StepSpec):
    """The drift monitor's options: which windows it tests, with what, and when it raises an alarm."""

    model: str = Field(
        default="minilm", description="the served model folder, whose heads/<task>/ score windows (chi2, bbsd, pairs)"
    )
    method: str = Field(
        default="auto",
        description="drift test: auto (mmd+bbsd with held_out, else mmd) | mmd | ks_pca | ks_pca_bh | classifier | "
        "chi2 | bbsd | a pair such as mmd+bbsd",
    )
    held_out: dict[str, str] = Field(
        default_factory=dict, description="task -> rows it never trained on: the served head's reference answers"
    )
    tasks: list[str] = Field(default_factory=list, description="watch only these tasks (empty: every task in the log)")
    window: float = Field(default=300.0, description="tumbling window length in seconds")
    min_rows: int = Field(default=50, description="windows with fewer requests are not tested")
    alpha: float = Field(default=0.05, description="Benjamini-Hochberg level across the tasks of a window")
    consecutive: int = Field(default=2, description="significant windows in a row before an alarm")
    min_effect: float | None = Field(
        default=None, description="smallest effect size for an alarm (None: the detector's; 1 for a pair)"
    )
    cooldown: int = Field(default=3, description="windows without alarms for a task after its alarm")
    permutations: int = Field(default=200, description="permutations for the p-value")
    seed: int = Field(default=0, description="seed of the permutations")
    webhook: str | None = Field(default=None, description="send alarms as signed CloudEvents to this URL")
    secret_file: str | None = Field(default=None, description="webhook secret (None: env TASKLOOM_WEBHOOK_SECRET)")
    once: bool = Field(default=False, description="read the log once, test every window, exit")
    poll: float = Field(default=5.0, description="seconds between reads of the log when following it")
    lateness: float = Field(default=5.0, description="seconds a window stays open for late requests")
    max_polls: int | None = Field(default=None, description="stop after this many reads of the log (None: never)")
    timeout: float = Field(default=10.0, description="seconds per webhook call")


class DriftSpec(StepSpec):
    """A two-sample drift test between a reference and a current window."""

    field: str = Field(default="text", description="the text field of the rows")
    method: str = Field(default="mmd", description="drift test: mmd | ks_pca | ks_pca_bh | classifier | chi2 | bbsd")
    alpha: float = Field(default=0.05, description="significance level")
    permutations: int = Field(default=200, description="permutations for the p-value")
    seed: int = Field(default=0, description="seed of the permutations")
