"""Measuring through a TVM RPC tracker on loopback, and MetaSchedule for the dense parts."""

import json

import pytest
from tiny_models import assert_matches_tiny_model, tiny_model

from penni_deploy.artifact.runtime import read_manifest
from penni_deploy.cli import main
from penni_deploy.errors import PenniError
from penni_deploy.frontend import load_model
from penni_deploy.tuning import TuneOptions, TuningDatabase, tune_loaded


@pytest.fixture(scope="module")
def rpc_tracker():
    """A tracker and one server registered under key ``penni-test``, both on 127.0.0.1."""
    from tvm import rpc
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
    server = Server("127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", tracker.port), key="penni-test",
                    silent=True)
    import time

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


def test_rpc_with_an_unknown_key_fails_clearly(tmp_path, rpc_tracker, x86):
    options = TuneOptions(trials=1, rpc_tracker=rpc_tracker, rpc_key="no-such-device")
    from penni_deploy.tuning import measure

    runner = measure.RpcRunner(rpc_tracker, "no-such-device", session_timeout=5)
    runner_timeout = pytest.raises(PenniError, match="no-such-device")
    import threading

    result = {}

    def attempt():  # a tracker queues requests for unknown keys: bound the wait
        try:
            runner._remote()
        except PenniError as exc:
            result["error"] = exc

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert options.rpc_key == "no-such-device"
    if "error" in result:
        with runner_timeout:
            raise result["error"]
    else:
        assert thread.is_alive(), "the request waits for a device with that key instead of using another"


def test_bad_tracker_address_is_a_clear_error():
    from penni_deploy.tuning.measure import RpcRunner

    with pytest.raises(PenniError, match="HOST:PORT"):
        RpcRunner("localhost", "k")
    assert main(["tune", "x.pt", "--db", "/tmp/x", "--rpc-tracker", "127.0.0.1:9"]) == 2


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
