"""``metrics.csv``: one row per epoch, appended as the epoch ends so a crash loses no row."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.csv"


class MetricsCsv:
    """The per-epoch metrics file of a run; the first row written fixes its columns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def reset(self) -> None:
        """A fresh run starts without the rows of an earlier one."""
        self.path.unlink(missing_ok=True)

    def truncate_after(self, epoch: int) -> None:
        """Keep only rows of epochs ``<= epoch``: a resumed run redoes the later ones (a crash
        after the row but before ``last.pt`` leaves one behind)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fieldnames = list(reader.fieldnames or [])
            rows = [row for row in reader if int(row["epoch"]) <= epoch]
        with self.path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's row; columns the header lacks are dropped, missing ones left empty."""
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists:
            with self.path.open(newline="", encoding="utf-8") as handle:
                fieldnames = next(csv.reader(handle))
        else:
            fieldnames = list(row)
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=fieldnames, extrasaction="ignore", restval=""
            )
            if not exists:
                writer.writeheader()
            writer.writerow(row)
