"""The Feast repository: entities `task` and `adapter` and the feature views taskloom reads online.

- task_profile (per task): rows, label_entropy, mean_length, centroid (mean embedding), type.
- adapter_metrics (per adapter): task_id, metric, base, tuned, merged (NaN until merged), created.
- drift_reference (per task): the reference embedding sample that drift windows are tested
  against, stored flattened (embeddings = rows·dims floats) with rows, dims and the adapter_id it
  belongs to. The online store holds the latest version; the Parquet history keeps every version.

Each view reads a Parquet file under `data_dir` (local) or a PostgreSQL table of its own name
(cluster; see taskloom.store.backends); taskloom appends to that history and pushes the same rows
to the online store, so a read right after a write sees it.
"""

from __future__ import annotations

from pathlib import Path

TIMESTAMP = "event_timestamp"
VIEWS = ("task_profile", "adapter_metrics", "drift_reference")
# The columns of each view's Parquet file besides the join key and the timestamp, in order.
COLUMNS = {
    "task_profile": ("rows", "label_entropy", "mean_length", "centroid", "type"),
    "adapter_metrics": ("task_id", "metric", "base", "tuned", "merged", "created"),
    "drift_reference": ("adapter_id", "rows", "dims", "embeddings"),
}
JOIN_KEYS = {"task_profile": "task_id", "adapter_metrics": "adapter_id", "drift_reference": "task_id"}


def build(data_dir: str | Path | None) -> dict:
    """Feast objects by name: their sources read `data_dir/<view>.parquet`, or with no `data_dir` the
    PostgreSQL table `<view>` of the cluster's offline store."""
    from datetime import timedelta

    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.data_source import DataSource
    from feast.types import Array, Float32, Float64, Int64, String

    task = Entity(
        name="task", join_keys=["task_id"], value_type=ValueType.STRING, description="a task (task.yaml name)"
    )
    adapter = Entity(
        name="adapter", join_keys=["adapter_id"], value_type=ValueType.STRING, description="a trained or merged adapter"
    )

    def source(view: str) -> DataSource:
        if data_dir is None:
            from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

            return PostgreSQLSource(name=f"{view}_source", table=view, timestamp_field=TIMESTAMP)
        path = Path(data_dir).resolve() / f"{view}.parquet"
        return FileSource(name=f"{view}_source", path=str(path), timestamp_field=TIMESTAMP)

    schema = {
        "task_profile": [
            Field(name="rows", dtype=Int64),
            Field(name="label_entropy", dtype=Float64),
            Field(name="mean_length", dtype=Float64),
            Field(name="centroid", dtype=Array(Float32)),
            Field(name="type", dtype=String),
        ],
        "adapter_metrics": [
            Field(name="task_id", dtype=String),
            Field(name="metric", dtype=String),
            Field(name="base", dtype=Float64),
            Field(name="tuned", dtype=Float64),
            Field(name="merged", dtype=Float64),
            Field(name="created", dtype=String),
        ],
        "drift_reference": [
            Field(name="adapter_id", dtype=String),
            Field(name="rows", dtype=Int64),
            Field(name="dims", dtype=Int64),
            Field(name="embeddings", dtype=Array(Float32)),
        ],
    }
    entity = {"task_profile": task, "adapter_metrics": adapter, "drift_reference": task}
    views = {
        v: FeatureView(name=v, entities=[entity[v]], ttl=timedelta(0), schema=schema[v], source=source(v), online=True)
        for v in VIEWS
    }
    return {"task": task, "adapter": adapter, **views}


# What `TaskStore` writes as the repository's own definitions file, so the Feast CLI
# (`feast -c REPO apply`, `feast -c REPO serve`) sees the same objects.
REPO_DEFINITIONS = '''"""Feast definitions of this taskloom feature repository (generated; see taskloom.store.definitions)."""
from pathlib import Path

from taskloom.store.definitions import build

_objects = build(Path(__file__).resolve().parent / "data")
task, adapter = _objects["task"], _objects["adapter"]
task_profile, adapter_metrics, drift_reference = (_objects[v] for v in ("task_profile", "adapter_metrics", "drift_reference"))
'''


def feature_store_yaml() -> str:
    """feature_store.yaml: local provider, SQLite online store, file (Parquet) offline store.

    Paths are relative to the repository, so the folder can be moved or mounted elsewhere whole.
    """
    return (
        "project: taskloom\n"
        "registry: data/registry.db\n"
        "provider: local\n"
        "online_store:\n"
        "  type: sqlite\n"
        "  path: data/online_store.db\n"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
