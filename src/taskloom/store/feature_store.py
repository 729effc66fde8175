"""Task features in Feast: write a row to the history and the online store, read it by id.

    store = TaskStore("runs/feature_repo")
    store.write_task_profile(profile_task(spec, rows))
    store.read_task("rt-sentiment")  # online, immediately

Where the features live is the store's backend (taskloom.store.backends): by default `Local()`, the
repository folder (file registry, SQLite online store, Parquet history); with `Cluster(postgres_url,
redis_url)`, or TASKLOOM_FEAST_POSTGRES_URL and TASKLOOM_FEAST_REDIS_URL in the environment, Feast's
SQL registry and PostgreSQL history with a Redis online store, for writers on many pods.

Locally the repository (feature_store.yaml, definitions.py, data/) is created on first use and applied
once; `feast -c runs/feature_repo serve` serves the same features over HTTP. In a cluster nothing is
written to the folder (the configuration holds the passwords and stays in memory) and
`python -m taskloom.store.serve` serves them. Every write appends to the view's history and then
writes the same rows to the online store, both under the writers' lock (taskloom.store.history), so
reads never wait for a materialisation and the online value is the newest row of the history.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from taskloom.artifacts import write_text
from taskloom.errors import UserError
from taskloom.store.backends import Backend, Cluster, from_env
from taskloom.store.definitions import COLUMNS, JOIN_KEYS, REPO_DEFINITIONS, TIMESTAMP, VIEWS, build, feature_store_yaml
from taskloom.store.history import ParquetHistory, PostgresHistory


@contextlib.contextmanager
def quiet_feast():
    """Feast logs and warns freely (experimental features, deprecations): keep the user's stderr clean."""
    os.environ.setdefault("FEAST_USAGE", "False")
    for name in ("feast", "feast.infra", "feast.repo_config", "feast.feature_store"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class TaskStore:
    """The Feast feature repository at `repo_dir`; `backend` says where its data lives (None: the environment's)."""

    def __init__(self, repo_dir: str | os.PathLike, backend: Backend | None = None):
        self.repo_dir = Path(repo_dir).resolve()
        self.data_dir = self.repo_dir / "data"
        self.backend = from_env() if backend is None else backend
        self.history: ParquetHistory | PostgresHistory
        if isinstance(self.backend, Cluster):
            self.history = PostgresHistory(self.backend)
            self.where = f"postgresql {self.backend.postgres_host}"
        else:
            self.history = ParquetHistory(self.data_dir)
            self.where = str(self.repo_dir)
        self._fs: Any = None  # feast.FeatureStore, imported when first used
        self._objects: dict | None = None

    # -- repository -------------------------------------------------------------------------
    def _ensure_files(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.repo_dir / "feature_store.yaml").exists():
            write_text(self.repo_dir / "feature_store.yaml", feature_store_yaml(), digest=False)
        if not (self.repo_dir / "definitions.py").exists():
            write_text(self.repo_dir / "definitions.py", REPO_DEFINITIONS, digest=False)

    @property
    def fs(self):
        """The feast.FeatureStore, created (and applied once) on first use. Under the writers' lock: a store
        opened while another process is still applying a new repository would miss its views."""
        if self._fs is None:
            if isinstance(self.backend, Cluster):
                self._open_cluster(self.backend)
            else:
                self._ensure_files()
                with self.history.locked():
                    with quiet_feast():
                        from feast import FeatureStore

                        self._fs = FeatureStore(repo_path=str(self.repo_dir))
                    if not (self.data_dir / "registry.db").exists():
                        self._apply()
        return self._fs

    def _open_cluster(self, cluster: Cluster) -> None:
        assert isinstance(self.history, PostgresHistory)
        with self.history.locked(), self._reaching():
            with quiet_feast():
                from feast import FeatureStore
                from feast.repo_config import RepoConfig

                fs = FeatureStore(repo_path=str(self.repo_dir), config=RepoConfig(**cluster.repo_config()))
                self.history.create_tables(self._views())
                try:
                    applied = {fv.name for fv in fs.list_feature_views(allow_cache=False)}
                except Exception:  # a new database: the project is not registered yet
                    applied = set()
            self._fs = fs
            if not set(VIEWS) <= applied:
                self._apply()

    def _views(self) -> dict:
        if self._objects is None:
            self._objects = build(None if isinstance(self.backend, Cluster) else self.data_dir)
        return {v: self._objects[v] for v in VIEWS}

    def apply(self) -> None:
        """Register the entities and feature views (idempotent)."""
        fresh = self._fs is None and (isinstance(self.backend, Cluster) or not (self.data_dir / "registry.db").exists())
        self.fs  # noqa: B018 (opening a new repository applies it)
        if not fresh:
            with self.history.locked(), self._reaching():
                self._apply()

    def _apply(self) -> None:
        with quiet_feast():
            self._views()
            assert self._objects is not None
            self._fs.apply(list(self._objects.values()))

    @contextlib.contextmanager
    def _reaching(self):
        """An online store that cannot be reached is the deployment's mistake: one line naming it.
        (PostgreSQL is reached first, by the history, which says so itself.)"""
        if not isinstance(self.backend, Cluster):
            yield
            return
        import redis

        try:
            yield
        except redis.exceptions.ConnectionError as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"feature store ({self.where}): cannot reach Redis: {reason}") from None

    # -- writes -----------------------------------------------------------------------------
    def _append(self, view: str, rows: list[dict]) -> None:
        """Append rows to the view's history, then to the online store, under the writers' lock. The time
        is taken inside the lock: writes are stamped in the order they land, so the newest wins online."""
        import pandas as pd

        fs = self.fs
        with self.history.locked(), self._reaching():
            now = datetime.now(timezone.utc)
            df = pd.DataFrame(
                [
                    {JOIN_KEYS[view]: r[JOIN_KEYS[view]], **{c: r[c] for c in COLUMNS[view]}, TIMESTAMP: now}
                    for r in rows
                ]
            )
            self.history.append(view, df)
            with quiet_feast():
                fs.write_to_online_store(view, df)

    def write_task_profile(self, profile: dict) -> None:
        """Profile of a task (`taskloom.data.profile.profile_task`); its "reference" goes via write_reference."""
        missing = [k for k in ("task_id", *COLUMNS["task_profile"]) if k not in profile]
        if missing:
            raise UserError(f"task profile: missing field '{missing[0]}'")
        centroid = np.asarray(profile["centroid"], dtype=np.float32).ravel()
        if not np.isfinite(centroid).all():
            raise UserError(f"task profile of '{profile['task_id']}': centroid contains NaN or infinite values")
        self._append(
            "task_profile",
            [
                {
                    "task_id": str(profile["task_id"]),
                    "rows": int(profile["rows"]),
                    "label_entropy": _stored(profile["label_entropy"]),
                    "mean_length": float(profile["mean_length"]),
                    "centroid": centroid.tolist(),
                    "type": str(profile["type"]),
                }
            ],
        )

    def write_adapter_metrics(self, adapter_id: str, task_id: str, metrics: dict) -> None:
        """Base vs tuned (and merged, when known) on the task's eval split, as in metrics.json."""
        for k in ("metric", "base", "tuned"):
            if k not in metrics:
                raise UserError(f"metrics of adapter '{adapter_id}': missing field '{k}'")
        self._append(
            "adapter_metrics",
            [
                {
                    "adapter_id": str(adapter_id),
                    "task_id": str(task_id),
                    "metric": str(metrics["metric"]),
                    "base": float(metrics["base"]),
                    "tuned": float(metrics["tuned"]),
                    "merged": _stored(metrics.get("merged")),
                    "created": str(metrics.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")),
                }
            ],
        )

    def write_reference(self, task_id: str, adapter_id: str, embeddings) -> None:
        """The reference embedding sample for drift tests of `task_id`, versioned by `adapter_id`."""
        arr = np.asarray(embeddings, dtype=np.float32)
        if arr.ndim != 2 or len(arr) == 0:
            raise UserError(f"reference of task '{task_id}': expected a non-empty 2-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise UserError(f"reference of task '{task_id}': contains NaN or infinite values")
        self._append(
            "drift_reference",
            [
                {
                    "task_id": str(task_id),
                    "adapter_id": str(adapter_id),
                    "rows": int(arr.shape[0]),
                    "dims": int(arr.shape[1]),
                    "embeddings": arr.ravel().tolist(),
                }
            ],
        )

    # -- reads ------------------------------------------------------------------------------
    def _online(self, view: str, key: str) -> dict:
        fs = self.fs
        join = JOIN_KEYS[view]
        with quiet_feast(), self._reaching():
            out = fs.get_online_features(
                features=[f"{view}:{c}" for c in COLUMNS[view]], entity_rows=[{join: str(key)}]
            ).to_dict()
        row = {k: v[0] for k, v in out.items()}
        if all(row.get(c) is None for c in COLUMNS[view]):
            entity = "task" if join == "task_id" else "adapter"
            raise UserError(f"feature store {self.where}: no {view} for {entity} '{key}'")
        return row

    def read_task(self, task_id: str) -> dict:
        """{"task_id", "type", "rows", "label_entropy", "mean_length", "centroid"} from the online store."""
        r = self._online("task_profile", task_id)
        return {
            "task_id": r["task_id"],
            "type": r["type"],
            "rows": int(r["rows"]),
            "label_entropy": _float(r["label_entropy"]),
            "mean_length": float(r["mean_length"]),
            "centroid": [float(v) for v in r["centroid"]],
        }

    def read_adapter(self, adapter_id: str) -> dict:
        """{"adapter_id", "task_id", "metric", "base", "tuned", "merged" (None until merged), "created"}."""
        r = self._online("adapter_metrics", adapter_id)
        return {
            "adapter_id": r["adapter_id"],
            "task_id": r["task_id"],
            "metric": r["metric"],
            "base": float(r["base"]),
            "tuned": float(r["tuned"]),
            "merged": _float(r["merged"]),
            "created": r["created"],
        }

    def read_reference(self, task_id: str, adapter_id: str | None = None) -> np.ndarray:
        """The latest reference sample of `task_id` (online), or the one written for `adapter_id` (history)."""
        if adapter_id is None:
            r = self._online("drift_reference", task_id)
            return np.asarray(r["embeddings"], dtype=np.float32).reshape(int(r["rows"]), int(r["dims"]))
        hit = self.history.frame(
            "drift_reference", ["rows", "dims", "embeddings"], task_id=str(task_id), adapter_id=str(adapter_id)
        )
        if hit.empty:
            raise UserError(
                f"feature store {self.where}: no drift reference for task '{task_id}' and adapter '{adapter_id}'"
            )
        r = hit.iloc[-1]
        return np.asarray(r["embeddings"], dtype=np.float32).reshape(int(r["rows"]), int(r["dims"]))

    def read_reference_record(self, task_id: str) -> dict:
        """The latest reference of `task_id` with the adapter it belongs to: {"adapter_id", "embeddings"}.

        The embeddings come back as stored (NaNs included): checking them is the reader's business."""
        r = self._online("drift_reference", task_id)
        values = r["embeddings"] or []
        rows, dims = int(r["rows"]), int(r["dims"])
        if len(values) != rows * dims:
            raise UserError(
                f"feature store {self.where}: reference of task '{task_id}' holds {len(values)} "
                f"values, not rows × dims = {rows} × {dims}"
            )
        return {
            "adapter_id": str(r["adapter_id"]),
            "embeddings": np.asarray(values, dtype=np.float32).reshape(rows, dims),
        }

    def reference_versions(self, task_id: str) -> list[dict]:
        """Every reference written for `task_id`, oldest first: [{"adapter_id", "rows", "dims", "written"}]."""
        df = self.history.frame("drift_reference", ["adapter_id", "rows", "dims"], task_id=str(task_id))
        return [
            {"adapter_id": a, "rows": int(n), "dims": int(d), "written": t.isoformat()}
            for a, n, d, t in zip(df["adapter_id"], df["rows"], df["dims"], df[TIMESTAMP])
        ]


def _stored(v) -> float:
    """Unknown numbers are stored as NaN (a typed null both in Parquet and in the online store)."""
    return float("nan") if v is None else float(v)


def _float(v) -> float | None:
    """float, with None/NaN both meaning "not known" (label_entropy of a regression task, merged before merging)."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f
