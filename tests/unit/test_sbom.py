"""`scripts/sbom.py` (make sbom): CycloneDX SBOMs of both Python environments, with what is really installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pinned(name: str) -> str:
    """The version requirements/platform.txt pins (torch's is in the header comment: installed on its own)."""
    text = (REPO / "requirements" / "platform.txt").read_text()
    m = re.search(rf"\b{re.escape(name)}==([0-9][^\s,;]*)", text)
    assert m, f"{name} not pinned"
    return m.group(1).rstrip(".")


@pytest.mark.e2e  # runs cyclonedx-py on both interpreters (tens of seconds)
def test_environment_sboms(tmp_path):
    out = tmp_path / "sbom"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sbom.py"), "--out", str(out), "--only", "environments"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    torch = pinned("torch")
    for label, numpy_major in (("venv", "2"), ("venv-triton", "1")):
        bom = json.loads((out / f"{label}.cdx.json").read_text())
        assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"].startswith("1.")
        versions = {c["name"].lower(): c.get("version", "") for c in bom["components"]}
        assert versions["torch"].split("+")[0] == torch, (label, versions["torch"])
        assert versions["numpy"].split(".")[0] == numpy_major  # each environment's own numpy (Triton's is <2)
        purls = {c["name"].lower(): c.get("purl", "") for c in bom["components"]}
        assert purls["torch"].startswith("pkg:pypi/torch@")
    assert sorted(p.name for p in out.iterdir()) == [
        "venv-triton.cdx.json",
        "venv.cdx.json",
    ]  # nothing half-written left


def test_image_sbom_reads_layers_and_whiteouts(tmp_path):
    """A two-layer docker archive: dpkg status and dist-info from the layers, a whiteout removing one."""
    import io
    import tarfile

    sys.path.insert(0, str(REPO / "scripts"))
    import sbom

    def layer(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    status = b"Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
    meta = lambda n, v: f"Metadata-Version: 2.1\nName: {n}\nVersion: {v}\n".encode()  # noqa: E731
    site = "usr/lib/python3/dist-packages"
    layers = {
        "l1/layer.tar": layer(
            {
                "var/lib/dpkg/status": status,
                f"{site}/torch-2.13.0.dist-info/METADATA": meta("torch", "2.13.0"),
                f"{site}/old-1.0.dist-info/METADATA": meta("old", "1.0"),
            }
        ),
        "l2/layer.tar": layer(
            {f"{site}/.wh.old-1.0.dist-info": b"", f"{site}/numpy-1.26.4.dist-info/METADATA": meta("numpy", "1.26.4")}
        ),
    }
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as t:
        for name, data in {**layers, "manifest.json": json.dumps([{"Layers": list(layers)}]).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    debs, python = sbom.image_packages(archive)
    assert debs == {"bash": "5.2.15-2"}
    assert python == {"torch": "2.13.0", "numpy": "1.26.4"}
    bom = json.loads(sbom.image_sbom(archive, tmp_path / "img.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and len(bom["components"]) == 3
