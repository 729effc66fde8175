"""The offline history of each feature view, and the lock its writers share.

ParquetHistory (local): one Parquet file per view under the repository's `data/`, rewritten whole on
each append (temp file + rename), writers serialised by a file lock.

PostgresHistory (cluster): one table per view, named after it, read by Feast's PostgreSQL offline store
(`PostgreSQLSource`). An append is an INSERT; writers serialise on a PostgreSQL advisory lock held for
one transaction, so the history and the online write that follows it happen in the same order in every
pod, and a failed online write rolls the insert back.

Both: `locked()` around an append (and around opening and applying the Feast repository), `append`
inside it, `frame` to read rows of one key oldest first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskloom.errors import UserError
from taskloom.store.backends import Cluster
from taskloom.store.definitions import COLUMNS, JOIN_KEYS, TIMESTAMP

_thread_lock = threading.Lock()
# pg_advisory_xact_lock key shared by every taskloom writer of one database ("taskloom" in ASCII).
LOCK_KEY = 0x7461736B6C6F6F6D
# PostgreSQL column types of the Feast value types the views use.
SQL_TYPES = {"INT64": "bigint", "DOUBLE": "double precision", "STRING": "text", "FLOAT_LIST": "real[]"}


class ParquetHistory:
    """`data_dir/<view>.parquet`, one file per view."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time across threads and processes (parallel pipeline steps share a repository).
        Not reentrant: never nested."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _thread_lock, open(self.data_dir / ".write.lock", "a") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            yield

    def append(self, view: str, df: Any) -> None:
        """Rewrite the view's file with `df` appended, atomically (readers see the old or the new file)."""
        import pandas as pd

        path = self.data_dir / f"{view}.parquet"
        full = pd.concat([pd.read_parquet(path), df], ignore_index=True) if path.exists() else df
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=f".{view}.", suffix=".parquet.tmp")
        os.close(fd)
        try:
            full.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def frame(self, view: str, columns: list[str], **where: str) -> Any:
        """Rows of `view` whose columns equal `where`, oldest first (columns plus the timestamp)."""
        import pandas as pd

        path = self.data_dir / f"{view}.parquet"
        cols = list(dict.fromkeys([*columns, *where, TIMESTAMP]))
        if not path.exists():
            return pd.DataFrame(columns=cols)
        df = pd.read_parquet(path, columns=cols)
        for k, v in where.items():
            df = df[df[k] == v]
        return df.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)


class PostgresHistory:
    """One table per view in the cluster's PostgreSQL database."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._conn: Any = None  # the connection of the transaction `locked()` holds

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """A transaction holding the writers' advisory lock; commits on success, rolls back on error."""
        import psycopg

        if self._conn is not None:
            raise RuntimeError("PostgresHistory.locked() is not reentrant")
        try:
            conn = psycopg.connect(self.cluster.conninfo(), connect_timeout=10)
        except psycopg.OperationalError as e:
            raise _unreachable(self.cluster, e) from None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                self._conn = conn
                try:
                    yield
                finally:
                    self._conn = None
        finally:
            conn.close()

    def create_tables(self, views: dict) -> None:
        """CREATE the view tables that are missing (inside `locked()`); `views`: the Feast FeatureViews."""
        from psycopg import sql

        for name, view in views.items():
            join = JOIN_KEYS[name]
            types = {f.name: SQL_TYPES[f.dtype.to_value_type().name] for f in view.schema}
            cols = [sql.SQL("{} text NOT NULL").format(sql.Identifier(join))]
            cols += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in COLUMNS[name]]
            cols.append(sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(TIMESTAMP)))
            self._conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(cols))
            )
            self._conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({}, {})").format(
                    sql.Identifier(f"{name}_by_key"),
                    sql.Identifier(name),
                    sql.Identifier(join),
                    sql.Identifier(TIMESTAMP),
                )
            )

    def append(self, view: str, df: Any) -> None:
        """INSERT the rows of `df` (inside `locked()`: committed with the online write)."""
        from psycopg import sql

        cols = [JOIN_KEYS[view], *COLUMNS[view], TIMESTAMP]
        stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(view),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        )
        rows = [tuple(_plain(r[c]) for c in cols) for r in df.to_dict("records")]
        with self._conn.cursor() as cur:
            cur.executemany(stmt, rows)

    def frame(self, view: str, columns: list[str], **where: str) -> Any:
        """Rows of `view` whose columns equal `where`, oldest first (columns plus the timestamp)."""
        import pandas as pd
        import psycopg
        from psycopg import sql

        cols = list(dict.fromkeys([*columns, *where, TIMESTAMP]))
        cond = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in where) if where else None
        stmt = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.Identifier(view),
            sql.SQL(" WHERE ") + cond if cond is not None else sql.SQL(""),
            sql.Identifier(TIMESTAMP),
        )
        try:
            with psycopg.connect(self.cluster.conninfo(), connect_timeout=10) as conn:
                rows = conn.execute(stmt, list(where.values())).fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []
        except psycopg.OperationalError as e:
            raise _unreachable(self.cluster, e) from None
        df = pd.DataFrame(rows, columns=cols)
        df[TIMESTAMP] = pd.to_datetime(df[TIMESTAMP], utc=True)  # as the Parquet history holds it
        return df


def _plain(v: Any) -> Any:
    """numpy scalars and arrays as the Python values psycopg adapts."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _unreachable(cluster: Cluster, e: Exception) -> UserError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"feature store: cannot reach PostgreSQL at {cluster.postgres_host}: {reason}")
