"""A pipeline's options are its steps' specs: every pipeline parameter that feeds a spec field means what
that field's default means, so the pipelines cannot drift from the CLI and the components.

Training options are compared by the TrainSpec they select (a pipeline may spell the default out, e.g.
`temperature=2.0` for the spec's 0 = "the default"); the others by value. A few differ on purpose, for
the cluster: listed below with the reason."""

from __future__ import annotations

import pytest

from taskloom.errors import UserError
from taskloom.kfp import load_pipeline, pipeline_names
from taskloom.specs import (
    TRAIN_OPTIONS,
    DeploySpec,
    GateSpec,
    GenerateSpec,
    JointTrainRunSpec,
    MergeStepSpec,
    TrainRunSpec,
)

# pipeline parameter → (spec, field)
FEEDS = {
    "max_steps": (JointTrainRunSpec, "max_steps"),
    "epochs": (JointTrainRunSpec, "epochs"),
    "rank": (JointTrainRunSpec, "rank"),
    "base": (JointTrainRunSpec, "base"),
    "device": (JointTrainRunSpec, "device"),
    "seed": (JointTrainRunSpec, "seed"),
    "sampling": (JointTrainRunSpec, "sampling"),
    "temperature": (JointTrainRunSpec, "temperature"),
    "mixing": (JointTrainRunSpec, "mixing"),
    "adapter_id": (TrainRunSpec, "adapter_id"),
    "nodes": (TrainRunSpec, "nodes"),
    "merge_method": (MergeStepSpec, "method"),
    "merge_parameters": (MergeStepSpec, "parameters"),
    "share": (GateSpec, "share"),
    "model_name": (GateSpec, "model_name"),
    "head_task": (DeploySpec, "head_task"),
    "server_url": (DeploySpec, "server_url"),
    "model_deployment": (DeploySpec, "model_deployment"),
    "model_deployment_namespace": (DeploySpec, "namespace"),
    "shots": (GenerateSpec, "shots"),
    "min_gain": (GenerateSpec, "min_gain"),
}
ON_PURPOSE = {
    "feature_repo": "in a cluster the Feast repository is on the shared claim (pipelines/placement.py)",
    "model_repository": "in a cluster Triton serves the shared claim's model repository",
    "gpus_per_node": "a pipeline trains on its GPU node; the step spec's 0 is one CPU worker",
    "tasks": "the data, not an option",
    "task": "the data, not an option",
    "generator": "in a cluster the generator is a folder on the shared claim (pipelines/generate_deploy.py)",
}


@pytest.mark.parametrize("name", pipeline_names())
def test_pipeline_parameters_mean_their_specs_defaults(name):
    inputs = load_pipeline(name).component_spec.inputs or {}
    for param, spec_input in inputs.items():
        if param in ON_PURPOSE:
            continue
        assert param in FEEDS, f"{name}: parameter {param!r} feeds no spec field (add it to FEEDS or ON_PURPOSE)"
        spec, field = FEEDS[param]
        default = spec_input.default
        if field in TRAIN_OPTIONS:
            assert spec(**{field: default}).train_spec() == spec().train_spec(), f"{name}: {param}={default!r}"
        else:
            assert default == spec.model_fields[field].default, f"{name}: {param}={default!r}"


def test_a_changed_default_is_caught():
    """The check has teeth: a pipeline default that selects another training setting is not the spec's."""
    assert JointTrainRunSpec(temperature=3.0).train_spec() != JointTrainRunSpec().train_spec()
    assert JointTrainRunSpec(temperature=2.0).train_spec() == JointTrainRunSpec().train_spec()


def test_sampling_reaches_the_train_spec_and_a_bad_value_is_one_clear_error():
    assert TrainRunSpec(sampling="grouped").train_spec().sampling == "grouped"
    assert TrainRunSpec().train_spec().sampling == "random"
    with pytest.raises(UserError, match="sampling"):
        TrainRunSpec(sampling="sorted").train_spec()
