"""The application layer: one function per stage of the loop, each taking its spec (taskloom.specs).

The KFP components in `components/`, the CLI and the demo all call these, so the path a cluster runs
is the path `make test` runs. A component body maps artifact paths and its flat parameters to one
call. Inputs are plain strings and folders (what a KFP artifact is on disk); results are small
JSON-able dicts whose numbers the components log as Metrics. Heavy libraries are imported inside the
functions.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from taskloom.artifacts import (
    publish_dir,
    sha256_file,
    staging_dir,
    write_bytes,
    write_json,
    write_text,
)
from taskloom.data.profile import profile_task
from taskloom.data.rows import load_rows, write_rows
from taskloom.data.validation import clean_splits, validate_task
from taskloom.errors import UserError
from taskloom.merge import merge_adapters, merge_from_config
from taskloom.merge.gate import gate
from taskloom.merge.provenance import trained_base
from taskloom.merge.report import write_merge_report
from taskloom.merge.weights import weight_files
from taskloom.monitor.check_report import write_check_report
from taskloom.monitor.drift import drift_files
from taskloom.objectstore import is_s3, push_dir, working_copy
from taskloom.serve.deploy import DeployError, deploy, publish_version
from taskloom.serve.repository import build_repository
from taskloom.specs import (
    TRAIN_OPTIONS,
    AdapterRef,
    DeploySpec,
    DriftSpec,
    GateSpec,
    GenerateSpec,
    MergeSpec,
    MergeStepSpec,
    ProfileSpec,
    TaskSpec,
    TrainRunSpec,
    TrainSpec,
    load_task,
)
from taskloom.store.feature_store import TaskStore
from taskloom.tasks.catalog import TASK_NAMES, export_task
from taskloom.train.device import check_required_cuda
from taskloom.train.evaluate import evaluate_task
from taskloom.train.lora import train_tasks
from taskloom.train.trainjob import train_on_trainer, use_trainer

TASK_FILE = "task.yaml"


def parse_task_list(tasks: str) -> list[str]:
    """`"rt-sentiment, chatterbot-qa"` → `["rt-sentiment", "chatterbot-qa"]`: each a built-in name or a task.yaml."""
    names = [t.strip() for t in str(tasks).split(",") if t.strip()]
    if not names:
        raise UserError("tasks: give at least one task (a built-in name or a task.yaml path), comma-separated")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"tasks: listed more than once: {', '.join(dupes)}")
    return names


def stage_task(task: str, out_dir: str | Path, max_rows: tuple[int | None, int | None] = (None, None)) -> dict:
    """A built-in task name or a task.yaml path → `out_dir/task.yaml` + its data, self-contained.

    Later steps read only this folder, so a run never depends on where the user's files live, and
    the user's files are copied, never modified. `max_rows`: (train, eval) subsets of a built-in task."""
    import yaml

    out_dir = Path(out_dir)
    if task in TASK_NAMES:
        path = Path(export_task(task, out_dir, *max_rows))
    else:
        src = Path(task).expanduser()
        if not src.is_file():
            raise UserError(f"task {task!r}: not a built-in task ({', '.join(TASK_NAMES)}) and no such task.yaml")
        spec = load_task(src)
        doc = spec.model_dump(mode="json")
        files = {}
        for split in spec.splits:
            p = spec.split_path(split)
            files[split] = f"{split}{p.suffix.lower()}"
            write_bytes(out_dir / files[split], p.read_bytes())
        doc["data"] = files
        base = spec.root / spec.base_model
        if base.is_dir():  # a local model folder named relative to the task file: keep it reachable
            doc["base_model"] = str(base.resolve())
        path = write_text(out_dir / TASK_FILE, yaml.safe_dump(doc, sort_keys=False))
    spec = load_task(path)
    return {"task": spec.name, "type": spec.type, "task_file": str(path)}


