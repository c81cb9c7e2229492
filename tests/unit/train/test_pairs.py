"""Paired training (``--pair-views``): a real image and its fake twin share a batch and their
augmentation draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.models.checkpoint import read_checkpoint
from src.train.dataset import FrameDataset, PairedShuffle, Sample, discover_splits, pair_units
from src.train.trainer import fit
from tests.unit.train.test_train import _config, _write_identity_frames


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    _write_identity_frames(root, identities=6, frames=3)
    return root


def test_real_and_fake_twins_form_one_unit(pair_data: Path) -> None:
    samples = discover_splits(pair_data)["train"]
    units = pair_units(samples)
    assert sum(len(unit) for unit in units) == len(samples)
    for unit in units:
        assert len(unit) == 2
        real, fake = (samples[index] for index in unit)
        assert {real.label, fake.label} == {0, 1}
        assert real.path.name == fake.path.name and real.group == fake.group


def test_images_without_a_twin_stay_single() -> None:
    samples = [
        Sample(Path("d/train/real/a.jpg"), 0, "p"),
        Sample(Path("d/train/fake/a.jpg"), 1, "p"),
        Sample(Path("d/train/fake/b.jpg"), 1, "p"),  # no real twin
        Sample(Path("d/val/real/a.jpg"), 0, "p"),  # another split
        Sample(Path("d/train/real/a.jpg"), 0, "q"),  # another group
        Sample(Path("d/train/real/c.jpg"), 0, "p"),
        Sample(Path("d/train/real/c.jpg"), 0, "p"),  # same label twice: not a pair
    ]
    assert pair_units(samples) == [(0, 1), (2,), (3,), (4,), (5,), (6,)]


def test_the_shuffle_keeps_pairs_together_and_follows_its_seed() -> None:
    units = [(0, 5), (1, 4), (2,), (3, 6)]
    generator = torch.Generator()

    def order(seed: int) -> list[int]:
        generator.manual_seed(seed)
        return list(PairedShuffle(units, generator))

    first = order(0)
    assert sorted(first) == list(range(7)) and len(PairedShuffle(units, generator)) == 7
    for unit in units:
        start = first.index(unit[0])
        assert tuple(first[start : start + len(unit)]) == unit
    assert order(0) == first
    assert {tuple(order(seed)) for seed in range(8)} != {tuple(first)}


def test_both_images_of_a_pair_get_the_same_augmentation_draws(pair_data: Path) -> None:
    samples = discover_splits(pair_data)["train"]
    units = pair_units(samples)
    shuffle = PairedShuffle(units, torch.Generator())
    draws: dict[int, float] = {}

    def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws[len(draws)] = float(rng.random())
        return rgb

    dataset = FrameDataset(
        samples,
        lambda rgb: torch.zeros(1),
        augment,
        seed=3,
        augment_keys=shuffle.augment_keys(),
    )
    for index in range(len(samples)):
        dataset[index]
    for first, second in units:
        assert draws[first] == draws[second]
    assert len({draws[unit[0]] for unit in units}) == len(units)


def test_a_paired_run_trains_and_records_the_setting(pair_data: Path, tmp_path: Path) -> None:
    fit(_config(pair_data, tmp_path, pair_views=True), log=lambda _: None)
    metadata = read_checkpoint(tmp_path / "best.pt").metadata
    assert metadata.train_args["pair_views"] is True


def test_best_metric_epoch_ships_the_last_epoch(pair_data: Path, tmp_path: Path) -> None:
    result = fit(
        _config(pair_data, tmp_path, epochs=3, best_metric="epoch", lr=0.0), log=lambda _: None
    )
    assert result.best_epoch == 3
    assert read_checkpoint(tmp_path / "best.pt").metadata.metrics["epoch"] == 3.0
