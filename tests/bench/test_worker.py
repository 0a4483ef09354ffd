"""The worker's timing: warm-up and timed runs each last a number of runs and a time budget, so that the
median of a fast engine spans more than a moment of the machine's load; and the artifact is loaded as a
user's process loads it. Fake engines, no model: only the loop is under test."""

import time

import numpy as np
import pytest

import penni_deploy
from penni_deploy.bench import worker


def _sleeper(seconds, calls=None):
    def run():
        if calls is not None:
            calls.append(time.perf_counter())
        time.sleep(seconds)

    return run


def _spec(**overrides):
    return {"repeat": 3, "min_repeat": 3, "min_seconds": 0.0, "max_seconds": 10.0, "threads": 1, **overrides}


def test_timed_runs_stop_at_repeat_when_there_is_no_time_budget():
    assert len(worker._timed_runs(_sleeper(0.001), _spec(repeat=5, min_repeat=2))) == 5


def test_timed_runs_last_the_time_budget_past_repeat():
    start = time.perf_counter()
    times = worker._timed_runs(_sleeper(0.002), _spec(min_seconds=0.15))
    assert time.perf_counter() - start >= 0.15
    assert len(times) > 3 and all(t >= 0.002 for t in times)


def test_a_slow_engine_stops_at_min_repeat_past_max_seconds():
    times = worker._timed_runs(_sleeper(0.03), _spec(repeat=100, min_repeat=2, min_seconds=5.0, max_seconds=0.04))
    assert len(times) == 2


def test_chunk_medians_show_the_machine_slowing_down_during_a_row():
    # 200 runs at 1.0 ms, then 800 at 1.7 ms (the VM's cores slowed down), with noise
    rng = np.random.default_rng(0)
    ms = np.concatenate([rng.normal(1.0, 0.05, 200), rng.normal(1.7, 0.05, 800)])
    chunks = worker.chunk_medians_ms(ms)
    assert len(chunks) == worker.CHUNKS
    assert chunks[0] == pytest.approx(1.0, abs=0.03) and chunks[-1] == pytest.approx(1.7, abs=0.03)


def test_a_few_runs_are_one_chunk_their_median():
    assert worker.chunk_medians_ms(np.array([3.0, 1.0, 2.0, 9.0])) == [2.5]
    # 12 runs: two chunks of six, never a chunk of fewer than MIN_CHUNK_RUNS
    assert len(worker.chunk_medians_ms(np.arange(12.0))) == 12 // worker.MIN_CHUNK_RUNS


def test_warm_up_lasts_its_runs_and_its_seconds(monkeypatch):
    calls = []

    def load_fake(spec, x):
        return _sleeper(0.002, calls), (lambda a: a), {}

    monkeypatch.setitem(worker._ENGINE_MODULES, "fake", ("json",))
    monkeypatch.setitem(worker._LOADERS, "fake", load_fake)
    spec = _spec(engine_kind="fake", shape=[1, 2], warmup=2, warmup_seconds=0.1, check=None)
    result = worker.measure(spec)
    assert result["runs"] == 3 and result["warmup_runs"] > 2
    assert len(calls) == result["warmup_runs"] + 3
    warm_up = calls[result["warmup_runs"]] - calls[0]  # from the first warm-up run to the first timed run
    assert warm_up >= 0.1


class _FakeModel:
    def benchmark_callable(self):
        return lambda: None


@pytest.mark.parametrize("takes_threads", [True, False], ids=["load(threads=)", "load()"])
def test_the_artifact_is_loaded_with_the_runtime_defaults_at_the_bench_threads(takes_threads, monkeypatch):
    calls = []
    if takes_threads:
        def load(path, device=None, threads=None):
            calls.append({"path": path, "device": device, "threads": threads})
            return _FakeModel()
    else:
        def load(path, device=None):  # threads then come from TVM_NUM_THREADS (launch.run_worker)
            calls.append({"path": path, "device": device})
            return _FakeModel()
    monkeypatch.setattr(penni_deploy, "load", load)
    worker._load_tvm({"path": "m.penni", "device": "cpu", "threads": 3}, np.zeros(1))
    assert calls == [{"path": "m.penni", "device": "cpu", **({"threads": 3} if takes_threads else {})}]


def test_a_row_says_how_long_its_threads_waited_for_a_core(monkeypatch):
    waits = iter([10.0, 10.6])  # seconds of runqueue wait before and after the timed runs

    monkeypatch.setattr(worker, "_runqueue_wait_s", lambda: next(waits))
    monkeypatch.setitem(worker._ENGINE_MODULES, "fake", ("json",))
    monkeypatch.setitem(worker._LOADERS, "fake", lambda spec, x: (_sleeper(0.0), (lambda a: a), {}))
    spec = _spec(engine_kind="fake", shape=[1, 2], threads=2, warmup=1, warmup_seconds=0, min_seconds=0.5,
                 check=None)
    result = worker.measure(spec)
    assert 0.5 <= 0.6 / (result["cpu_wait"] * 2) < 0.6  # 0.6 s of waiting over a window of 0.5+ s, 2 threads


def test_the_runqueue_wait_is_read_from_the_kernel():
    if worker._runqueue_wait_s() is None:
        pytest.skip("no /proc/self/task/*/schedstat on this kernel")
    before = worker._runqueue_wait_s()
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:
        pass
    assert worker._runqueue_wait_s() >= before >= 0
