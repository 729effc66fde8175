"""S3-compatible object storage for model repositories, adapters and run artifacts (no shared volume needed).

    push_dir("repo", "s3://models/repo")          # only changed objects go up; the marker object last
    pull("s3://models/repo", "/models")           # only changed objects come down; version folders whole

Where and who, as the AWS tools read them: the endpoint from AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3;
unset = AWS S3), credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file
(AWS_SHARED_CREDENTIALS_FILE: a mounted Secret), the region from AWS_DEFAULT_REGION (default us-east-1).

A pushed folder is consistent for readers: every object is written before the marker object
`.taskloom-manifest.json` (each file's sha256 and size), and in a model repository the files of version
folders (`<model>/<N>/...`) go before any `config.pbtxt`, which names the version Triton serves. So
Triton reading the bucket itself (`s3://host:port/bucket/prefix`) and `pull` (which follows the marker)
never see half a version. `pull` writes each changed version folder under a temp name and renames it
into place; other files are replaced atomically, `config.pbtxt` last.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskloom.artifacts import publish_dir, sha256_file, staging_dir, write_json
from taskloom.errors import UserError

SCHEME = "s3://"
MANIFEST = ".taskloom-manifest.json"  # the marker: written last, lists every object of the pushed folder
SYNC_STATE = ".taskloom-sync.json"  # beside a pulled copy: what was downloaded (sha256, size, mtime)
TRIGGER_LAST = "config.pbtxt"  # names the served version: uploaded and replaced after everything else
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PULL_TRIES = 3


@dataclass(frozen=True)
class S3Url:
    """s3://bucket/prefix, the prefix without slashes at either end ("" = the whole bucket)."""

    bucket: str
    prefix: str = ""

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def child(self, rel: str) -> S3Url:
        return S3Url(self.bucket, self.key(rel.strip("/")))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def is_s3(location: str | os.PathLike) -> bool:
    return str(location).startswith(SCHEME)


def parse_url(url: str | S3Url) -> S3Url:
    """`s3://bucket/prefix` → S3Url; anything else is a UserError naming the URL."""
    if isinstance(url, S3Url):
        return url
    text = str(url)
    if not text.startswith(SCHEME):
        raise UserError(f"{text}: not an S3 URL (expected s3://bucket/prefix)")
    bucket, _, prefix = text[len(SCHEME) :].partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise UserError(f"{text}: bad bucket name {bucket!r} (3-63 of a-z, 0-9, '.', '-'; expected s3://bucket/prefix)")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UserError(f"{text}: bad prefix {prefix!r} (empty, '.' or '..' parts)")
    return S3Url(bucket, prefix)


def endpoint_url() -> str | None:
    """The S3 endpoint the AWS tools would use: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS S3."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def triton_url(url: str | S3Url, endpoint: str | None = None) -> str:
    """The same location as Triton's --model-repository takes it: s3://bucket/prefix for AWS S3, and
    s3://http://host:port/bucket/prefix for another endpoint (Triton needs the port written out)."""
    loc = parse_url(url)
    endpoint = endpoint if endpoint is not None else endpoint_url()
    if not endpoint:
        return str(loc)
    m = re.match(r"^(https?)://([^/:]+)(?::(\d+))?/?$", endpoint)
    if not m:
        raise UserError(f"S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
    port = m.group(3) or ("443" if m.group(1) == "https" else "80")
    return f"{SCHEME}{m.group(1)}://{m.group(2)}:{port}/{loc.bucket}" + (f"/{loc.prefix}" if loc.prefix else "")


def client(endpoint: str | None = None) -> Any:
    """A boto3 S3 client configured as the AWS tools are; no credentials at all is a UserError. One per
    endpoint and AWS_* environment (making one takes ~0.2 s)."""
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _client(endpoint or endpoint_url(), aws_env)


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, aws_env: tuple) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise UserError(
            "S3: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE"
        )
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


@contextlib.contextmanager
def s3_errors(url: S3Url | str) -> Iterator[None]:
    """botocore's exceptions → one-line UserErrors naming the URL (bucket, credentials, endpoint)."""
    from botocore import exceptions as bx

    try:
        yield
    except bx.NoCredentialsError:
        raise UserError(f"{url}: no S3 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)") from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as e:
        raise UserError(f"{url}: cannot reach the S3 endpoint ({type(e).__name__}: {e})") from None
    except bx.ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        bucket = parse_url(url).bucket if is_s3(str(url)) else "?"
        if code == "NoSuchBucket":
            raise UserError(f"{url}: no such bucket {bucket!r}") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
            raise UserError(f"{url}: access denied ({code}): check the S3 credentials") from None
        raise UserError(f"{url}: S3 error {code}: {err.get('Message', e)}") from None
    except bx.BotoCoreError as e:
        raise UserError(f"{url}: S3: {e}") from None


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


