"""Triton's model-control API behind the admin key, on the real bundled tritonserver.

One server, restricted as the chart runs it (--http-restricted-api / --grpc-restricted-protocol on
model-repository): load, unload and the repository index without the header are refused over HTTP and
gRPC, and so is `deploy`; with the key they work; inference never needs it.
"""

from __future__ import annotations

import pytest

from taskloom.errors import UserError
from taskloom.serve.admin import KEY_ENV
from taskloom.serve.client import TritonClient
from taskloom.serve.deploy import deploy
from taskloom.serve.launcher import TritonServer
from taskloom.serve.repository import build_repository

pytestmark = pytest.mark.e2e  # tier: a real Triton server

KEY = "k3y-for-tests_0123456789abcdef"


def test_model_control_needs_the_admin_key_inference_does_not(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    repo = build_repository("minilm", tmp_path / "repo", max_batch_size=4)
    with TritonServer(repo, model_control="explicit", models=["*"], admin_key=KEY, log_dir=tmp_path / "logs") as s:
        for url, protocol in ((s.http_url, "http"), (s.grpc_url, "grpc")):
            with TritonClient(url, protocol=protocol) as open_client:
                assert open_client.infer(["a fine film"])["embedding"].shape == (1, 384)  # inference: open
                for call in (open_client.repository_index, open_client.unload_model, open_client.load_model):
                    with pytest.raises(UserError, match=KEY_ENV):
                        call()
            with TritonClient(url, protocol=protocol, admin_key="wrong-key") as wrong:
                with pytest.raises(UserError, match="refused"):
                    wrong.unload_model()
            assert open_client is not None
            with TritonClient(url, protocol=protocol) as c:
                assert c.is_model_ready()  # nothing above unloaded it

        with pytest.raises(UserError, match=KEY_ENV):  # the deploy path stops at its first model-control call
            deploy(repo, s.http_url, "minilm", timeout=30)

        with TritonClient(s.http_url, admin_key=KEY) as admin:  # the key: control works
            assert [m["name"] for m in admin.repository_index()] == ["taskloom"]
            admin.unload_model()
            assert not admin.is_model_ready()
            admin.load_model()
            assert admin.is_model_ready() and admin.infer(["a dull film"])["embedding"].shape == (1, 384)
        monkeypatch.setenv(KEY_ENV, KEY)  # what the chart's deploy step gets: the key in the environment
        with TritonClient(s.grpc_url, protocol="grpc") as admin:
            assert admin.repository_index()[0]["name"] == "taskloom"
            admin.load_model()
            assert admin.is_model_ready()
