"""Regenerate the golden compiled pipelines in pipelines/compiled/ (what a cluster runs).

python -m taskloom_pipelines.compile_all        # or: make golden
"""

from pathlib import Path

from taskloom.kfp import compile_pipeline, pipeline_names

COMPILED = Path(__file__).resolve().parent / "compiled"


def main() -> None:
    for name in pipeline_names():
        print(compile_pipeline(name, COMPILED / f"{name}.yaml"))


if __name__ == "__main__":
    main()
