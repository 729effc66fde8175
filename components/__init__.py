"""KFP components: one file per pipeline step, each a lightweight `@dsl.component` whose body maps
artifact paths and its flat parameters (a spec of taskloom.specs) to one call of `taskloom.steps`, so
it runs the same under kfp.local, in a cluster, from the CLI and in the demo. README.md lists them
(`python -m taskloom_components.table` writes it).

IMAGE is the one container image every step runs in: it holds taskloom, its dependencies and kfp
(built by scripts/images.sh; its name and tag come from taskloom.images)."""

from taskloom import images
from taskloom.specs import (
    DeploySpec,
    DriftSpec,
    GateSpec,
    GenerateSpec,
    JointTrainRunSpec,
    MergeStepSpec,
    ProfileSpec,
    TrainRunSpec,
)

IMAGE = images.PLATFORM

# Each component's options: its parameters, besides artifacts and the data inputs below, are exactly
# its spec's fields, with the same defaults (tests/components/test_component_specs.py holds them to it).
SPECS = {
    "profile_task": ProfileSpec,
    "train_adapter": TrainRunSpec,
    "train_joint_adapter": JointTrainRunSpec,
    "merge_adapters": MergeStepSpec,
    "gate_model": GateSpec,
    "deploy_model": DeploySpec,
    "deploy_adapter": DeploySpec,
    "generate_adapter": GenerateSpec,
    "drift_check": DriftSpec,
}
# Parameters that are the data a component works on, not options.
DATA_PARAMETERS = {"task_list": ("tasks",), "export_task": ("task",), "drift_check": ("reference", "current")}
