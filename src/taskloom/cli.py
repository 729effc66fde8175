"""The `taskloom` command. Thin: parse options, call one library function, print.

Every mistake a user can make surfaces as `UserError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import errno
import http.client
import json
import sys
from pathlib import Path

import typer

from taskloom.environment import apply_local_env
from taskloom.errors import UserError

# Each command imports the part of taskloom it drives inside its body: importing all of them here made
# `import taskloom.cli` take 0.40 s instead of 0.07 s and `taskloom --help` 0.50 s instead of 0.18 s
# (measured with -X importtime on a quiet 2-core machine: taskloom.steps alone pulls in merging, numpy,
# the plugin registries and rich). Every other module imports taskloom's own modules at the top.

# Nothing downloads at run time: set before any Hugging Face library is imported.
apply_local_env()

app = typer.Typer(
    help="taskloom: validate a task's data, train or merge LoRA adapters, serve on Triton, watch for drift, retrain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_app = typer.Typer(help="Built-in tasks from the offline corpora.", no_args_is_help=True)
pipeline_app = typer.Typer(
    help="Kubeflow Pipelines: run locally, compile to YAML, submit to a cluster.", no_args_is_help=True
)
app.add_typer(tasks_app, name="tasks")
app.add_typer(pipeline_app, name="pipeline")
events_app = typer.Typer(help="Signed drift events (CloudEvents with an HMAC signature).", no_args_is_help=True)
app.add_typer(events_app, name="events")
repo_app = typer.Typer(
    help="Model repositories in S3-compatible storage: push, pull, prune old versions.", no_args_is_help=True
)
app.add_typer(repo_app, name="repo")
metalora_app = typer.Typer(
    help="Meta-LoRA: a bank of trained adapters and the generator that writes new ones from a description.",
    no_args_is_help=True,
)
app.add_typer(metalora_app, name="metalora")


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@tasks_app.command("list")
def tasks_list() -> None:
    """List the built-in tasks (name, type, rows, description)."""
    from taskloom.tasks.catalog import print_catalog

    print_catalog()


@tasks_app.command("export")
def tasks_export(
    name: str = typer.Argument(..., help="a built-in task name (see `taskloom tasks list`)"),
    out: Path = typer.Option(..., "--out", help="folder to write task.yaml and its data into"),
) -> None:
    """Write a built-in task as `task.yaml` + train/eval JSONL, ready for `validate` and `train`."""
    from taskloom.tasks.catalog import export_task

    path = export_task(name, out)
    typer.echo(str(path))


@tasks_app.command("dedup")
def tasks_dedup(
    task: Path = typer.Argument(..., help="the task.yaml to clean"),
    out: Path = typer.Option(..., "--out", help="folder for the clean task.yaml, its splits and dedup.json"),
) -> None:
    """Write a clean copy of a task: without repeated rows (the first kept), rows with conflicting labels,
    held-out rows (validation, eval) whose text is in an earlier split, and bad rows. Prints what it
    removed; the inputs are never modified.

    A verb of its own rather than a `validate --dedup` flag: validate only reads and judges (its output
    folder holds reports), while this writes a new task that is then validated and trained on."""
    from taskloom import steps

    result = steps.dedup_task(task, out)
    for split, removed in result["removed"].items():
        kinds: dict[str, list[int]] = {}
        for n, why, _detail in removed:
            kinds.setdefault(why, []).append(n)
        for why, rows in kinds.items():
            shown = ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
            typer.echo(f"{split}: removed {len(rows)} row(s), {why}: rows {shown}")
        if not removed:
            typer.echo(f"{split}: removed nothing")
    kept = ", ".join(f"{s} {n} rows" for s, n in result["rows"].items())
    typer.echo(f"wrote {result['task_file']} ({kept}); every removed row and why: {Path(out) / 'dedup.json'}")


@app.command()
def validate(
    task: Path = typer.Argument(..., help="the task.yaml to check"),
    out: Path | None = typer.Option(None, "--out", help="also write validation.json and validation.html here"),
) -> None:
    """Check a task's data with Great Expectations. Exit 0 when valid, 2 with a report when not."""
    from taskloom.artifacts import write_json, write_text
    from taskloom.data.validation import validate_task
    from taskloom.models.registry import resolve_base
    from taskloom.specs import load_task

    # A failed validation also prints one `error:` line on stderr naming the first failing check.
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    spec = load_task(task)
    try:
        resolve_base(spec.base_model)
    except UserError as e:
        raise UserError(f"{task}: base_model: {e}") from None
    report = validate_task(spec)
    typer.echo(report.render())
    if out is not None:
        write_json(out / "validation.json", report.to_dict())
        write_text(out / "validation.html", report.to_html())
    if not report.success:
        first = report.failures[0]
        more = f" (+{len(report.failures) - 1} more failed checks)" if len(report.failures) > 1 else ""
        typer.echo(f"error: {task}: validation failed: {first.name} ({first.split}): {first.detail}{more}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(0)


@app.command()
def train(
    tasks: list[Path] = typer.Argument(..., help="the task.yaml to train on; several train ONE adapter on all of them"),
    out: Path = typer.Option(..., "--out", help="run folder: adapter/, metrics.json, steps.jsonl"),
    base: str | None = typer.Option(None, "--base", help="base model: catalog name (minilm, smollm2) or local folder"),
    epochs: int | None = typer.Option(None, "--epochs", help="passes over the training data"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="stop after this many optimizer steps"),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank r"),
    alpha: float | None = typer.Option(None, "--alpha", help="LoRA alpha (scaling = alpha / r)"),
    lr: float | None = typer.Option(None, "--lr", help="learning rate (default: encoder 1e-3, causal LM 2e-3)"),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="rows per optimizer step (global, under torchrun)"
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", help="tokens per text in training (encoder 64, causal LM 96)"
    ),
    max_train_rows: int | None = typer.Option(
        None, "--max-train-rows", help="train on a seeded sample of this many rows per task"
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="auto | fp32 | bf16 (auto: bf16 autocast on CUDA and on CPUs with AMX/AVX512-BF16, else fp32)",
    ),
    temperature: float | None = typer.Option(
        None, "--temperature", help="several tasks: sample task i with p ∝ n_i^(1/T) (default 2)"
    ),
    mixing: str | None = typer.Option(
        None, "--mixing", help="several tasks: task (one task per step, default) | mixed"
    ),
    sampling: str | None = typer.Option(
        None,
        "--sampling",
        help="random (default: each batch a random mix of lengths) | grouped (batches of similar length, "
        "as the HF Trainer's group_by_length: less padding, fewer passes per step)",
    ),
    key_weight: float | None = typer.Option(
        None, "--key-weight", help="generation: loss weight of the answer's key tokens (default 1: off)"
    ),
    checkpoint_every: int | None = typer.Option(
        None, "--checkpoint-every", help="checkpoint every N steps (default 50; 0: never)"
    ),
    dropout: bool = typer.Option(
        True,
        "--dropout/--no-dropout",
        help="--no-dropout: none in the base or LoRA (runs on any number of processes then follow the same loss curve)",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue an interrupted run from its newest checkpoint in --out"
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (auto: cuda when a GPU is visible)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fine-tune a LoRA adapter and measure base vs tuned on each eval split.

    Writes DIR/adapter/ (PEFT LoRA + model card; classification heads as head.safetensors + head.json,
    or heads/<task>/ for several tasks), DIR/steps.jsonl (one line per step: loss, lr, tokens/s) and
    DIR/metrics.json (base and tuned on the eval split). Checkpoints land in DIR/checkpoints/ while the
    run is going; after a crash or kill, the same command with --resume carries on. Data parallel:
    `torchrun --nproc-per-node N -m taskloom train ...` (rank 0 writes)."""
    from pydantic import ValidationError

    from taskloom import steps
    from taskloom.specs import TrainSpec, load_task

    given = dict(
        base=base,
        epochs=epochs,
        max_steps=max_steps,
        rank=rank,
        alpha=alpha,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        max_train_rows=max_train_rows,
        precision=precision,
        temperature=temperature,
        mixing=mixing,
        sampling=sampling,
        key_weight=key_weight,
        checkpoint_every=checkpoint_every,
    )
    try:
        spec = TrainSpec.model_validate(
            {"device": device, "seed": seed, "dropout": dropout, **{k: v for k, v in given.items() if v is not None}}
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    metrics = steps.train([load_task(t) for t in tasks], out, spec, resume=resume)
    if metrics:  # under torchrun, rank 0 alone reports
        _print_json(metrics)


@app.command("eval")
def eval_(
    task: Path = typer.Argument(..., help="the task.yaml whose eval split to score"),
    adapter: Path | None = typer.Option(None, "--adapter", help="a trained adapter folder"),
    model: Path | None = typer.Option(None, "--model", help="a full (e.g. merged) model folder"),
    split: str = typer.Option(
        "eval",
        "--split",
        help="eval (the split you report) or validation (the task's data.validation: compare options "
        "there, so the eval split never picks them)",
    ),
) -> None:
    """Print the task metric (accuracy, Pearson, MRR) as JSON for the base, an adapter or a model."""
    from taskloom import steps
    from taskloom.specs import load_task

    if adapter is not None and model is not None:
        raise UserError("give --adapter or --model, not both")
    if split not in ("eval", "validation"):
        raise UserError(f"--split {split!r}: use eval or validation")
    _print_json(steps.evaluate(load_task(task), adapter=adapter, model=model, split=split))


@app.command()
def generate(
    task: Path = typer.Argument(..., help="the task.yaml to write an adapter for (its description drives it)"),
    generator: Path = typer.Option(
        ..., "--generator", help="a generator folder (taskloom metalora train-generator --out DIR)"
    ),
    out: Path = typer.Option(..., "--out", help="run folder: adapter/ and metrics.json, as `taskloom train` writes"),
    shots: int = typer.Option(
        0, "--shots", help="condition on K train rows too; classification heads then fit on them (0: description only)"
    ),
    seed: int = typer.Option(0, "--seed", help="which train rows are the K examples"),
) -> None:
    """Write a LoRA adapter for TASK without training: the meta-LoRA generator maps the description's
    embedding (and K examples' when --shots is given) to LoRA weights in milliseconds.

    DIR/adapter/ is a PEFT adapter with its head (classification: label prototypes, or a probe on the K
    examples) that deploy, merge, serve and eval take like a trained one; DIR/metrics.json holds base
    and tuned on the eval split and generation_ms. A generator folder that is missing, corrupt, built
    for another base or another task type, or --shots above the train rows: one line, exit 2."""
    from taskloom.metalora.generate import generate as run_generate
    from taskloom.specs import load_task

    _print_json(run_generate(load_task(task), generator, out, shots=shots, seed=seed))


@app.command()
def merge(
    config: Path = typer.Argument(..., help="merge.yaml: method, base_model, adapters, parameters, output"),
    out: Path = typer.Option(..., "--out", help="folder for the merged model and merge_report.json"),
) -> None:
    """Merge task adapters into one model (exact LoRA algebra, one tensor at a time).

    Methods: linear, task_arithmetic, ties, dare_linear, dare_ties, magnitude_prune, delta_guided,
    greedy_soup, self_positioning (the last two probe the `tasks:` listed in merge.yaml).
    Prints a summary; per-layer norms and digests are in DIR/merge_report.json."""
    from taskloom import steps

    report = steps.merge(config, out)
    summary: tuple[str, ...] = (
        "method",
        "parameters",
        "output",
        "tasks",
        "heads",
        "layers_merged",
        "delta_norm",
        "refactor",
        "files",
        "seconds",
    )
    if "search" in report:
        report["weights"] = report["search"]["weights"]
        summary += ("weights",)
    _print_json({"out": str(out), **{k: report[k] for k in summary if k in report}})


@app.command()
def serve(
    path: str = typer.Argument(
        ..., help="a Triton model repository (a folder or s3://bucket/prefix, see `taskloom repo`) or a model folder"
    ),
    http_port: int = typer.Option(8000, "--http-port"),
    grpc_port: int = typer.Option(8001, "--grpc-port"),
    metrics_port: int = typer.Option(8002, "--metrics-port"),
    head: str | None = typer.Option(
        None, "--head", help="serve the classification head MODEL_DIR/heads/TASK (LABEL, PROBS)"
    ),
    log_dir: Path | None = typer.Option(
        None, "--log-dir", help="keep tritonserver.log here (default: a temp workspace)"
    ),
    timeout: float = typer.Option(180, "--timeout", help="seconds to wait for the server to be ready"),
    admin_key_file: Path | None = typer.Option(
        None,
        "--admin-key-file",
        help="restrict model control to requests "
        "carrying this key (default: env TASKLOOM_TRITON_ADMIN_KEY; unset: open)",
    ),
) -> None:
    """Run the bundled Triton server on loopback in the foreground (Ctrl-C stops it cleanly).

    Explicit model control (`taskloom deploy` swaps versions, no restart); metrics on --metrics-port.
    With an admin key, load/unload/repository index need the header taskloom-admin-key; inference does not."""
    from taskloom.serve.admin import load_admin_key
    from taskloom.serve.launcher import serve_foreground

    raise typer.Exit(
        serve_foreground(
            path,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            head=head,
            log_dir=log_dir,
            timeout=timeout,
            admin_key=load_admin_key(admin_key_file),
        )
    )


@app.command()
def drift(
    reference: Path = typer.Option(..., "--reference", help="reference rows (JSONL/Parquet) or embeddings (.npy)"),
    current: Path = typer.Option(..., "--current", help="current rows (JSONL/Parquet) or embeddings (.npy)"),
    field: str = typer.Option("text", "--field", help="the text field of the rows"),
    method: str = typer.Option(
        "mmd",
        "--method",
        help="drift test: mmd | ks_pca | ks_pca_bh | classifier | chi2 (labels: --field label or .npy) | bbsd "
        "(the served head's class probabilities, .npy)",
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level"),
    permutations: int = typer.Option(200, "--permutations", help="permutations for the p-value"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Two-sample drift test on embeddings; prints statistic, calibrated p-value and the verdict."""
    from taskloom.monitor.drift import drift_files
    from taskloom.specs import DriftSpec

    spec = DriftSpec(field=field, method=method, alpha=alpha, permutations=permutations, seed=seed)
    _print_json(drift_files(reference, current, **spec.model_dump()))


@pipeline_app.command("run")
def pipeline_run(
    name: str = typer.Argument(..., help="train_merge_deploy | drift_retrain | train_joint"),
    param: list[str] = typer.Option([], "--param", "-p", help="pipeline parameter as KEY=VALUE (repeatable)"),
    root: Path = typer.Option(Path("runs/kfp"), "--root", help="local pipeline root for artifacts"),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="write the steps' logs to <run folder>/run.log, not stdout"
    ),
) -> None:
    """Run a pipeline locally with kfp.local (SubprocessRunner, no venv per step). Exit 2 when a step fails."""
    from taskloom.kfp import run_local

    result = run_local(name, _params(param), root, quiet=quiet)
    _print_json(result)
    if result["state"] != "SUCCEEDED":
        raise UserError(f"pipeline {name}: run {result['run_id']} failed: {result.get('error', result['state'])}")


@pipeline_app.command("compile")
def pipeline_compile(
    name: str = typer.Argument(..., help="train_merge_deploy | drift_retrain | train_joint"),
    out: Path = typer.Option(..., "--out", help="YAML file to write"),
) -> None:
    """Compile a pipeline to KFP v2 YAML for a cluster."""
    from taskloom.kfp import compile_pipeline

    typer.echo(str(compile_pipeline(name, out)))


_KFP_NAMESPACE_HELP = "multi-user KFP: the profile namespace (pipeline, experiment and run live there)"
_KFP_TOKEN_HELP = "file holding the bearer token, or 'Bearer <token>' (the chart's kfp.tokenSecret format)"
_KFP_VERSION_HELP = "pipeline version name (default: taskloom's version and the compiled YAML's digest)"


@pipeline_app.command("submit")
def pipeline_submit(
    name: str = typer.Argument(..., help="train_merge_deploy | drift_retrain | train_joint"),
    host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888"),
    param: list[str] = typer.Option([], "--param", "-p", help="pipeline parameter as KEY=VALUE (repeatable)"),
    namespace: str | None = typer.Option(None, "--namespace", help=_KFP_NAMESPACE_HELP),
    token_file: str | None = typer.Option(None, "--token-file", help=_KFP_TOKEN_HELP),
    experiment: str = typer.Option("taskloom", "--experiment", help="experiment the run goes to (created if missing)"),
    version: str | None = typer.Option(None, "--version", help=_KFP_VERSION_HELP),
) -> None:
    """Start a run on Kubeflow Pipelines (v2beta1 REST API): upload the pipeline and a version unless they
    exist, then create a run of that version."""
    from taskloom.kfp import submit

    _print_json(submit(name, host, _params(param), experiment, namespace, token_file, version))


@pipeline_app.command("register")
def pipeline_register(
    name: str = typer.Argument(..., help="train_merge_deploy | drift_retrain | train_joint"),
    host: str = typer.Option(..., "--host", help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888"),
    namespace: str | None = typer.Option(None, "--namespace", help=_KFP_NAMESPACE_HELP),
    token_file: str | None = typer.Option(None, "--token-file", help=_KFP_TOKEN_HELP),
    experiment: str = typer.Option("taskloom", "--experiment", help="experiment the runs go to (created if missing)"),
    version: str | None = typer.Option(None, "--version", help=_KFP_VERSION_HELP),
    output: str = typer.Option("json", "--output", "-o", help="json | helm (kfp.pipelineId=...,... for helm --set)"),
) -> None:
    """Upload a pipeline to Kubeflow Pipelines once (reused when it exists) and print the pipeline, version
    and experiment ids the chart's Sensor needs."""
    from taskloom.kfp import helm_sets, register

    if output not in ("json", "helm"):
        raise UserError(f"--output {output!r}: use json or helm")
    ids = register(name, host, namespace, token_file, version, experiment)
    if output == "helm":
        typer.echo(helm_sets(ids))
    else:
        _print_json(ids)


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


@app.command()
def monitor(
    log: Path = typer.Option(..., "--log", help="request log (JSONL {ts, task, text}, see taskloom.requestlog)"),
    feature_repo: Path = typer.Option(
        ..., "--feature-repo", help="Feast repository holding each task's drift reference"
    ),
    out: Path = typer.Option(..., "--out", help="folder for windows.jsonl, alarms.jsonl and drift_report.html"),
    model: str = typer.Option(
        "minilm", "--model", help="the served model folder: its heads/<task>/ score windows (chi2, bbsd, mmd+bbsd)"
    ),
    method: str = typer.Option(
        "auto",
        "--method",
        help="drift test: auto (mmd+bbsd with --held-out, else mmd) | mmd | ks_pca | ks_pca_bh | classifier | chi2 | "
        "bbsd | a pair such as mmd+bbsd (what comes in and what the served head answers, Bonferroni)",
    ),
    held_out: list[str] = typer.Option(
        [],
        "--held-out",
        help="TASK=FILE: rows of the task the served model never trained on (e.g. its eval.jsonl); the served "
        "head's answers on them are the reference for bbsd, chi2 and mmd+bbsd (repeatable; then only these "
        "tasks are watched)",
    ),
    task: list[str] = typer.Option(
        [], "--task", help="watch only this task (repeatable; default: every task in the log)"
    ),
    window: float = typer.Option(300.0, "--window", help="tumbling window length in seconds"),
    min_rows: int = typer.Option(50, "--min-rows", help="windows with fewer requests are not tested"),
    alpha: float = typer.Option(0.05, "--alpha", help="Benjamini-Hochberg level across the tasks of a window"),
    consecutive: int = typer.Option(2, "--consecutive", help="significant windows in a row before an alarm"),
    min_effect: float | None = typer.Option(
        None,
        "--min-effect",
        help="smallest effect size for an alarm (default: the detector's; a pair's effect is in units of its parts' "
        "own minimum, default 1)",
    ),
    cooldown: int = typer.Option(3, "--cooldown", help="windows without alarms for a task after its alarm"),
    permutations: int = typer.Option(200, "--permutations", help="permutations for the p-value"),
    webhook: str | None = typer.Option(None, "--webhook", help="send alarms as signed CloudEvents to this URL"),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", help="webhook secret (default: env TASKLOOM_WEBHOOK_SECRET)"
    ),
    once: bool = typer.Option(False, "--once", help="read the log once, test every window, exit (batch, tests)"),
    poll: float = typer.Option(5.0, "--poll", help="seconds between reads of the log when following it"),
    seed: int = typer.Option(0, "--seed"),
    metrics_port: int = typer.Option(0, "--metrics-port", help="serve Prometheus metrics on this port (0: off)"),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="its address (0.0.0.0 in a pod)"),
) -> None:
    """Watch served traffic for drift: tumbling windows per task vs the task's reference in Feast; alarm → retrain."""
    from taskloom.metrics import MonitorMetrics
    from taskloom.monitor.service import run_monitor
    from taskloom.specs import MonitorSpec

    pairs = {}
    for item in held_out:
        name, sep, path = item.partition("=")
        if not (sep and name.strip() and path.strip()):
            raise UserError(f"--held-out {item!r}: expected TASK=FILE")
        if name.strip() in pairs:
            raise UserError(f"--held-out {item!r}: task '{name.strip()}' given twice")
        pairs[name.strip()] = path.strip()
    spec = MonitorSpec(
        model=model,
        method=method,
        held_out=pairs,
        tasks=task,
        window=window,
        min_rows=min_rows,
        alpha=alpha,
        consecutive=consecutive,
        min_effect=min_effect,
        cooldown=cooldown,
        permutations=permutations,
        webhook=webhook,
        secret_file=None if secret_file is None else str(secret_file),
        once=once,
        poll=poll,
        seed=seed,
    )
    metrics = None
    if metrics_port:
        if not 0 < metrics_port < 65536:
            raise UserError(f"--metrics-port {metrics_port}: must be a port number (1-65535), or 0 for none")
        metrics = MonitorMetrics()
        metrics.serve(metrics_port, metrics_host)
    _print_json(run_monitor(log, feature_repo, out, spec, metrics=metrics))


@events_app.command("gateway")
def events_gateway(
    forward: str = typer.Option(..., "--forward", help="the Argo Events webhook URL accepted events go on to"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 in a pod)"),
    port: int = typer.Option(8080, "--port", help="port to listen on (0: any free port, printed at start)"),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", help="HMAC secret (default: env TASKLOOM_WEBHOOK_SECRET)"
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="bearer token for the webhook (default: env TASKLOOM_EVENTS_TOKEN)"
    ),
    max_age: float = typer.Option(300.0, "--max-age", help="seconds an event's time may be from now (replay window)"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the webhook per forward"),
    state: Path | None = typer.Option(
        None, "--state", help="file that keeps forwarded event ids, so a replay is refused after a restart too"
    ),
) -> None:
    """Verify signed CloudEvents and forward them to the webhook with a bearer token.

    Each POST must carry a valid X-Taskloom-Signature (HMAC-SHA256 over id, time and body) and a time
    within --max-age of now, else 401; an event id seen before is refused with 409. Accepted events go
    on unchanged to --forward with `Authorization: Bearer <token>`; the caller gets the webhook's status,
    or 502 when the forward fails (the id is then released, so a retry can pass). GET /healthz is the
    health probe, GET /metrics the Prometheus metrics. Runs in the foreground until Ctrl-C or SIGTERM."""
    from taskloom.events.gateway import run_gateway

    raise typer.Exit(
        run_gateway(
            forward,
            host=host,
            port=port,
            secret_file=secret_file,
            token_file=token_file,
            max_age=max_age,
            timeout=timeout,
            state=state,
        )
    )


@app.command()
def deploy(
    source: str | None = typer.Argument(
        None, help="an adapter folder (added or replaced), a model folder or catalog name (new base)"
    ),
    repo: str = typer.Option(
        ..., "--repo", help="the model repository the server serves: a folder, or s3://bucket/prefix"
    ),
    url: str | None = typer.Option(
        None, "--url", help="the server, e.g. http://127.0.0.1:8000 (explicit model control); not with --kubernetes"
    ),
    name: str = typer.Option("taskloom", "--name", help="model name in the repository"),
    adapter_name: str | None = typer.Option(
        None, "--adapter-name", help="serve the adapter under this name (default: task.json's task)"
    ),
    remove: list[str] = typer.Option([], "--remove", help="stop serving this adapter (repeatable)"),
    head: str | None = typer.Option(None, "--head", help="with a model folder: serve its head MODEL/heads/TASK"),
    rollback: bool = typer.Option(False, "--rollback", help="serve the previous version again"),
    to_version: int | None = typer.Option(None, "--to-version", help="with --rollback: this version"),
    smoke_text: list[str] = typer.Option([], "--smoke-text", help="smoke request text (repeatable)"),
    expect_label: list[str] = typer.Option([], "--expect-label", help="expected label per --smoke-text"),
    canary: bool = typer.Option(
        True, "--canary/--no-canary", help="load and smoke the new version aside before switching"
    ),
    protocol: str = typer.Option("http", "--protocol", help="http | grpc"),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size"),
    max_queue_delay_us: int | None = typer.Option(None, "--max-queue-delay-us", help="dynamic batching delay"),
    threads: int | None = typer.Option(None, "--threads", help="torch threads per model instance"),
    precision: str | None = typer.Option(None, "--precision", help="fp32 | bf16 | int8"),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="auto | torch | onnxruntime (auto: ONNX Runtime for one fp32 model without adapters, else PyTorch)",
    ),
    timeout: float = typer.Option(300, "--timeout", help="seconds per server call (loading included)"),
    admin_key_file: Path | None = typer.Option(
        None, "--admin-key-file", help="the server's model-control key (default: env TASKLOOM_TRITON_ADMIN_KEY)"
    ),
    kubernetes: bool = typer.Option(
        False,
        "--kubernetes",
        help="create or patch a ModelDeployment (current kubeconfig) and wait for Ready (--timeout: the wait)",
    ),
    namespace: str | None = typer.Option(
        None, "--namespace", help="with --kubernetes: its namespace (default: the kubeconfig context's)"
    ),
    model_deployment: str | None = typer.Option(
        None, "--model-deployment", help="with --kubernetes: the ModelDeployment's name (default: --name)"
    ),
    model_version: int | None = typer.Option(
        None, "--model-version", help="with --kubernetes: the base version folder to serve (default: the newest)"
    ),
) -> None:
    """Publish a new version through Triton's model control: canary, switch, smoke; roll back on failure.
    With --kubernetes, declare it in a ModelDeployment instead and let the operator do it."""
    from taskloom.objectstore import working_copy
    from taskloom.serve import deploy as d
    from taskloom.serve.admin import load_admin_key

    if kubernetes:
        from taskloom.operator import declare

        not_here = {"--url": url, "--rollback": rollback or None, "--head": head, "--smoke-text": smoke_text or None}
        for flag, value in not_here.items():
            if value is not None:
                raise UserError(f"{flag}: not with --kubernetes (the operator loads, smokes and rolls back)")
        if source is not None and not Path(source, "adapter_model.safetensors").exists():
            raise UserError(f"{source}: with --kubernetes, SOURCE is an adapter folder (adapter_model.safetensors)")
        declaration = declare.Declaration(
            model=name,
            repository=repo,
            version=model_version,
            add=(Path(source),) if source else (),
            adapter_name=adapter_name,
            remove=tuple(remove),
            canary=canary,
            engine=engine,
            precision=precision,
        )
        _print_json(declare.deploy(declaration, namespace, model_deployment, timeout))
        return
    kube_only: dict[str, object] = {
        "--namespace": namespace,
        "--model-deployment": model_deployment,
        "--model-version": model_version,
    }
    for option, given in kube_only.items():
        if given is not None:
            raise UserError(f"{option}: only with --kubernetes")
    if url is None:
        raise UserError("--url: the Triton server to deploy to (or --kubernetes)")
    admin_key = load_admin_key(admin_key_file)
    # s3://: a local working copy, pushed before each load (Triton reads the bucket itself)
    local, publish = working_copy(repo)

    if rollback:
        _print_json(
            d.rollback(
                local,
                url,
                name=name,
                to_version=to_version,
                protocol=protocol,
                timeout=timeout,
                admin_key=admin_key,
                publish=publish,
            )
        )
        return
    options = {
        k: v
        for k, v in dict(
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            threads=threads,
            precision=precision,
            engine=engine,
        ).items()
        if v is not None
    }
    try:
        report = d.deploy(
            local,
            url,
            source,
            name=name,
            adapter_name=adapter_name,
            remove=remove,
            head_task=head,
            protocol=protocol,
            smoke_texts=tuple(smoke_text) or d.SMOKE_TEXTS,
            expect_labels=list(expect_label) or None,
            canary=canary,
            serving=options,
            timeout=timeout,
            admin_key=admin_key,
            publish=publish,
        )
    except d.DeployError as e:
        _print_json(e.report)
        raise
    _print_json(report)


