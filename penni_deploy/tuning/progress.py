"""The progress bar of tuning: trials done, the best time so far, and an ETA.

A thin adapter over ``penni_deploy.progress`` (live bar on a terminal, a line per tenth or per 10 s
in logs): it draws on the reporter the command made current, so ``--quiet`` reaches it.
"""

from __future__ import annotations

from ..progress import Progress, current


class ProgressBar:
    def __init__(self, total: int, label: str = "tuning", progress: Progress | None = None):
        self._task = (progress or current()).task(total, label)

    def update(self, done: int, message: str) -> None:
        self._task.update(done, message)

    def close(self) -> None:
        self._task.close()
