import numpy as np
import pytest
import tvm


@pytest.fixture(scope="session")
def cpu_target():
    from penni_deploy.targets import get_target

    return get_target("x86")


@pytest.fixture(scope="session")
def run_primfunc(cpu_target):
    """Compile a PrimFunc for the host and run it on NumPy arrays; returns the last argument."""

    def run(func, *arrays):
        lib = tvm.compile(func, target=cpu_target.tvm_target)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
        lib(*args)
        return args[-1].numpy()

    return run
