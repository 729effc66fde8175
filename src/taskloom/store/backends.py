"""Where a TaskStore keeps its features: files beside the repository (one pod) or PostgreSQL + Redis (many).

local (the default): Feast's file registry `data/registry.db`, the SQLite online store and one Parquet
file of history per view under `data/`, guarded by a file lock. Everything lives in the repository
folder, so writers on several pods need that folder on one shared volume, and share one lock file.

cluster: Feast's SQL registry (`registry_type: sql`, a postgresql+psycopg URL) and Feast's PostgreSQL
offline store in one PostgreSQL database, Redis as the online store. The history of a view is a table
(`PostgreSQLSource`) that each writer INSERTs into in its own transaction: no volume, no file, any
number of pods. Writers take a PostgreSQL advisory lock for the insert and the online write together,
so the online store holds the row the history lists last (Feast's Redis store keeps the newest event
time per entity; one HSET per record, so a reader never sees half a record).

TaskStore(repo, backend=...) takes the choice explicitly (`Local()` or `Cluster(postgres_url, redis_url)`);
without one it reads the environment:

    TASKLOOM_FEAST_POSTGRES_URL   postgresql://USER:PASSWORD@HOST:5432/DATABASE[?sslmode=require]
    TASKLOOM_FEAST_REDIS_URL      redis://[:PASSWORD@]HOST:6379[/DB]   (rediss:// for TLS)

Either may instead be given as NAME_FILE, the path of a file holding it (a Secret mounted as files, so
the password never sits in the pod spec). Both set: cluster; neither: local; one of the two: an error.
Connection details are held in memory only: nothing with a password is written to the repository.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from taskloom.errors import UserError

POSTGRES_ENV = "TASKLOOM_FEAST_POSTGRES_URL"
REDIS_ENV = "TASKLOOM_FEAST_REDIS_URL"
PROJECT = "taskloom"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class Local:
    """File registry, SQLite online store, Parquet history: all inside the repository folder."""


@dataclass(frozen=True, repr=False)
class Cluster:
    """SQL registry and history on PostgreSQL, online store on Redis (URLs as in the module docstring)."""

    postgres_url: str
    redis_url: str

    def __repr__(self) -> str:  # never print a password
        return f"Cluster(postgres={self.postgres_host}, redis={_redis(self.redis_url)['where']})"

    @property
    def postgres_host(self) -> str:
        p = _postgres(self.postgres_url)
        return f"{p['host']}:{p['port']}/{p['database']}"

    def postgres(self) -> dict:
        """host, port, database, user, password, sslmode of the PostgreSQL URL."""
        return _postgres(self.postgres_url)

    def registry_url(self) -> str:
        """The SQLAlchemy URL of Feast's SQL registry (psycopg 3 driver)."""
        from sqlalchemy.engine import URL

        p = self.postgres()
        url = URL.create(
            "postgresql+psycopg",
            username=p["user"],
            password=p["password"] or None,
            host=p["host"],
            port=p["port"],
            database=p["database"],
            query={"sslmode": p["sslmode"]},
        )
        return url.render_as_string(hide_password=False)

    def conninfo(self) -> str:
        """libpq connection string for psycopg."""
        from psycopg.conninfo import make_conninfo

        p = self.postgres()
        return make_conninfo(
            host=p["host"],
            port=p["port"],
            dbname=p["database"],
            user=p["user"],
            password=p["password"],
            sslmode=p["sslmode"],
        )

    def repo_config(self) -> dict:
        """The fields of Feast's RepoConfig (what feature_store.yaml would hold)."""
        p = self.postgres()
        r = _redis(self.redis_url)
        return {
            "project": PROJECT,
            "provider": "local",
            "registry": {"registry_type": "sql", "path": self.registry_url(), "cache_ttl_seconds": 60},
            "online_store": {"type": "redis", "redis_type": "redis", "connection_string": r["connection_string"]},
            "offline_store": {
                "type": "postgres",
                "host": p["host"],
                "port": p["port"],
                "database": p["database"],
                "db_schema": "public",
                "user": p["user"],
                "password": p["password"],
                "sslmode": p["sslmode"],
            },
            "entity_key_serialization_version": 3,
        }


