"""Threads as a user gets them: every usable core by default, ``threads=``/``--threads`` and
``TVM_NUM_THREADS`` when told, and the count really reaching TVM's thread pool."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import TINY_SHAPE

import penni_deploy
from penni_deploy.artifact import threads
from penni_deploy.cli import main
from penni_deploy.errors import InputSpecError
from penni_deploy.machine import available_cores, cgroup_cpu_limit


def _cgroup(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 1),  # a fractional quota rounds down
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota(tmp_path, files, expected):
    assert cgroup_cpu_limit(_cgroup(tmp_path, files)) == expected


def test_available_cores_follows_the_affinity_mask_and_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr("penni_deploy.machine.cgroup_cpu_limit", lambda: None)
    assert available_cores() == 6
    monkeypatch.setattr("penni_deploy.machine.cgroup_cpu_limit", lambda: 3)
    assert available_cores() == 3


def test_resolve_threads_precedence(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_ours", {})
    monkeypatch.setattr(threads, "available_cores", lambda: 7)
    assert threads.resolve_threads() == 7
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert threads.resolve_threads() == 3
    assert threads.resolve_threads(5) == 5
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputSpecError, match="positive whole number"):
            threads.resolve_threads(bad)
    monkeypatch.setenv("TVM_NUM_THREADS", "lots")
    with pytest.raises(InputSpecError, match="TVM_NUM_THREADS"):
        threads.resolve_threads()


def test_our_own_pool_setting_is_not_taken_for_the_users(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_ours", {})
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    threads.prepare_pool(1)
    assert os.environ["TVM_NUM_THREADS"] == "4"  # the pool gets every core, the run selects fewer
    assert threads.resolve_threads() == 4  # still "not told": the default, not a user's 4


_PROBE = """
import json, sys
import penni_deploy
kwargs = json.loads(sys.argv[2])
model = penni_deploy.load(sys.argv[1], **kwargs)
model(__import__("numpy").zeros(model.input_shape, "float32"))
print(json.dumps({"resolved": model.threads, "running": model.running_threads, "pool": model.thread_pool}))
"""


def _probe(artifact, env_threads=None, pool=None, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", threads.POOL_ENV)}
    if pool is not None:
        env[threads.POOL_ENV] = pool
    if env_threads is not None:
        env["TVM_NUM_THREADS"] = str(env_threads)
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(artifact), json.dumps(kwargs)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_process_runs_on_every_usable_core(artifact):
    # TVM alone would take half the cores on x86; the loader must not.
    cores = available_cores()
    assert _probe(artifact) == {"resolved": cores, "running": cores, "pool": "penni"}
    assert _probe(artifact, pool="tvm") == {"resolved": cores, "running": cores, "pool": "tvm"}


@pytest.mark.parametrize("pool", ["penni", "tvm"])
def test_threads_argument_and_environment_reach_the_pool(artifact, pool):
    assert _probe(artifact, pool=pool, threads=1) == {"resolved": 1, "running": 1, "pool": pool}
    assert _probe(artifact, pool=pool, env_threads=1) == {"resolved": 1, "running": 1, "pool": pool}
    assert _probe(artifact, pool=pool, env_threads=1, threads=2)["resolved"] == 2


def test_run_threads_option(artifact, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal(TINY_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for n in ("1", "2"):
        out = tmp_path / f"y{n}.npy"
        assert main(["run", str(artifact), "-i", str(tmp_path / "x.npy"), "-o", str(out), "--threads", n]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), np.load(tmp_path / "y2.npy"), rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["run", str(artifact), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "z.npy"),
                 "--threads", "0"]) == 2
    assert not (tmp_path / "z.npy").exists()
