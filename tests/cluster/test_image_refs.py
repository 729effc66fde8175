"""Image references come from one place, src/taskloom/images.py: the chart's defaults (tag = the
chart's appVersion), the compiled pipelines and the tags `make images` builds agree with it (the cluster tier's test_images checks the built tags)."""

from __future__ import annotations

import yaml
from test_kfp_chart import CHART, REPO, render

from taskloom import images


def test_chart_defaults_are_the_images_module_refs():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == images.TAG
    refs = {c["image"] for d in render() if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]}
    assert refs == {images.PLATFORM, images.TRITON}
    assert f"ghcr.io/taskloom/taskloom:{images.TAG}" == images.PLATFORM


def test_compiled_pipelines_run_the_platform_image():
    for path in sorted((REPO / "pipelines" / "compiled").glob("*.yaml")):
        spec = next(yaml.safe_load_all(path.read_text()))
        used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert used == {images.PLATFORM}, path.name

