"""Triton python-backend model for taskloom encoders: TEXT (BYTES, batched) → EMBEDDING (FP32,
L2-normalised), plus LABEL (BYTES) and PROBS (FP32) when a classification head is served.

A request may carry the parameter `adapter` (a LoRA adapter served by this model; absent = the base):
`client.infer("taskloom", inputs, parameters={"adapter": "rt-sentiment"})`.

Thin on purpose: the logic lives in `taskloom.serve.backend`, which the platform tests in-process.
`taskloom.serve.repository.build_repository` copies this file to <repo>/<model>/<version>/model.py.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

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

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy() for r in requests]
        adapters = [request_adapter(r) for r in requests]
        responses = []
        for result in self.backend.execute(inputs, adapters):
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result)))
            else:
                tensors = [pb_utils.Tensor(n, result[n]) for n in self.outputs if n in result]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.backend = None
