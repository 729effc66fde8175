"""Shared test setup: strictly offline, quiet, deterministic thread counts."""

import os

for k, v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # idle torch (OpenMP) threads sleep rather than spin: on 2 busy shared cores spinning made an
    # in-process MiniLM test 70x slower (32 s vs 0.44 s); read when torch loads, so set before it
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(k, v)
