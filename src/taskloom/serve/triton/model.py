"""Triton python-backend model for taskloom encoders: TEXT (BYTES, batched) → EMBEDDING (FP32,
L2-normalised), plus LABEL (BYTES) and PROBS (FP32) when a classification head is served.

A request may carry the parameter `adapter` (a LoRA adapter served by this model; absent = the base):
`client.infer("taskloom", inputs, parameters={"adapter": "rt-sentiment"})`.

Every text served counts in the custom metric taskloom_served_requests_total{task, adapter, version}
on Triton's metrics port (/metrics, 8002 by default), and is appended to the request log when the
server's environment names one (`taskloom.serve.requests_log`).

Thin on purpose: the logic lives in `taskloom.serve.backend`, which the platform tests in-process.
`taskloom.serve.repository.build_repository` copies this file to <repo>/<model>/<version>/model.py.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from taskloom.metrics import METRICS, SERVED_REQUESTS
from taskloom.serve.backend import EncoderBackend


def request_adapter(request):
    """The request's `adapter` parameter (None when absent)."""
    try:
        params = json.loads(request.parameters() or "{}")
    except (TypeError, ValueError):
        return None
    return params.get("adapter") if isinstance(params, dict) else None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.backend = EncoderBackend.from_triton(version_dir, config)
        self.outputs = [o["name"] for o in config["output"]]
        self.family = pb_utils.MetricFamily(
            name=SERVED_REQUESTS, description=METRICS[SERVED_REQUESTS][2], kind=pb_utils.MetricFamily.COUNTER
        )
        self.counters = {}  # (task, adapter) -> Metric

    def count(self, task, adapter, n):
        key = (task, adapter or "")
        if key not in self.counters:
            labels = {"task": key[0], "adapter": key[1], "version": self.backend.version}
            self.counters[key] = self.family.Metric(labels=labels)
        self.counters[key].increment(n)

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy() for r in requests]
        adapters = [request_adapter(r) for r in requests]
        results, served = self.backend.serve(inputs, adapters)
        for s in served:
            self.count(s.task, s.adapter, len(s.texts))
        responses = []
        for result in results:
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result)))
            else:
                tensors = [pb_utils.Tensor(n, result[n]) for n in self.outputs if n in result]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.counters = {}  # each Metric goes before its MetricFamily
        self.family = None
        self.backend = None
