"""CycloneDX JSON SBOMs of taskloom's two Python environments and its two images, into build/sbom/.

    .venv/bin/python scripts/sbom.py [--out build/sbom] [--only environments|images]

Environments (.venv, .venv-triton): `cyclonedx-py environment` (the cyclonedx-bom package) run on each
interpreter. Images (~/.cache/taskloom-images/*.tar, as `make images` saves them; nothing is built here):
each layer of the archive is read in order, whiteouts applied, and the packages of the final file system
listed: Debian's from var/lib/dpkg/status, Python's from every *.dist-info/METADATA. Writes venv.cdx.json,
venv-triton.cdx.json, taskloom.cdx.json and taskloom-triton.cdx.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import uuid
from datetime import datetime, timezone
from email.parser import HeaderParser
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENTS = {"venv": REPO / ".venv", "venv-triton": REPO / ".venv-triton"}
IMAGES = Path(os.environ.get("TASKLOOM_IMAGES_DIR", Path.home() / ".cache" / "taskloom-images"))
SPEC = "1.6"


def environment_sbom(venv: Path, out: Path) -> Path:
    """`cyclonedx-py environment` for the interpreter of `venv`, written atomically."""
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"error: {python} missing: run `make setup`")
    tool = Path(sys.executable).parent / "cyclonedx-py"
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run(
        [str(tool), "environment", "--sv", SPEC, "--of", "JSON", "--output-reproducible", "-o", str(tmp), str(python)],
        check=True,
    )
    os.replace(tmp, out)
    return out


def _layers(archive: Path) -> list[str]:
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
    return list(manifest[0]["Layers"])


def _normal(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def image_packages(archive: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({deb package: version}, {python distribution: version}) of the image's final file system."""
    dpkg_status: bytes | None = None
    dist: dict[str, tuple[str, str]] = {}  # dist-info folder -> (name, version)
    with tarfile.open(archive) as outer:
        for layer_name in _layers(archive):
            layer = outer.extractfile(layer_name)
            assert layer is not None
            with tarfile.open(fileobj=layer, mode="r|*") as tar:
                for m in tar:
                    name = _normal(m.name)
                    base = os.path.basename(name)
                    if base.startswith(".wh."):  # a whiteout: the lower layers' file or folder is gone
                        gone = os.path.join(os.path.dirname(name), base[4:])
                        if base == ".wh..wh..opq":
                            gone = os.path.dirname(name)
                        for key in [k for k in dist if k == gone or k.startswith(gone + "/")]:
                            del dist[key]
                        if gone in ("var/lib/dpkg/status", "var/lib/dpkg", "var/lib", "var"):
                            dpkg_status = None
                        continue
                    if name == "var/lib/dpkg/status" and m.isfile():
                        dpkg_status = tar.extractfile(m).read()  # type: ignore[union-attr]
                    elif name.endswith(".dist-info/METADATA") and m.isfile():
                        headers = HeaderParser().parsestr(tar.extractfile(m).read().decode("utf-8", "replace"))  # type: ignore[union-attr]
                        if headers.get("Name") and headers.get("Version"):
                            dist[os.path.dirname(name)] = (headers["Name"], headers["Version"])
    debs: dict[str, str] = {}
    for stanza in (dpkg_status or b"").decode("utf-8", "replace").split("\n\n"):
        fields = HeaderParser().parsestr(stanza)
        if fields.get("Package") and fields.get("Version") and "installed" in (fields.get("Status") or ""):
            debs[fields["Package"]] = fields["Version"]
    python = {n: v for n, v in dist.values()}
    return debs, python


def image_sbom(archive: Path, out: Path) -> Path:
    debs, python = image_packages(archive)
    components = [
        {
            "type": "library",
            "bom-ref": f"pkg:deb/debian/{n}@{quote(v)}",
            "name": n,
            "version": v,
            "purl": f"pkg:deb/debian/{n}@{quote(v)}",
        }
        for n, v in sorted(debs.items())
    ] + [
        {
            "type": "library",
            "bom-ref": f"pkg:pypi/{n.lower()}@{v}",
            "name": n,
            "version": v,
            "purl": f"pkg:pypi/{n.lower().replace('_', '-')}@{quote(v)}",
        }
        for n, v in sorted(python.items(), key=lambda kv: kv[0].lower())
    ]
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "component": {"type": "container", "bom-ref": archive.stem, "name": archive.stem},
        },
        "components": components,
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(bom, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "sbom")
    parser.add_argument("--only", choices=["environments", "images"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.only != "images":
        for label, venv in ENVIRONMENTS.items():
            written.append(environment_sbom(venv, args.out / f"{label}.cdx.json"))
    if args.only != "environments":
        archives = sorted(IMAGES.glob("*.tar"))
        if not archives:
            print(f"error: no image archives in {IMAGES}: run `make images`", file=sys.stderr)
            return 2
        for archive in archives:
            written.append(image_sbom(archive, args.out / f"{archive.stem}.cdx.json"))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
