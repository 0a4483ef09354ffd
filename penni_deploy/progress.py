"""Progress output of compile, tune and compress, on stderr: stage lines and counted tasks.

On a terminal a task is a live ``rich`` bar (done/total, elapsed, ETA, the latest message); in a
file or CI log it is plain lines, at most one per ``interval_s`` or per tenth of the total, and
always the final one, so logs stay short (tuning used to write a line per trial). ``quiet``
silences everything. ``Progress.activate()`` makes one reporter the current one for code that
draws bars without being handed it (the tuner's and MetaSchedule's ``tuning.progress.ProgressBar``).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import TextIO

_current: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("penni_progress", default=None)


class Progress:
    """Where progress goes and how it looks.

    Parameters
    ----------
    quiet : bool
        Print nothing.
    stream : file, optional
        Defaults to ``sys.stderr`` (looked up when printing, so redirections are honoured).
    live : bool, optional
        Force the live bar (True) or plain lines (False); by default live when ``stream`` is a TTY.
    interval_s : float
        Plain mode: the longest gap between two lines of a task (besides each tenth done).
    stages : int, optional
        The number of stage messages a run sends (compile's); on a terminal they then advance a bar.
    label : str
        The stage bar's label.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, live: bool | None = None,
                 interval_s: float = 10.0, stages: int | None = None, label: str = ""):
        self.quiet = quiet
        self._stream = stream
        self._live = live
        self.interval_s = interval_s
        self.start = time.perf_counter()
        self._stages = stages
        self._stage_task: Task | None = None
        self._stage = 0
        self.label = label

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    @property
    def live(self) -> bool:
        if self._live is not None:
            return self._live
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, message: str) -> None:
        """A stage message: a line with the elapsed time (on a terminal, the stage bar moves)."""
        if self.quiet:
            return
        if self._stages and self.live:
            if self._stage_task is None:
                self._stage_task = self.task(self._stages, self.label or "stages")
            self._stage += 1
            self._stage_task.update(min(self._stage, self._stages), message)
            return
        self.line(f"[{time.perf_counter() - self.start:6.1f}s] {message}")

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the stage bar, if one is drawn."""
        if self._stage_task is not None:
            self._stage_task.close()
            self._stage_task = None

    def task(self, total: int, label: str) -> Task:
        """A counted task of ``total`` steps; update it with ``done`` and a message, then close it."""
        return Task(self, max(1, total), label)

    @contextlib.contextmanager
    def activate(self):
        """Make this the reporter ``current()`` returns inside the block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            self.close()
            _current.reset(token)


def current() -> Progress:
    """The active reporter (see ``Progress.activate``), else a default one on stderr."""
    return _current.get() or Progress()


class Task:
    """One counted task of a ``Progress``: a live bar or throttled plain lines."""

    def __init__(self, progress: Progress, total: int, label: str):
        self.progress, self.total, self.label = progress, total, label
        self.done = 0
        self.message = ""
        self.start = time.perf_counter()
        self._printed_at = self.start
        self._printed_done = -1
        self._bar = None
        if not progress.quiet and progress.live:
            self._bar = _rich_bar(progress.stream, label, total)

    def update(self, done: int, message: str = "") -> None:
        """``done`` of ``total`` steps finished; ``message`` says what happened last."""
        self.done = min(max(done, 0), self.total)
        self.message = message or self.message
        self._show()

    def note(self, message: str) -> None:
        """A new message without a step done (e.g. the loss mid-epoch)."""
        self.message = message
        self._show()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif not self.progress.quiet and self._printed_done != self.done:
            self._print()  # the final line, always

    def _show(self) -> None:
        if self.progress.quiet:
            return
        if self._bar is not None:
            # the counts first: a long message is cut rather than squeezing the bar off the line
            message = self.message if len(self.message) <= 48 else self.message[:47] + "…"
            self._bar.update(self._bar.task_ids[0], completed=self.done, message=message)
            return
        now = time.perf_counter()
        tenth = self.total / 10
        crossed = self._printed_done < 0 or int(self.done / tenth) > int(self._printed_done / tenth)
        if self.done == self.total or crossed or now - self._printed_at >= self.progress.interval_s:
            self._print()

    def _print(self) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        self.progress.line(f"{self.label} {self.done}/{self.total} ({self.done / self.total:4.0%}) {elapsed:5.0f}s "
                           f"eta {eta:4.0f}s  {self.message}".rstrip())
        self._printed_at, self._printed_done = time.perf_counter(), self.done


def _rich_bar(stream: TextIO, label: str, total: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[message]}"),
                       console=Console(file=stream, force_terminal=True), transient=False)
    bar.add_task(label, total=total, message="")
    bar.start()
    return bar