def dedup_task(task_file: str | Path, out_dir: str | Path) -> dict:
    """A clean copy of a task under `out_dir`: task.yaml and its splits without bad rows, repeated rows
    (the first kept), rows whose labels conflict, and held-out rows whose text is in an earlier split
    (taskloom.data.validation.clean_splits). Each file is written atomically, the splits before
    task.yaml; dedup.json lists every removed row and why. The inputs are only read."""
    import yaml

    spec = load_task(task_file)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    sources = {split: spec.split_path(split) for split in spec.splits}
    targets = {split: (out_dir / f"{split}{p.suffix.lower()}").resolve() for split, p in sources.items()}
    inputs = {Path(task_file).resolve(), *sources.values()}
    if (out_dir / TASK_FILE).resolve() in inputs or inputs & set(targets.values()):
        raise UserError(f"--out {out_dir}: would overwrite the task's own files; choose another folder")
    clean = clean_splits(spec)
    for split, kept in clean.kept.items():
        if not kept:
            raise UserError(f"{sources[split]}: no rows left after removing {len(clean.removed[split])}")
    for split, kept in clean.kept.items():
        write_rows(targets[split], [row for _n, row in kept])
    removed = {s: [{"row": n, "why": why, "detail": d} for n, why, d in rows] for s, rows in clean.removed.items()}
    write_json(
        out_dir / "dedup.json",
        {"task": spec.name, "files": {s: str(p) for s, p in sources.items()}, "removed": removed},
    )
    doc = spec.model_dump(mode="json")
    doc["data"] = {split: p.name for split, p in targets.items()}
    base = spec.root / spec.base_model
    if base.is_dir():  # a local model folder named relative to the task file: keep it reachable
        doc["base_model"] = str(base.resolve())
    path = write_text(out_dir / TASK_FILE, yaml.safe_dump(doc, sort_keys=False))
    return {
        "task_file": str(path),
        "rows": {s: len(k) for s, k in clean.kept.items()},
        "removed": {s: clean.removed[s] for s in clean.removed},
    }


def validate_step(task_dir: str | Path, report_dir: str | Path) -> dict:
    """Great Expectations checks of the staged task; the report is written first (validation.json, .txt
    and the page validation.html, whose path is `page`), then a failure stops the run."""
    spec = load_task(Path(task_dir) / TASK_FILE)
    report = validate_task(spec)
    report_dir = Path(report_dir)
    write_json(report_dir / "validation.json", report.to_dict())
    write_text(report_dir / "validation.txt", report.render())
    page = write_text(report_dir / "validation.html", report.to_html())
    errors = [c for c in report.checks if c.severity == "error" and not c.success]
    warnings = [c for c in report.checks if c.severity == "warning" and not c.success]
    if not report.success:
        failed = ", ".join(f"{c.split}/{c.name}" for c in errors) or "see validation.txt"
        raise UserError(f"task {spec.name}: data failed validation ({failed})")
    return {
        "task": spec.name,
        "checks": len(report.checks),
        "errors": len(errors),
        "warnings": len(warnings),
        "page": str(page),
    }


