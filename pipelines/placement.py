"""Where pipeline steps run in a cluster: GPU nodes of the NVIDIA GPU Operator, the shared volume,
offline Hugging Face settings. kfp.local ignores all of it (resources with a warning, kfp-kubernetes
settings silently); the compiled YAML keeps it."""

from kfp import kubernetes

from taskloom.environment import OFFLINE_ENV

GPU_RESOURCE = "nvidia.com/gpu"
# Read by taskloom.train.device (kept as a literal: compiling pipelines must not import torch-side code).
REQUIRE_CUDA_ENV = "TASKLOOM_REQUIRE_CUDA"
# The GPU Operator's feature discovery labels every GPU node with this, and GPU nodes carry the taint.
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TAINT_KEY = "nvidia.com/gpu"
# One ReadWriteMany claim holds the Feast repository and the Triton model repository; the Helm chart
# creates it (persistence.claimName) and mounts it into Triton and the Feast server at the same path.
SHARED_PVC = "taskloom-shared"
SHARED_MOUNT = "/mnt/taskloom"
FEATURE_REPO = f"{SHARED_MOUNT}/feature_repo"
MODEL_REPOSITORY = f"{SHARED_MOUNT}/model_repository"


def offline(task):
    """Nothing downloads at run time: the image carries the models."""
    for k, v in OFFLINE_ENV.items():
        task.set_env_variable(k, v)
    return task


def on_cpu(task, cpu: str = "1", memory: str = "4Gi"):
    return task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)


def on_gpu(task, cpu: str = "4", memory: str = "16Gi"):
    """One GPU on a GPU Operator node: resource limit, node selector and the taint's toleration, and
    TASKLOOM_REQUIRE_CUDA=1: in a pod, the step then stops with one line (exit 2 from the CLI) when it
    finds no CUDA instead of training on the CPU (taskloom.train.device; kfp.local grants no GPU and
    is not held to it)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    task.set_env_variable(REQUIRE_CUDA_ENV, "1")
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
    return task


# The Secret holding Triton's model-control key (chart values triton.adminKey.secret): the deploy step sends
# it as a header (taskloom.serve.admin reads TASKLOOM_TRITON_ADMIN_KEY), or Triton refuses load/unload.
TRITON_ADMIN_SECRET = ("taskloom-triton-admin", "key")
TRITON_ADMIN_KEY_ENV = "TASKLOOM_TRITON_ADMIN_KEY"


def with_triton_admin_key(task):
    """Triton's model-control key from its Secret, as TASKLOOM_TRITON_ADMIN_KEY."""
    name, key = TRITON_ADMIN_SECRET
    kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env={key: TRITON_ADMIN_KEY_ENV})
    return task


def with_shared_volume(task):
    """Mount the shared claim (Feast repository, Triton model repository) and, where the chart runs the
    cluster feature store, its connections (`with_feast_connections`)."""
    kubernetes.mount_pvc(task, pvc_name=SHARED_PVC, mount_path=SHARED_MOUNT)
    return with_feast_connections(task)


# The cluster feature store's connections (taskloom.store.backends): a Secret with the keys postgres-url and
# redis-url, the same one the chart's feast.registry / feast.onlineStore name. Mounted as optional: an install
# with the local (file) store has no such Secret, and the steps then use the repository on the shared volume.
FEAST_SECRET = ("taskloom-feast", "/etc/taskloom/feast")


def with_feast_connections(task):
    """The cluster store's PostgreSQL and Redis URLs, from their Secret as files, when it exists."""
    name, path = FEAST_SECRET
    kubernetes.use_secret_as_volume(task, secret_name=name, mount_path=path, optional=True)
    task.set_env_variable("TASKLOOM_FEAST_POSTGRES_URL_FILE", f"{path}/postgres-url")
    task.set_env_variable("TASKLOOM_FEAST_REDIS_URL_FILE", f"{path}/redis-url")
    return task
