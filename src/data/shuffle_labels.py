"""A copy of a data set's manifest with the training labels shuffled: the leak check.

A model trained on labels that say nothing about the images should score about 0.5 ROC AUC on
the (correctly labelled) test splits. If it scores clearly more, the labels reach the model
through something other than the images (file names, order, a split that shares people), and
every other number would be suspect.

``python -m src.data.shuffle_labels --data data/demo --out data/demo_shuffled [--seed 0]``
writes ``OUT/manifest.csv`` only: its paths point at ``DATA``'s images, the ``train`` and ``val``
labels are permuted (within each split, so the class balance stays), every other split keeps its
labels. Train on ``OUT`` as usual (``python -m src.train --data-dir OUT ...``) and evaluate on
``DATA``'s test splits.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SHUFFLED_SPLITS", "main", "shuffle_manifest"]

SHUFFLED_SPLITS = ("train", "val")


def shuffle_manifest(data: Path, out: Path, seed: int = 0) -> dict[str, int]:
    """Write ``out/manifest.csv``; returns, per shuffled split, how many labels changed."""
    source = data / "manifest.csv"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found (build the data first)")
    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or ())
        rows = list(reader)
    if not {"path", "label", "split"} <= set(fields):
        raise ValueError(f"{source} needs path, label and split columns")
    out.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(data.resolve(), out.resolve()))
    changed: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    for split in SHUFFLED_SPLITS:
        index = [i for i, r in enumerate(rows) if r["split"] == split]
        labels = [rows[i]["label"] for i in index]
        permuted = [labels[int(k)] for k in rng.permutation(len(labels))]
        changed[split] = sum(a != b for a, b in zip(labels, permuted, strict=True))
        for i, label in zip(index, permuted, strict=True):
            rows[i]["label"] = label
    for r in rows:
        r["path"] = (rel / r["path"]).as_posix()
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / "meta.json").write_text(
        json.dumps({"shuffled_from": str(data), "seed": seed, "labels_changed": changed}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src.data.shuffle_labels",
        description="Copy a data set's manifest with the train and val labels shuffled (a model "
        "trained on it should score about 0.5 ROC AUC on the test splits).",
    )
    p.add_argument("--data", type=Path, required=True, help="the data set, e.g. data/demo")
    p.add_argument("--out", type=Path, required=True, help="where to write the shuffled manifest")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation (default 0)")
    args = p.parse_args(argv)
    try:
        changed = shuffle_manifest(args.data, args.out, args.seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'manifest.csv'}; labels changed: {changed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
