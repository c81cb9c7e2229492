"""Seeded random draws and the identity-disjoint splits of the demo data.

The two faces of the committed examples (``examples/real_0.jpg`` / ``fake_0.*`` show ``t1_3``,
``real_1.jpg`` / ``fake_1.jpg`` show ``t1_5``) are always test identities: no model trained on
the demo data may have seen them, whatever sources are installed. Identities with real videos
(:mod:`src.data.catalog`) are pinned to the test split as well, so that the real-footage videos
are held out too.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "EXAMPLE_IDENTITIES",
    "FULL_SPLIT",
    "PREVIOUS_MODEL_IDENTITIES",
    "SMALL_SPLIT",
    "sample_rng",
    "split_identities",
    "split_sizes",
]

# The faces of examples/real_0.jpg (and real_0.mp4) and examples/real_1.jpg, in that order.
EXAMPLE_IDENTITIES: tuple[str, str] = ("t1_3", "t1_5")
# The identities the 0.1.0-demo model was trained or selected on (its train and val splits):
# never test identities, so that model can be scored on the new test split as a baseline.
PREVIOUS_MODEL_IDENTITIES: tuple[str, ...] = (
    "astronaut",
    "grace_hopper",
    "t1_0",
    "t1_1",
    "t1_2",
    "t1_4",
    "tom_hanks",
)
# (validation, test) identity counts: with the registry packages, and without them.
FULL_SPLIT = (6, 10)
SMALL_SPLIT = (2, 2)
_MIN_TRAIN = 12  # identities left for training before the full split is used


def sample_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator seeded from ``seed`` and the keys (strings hashed with CRC-32)."""
    entropy = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        entropy.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(entropy))


def split_sizes(n_identities: int) -> tuple[int, int]:
    """``(n_val, n_test)``: 6 and 10 when that leaves at least 12 identities to train on, else
    2 and 2 (the installed packages alone give 9 identities)."""
    n_val, n_test = FULL_SPLIT
    if n_identities >= n_val + n_test + _MIN_TRAIN:
        return FULL_SPLIT
    return SMALL_SPLIT


def split_identities(
    names: Sequence[str],
    split_seed: int = 0,
    n_val: int | None = None,
    n_test: int | None = None,
    pinned_test: Iterable[str] = EXAMPLE_IDENTITIES,
    not_test: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Disjoint identity lists per split.

    The ``pinned_test`` names that are present go to test first; the other names, sorted and
    shuffled with ``split_seed``, fill the rest of test (skipping ``not_test`` names), then
    val, then train. Counts default to :func:`split_sizes` (the default test count grows to hold
    every pinned name).
    """
    ordered = sorted(set(names))
    pinned = [n for n in dict.fromkeys(pinned_test) if n in set(ordered)]
    default_val, default_test = split_sizes(len(ordered))
    n_val = default_val if n_val is None else n_val
    n_test = max(default_test, len(pinned)) if n_test is None else n_test
    if n_val < 1 or n_test < 1:
        raise ValueError("need at least one validation and one test identity")
    if len(ordered) < n_val + n_test + 1:
        raise ValueError(f"need at least {n_val + n_test + 1} identities, got {len(ordered)}")
    if len(pinned) > n_test:
        raise ValueError(f"{len(pinned)} identities are pinned to test, more than {n_test}")
    rest = [n for n in ordered if n not in set(pinned)]
    random.Random(split_seed).shuffle(rest)
    barred = set(not_test) - set(pinned)
    open_for_test = [n for n in rest if n not in barred]
    test = pinned + open_for_test[: n_test - len(pinned)]
    if len(test) < n_test:
        raise ValueError(f"only {len(test)} identities may be test identities, {n_test} asked")
    others = [n for n in rest if n not in set(test)]
    val, train = others[:n_val], others[n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
