"""The tiny model's artifact, compiled once for the runtime, thread and thread-pool tests (they
read it and write only copies)."""

import pytest
from tiny_models import save_pt2, tiny_model

import penni_deploy


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-artifact")
    out = folder / "tiny.penni"
    penni_deploy.compile_model(str(save_pt2(tiny_model(), folder / "tiny.pt2")), str(out))
    return out
