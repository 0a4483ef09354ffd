import pytest
from tiny_models import TINY_SHAPE, tiny_model


@pytest.fixture(scope="session")
def tiny_pt2(tmp_path_factory):
    """The tiny PENNI net as a .pt2 file (input shape recorded)."""
    from tiny_models import save_pt2

    return save_pt2(tiny_model(), tmp_path_factory.mktemp("tune") / "tiny.pt2")


@pytest.fixture(scope="session")
def x86():
    from penni_deploy.targets import get_target

    return get_target("x86")


__all__ = ["TINY_SHAPE"]