@repo_app.command("push")
def repo_push(
    folder: Path = typer.Argument(..., help="a local folder, e.g. a Triton model repository"),
    url: str = typer.Argument(..., help="s3://bucket/prefix (endpoint, credentials: AWS_* as the AWS tools read them)"),
    delete: bool = typer.Option(False, "--delete", help="also remove objects no longer in the folder"),
) -> None:
    """Upload a folder: changed objects only, version folders before config.pbtxt, the marker object last."""
    from taskloom.objectstore import push_dir

    _print_json(push_dir(folder, url, delete=delete))


@repo_app.command("pull")
def repo_pull(
    url: str = typer.Argument(..., help="s3://bucket/prefix"),
    folder: Path = typer.Argument(..., help="the local copy to keep in step (created when missing)"),
    delete: bool = typer.Option(True, "--delete/--keep-extra", help="remove local files no longer in the bucket"),
    interval: float = typer.Option(0, "--interval", help="seconds between pulls, following until stopped (0: once)"),
) -> None:
    """Download what changed; each version folder appears whole (written aside, renamed), config.pbtxt last."""
    from taskloom import objectstore

    if interval:
        objectstore.follow(url, folder, interval, delete=delete, on_report=lambda r: typer.echo(json.dumps(r)))
    else:
        _print_json(objectstore.pull(url, folder, delete=delete))


