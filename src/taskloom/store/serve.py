"""Serve the task store's features over HTTP (Feast's feature server), on the store's own backend.

    python -m taskloom.store.serve --repo /srv/feature_repo --host 0.0.0.0 --port 6566

`feast -c REPO serve` reads feature_store.yaml; in a cluster the configuration holds passwords, comes
from the environment (taskloom.store.backends) and is never written to a file, so the chart starts the
server here. The repository is opened (and applied, when new) first, as every writer does.
"""

from __future__ import annotations

import argparse
import sys

from taskloom.errors import UserError
from taskloom.store.feature_store import TaskStore, quiet_feast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskloom.store.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="the feature repository folder (local backend: its data)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6566)
    args = parser.parse_args(argv)
    try:
        store = TaskStore(args.repo)
        fs = store.fs
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with quiet_feast():
        fs.serve(host=args.host, port=args.port, no_access_log=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
