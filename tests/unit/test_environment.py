"""The one environment module: offline settings in one place, the user's own values kept."""

import os

from taskloom.environment import LOCAL_ENV, OFFLINE_ENV, apply_local_env


def test_local_env_is_offline_and_keeps_what_the_user_set(monkeypatch):
    for key in LOCAL_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    apply_local_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert OFFLINE_ENV.items() <= LOCAL_ENV.items()


def test_pipeline_pods_get_exactly_the_offline_env():
    from taskloom_pipelines.placement import offline

    class Task:
        def __init__(self):
            self.env = {}

        def set_env_variable(self, k, v):
            self.env[k] = v

    assert offline(Task()).env == OFFLINE_ENV