@repo_app.command("prune")
def repo_prune(
    repository: str = typer.Argument(..., help="a model repository folder or s3://bucket/prefix"),
    keep: int = typer.Option(..., "--keep", help="keep the newest N versions of each model"),
    deployments: list[Path] = typer.Option(
        [], "--deployments", help="YAML/JSON with ModelDeployment records whose versions stay (repeatable)"
    ),
    name: str | None = typer.Option(None, "--name", help="only this model"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print what would be deleted; delete nothing"),
) -> None:
    """Delete versions older than the newest N unless serving, the rollback target or named by a deployment."""
    from taskloom.serve.retention import prune

    _print_json(prune(repository, keep, dry_run=dry_run, deployments=deployments, name=name))


@app.command()
def infer(
    texts: list[str] = typer.Argument(None, help="texts to send (or --file)"),
    file: Path | None = typer.Option(None, "--file", help="JSONL file, one object per line"),
    field: str = typer.Option("text", "--field", help="the text field of the --file rows"),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="http://host:port (or host:port for grpc)"),
    protocol: str = typer.Option("http", "--protocol", help="http | grpc"),
    model: str = typer.Option("taskloom", "--model"),
    adapter: str | None = typer.Option(None, "--adapter", help="a LoRA adapter the model serves (default: the base)"),
    batch_size: int = typer.Option(32, "--batch-size", help="texts per request"),
    timeout: float = typer.Option(30, "--timeout"),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="include the embedding vectors"),
) -> None:
    """Send texts to a served model; prints labels, probabilities and embeddings as JSON."""
    from taskloom.serve.client import infer_texts

    _print_json(
        infer_texts(
            url,
            texts,
            file,
            field=field,
            model=model,
            protocol=protocol,
            adapter=adapter,
            batch_size=batch_size,
            timeout=timeout,
            embeddings=embeddings,
        )
    )


