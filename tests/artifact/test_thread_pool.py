"""The thread pool compiled into CPU artifacts (``artifact/thread_pool.cc``): installed on load, the
same numbers as TVM's pool, safe with concurrent callers, more threads than cores, and fork."""

import json
import os
import subprocess
import sys
import re
import threading
import zipfile

import numpy as np
import pytest
import tvm

import penni_deploy
from penni_deploy.artifact import threads
from penni_deploy.artifact.package import export_library
from penni_deploy.errors import InputSpecError


@pytest.fixture
def x(artifact):
    shape = penni_deploy.load(artifact, threads=1).input_shape
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.fixture(autouse=True)
def default_pool(monkeypatch):
    monkeypatch.delenv(threads.POOL_ENV, raising=False)


def test_kernels_run_on_the_artifacts_pool_with_tvms_numbers(artifact, x, monkeypatch):
    ours = penni_deploy.load(artifact, threads=2)
    assert ours.thread_pool == "penni" and ours.running_threads == 2
    before = ours._pool.penni_pool_launches()
    y = ours(x)
    assert ours._pool.penni_pool_launches() > before  # the kernels' parallel loops came through it
    monkeypatch.setenv(threads.POOL_ENV, "tvm")
    theirs = penni_deploy.load(artifact, threads=2)
    assert theirs.thread_pool == "tvm"
    # The same task split: bit for bit the same output.
    np.testing.assert_array_equal(y, theirs(x))


def test_one_thread_runs_every_task_on_the_caller(artifact, x):
    one = penni_deploy.load(artifact, threads=1)
    assert one.thread_pool == "penni" and one.running_threads == 1
    y = one(x)
    assert one._pool.penni_pool_launches() == 0  # no launch used a second thread
    np.testing.assert_array_equal(y, penni_deploy.load(artifact, threads=2)(x))


def test_more_threads_than_cores(artifact, x):
    many = penni_deploy.load(artifact, threads=2 * os.cpu_count() + 1)
    np.testing.assert_array_equal(many(x), penni_deploy.load(artifact, threads=1)(x))


def test_concurrent_callers_get_their_own_results(artifact):
    model = penni_deploy.load(artifact, threads=2)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(model.input_shape).astype(np.float32) for _ in range(4)]
    expected = [penni_deploy.load(artifact, threads=1)(x) for x in inputs]
    results, errors = {}, []

    def call(k):
        try:
            for _ in range(25):  # while another thread's launch is in flight, a caller runs its own tasks
                out = model(inputs[k])
                if not np.array_equal(out, expected[k]):
                    raise AssertionError(f"caller {k} got another output")
            results[k] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors and len(results) == 4


_FORK = """
import os, sys, numpy as np, penni_deploy
model = penni_deploy.load(sys.argv[1], threads=2)
x = np.ones(model.input_shape, np.float32)
y = model(x)  # the workers exist before the fork
pid = os.fork()
if pid == 0:
    same = np.array_equal(model(x), y) and model._pool.penni_pool_launches() > 0
    os._exit(0 if same else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_starts_its_own_workers(artifact):
    proc = subprocess.run([sys.executable, "-c", _FORK, str(artifact)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0"


def test_unknown_pool_name_is_refused(artifact, monkeypatch):
    monkeypatch.setenv(threads.POOL_ENV, "openmp")
    with pytest.raises(InputSpecError, match="PENNI_THREAD_POOL"):
        penni_deploy.load(artifact)


def _parallel_library(tmp_path, cpu):
    @tvm.script.tirx.prim_func
    def twice(a: tvm.script.tirx.Buffer((8, 16), "float32")):
        for i in tvm.script.tirx.parallel(8):
            for j in range(16):
                a[i, j] = a[i, j] * tvm.script.tirx.float32(2)

    path = str(tmp_path / ("with-pool.so" if cpu else "without-pool.so"))
    export_library(tvm.tirx.build(twice, "llvm"), path, cpu=cpu)
    return path, tvm.runtime.load_module(path)


def test_a_library_without_the_pool_keeps_tvms(tmp_path):
    path, _ = _parallel_library(tmp_path, cpu=False)
    assert threads.install_pool(path, 2) is None


def test_the_pool_runs_every_task_of_a_parallel_loop(tmp_path):
    path, module = _parallel_library(tmp_path, cpu=True)
    pool = threads.install_pool(path, 3)
    assert pool is not None and pool.penni_pool_threads() == 3
    a = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    data = tvm.runtime.tensor(a)
    for _ in range(50):
        module["twice"](data)
    np.testing.assert_array_equal(data.numpy(), a * 2.0**50)
    assert pool.penni_pool_launches() == 50
    # Not loaded by TVM (no such file loaded): nothing to install into, no second copy loaded.
    assert threads.install_pool(json.__file__, 2) is None


def test_the_library_loads_on_the_glibc_tvms_runtime_supports(artifact):
    # TVM's runtime wheel is manylinux_2_27; the pool must not raise that (linked on a glibc >= 2.34,
    # pthread_create and dlopen default to version GLIBC_2.34).
    with zipfile.ZipFile(artifact) as z:
        library = z.read("model.so")
    needed = {tuple(int(p) for p in v.split(b".")) for v in re.findall(rb"GLIBC_(\d+\.\d+(?:\.\d+)?)", library)}
    assert needed and max(needed) <= (2, 27), sorted(needed)