Backend = Local | Cluster


def from_env(environ: Mapping[str, str] | None = None) -> Backend:
    """The backend the environment names (module docstring): Cluster when both URLs are set, else Local."""
    env = os.environ if environ is None else environ
    postgres, redis = _setting(env, POSTGRES_ENV), _setting(env, REDIS_ENV)
    if postgres is None and redis is None:
        return Local()
    if postgres is None or redis is None:
        given, missing = (POSTGRES_ENV, REDIS_ENV) if redis is None else (REDIS_ENV, POSTGRES_ENV)
        raise UserError(f"feature store: {given} is set but {missing} (or {missing}_FILE) is not; set both or neither")
    backend = Cluster(postgres_url=postgres, redis_url=redis)
    backend.postgres()  # checked now: one clear line rather than a driver's traceback later
    _redis(redis)
    return backend


def _setting(env: Mapping[str, str], name: str) -> str | None:
    value, path = env.get(name, "").strip(), env.get(f"{name}_FILE", "").strip()
    if value and path:
        raise UserError(f"feature store: set {name} or {name}_FILE, not both")
    if path and not Path(path).exists():
        # the pipelines mount the cluster store's Secret as optional: no Secret (a local-store install) is no file
        return value or None
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as e:
            raise UserError(f"feature store: {name}_FILE={path}: {e.strerror or e}") from None
        if not value:
            raise UserError(f"feature store: {name}_FILE={path} is empty")
    return value or None


def _postgres(url: str) -> dict:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise UserError(
            f"{POSTGRES_ENV}: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE, got scheme '{scheme}'"
        )
    database = unquote(parts.path.lstrip("/"))
    try:
        port = parts.port or 5432
    except ValueError:
        raise UserError(f"{POSTGRES_ENV}: the port is not a number") from None
    if not parts.hostname or not database or not parts.username:
        what = "host" if not parts.hostname else "database" if not database else "user"
        raise UserError(f"{POSTGRES_ENV}: no {what} in the URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"sslmode"})
    if unknown:
        raise UserError(f"{POSTGRES_ENV}: unsupported URL parameter '{unknown[0]}' (only sslmode)")
    sslmode = query.get("sslmode", ["prefer"])[-1]
    if sslmode not in SSL_MODES:
        raise UserError(f"{POSTGRES_ENV}: sslmode '{sslmode}' is not one of {', '.join(SSL_MODES)}")
    return {
        "host": parts.hostname,
        "port": port,
        "database": database,
        "user": unquote(parts.username),
        "password": unquote(parts.password or ""),
        "sslmode": sslmode,
    }


def _redis(url: str) -> dict:
    """Feast's Redis connection string ("host:port,db=N,password=...,ssl=true") from a redis:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise UserError(f"{REDIS_ENV}: expected redis://[:PASSWORD@]HOST:PORT[/DB], got scheme '{parts.scheme}'")
    try:
        port = parts.port or 6379
    except ValueError:
        raise UserError(f"{REDIS_ENV}: the port is not a number") from None
    if not parts.hostname:
        raise UserError(f"{REDIS_ENV}: no host in the URL (redis://[:PASSWORD@]HOST:PORT[/DB])")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise UserError(f"{REDIS_ENV}: the database '{db}' is not a number")
    fields = [f"{parts.hostname}:{port}", f"db={db}"]
    password = unquote(parts.password or "")
    if parts.username and password:  # Redis 6 ACL user; redis://:PASSWORD@HOST is the default user
        fields.append(f"username={unquote(parts.username)}")
    if password:
        # Feast splits its connection string on "," and reads each value as JSON.
        if "," in password or password[:1] in '[{"' or password.strip() != password:
            raise UserError(f"{REDIS_ENV}: the password must not contain ',' nor start with a quote or bracket")
        fields.append(f"password={password}")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    return {"connection_string": ",".join(fields), "where": f"{parts.hostname}:{port}/{db}"}