def list_objects(url: str | S3Url, s3: Any = None) -> dict[str, ObjectInfo]:
    """Every object under the prefix: {path relative to the prefix: ObjectInfo}. A missing bucket is a UserError."""
    loc = parse_url(url)
    s3 = s3 or client()
    out: dict[str, ObjectInfo] = {}
    with s3_errors(loc):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, **({"Prefix": loc.prefix + "/"} if loc.prefix else {})
        )
        for page in pages:
            for obj in page.get("Contents", []):
                out[loc.rel(obj["Key"])] = ObjectInfo(int(obj["Size"]), str(obj["ETag"]).strip('"'))
    return out


def get_bytes(url: str | S3Url, rel: str, s3: Any = None) -> bytes | None:
    """One object's bytes, None when it does not exist."""
    loc = parse_url(url)
    s3 = s3 or client()
    with s3_errors(loc):
        try:
            return s3.get_object(Bucket=loc.bucket, Key=loc.key(rel))["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None


def put_bytes(url: str | S3Url, rel: str, data: bytes, s3: Any = None) -> None:
    loc = parse_url(url)
    s3 = s3 or client()
    with s3_errors(loc):
        s3.put_object(
            Bucket=loc.bucket, Key=loc.key(rel), Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()}
        )


def read_marker(url: str | S3Url, s3: Any = None) -> dict | None:
    """The marker object of the last complete push (None: nothing pushed by taskloom here)."""
    data = get_bytes(url, MANIFEST, s3)
    if data is None:
        return None
    try:
        marker = json.loads(data)
        if not isinstance(marker.get("files"), dict):
            raise ValueError("no files")
    except ValueError as e:
        raise UserError(f"{parse_url(url).child(MANIFEST)}: not a taskloom manifest ({e})") from None
    return marker


