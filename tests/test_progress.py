"""Progress output: a live bar on a terminal, throttled plain lines in logs, nothing with --quiet."""

import io

import pytest

from penni_deploy.cli import main
from penni_deploy.progress import Progress
from penni_deploy.tuning.progress import ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class FakeLog(io.StringIO):
    def isatty(self):
        return False


def run_task(progress, total=100, label="tune"):
    task = progress.task(total, label)
    for done in range(1, total + 1):
        task.update(done, f"trial {done}")
    task.close()


def test_plain_lines_only_each_tenth_and_the_last():
    log = FakeLog()
    run_task(Progress(stream=log, interval_s=1e9))
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{n}/100" for n in (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)]
    assert lines[-1].startswith("tune 100/100 (100%)") and lines[-1].endswith("trial 100")
    assert "\x1b[" not in log.getvalue()


def test_plain_lines_also_every_interval():
    log = FakeLog()
    run_task(Progress(stream=log, interval_s=0.0), total=30)
    assert len(log.getvalue().splitlines()) == 30  # each update is past the (zero) interval


def test_final_line_is_printed_once_on_close():
    log = FakeLog()
    task = Progress(stream=log, interval_s=1e9).task(1000, "x")
    task.update(1)
    task.update(5)  # not a tenth: not printed
    task.close()
    assert [line.split()[1] for line in log.getvalue().splitlines()] == ["1/1000", "5/1000"]


def test_live_bar_on_a_terminal():
    terminal = FakeTerminal()
    run_task(Progress(stream=terminal), total=20)
    out = terminal.getvalue()
    assert "\x1b[" in out and "20/20" in out and "trial 20" in out
    assert "tune 1/20" not in out  # not the plain lines


def test_quiet_prints_nothing():
    out = FakeTerminal()
    run_task(Progress(quiet=True, stream=out))
    Progress(quiet=True, stream=out)("a stage")
    assert out.getvalue() == ""


def test_tuning_bar_draws_on_the_active_reporter():
    log = FakeLog()
    with Progress(stream=log, interval_s=1e9).activate():
        bar = ProgressBar(50, "tune")
        for done in range(1, 51):
            bar.update(done, "best 0.1 ms")
        bar.close()
    assert len(log.getvalue().splitlines()) == 11  # was one line per trial
    quiet = FakeLog()
    with Progress(quiet=True, stream=quiet).activate():
        ProgressBar(5, "tune").update(5, "x")
    assert quiet.getvalue() == ""


def test_compile_stages_as_a_bar_on_a_terminal_and_lines_in_a_log(tiny_pt2_file, tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["compile", str(tiny_pt2_file), "-o", str(tmp_path / "a.penni")]) == 0
    assert "6/6" in terminal.getvalue() and "\x1b[" in terminal.getvalue()
    log = FakeLog()
    monkeypatch.setattr("sys.stderr", log)
    assert main(["compile", str(tiny_pt2_file), "-o", str(tmp_path / "b.penni")]) == 0
    lines = log.getvalue().splitlines()
    assert "loading" in lines[0] and "generating kernels" in log.getvalue() and lines[-1].startswith("wrote ")
    quiet = FakeLog()
    monkeypatch.setattr("sys.stderr", quiet)
    assert main(["compile", str(tiny_pt2_file), "-o", str(tmp_path / "c.penni"), "--quiet"]) == 0
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def tiny_pt2_file(tmp_path_factory):
    from tiny_models import save_pt2, tiny_model

    return save_pt2(tiny_model(), tmp_path_factory.mktemp("progress") / "tiny.pt2")
