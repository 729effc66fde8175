"""Atomic training checkpoints: a run killed at any instant (even `kill -9`) resumes from the last one.

    out/checkpoints/step-000040/
        trainable.safetensors   every trainable tensor (LoRA A/B, heads), by name
        optimizer.pt            AdamW moments, the schedule, the torch RNG (dropout) state
        steps.jsonl             the per-step log up to this step
        state.json              {"step", "fingerprint"}; written last, with a sha256 of every file

A checkpoint folder is written under a hidden staging name and renamed into place, so a folder named
`step-*` is always whole; `state.json` lists the digests, so a damaged file is noticed on resume. The
newest `KEEP` checkpoints stay. A full disk while writing leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

from taskloom.artifacts import publish_dir, sha256_file, staging_dir, write_json
from taskloom.errors import UserError

KEEP = 2
FOLDER = "checkpoints"
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _folders(out: Path) -> list[Path]:
    root = out / FOLDER
    return sorted(root.glob("step-*")) if root.is_dir() else []


def has_checkpoints(out: Path) -> bool:
    return bool(_folders(Path(out)))


def save(out: Path, step: int, fingerprint: str, trainable: dict, optimizer, schedule, steps_log: Path) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest KEEP checkpoints."""
    import io

    import torch
    from safetensors.torch import save as to_bytes

    final = Path(out) / FOLDER / f"step-{step:06d}"
    # serialised in memory first, so a full disk surfaces as a plain OSError from one write call
    tensors = to_bytes({k: v.detach().cpu().contiguous() for k, v in trainable.items()})
    state = io.BytesIO()
    torch.save(
        {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": torch.get_rng_state()}, state
    )
    stage = None
    try:
        stage = staging_dir(final)
        (stage / "trainable.safetensors").write_bytes(tensors)
        (stage / "optimizer.pt").write_bytes(state.getvalue())
        shutil.copyfile(steps_log, stage / "steps.jsonl")
        files = {p.name: sha256_file(p) for p in sorted(stage.iterdir())}
        write_json(stage / "state.json", {"step": step, "fingerprint": fingerprint, "files": files}, digest=False)
        publish_dir(stage, final)
    except OSError as e:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if e.errno in _DISK_ERRORS:
            kept = [f.name for f in _folders(Path(out))]
            last = f"the last checkpoint ({kept[-1]}) is intact" if kept else "no earlier checkpoint exists"
            raise UserError(
                f"disk full while writing checkpoint step {step} in {final.parent}: {last}; "
                "free space and rerun with --resume"
            ) from None
        raise
    for old in _folders(Path(out))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(out: Path, fingerprint: str) -> dict | None:
    """The newest whole checkpoint whose files match their digests: {"step", "dir"}; None when none exists.

    A checkpoint of a different run (other task, options or seed) is a UserError: resuming it would
    silently train something else."""
    for folder in reversed(_folders(Path(out))):
        try:
            state = json.loads((folder / "state.json").read_text())
            whole = all(sha256_file(folder / name) == digest for name, digest in state["files"].items())
        except (OSError, ValueError, KeyError):
            whole = False
        if not whole:
            continue  # damaged: an older one may still be good
        if state["fingerprint"] != fingerprint:
            raise UserError(
                f"{folder}: a checkpoint of a different run (other tasks, options or seed); "
                "use a new --out or the same options"
            )
        return {"step": int(state["step"]), "dir": folder}
    return None


def load(folder: Path, trainable: dict, optimizer, schedule) -> None:
    """Put the checkpoint's tensors, optimizer moments, schedule and RNG state back in place."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(folder / "trainable.safetensors"))
    if set(saved) != set(trainable):
        raise UserError(f"{folder}: its tensors do not match this model (other base, rank or tasks)")
    with torch.no_grad():
        for name, tensor in trainable.items():
            tensor.copy_(saved[name].to(tensor.device, tensor.dtype))
    bundle = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(bundle["optimizer"])
    schedule.load_state_dict(bundle["schedule"])
    torch.set_rng_state(bundle["rng"])


def clear(out: Path) -> None:
    """Remove the checkpoints once the run is published (they only serve to resume an unfinished run)."""
    shutil.rmtree(Path(out) / FOLDER, ignore_errors=True)