def write_marker(url: str | S3Url, files: dict[str, dict], s3: Any = None) -> None:
    marker = {"format": 1, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
    put_bytes(url, MANIFEST, json.dumps(marker, indent=1, sort_keys=True).encode(), s3)


def delete_keys(url: str | S3Url, rels: list[str], s3: Any = None) -> int:
    """Delete these objects (paths relative to the prefix), 1000 per request; returns how many."""
    loc = parse_url(url)
    s3 = s3 or client()
    rels = sorted(set(rels))
    with s3_errors(loc):
        for i in range(0, len(rels), 1000):
            batch = [{"Key": loc.key(r)} for r in rels[i : i + 1000]]
            resp = s3.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise UserError(f"{loc}: cannot delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
    return len(rels)


def delete_prefix(url: str | S3Url, s3: Any = None) -> int:
    """Delete every object under the prefix (the marker first, so no reader follows it meanwhile)."""
    s3 = s3 or client()
    rels = list(list_objects(url, s3))
    if MANIFEST in rels:
        delete_keys(url, [MANIFEST], s3)
    return delete_keys(url, [r for r in rels if r != MANIFEST], s3)


# -- pushing a folder ----------------------------------------------------------------------------


def version_unit(rel: str) -> str | None:
    """The version folder a file belongs to (`<model>/<N>` for `<model>/<N>/...`), else None."""
    parts = rel.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and i > 0:
            return "/".join(parts[: i + 1])
    return None


def upload_order(rel: str) -> tuple[int, str]:
    """Files of version folders first, then the rest, every config.pbtxt last."""
    if rel.rsplit("/", 1)[-1] == TRIGGER_LAST:
        return (2, rel)
    return (0 if version_unit(rel) else 1, rel)


def local_files(root: Path) -> dict[str, Path]:
    """Files under `root` (symlinks followed), by path relative to it; hidden names (locks, staging) skipped."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                p = Path(dirpath) / name
                out[p.relative_to(root).as_posix()] = p
    return out


def push_dir(
    local: str | os.PathLike,
    url: str | S3Url,
    *,
    delete: bool = False,
    on_object: Callable[[str, str], None] | None = None,
    s3: Any = None,
) -> dict:
    """Upload the folder `local` under the prefix; objects whose sha256 is unchanged are skipped, objects
    whose content exists under another key are copied server-side. The marker goes last; with `delete`,
    objects no longer in the folder are removed after it. on_object(action, path) is called per object.
    Returns {"url", "uploaded", "copied", "unchanged", "deleted"}."""
    loc = parse_url(url)
    root = Path(local)
    files = local_files(root)
    s3 = s3 or client()
    listed = list_objects(loc, s3)
    old = read_marker(loc, s3) if MANIFEST in listed else None
    remote = {
        rel: info
        for rel, info in ((old or {}).get("files") or {}).items()
        if rel in listed and listed[rel].size == info.get("size")
    }
    by_digest = {info["sha256"]: rel for rel, info in remote.items() if info.get("sha256")}
    state = _read_state(root)
    new: dict[str, dict] = {}
    report: dict[str, Any] = {"url": str(loc), "uploaded": 0, "copied": 0, "unchanged": 0, "deleted": 0}
    with s3_errors(loc):
        for rel in sorted(files, key=upload_order):
            path = files[rel]
            st = path.stat()
            digest = _local_digest(path, state.get(rel)) or sha256_file(path)
            new[rel] = {"sha256": digest, "size": st.st_size}
            state[rel] = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if remote.get(rel, {}).get("sha256") == digest:
                report["unchanged"] += 1
                continue
            extra = {"Metadata": {"sha256": digest}}
            if digest in by_digest:
                s3.copy_object(
                    Bucket=loc.bucket,
                    Key=loc.key(rel),
                    CopySource={"Bucket": loc.bucket, "Key": loc.key(by_digest[digest])},
                    MetadataDirective="REPLACE",
                    **extra,
                )
                action = "copied"
            else:
                s3.upload_file(str(path), loc.bucket, loc.key(rel), ExtraArgs=extra)
                by_digest[digest] = rel
                action = "uploaded"
            report[action] += 1
            if on_object is not None:
                on_object(action, rel)
    write_marker(loc, new, s3)
    write_json(root / SYNC_STATE, {"url": str(loc), "files": {r: state[r] for r in new}}, digest=False)
    if delete:
        gone = [rel for rel in listed if rel not in new and rel != MANIFEST]
        report["deleted"] = delete_keys(loc, gone, s3)
        if on_object is not None:
            for rel in gone:
                on_object("deleted", rel)
    return report


# -- pulling a prefix ----------------------------------------------------------------------------


class _Moved(Exception):
    """An object's content differs from the marker read before it: a push is under way; read again."""


def _read_state(root: Path) -> dict[str, dict]:
    try:
        return json.loads((root / SYNC_STATE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _local_digest(path: Path, recorded: dict | None) -> str | None:
    """sha256 of a local file: the recorded one while size and mtime still match, else computed."""
    try:
        st = path.stat()
    except OSError:
        return None
    if recorded and recorded.get("size") == st.st_size and recorded.get("mtime_ns") == st.st_mtime_ns:
        return recorded.get("sha256")
    return sha256_file(path)


def _download(s3: Any, loc: S3Url, rel: str, dst: Path, want: dict) -> None:
    """Object → dst (a temp name beside it, renamed), checked against the marker's sha256 and size."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    os.close(fd)
    try:
        try:
            s3.download_file(loc.bucket, loc.key(rel), tmp)
        except s3.exceptions.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                raise _Moved(rel) from None
            raise
        if want.get("sha256") and sha256_file(tmp) != want["sha256"]:
            raise _Moved(rel)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_version_folder(path: Path) -> None:
    """Rename a version folder to a hidden name first (Triton ignores it at once), then delete it."""
    hidden = path.with_name(f".{path.name}.removed.{os.getpid()}")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _pull_once(s3: Any, loc: S3Url, root: Path, delete: bool, on_object) -> dict:
    marker = read_marker(loc, s3)
    if marker is None:  # not pushed by taskloom: every object, compared by size + ETag
        files = {r: {"size": i.size, "etag": i.etag} for r, i in list_objects(loc, s3).items()}
    else:
        files = marker["files"]
    for rel in files:  # a key is a path under root: never absolute, never climbing out
        if rel.startswith("/") or "\x00" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise UserError(f"{loc}: object {rel!r} is not a plain path under the prefix; refused")
    root.mkdir(parents=True, exist_ok=True)
    state = _read_state(root)
    new_state: dict[str, dict] = {}
    changed: list[str] = []
    for rel, want in files.items():
        local = root / rel
        rec = state.get(rel)
        if "sha256" in want:
            same = _local_digest(local, rec) == want["sha256"]
        else:
            same = rec is not None and rec.get("etag") == want.get("etag") and local.is_file()
            same = same and local.stat().st_size == want["size"]
        if same:
            new_state[rel] = rec or {}
        else:
            changed.append(rel)
    units: dict[str, list[str]] = {}
    singles = []
    for rel in changed:
        unit = version_unit(rel)
        if unit is None:
            singles.append(rel)
        else:
            units.setdefault(unit, []).append(rel)
    report: dict[str, Any] = {"url": str(loc), "downloaded": 0, "unchanged": len(files) - len(changed), "deleted": 0}
    with s3_errors(loc):
        for unit in sorted(units):  # a changed version folder: built beside it, renamed into place whole
            final = root / unit
            stage = staging_dir(final)
            try:
                for rel in sorted(r for r in files if version_unit(r) == unit):
                    dst = stage / rel[len(unit) + 1 :]
                    if rel in units[unit]:
                        _download(s3, loc, rel, dst, files[rel])
                        report["downloaded"] += 1
                        if on_object is not None:
                            on_object("downloaded", rel)
                    else:
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            os.link(root / rel, dst)
                        except OSError:
                            shutil.copy2(root / rel, dst)
                publish_dir(stage, final)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            for rel in files:
                if version_unit(rel) == unit:
                    new_state[rel] = {}
        for rel in sorted(singles, key=upload_order):
            _download(s3, loc, rel, root / rel, files[rel])
            report["downloaded"] += 1
            new_state[rel] = {}
            if on_object is not None:
                on_object("downloaded", rel)
    if delete:
        present = set(files)
        wanted_units = {version_unit(r) for r in present} - {None}
        for rel, path in local_files(root).items():
            if rel in present:
                continue
            unit = version_unit(rel)
            if unit is not None and unit not in wanted_units:
                if (root / unit).exists():
                    remove_version_folder(root / unit)
            else:
                path.unlink(missing_ok=True)
            report["deleted"] += 1
            if on_object is not None:
                on_object("deleted", rel)
    for rel, rec in new_state.items():  # record what is on disk now: the next pull hashes nothing unchanged
        path = root / rel
        if rec and rec.get("mtime_ns") == path.stat().st_mtime_ns:
            continue
        st = path.stat()
        want = files[rel]
        new_state[rel] = {
            "sha256": want.get("sha256") or sha256_file(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            **({"etag": want["etag"]} if "etag" in want else {}),
        }
    write_json(root / SYNC_STATE, {"url": str(loc), "files": new_state}, digest=False)
    return report


def pull(
    url: str | S3Url,
    local: str | os.PathLike,
    *,
    delete: bool = False,
    on_object: Callable[[str, str], None] | None = None,
    s3: Any = None,
) -> dict:
    """Bring the folder `local` in step with the prefix: only changed objects are downloaded (sha256 from
    the marker, or size + ETag without one); with `delete`, local files no longer there are removed.
    A push under way (an object newer than the marker) makes it read the marker again, up to 3 times.
    Returns {"url", "downloaded", "unchanged", "deleted"}."""
    loc = parse_url(url)
    root = Path(local)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder")
    s3 = s3 or client()
    for _ in range(PULL_TRIES):
        try:
            return _pull_once(s3, loc, root, delete, on_object)
        except _Moved:
            time.sleep(0.5)
    raise UserError(f"{loc}: kept changing while it was read ({PULL_TRIES} tries); try again")


def follow(
    url: str | S3Url,
    local: str | os.PathLike,
    interval: float,
    *,
    delete: bool = True,
    on_report: Callable[[dict], None] | None = None,
    rounds: int | None = None,
) -> None:
    """Pull every `interval` seconds (a sidecar keeping a local copy in step); `rounds` bounds it (tests).
    A round that fails (endpoint away, bucket changing) is reported as {"error": ...} and the next one tries
    again: the local copy stays as the last good round left it."""
    if interval <= 0:
        raise UserError(f"--interval {interval}: must be above 0")
    loc = parse_url(url)
    s3 = client()
    done = 0
    while rounds is None or done < rounds:
        try:
            report = pull(loc, local, delete=delete, s3=s3)
        except UserError as e:
            report = {"url": str(loc), "error": str(e)}
        if on_report is not None:
            on_report(report)
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval)


def cache_dir(url: str | S3Url) -> Path:
    """Where a working copy of `url` is kept between commands: $TASKLOOM_CACHE/s3/<bucket>/<prefix>."""
    loc = parse_url(url)
    root = Path(os.environ.get("TASKLOOM_CACHE") or "~/.cache/taskloom").expanduser()
    return root / "s3" / loc.bucket / (loc.prefix or "_")


def working_copy(location: str | os.PathLike) -> tuple[Path, Callable[[], None] | None]:
    """(folder, publish) for a repository: a local folder is itself (publish None); for s3:// the copy
    kept in cache_dir, pulled first, and a publish() that pushes it back (changed objects only, objects
    of removed files deleted). One writer at a time: nothing locks the bucket."""
    if not is_s3(str(location)):
        return Path(location), None
    loc = parse_url(str(location))
    s3 = client()
    local = cache_dir(loc)
    pull(loc, local, delete=True, s3=s3)

    def publish() -> None:
        push_dir(local, loc, delete=True, s3=s3)

    return local, publish