@app.command("operator")
def operator_(
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="watch one namespace (default: all)"),
    liveness: str | None = typer.Option(
        None, "--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    ),
) -> None:
    """Run the ModelDeployment operator against the current kubeconfig (in a pod: its ServiceAccount),
    as `kopf run` does; in the foreground until Ctrl-C or SIGTERM. Settings: TASKLOOM_OPERATOR_* env."""
    from taskloom.operator.run import run_operator

    run_operator(namespace, liveness)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="folder for runs, the summary and report.html"),
    quick: bool = typer.Option(False, "--quick", help="small, fast settings (what `make test` runs)"),
) -> None:
    """The whole loop on built-in tasks: validate, profile to Feast, train, merge, gate, serve on
    Triton, send traffic, detect drift, trigger retraining; ends with a summary and an HTML report."""
    from taskloom.demo import run_demo

    run_demo(out, quick=quick)


@metalora_app.command("build")
def metalora_build(
    out: Path = typer.Option(..., "--out", help="the bank folder: tasks/, adapters/, feature_repo/, bank.json"),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="160/64/64 train/val/eval rows per task (held-out eval 200), 20 steps per adapter: 72 adapters "
        "in about 15 minutes on 2 busy CPU cores",
    ),
    seed: int = typer.Option(20240611, "--seed", help="seed of the tasks' splits, the held-out texts and training"),
    generator: bool = typer.Option(
        True, "--generator/--no-generator", help="then train the generator on the bank into DIR/generator"
    ),
) -> None:
    """Build the meta-LoRA adapter bank from the offline corpora, then its generator: every task (bank
    tiers "seen" and "val", held-out tiers "near" and "far") staged under DIR/tasks/, one LoRA adapter
    per task (same rank and targets) under DIR/adapters/, task profiles and adapter metrics in the Feast
    repository DIR/feature_repo, DIR/bank.json last; then the generator in DIR/generator (as
    `metalora train-generator`). Re-running the same command finishes a killed build: complete adapters
    and a complete generator are kept. Prints the time taken and the bank's summary."""
    import time

    from taskloom.metalora.build import build_bank
    from taskloom.metalora.generator import train_generator

    start = time.perf_counter()
    bank = build_bank(out, quick=quick, seed=seed)
    gen_dir = Path(out) / "generator"
    if generator and not (gen_dir / "generator.json").is_file():
        train_generator(out, gen_dir, seed=0, progress=False)
    tiers: dict[str, int] = {}
    for t in bank["tasks"]:
        tiers[t["tier"]] = tiers.get(t["tier"], 0) + 1
    _print_json(
        {
            "bank": str(Path(out) / "bank.json"),
            "tasks": len(bank["tasks"]),
            "tiers": tiers,
            "overlap_removed": bank["overlap_removed"],
            "generator": str(gen_dir) if generator else None,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


@metalora_app.command("train-generator")
def metalora_train_generator(
    bank: Path = typer.Option(..., "--bank", help="an adapter bank folder (bank.json, tasks/, adapters/)"),
    out: Path = typer.Option(..., "--out", help="the generator folder to write (generator.safetensors + .json)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the meta-LoRA generator on the bank's "seen" adapters; its basis size, width and weight
    decay are chosen by the ΔW error on the "val" adapters ("near" and "far" tasks are never read).
    Prints the config it saved (the candidates' val errors under `selection`)."""
    from taskloom.metalora.generator import train_generator

    _print_json(train_generator(bank, out, seed=seed, progress=False))


# errno values of a path the user chose badly (an OSError that names its file): exit 2, not a traceback
_USER_PATH_ERRNOS = {
    errno.ENAMETOOLONG,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ELOOP,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point: UserError → one line on stderr, exit 2; never a traceback for the user's mistakes."""
    try:
        # non-standalone mode returns a verb's `typer.Exit(code)` as the value instead of raising it
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except http.client.HTTPException as e:  # a server that went away mid-answer (e.g. Triton killed)
        typer.echo(f"error: the server closed the connection mid-answer ({type(e).__name__}: {e})", err=True)
        return 2
    except OSError as e:
        # A path the user gave that the file system refuses (too long, not allowed, read-only, full), met
        # where no check named it first: still one line naming the file. Anything else is a bug: re-raised.
        if e.filename is None or e.errno not in _USER_PATH_ERRNOS:
            raise
        typer.echo(f"error: {e.filename}: {e.strerror}", err=True)
        return 2
    except Exception as e:  # usage errors (missing option, bad value) arrive here in non-standalone mode
        from typer._click import exceptions as click_exceptions

        if isinstance(e, click_exceptions.NoArgsIsHelpError):
            e.show()
            return 0
        if isinstance(e, click_exceptions.ClickException):  # one line, like a UserError, naming the command
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