def profile_step(task_dir: str | Path, out_dir: str | Path, options: ProfileSpec | None = None) -> dict:
    """Profile the training rows (sizes, label entropy, embedding centroid and reference sample) and,
    given a Feast repository, write the profile and the drift reference there.

    The one rule for drift references: embeddings by the base MiniLM encoder (`profile_task`), the
    encoder `taskloom monitor` embeds served traffic with (the chart's `monitor.model`). Input drift is
    a property of the traffic, not of the model serving it: a fixed encoder keeps every reference and
    every window in one space, so a redeploy or a retrain never moves the yardstick, and a reference
    stays valid whichever adapter or merge is being served."""
    options = options or ProfileSpec()
    import numpy as np

    spec = load_task(Path(task_dir) / TASK_FILE)
    profile = profile_task(spec, load_rows(spec.train_path, spec.type, spec.labels, spec.validation.bad_rows))
    reference = np.asarray(profile["reference"], dtype=np.float32)
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    np.save(buf, reference)
    write_bytes(out_dir / "reference.npy", buf.getvalue())
    summary = {k: v for k, v in profile.items() if k != "reference"}
    write_json(out_dir / "profile.json", summary)
    if options.feature_repo:
        store = TaskStore(options.feature_repo)
        store.apply()
        store.write_task_profile(profile)
        store.write_reference(spec.name, options.adapter_id or spec.name, reference)
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def metric_values(result: dict, prefix: str = "") -> dict:
    """A step's numbers as KFP Metrics entries (`prefix` + key); flags, text and nested values left out."""
    return {f"{prefix}{k}": v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def train_step(
    task_dir: str | Path | list,
    out_dir: str | Path,
    run: TrainRunSpec | None = None,
    trainjob: dict | None = None,
    progress: bool = False,
) -> dict:
    """Train one LoRA adapter into `out_dir` (adapter/, metrics.json) with the options of `run`.
    `task_dir`: one staged task, or a list of them for one adapter on every task (multi-task:
    `temperature` and `mixing` of a JointTrainRunSpec). Given a Feast repository, the adapter's
    metrics are recorded there (see `train`).

    `nodes` x `gpus_per_node` workers: one trains here, in this process. More than one, in a cluster, run
    as a Kubeflow Trainer TrainJob (`torchrun` on every node, see taskloom.train.trainjob) that this step
    creates, waits for and reads back; `run_id` (the KFP run) labels it; `trainjob` holds overrides for
    `train_on_trainer` (api, namespace, shared_dir, timeout_s, poll_s). `progress`: a progress bar
    on stderr (the demo; a pipeline step's log stays plain).

    Besides the metrics: `page`, the run's page (report.html: loss curves, base vs tuned), and for one
    classification task `confusion`, the eval split's confusion matrix by the published adapter."""
    run = run or TrainRunSpec()
    try:
        check_required_cuda()  # a GPU step without CUDA stops here, before reading anything
    except UserError as e:  # in a pod: one line and exit 2 as the CLI gives, not the KFP executor's traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    task_dirs = [task_dir] if isinstance(task_dir, (str, Path)) else list(task_dir)
    spec = run.train_spec()
    tasks = [load_task(Path(d) / TASK_FILE) for d in task_dirs]
    if not use_trainer(run.nodes, run.gpus_per_node):
        metrics = train(
            tasks, out_dir, spec, feature_repo=run.feature_repo, adapter_id=run.adapter_id, progress=progress
        )
        return _run_views(metrics, out_dir)
    given = {
        k: getattr(run, k)
        for k in TRAIN_OPTIONS
        if k not in ("device", "seed") and getattr(run, k, None)  # both always given, below
    }
    args = [a for k, v in given.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    device = run.device if run.device != "auto" else ("cuda" if run.gpus_per_node else "cpu")
    args += ["--seed", str(run.seed), "--device", device]
    metrics = train_on_trainer(
        task_dirs,
        out_dir,
        task="+".join(t.name for t in tasks),
        nodes=run.nodes,
        gpus_per_node=run.gpus_per_node,
        train_args=args,
        run_id=run.run_id,
        **(trainjob or {}),
    )
    record_adapter(run.feature_repo, run.adapter_id, tasks, metrics)
    return _run_views(metrics, out_dir)


def _run_views(metrics: dict, out_dir: str | Path) -> dict:
    """`metrics` plus the run's page, what a person looks at (metrics.json is left as written; for one
    classification task it already holds the eval split's confusion matrix)."""
    out_dir = Path(out_dir)
    if (out_dir / "report.html").is_file():
        metrics["page"] = str(out_dir / "report.html")
    return metrics


def train(
    tasks: list[TaskSpec],
    out_dir: str | Path,
    spec: TrainSpec,
    feature_repo: str | Path = "",
    adapter_id: str = "",
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train one LoRA adapter on `tasks` in this process (what `taskloom train` and the demo run) and,
    given a Feast repository, record its metrics. Under torchrun only rank 0 gets the metrics back."""
    metrics = train_tasks(tasks, Path(out_dir), spec, resume=resume, progress=progress)
    if metrics:
        record_adapter(feature_repo, adapter_id, tasks, metrics)
    return metrics


def record_adapter(feature_repo: str | Path, adapter_id: str, tasks: list[TaskSpec], metrics: dict) -> None:
    """An adapter's metrics in Feast under `adapter_id` (default: the task names joined by "+"); one
    adapter on several tasks gets a row per task, `<adapter_id>/<task>`. No repository: nothing."""
    if not feature_repo:
        return
    name = "+".join(t.name for t in tasks)
    store = TaskStore(feature_repo)
    store.apply()
    if len(tasks) == 1:
        store.write_adapter_metrics(adapter_id or name, name, metrics)
    else:
        for task in tasks:
            store.write_adapter_metrics(f"{adapter_id or name}/{task.name}", task.name, metrics["tasks"][task.name])


def evaluate(
    task: TaskSpec, adapter: str | Path | None = None, model: str | Path | None = None, split: str = "eval"
) -> dict:
    """The task's metric on its eval (or validation) split for the base, a trained adapter or a full
    (merged) model (`taskloom eval`; the gate scores merged models the same way, on eval)."""
    if adapter is not None and model is not None:
        raise UserError("give an adapter or a model, not both")
    return evaluate_task(task, adapter=adapter, model=model, split=split)


def merge(config: str | Path, out_dir: str | Path) -> dict:
    """Merge as a merge.yaml says (`taskloom merge`): any method, weights and output kind; the report."""
    return merge_from_config(config, out_dir)


def merge_step(train_dirs: list[str], out_dir: str | Path, options: MergeStepSpec | None = None) -> dict:
    """Merge the adapters of several training runs (each `<dir>/adapter`) into one full model, weight 1 each;
    the report's page lands beside merge_report.json (merge_report.html, its path is `page`)."""
    options = options or MergeStepSpec()
    method, parameters = options.method, options.parameters
    from pydantic import ValidationError

    adapters = [Path(d) / "adapter" for d in train_dirs]
    for a in adapters:
        if not (a / "adapter_config.json").exists():
            raise UserError(f"{a}: not a trained adapter (no adapter_config.json)")
    try:
        params = json.loads(parameters) if str(parameters).strip() else {}
    except json.JSONDecodeError as e:
        raise UserError(f"merge parameters: not JSON ({e.msg}): {parameters!r}") from None
    if not isinstance(params, dict):
        raise UserError(f'merge parameters: expected a JSON object like {{"lambda": 1.0}}, got {parameters!r}')
    bases = {trained_base(a) for a in adapters}
    if len(bases) != 1:
        raise UserError(f"merge: the adapters have different base models: {', '.join(sorted(bases))}")
    try:
        spec = MergeSpec(
            method=method,
            base_model=bases.pop(),
            adapters=[AdapterRef(path=a, weight=1.0) for a in adapters],
            parameters=params,
            output="full",
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"merge {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    report = merge_adapters(spec, Path(out_dir))
    report["page"] = str(write_merge_report(Path(out_dir) / "merge_report.html", report))
    return report


def model_id(model_dir: str | Path, name: str = "taskloom") -> str:
    """`<name>-<12 hex>`: a content address of a (merged) model folder, from the digests its merge
    report records (else from its weight files), so the same weights always get the same id."""
    import hashlib

    model_dir = Path(model_dir)
    report = model_dir / "merge_report.json"
    files = {}
    if report.exists():
        try:
            files = dict(json.loads(report.read_text()).get("files") or {})
        except (ValueError, TypeError, AttributeError):
            files = {}
    if not files:
        found = weight_files(model_dir)
        if not found:
            raise UserError(f"{model_dir}: no merge_report.json and no *.safetensors weights to name the model by")
        files = {f.name: sha256_file(f) for f in found}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return f"{name}-{digest[:12]}"


def _gate_message(report: dict, model: str) -> str:
    """One line: what was promoted, or which task failed and by how much (the previous model stays)."""
    if report["promote"]:
        return f"promoted {model}: every task kept at least {report['share']:.0%} of its gain"
    parts = []
    for task in report["failed"]:
        row = report["tasks"][task]
        if row["kept_share"] is not None:
            parts.append(
                f"{task} kept {row['kept_share']:.0%} of its gain (needs {report['share']:.0%}; "
                f"base {row['base']:.4f}, single {row['single']:.4f}, merged {row['merged']:.4f})"
            )
        else:
            parts.append(
                f"{task} scored {row['merged']:.4f} merged vs {row['single']:.4f} single "
                f"(no gain to keep; tolerance {report['tolerance']})"
            )
    return f"kept the previous model, {model} not promoted: " + "; ".join(parts)


def gate_step(
    task_dirs: list[str],
    train_dirs: list[str],
    model_dir: str | Path,
    out_dir: str | Path,
    options: GateSpec | None = None,
) -> dict:
    """Evaluate the merged model on every task and promote it only if each task keeps `share` of its gain.

    Promoted, with a Feast repository given: each task's row (base, single-adapter `tuned`, `merged`)
    is written to the adapter_metrics view under `<model id>/<task>` (the view holds one task per id).
    Not promoted: nothing is recorded, `message` names the failing tasks, and the pipeline's deploy
    step does not run, so the served model stays the previous one. The report lands in out_dir/gate.json."""
    options = options or GateSpec()
    tasks = {}
    for d in task_dirs:
        spec = load_task(Path(d) / TASK_FILE)
        tasks[spec.name] = spec
    base, single, merged, metric = {}, {}, {}, {}
    runs = []
    for d in train_dirs:
        f = Path(d) / "metrics.json"
        if not f.exists():
            raise UserError(f"{f}: file not found (not a training run)")
        m = json.loads(f.read_text())
        for k in ("task", "metric", "base", "tuned"):
            if k not in m:
                raise UserError(f"{f}: missing field '{k}'")
        name = m["task"]
        if name not in tasks:
            raise UserError(f"{f}: task {name!r} is not among the staged tasks ({', '.join(tasks)})")
        base[name], single[name], metric[name] = float(m["base"]), float(m["tuned"]), str(m["metric"])
        runs.append(name)
    missing = sorted(set(tasks) - set(base))
    if missing:
        raise UserError(f"gate: no training run for task(s) {', '.join(missing)}")
    share, feature_repo = options.share, options.feature_repo
    model = model_id(model_dir, options.model_name or "taskloom")
    for name in runs:
        merged[name] = float(evaluate(tasks[name], model=Path(model_dir))["value"])
    report = gate(base, single, merged, share=share)
    report["model_id"] = model
    report["message"] = _gate_message(report, model)
    report["recorded"] = []
    if report["promote"] and feature_repo:
        store = TaskStore(feature_repo)
        store.apply()
        for name, row in report["tasks"].items():
            adapter_id = f"{model}/{name}"
            store.write_adapter_metrics(
                adapter_id,
                name,
                {"metric": metric[name], "base": row["base"], "tuned": row["single"], "merged": row["merged"]},
            )
            report["recorded"].append(adapter_id)
    write_json(Path(out_dir) / "gate.json", report)
    return report


def _only_head(model_dir: Path) -> str | None:
    heads = sorted(p.name for p in (model_dir / "heads").glob("*") if p.is_dir())
    return heads[0] if len(heads) == 1 else None


def deploy_step(model_dir: str | Path, repo_dir: str | Path, options: DeploySpec | None = None) -> dict:
    """Publish a full model for Triton. The classifier head served is `head_task`, or the model's only
    head when it carries exactly one.

    With `server_url` (a running Triton, explicit model control) the model goes out through
    `taskloom.serve.deploy.deploy` as the next version in `model_repository` (else `repo_dir`): loaded as a
    canary, smoke-tested, switched to, rolled back on failure; clients are never cut off, and a refused
    version raises DeployError while the previous one keeps serving. `repo_dir` then holds deploy.json.
    Without it (local runs) the repository is built into `repo_dir` and, given `model_repository`, each
    model folder is swapped in whole, so a server picking it up never sees half a model.
    With `model_deployment` (in a cluster) the model is written as the next version of `model_repository`
    and declared in that ModelDeployment, whose operator loads it on every pod; see `_declare_step`."""
    options = options or DeploySpec()
    name, head_task, publish_to, server_url = (
        options.model_name,
        options.head_task,
        options.model_repository,
        options.server_url,
    )
    model_dir, repo_dir = Path(model_dir), Path(repo_dir)
    head = head_task or _only_head(model_dir)
    if options.model_deployment:
        return _declare_step(model_dir, repo_dir, head, options)
    if server_url:
        # an s3:// repository goes through a local working copy, pushed before each load (taskloom.objectstore)
        served, publish = working_copy(publish_to) if publish_to else (repo_dir, None)
        report = deploy(served, server_url, model_dir, name=name, head_task=head or None, publish=publish)
        if served != repo_dir:
            write_json(repo_dir / "deploy.json", report)
        return {
            "model": name,
            "head_task": head or "",
            "repository": publish_to or str(served),
            "published": [f"{publish_to or served}/{name}"],
            "version": report["version"],
            "deploy": report,
        }
    built = build_repository(model_dir, repo_dir, name=name, head_task=head)
    published = []
    if publish_to and is_s3(publish_to):
        push_dir(repo_dir, publish_to)  # the config.pbtxt files last: a reader never sees half a model
        published = [f"{publish_to}/{child.name}" for child in sorted(repo_dir.iterdir()) if child.is_dir()]
    elif publish_to:
        import shutil

        for child in sorted(p for p in repo_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            final = Path(publish_to) / child.name
            tmp = staging_dir(final)
            shutil.copytree(child, tmp, dirs_exist_ok=True)
            publish_dir(tmp, final)
            published.append(str(final))
    return {"model": name, "head_task": head or "", "repository": str(built), "published": published}


def generate_step(task_dir: str | Path, out_dir: str | Path, options: GenerateSpec) -> dict:
    """Generate an adapter for one staged task into `out_dir` (adapter/, metrics.json, as `train` lays
    them out); `beats_base`: the generated adapter scores above the base on the task's eval split by more
    than `min_gain`, which is what lets generate_deploy ship it instead of training one."""
    from taskloom.metalora.generate import generate

    if not options.generator:
        raise UserError("generator: the folder of a meta-LoRA generator is required")
    task = load_task(Path(task_dir) / TASK_FILE)
    metrics = generate(task, options.generator, out_dir, shots=options.shots, seed=options.seed)
    metrics["beats_base"] = bool(metrics["tuned"] - metrics["base"] > options.min_gain)
    return metrics


def deploy_adapter_step(adapter_dir: str | Path, repo_dir: str | Path, options: DeploySpec | None = None) -> dict:
    """Add an adapter (trained or generated) to the served model `model_name`, the way `deploy_step`
    ships a full model: declared in a ModelDeployment, hot-loaded into a running Triton, or (neither)
    written as the next version of `model_repository` with config.pbtxt naming it."""
    from taskloom.serve.adapters import check_adapter

    options = options or DeploySpec()
    adapter_dir, repo_dir = Path(adapter_dir), Path(repo_dir)
    adapter = adapter_dir / "adapter" if (adapter_dir / "adapter").is_dir() else adapter_dir
    adapter_name = check_adapter(adapter)["name"]  # checked before anything is written or declared
    repo, name = options.model_repository, options.model_name
    if options.model_deployment:
        from taskloom.operator.declare import Declaration
        from taskloom.operator.declare import deploy as declare

        _one_target(options)
        report = declare(
            Declaration(model=name, repository=repo, add=(adapter,)),
            options.namespace or None,
            options.model_deployment,
            timeout=options.timeout,
        )
        version = report["version"]
    elif options.server_url:
        served, publish = working_copy(repo) if repo else (repo_dir, None)
        report = deploy(served, options.server_url, adapter, name=name, publish=publish)
        version = report["version"]
    else:
        if not repo:
            raise UserError("model_repository: needed to add an adapter (the repository of the served model)")
        report = publish_version(repo, adapter, name=name, serve=True)
        version = report["version"]
    write_json(repo_dir / "deploy.json", report)
    return {"model": name, "adapter": adapter_name, "version": version, "deploy": report}


def _one_target(options: DeploySpec) -> None:
    if options.model_deployment and options.server_url:
        raise UserError("model_deployment and server_url: give one (the operator talks to Triton itself)")


def _declare_step(model_dir: Path, repo_dir: Path, head: str | None, options: DeploySpec) -> dict:
    """Deploy by declaring: the model becomes the next version (a candidate nobody serves yet), the
    ModelDeployment names that version and no adapters (a new base serves none of the old ones), and the
    step waits until the operator reports every pod serving it; Degraded or the timeout: DeployError."""
    from taskloom.operator.declare import Declaration
    from taskloom.operator.declare import deploy as declare

    repo = options.model_repository
    _one_target(options)
    if not repo or is_s3(repo) or not Path(repo).is_absolute():
        raise UserError(f"model_repository {repo!r}: with model_deployment, the absolute path the pods mount")
    published = publish_version(repo, model_dir, name=options.model_name, head_task=head or None)
    declared = Declaration(model=options.model_name, repository=repo, version=published["version"], keep_adapters=False)
    try:
        report = declare(declared, options.namespace or None, options.model_deployment, timeout=options.timeout)
    except UserError as e:
        raise DeployError(f"version {published['version']} of {options.model_name}: {e}", published) from None
    write_json(repo_dir / "deploy.json", report)
    return {
        "model": options.model_name,
        "head_task": head or "",
        "repository": repo,
        "published": [f"{repo}/{options.model_name}/{published['version']}"],
        "version": published["version"],
        "deploy": report,
    }


def drift_step(
    reference: str | Path, current: str | Path, out_dir: str | Path, options: DriftSpec | None = None
) -> dict:
    """Two-sample drift test between a reference and a current window; the result is written as drift.json
    and as a page, drift.html (its path is `page`)."""
    options = options or DriftSpec()
    result = drift_files(Path(reference), Path(current), **options.model_dump())
    write_json(Path(out_dir) / "drift.json", result)
    result["page"] = str(write_check_report(Path(out_dir) / "drift.html", result))
    return result
