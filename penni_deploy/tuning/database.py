"""The tuning database: plain files in one folder, safe to copy, resume and share.

Layout of ``DIR``:

- ``penni_kernels.jsonl``: one JSON line per measured (target, layer workload, kernel config), with
  the median time or the error. Lines are appended and flushed one by one, so a killed run loses
  at most the measurement in flight, and a torn last line is skipped on reading.
- ``metaschedule/``: TVM MetaSchedule's own JSON database for the dense parts.
- ``tuning_log.json``: what the last ``tune`` run did (for people; not read back).

Reading keeps the fastest successful record per (target, workload); configs measured before are
never measured again, which is what makes resuming and re-tuning the same model cheap.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from ..errors import PenniError
from ..kernels.config import KernelConfig

RECORDS = "penni_kernels.jsonl"
METASCHEDULE = "metaschedule"


@dataclass(frozen=True)
class Record:
    target: str
    workload: str
    config: dict
    ms: float | None
    layer: str = ""
    error: str | None = None

    def config_key(self) -> str:
        return json.dumps(self.config, sort_keys=True)


class TuningDatabase:
    """A tuning folder (created when missing)."""

    def __init__(self, path: str, *, create: bool = True):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            if not create:
                raise PenniError(f"tuning database {self.path} does not exist; run `penni-deploy tune ... --db "
                                 f"{self.path}` first, or drop --tuning-db")
            os.makedirs(self.path)
        self.records_path = os.path.join(self.path, RECORDS)
        self.metaschedule_dir = os.path.join(self.path, METASCHEDULE)
        self._records: list[Record] = self._read()

    def _read(self) -> list[Record]:
        if not os.path.exists(self.records_path):
            return []
        records = []
        with open(self.records_path, encoding="utf-8") as f:
            for line in f:
                try:
                    data = json.loads(line)
                    records.append(Record(data["target"], data["workload"], data["config"], data.get("ms"),
                                          data.get("layer", ""), data.get("error")))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a killed run, or not ours
        return records

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Record) -> None:
        """Append one measurement durably."""
        line = json.dumps({"target": record.target, "workload": record.workload, "config": record.config,
                           "ms": record.ms, "layer": record.layer, "error": record.error,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, sort_keys=True)
        with open(self.records_path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a killed run: end it, don't extend it
                    line = "\n" + line
            f.write((line + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self._records.append(record)

    def measured(self, target: str, workload: str) -> dict[str, Record]:
        """Every config already measured for this workload on this target kind, by config key."""
        return {r.config_key(): r for r in self._records if r.target == target and r.workload == workload}

    def best(self, target: str, workload: str) -> Record | None:
        """The fastest successful record of this workload on this target kind, or None."""
        ok = [r for r in self._records if r.target == target and r.workload == workload and r.ms is not None]
        return min(ok, key=lambda r: r.ms) if ok else None

    def best_config(self, target: str, workload: str) -> KernelConfig | None:
        """The fastest measured kernel config of a PENNI layer, or None."""
        record = self.best(target, workload)
        return KernelConfig.from_json(record.config) if record else None

    def targets(self) -> set[str]:
        return {r.target for r in self._records}

    def write_log(self, summary: dict) -> None:
        tmp = os.path.join(self.path, "tuning_log.json.partial")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, os.path.join(self.path, "tuning_log.json"))
