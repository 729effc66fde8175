"""Real LoRA adapters on the built-in tasks, trained once and shared by the merge benchmarks.

Each is `taskloom.train.lora.train_adapter` with the library defaults (`TrainSpec()`: 2 epochs, r=8,
alpha=16, lr 1e-3, batch 32), or a fixed `max_steps`, on the task exported from
`taskloom.tasks.catalog`; cached in .cache/bench-adapters/ as `<task>-default-seed<S>/` or
`<task>-steps<N>-seed<S>/` (adapter/ + metrics.json), so a rerun starts in seconds. `trained_joint`
trains ONE adapter on several tasks (`taskloom.train.lora.train_tasks`, same defaults), cached as
`joint-default-seed<S>/` or `joint-steps<N>-seed<S>/`.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-adapters"


def task_file(name: str) -> Path:
    """The built-in task exported once to .cache/bench-adapters/tasks/<name>/task.yaml."""
    from taskloom.tasks.catalog import export_task

    path = CACHE / "tasks" / name / "task.yaml"
    if not path.exists():
        export_task(name, path.parent)
    return path


def trained(name: str, max_steps: int | None = None, seed: int = 0) -> Path:
    """The run folder (adapter/, metrics.json) of `name` trained with the defaults or for `max_steps`
    steps; trains if missing."""
    from taskloom.specs import TrainSpec, load_task
    from taskloom.train.lora import train_adapter

    run = CACHE / (f"{name}-steps{max_steps}-seed{seed}" if max_steps else f"{name}-default-seed{seed}")
    if (run / "metrics.json").exists() and (run / "adapter" / "adapter_model.safetensors").exists():
        return run
    print(f"training {name} ({f'{max_steps} steps' if max_steps else 'defaults'}) into {run} (once)", flush=True)
    train_adapter(load_task(task_file(name)), run, TrainSpec(max_steps=max_steps, seed=seed), progress=False)
    return run


def trained_joint(names: list[str], max_steps: int | None = None, seed: int = 0) -> Path:
    """The run folder of one multi-task adapter trained on all of `names` (heads under adapter/heads/<task>/)."""
    from taskloom.specs import TrainSpec, load_task
    from taskloom.train.lora import train_tasks

    run = CACHE / (f"joint-steps{max_steps}-seed{seed}" if max_steps else f"joint-default-seed{seed}")
    if (run / "metrics.json").exists() and (run / "adapter" / "adapter_model.safetensors").exists():
        return run
    print(f"training one adapter on {', '.join(names)} ({f'{max_steps} steps' if max_steps else 'defaults'}) "
          f"into {run} (once)", flush=True)
    train_tasks([load_task(task_file(n)) for n in names], run, TrainSpec(max_steps=max_steps, seed=seed), progress=False)
    return run
