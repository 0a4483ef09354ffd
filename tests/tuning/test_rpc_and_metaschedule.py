"""Measuring through a TVM RPC tracker on loopback, and MetaSchedule for the dense parts."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tiny_models import assert_matches_tiny_model, tiny_model

from penni_deploy.artifact.runtime import read_manifest
from penni_deploy.cli import main
from penni_deploy.errors import PenniError
from penni_deploy.frontend import load_model
from penni_deploy.tuning import TuneOptions, TuningDatabase, tune_loaded
from penni_deploy.tuning.measure import RpcRunner, TimingOptions


@pytest.fixture(scope="module")
def rpc_tracker():
    """A tracker and one server registered under key ``penni-test``, both on 127.0.0.1."""
    from tvm import rpc
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
    server = Server("127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", tracker.port), key="penni-test",
                    silent=True)
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until the server has registered
        summary = rpc.connect_tracker("127.0.0.1", tracker.port).summary()
        if any(q.get("key") == "penni-test" for q in summary.get("server_info", [])) or \
                "penni-test" in json.dumps(summary.get("queue_info", {})):
            break
        time.sleep(0.2)
    yield f"127.0.0.1:{tracker.port}"
    server.terminate()
    tracker.terminate()


def test_tune_measures_on_an_rpc_device(tmp_path, rpc_tracker, capsys):
    from tiny_models import save_pt2

    model_path = save_pt2(tiny_model(), tmp_path / "tiny.pt2")
    db = tmp_path / "db"
    assert main(["tune", str(model_path), "--db", str(db), "--trials", "4", "--dense-trials", "0",
                 "--rpc-tracker", rpc_tracker, "--rpc-key", "penni-test"]) == 0
    log = json.loads((db / "tuning_log.json").read_text())
    assert log["runner"] == "rpc" and log["measured"] >= 3 and log["failed"] == 0
    assert all(r.ms and r.ms > 0 for r in TuningDatabase(db)._records)


def finishes_within(seconds, fn):
    """``fn()``'s result, or a test failure if it is still running after ``seconds`` (it then keeps
    running in a daemon thread, which the test process ends with)."""
    result = {}

    def call():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            result["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


def test_rpc_with_an_unknown_key_fails_clearly(tmp_path, tiny_pt2, rpc_tracker, capsys):
    # the tracker queues a request for a key nobody serves: TVM's client would wait forever
    argv = ["tune", str(tiny_pt2), "--db", str(tmp_path / "db"), "--trials", "1", "--dense-trials", "0",
            "--rpc-tracker", rpc_tracker, "--rpc-key", "no-such-device"]
    assert finishes_within(60, lambda: main(argv)) == 2
    line = one_line_error(capsys)
    assert "no RPC server is registered with key 'no-such-device'" in line and "registered: penni-test" in line


def test_dead_tracker_is_a_clear_error(tmp_path, tiny_pt2, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["tune", str(tiny_pt2), "--db", str(tmp_path / "db"), "--trials", "1", "--dense-trials", "0",
            "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "k"]
    start = time.perf_counter()
    assert finishes_within(60, lambda: main(argv)) == 2
    assert time.perf_counter() - start < 30  # TVM's own connect retries a refused port for 60 s
    assert f"cannot reach the RPC tracker 127.0.0.1:{port}" in one_line_error(capsys)


def test_bad_tracker_address_is_a_clear_error(tmp_path, tiny_pt2, capsys):
    with pytest.raises(PenniError, match="HOST:PORT"):
        RpcRunner("localhost", "k")
    argv = ["tune", str(tiny_pt2), "--db", str(tmp_path / "db"), "--rpc-tracker", "127.0.0.1", "--rpc-key", "k"]
    assert main(argv) == 2
    assert "must be HOST:PORT" in one_line_error(capsys)


@pytest.fixture
def own_server(rpc_tracker):
    """Start an RPC server process under a key of its own; yields (key, kill)."""
    key = f"penni-own-{os.getpid()}"
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", rpc_tracker, "--key", key,
                               "--host", "127.0.0.1", "--port", "9500", "--port-end", "9600", "--silent"],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill():  # the server and the session processes it forked: its whole process group
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)

    try:
        runner = RpcRunner(rpc_tracker, key)
        deadline = time.time() + 90
        while key not in runner.registered_keys(runner._connect_tracker()):
            assert time.time() < deadline and server.poll() is None, "the RPC server did not register"
            time.sleep(0.5)
        yield key, kill
    finally:
        kill()


@pytest.fixture(scope="module")
def add_one():
    """A tiny executable ``main(x) = x + 1`` for the RPC runner."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.add(x, relax.const(1.0))))
        bb.emit_func_output(out)
    return tvm.compile(bb.get(), target="llvm")


FAST = TimingOptions(repeat=1, min_repeat_ms=1)


def test_rpc_request_for_a_busy_key_times_out(rpc_tracker, own_server, add_one):
    key, _ = own_server
    holder = RpcRunner(rpc_tracker, key, FAST)
    assert holder.run(add_one, [np.zeros(4, np.float32)]) > 0  # holds the only server of that key
    waiter = RpcRunner(rpc_tracker, key, FAST, request_timeout=2)
    with pytest.raises(PenniError, match=f"no server with key '{key}' became free within 2 s"):
        finishes_within(60, lambda: waiter.run(add_one, [np.zeros(4, np.float32)]))


def test_rpc_server_gone_mid_run_fails_clearly(rpc_tracker, own_server, add_one):
    key, kill = own_server
    runner = RpcRunner(rpc_tracker, key, FAST, request_timeout=5)
    assert runner.run(add_one, [np.zeros(4, np.float32)]) > 0
    kill()
    with pytest.raises(PenniError, match=f"the RPC server with key '{key}' went away during measurement"):
        finishes_within(60, lambda: runner.run(add_one, [np.zeros(4, np.float32)]))


def test_metaschedule_tunes_the_dense_parts_and_compile_applies_them(tmp_path, tiny_pt2, x86):
    db = tmp_path / "db"
    tune_loaded(load_model(str(tiny_pt2)), str(db), x86, options=TuneOptions(trials=2, dense_trials=2))
    records = TuningDatabase(db)._records
    impls = {r.config.get("impl") for r in records if r.workload.startswith("dense-")}
    assert impls == {"hand", "metaschedule"}
    ms_records = (db / "metaschedule" / "database_tuning_record.json").read_text().splitlines()
    assert ms_records

    artifact = tmp_path / "a.penni"
    assert main(["compile", str(tiny_pt2), "-o", str(artifact), "--tuning-db", str(db), "-q"]) == 0
    dense = [layer for layer in read_manifest(str(artifact)).layers if layer["kind"] == "dense"]
    assert dense and all("(tuned" in layer["kernels"] for layer in dense)
    assert_matches_tiny_model(artifact, seed=3)

    # a second run finds every dense task tuned and skips MetaSchedule
    before = len(ms_records)
    tune_loaded(load_model(str(tiny_pt2)), str(db), x86, options=TuneOptions(trials=2, dense_trials=2))
    assert len((db / "metaschedule" / "database_tuning_record.json").read_text().splitlines()) == before
