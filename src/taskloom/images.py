"""The names and tag of taskloom's container images, in one place.

The pipeline components run in PLATFORM (components.IMAGE), the serving tier in TRITON; scripts/images.sh
builds and tags both from here. The registry defaults to ghcr.io/taskloom ($TASKLOOM_IMAGE_REGISTRY
overrides it); the tag is taskloom's package version (pyproject.toml).

    python -m taskloom.images            # "taskloom <ref>" and "taskloom-triton <ref>", one per line
    python -m taskloom.images platform   # one ref
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from taskloom import __version__

DEFAULT_REGISTRY = "ghcr.io/taskloom"
REGISTRY_ENV = "TASKLOOM_IMAGE_REGISTRY"
PLATFORM_NAME = "taskloom"
TRITON_NAME = "taskloom-triton"


def version() -> str:
    """pyproject.toml's version in a source checkout, else the installed distribution's."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):  # tomllib: Python 3.11+
        import tomllib

        with open(pyproject, "rb") as f:
            project = tomllib.load(f).get("project", {})
        if project.get("name") == "taskloom" and project.get("version"):
            return str(project["version"])
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("taskloom")
    except PackageNotFoundError:
        return __version__


def registry() -> str:
    return (os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).rstrip("/")


def ref(name: str) -> str:
    """`<registry>/<name>:<version>`."""
    return f"{registry()}/{name}:{version()}"


TAG = version()
PLATFORM = ref(PLATFORM_NAME)
TRITON = ref(TRITON_NAME)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    refs = {"platform": (PLATFORM_NAME, ref(PLATFORM_NAME)), "triton": (TRITON_NAME, ref(TRITON_NAME))}
    if not args:
        for name, r in refs.values():
            print(name, r)
        return 0
    if len(args) == 1 and args[0] in refs:
        print(refs[args[0]][1])
        return 0
    print("usage: python -m taskloom.images [platform|triton]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
