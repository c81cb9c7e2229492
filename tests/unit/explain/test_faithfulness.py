"""``python -m src.train.evaluate --explain``: the deletion table for every method, the JSON, and
the overlays for the docs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.explain.faithfulness import spread
from src.train.evaluate import main
from tests.helpers.images import image_bytes


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for label in ("real", "fake"):
        folder = tmp_path / "data" / "test" / label
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"{label}_{i}.png").write_bytes(image_bytes("PNG", (40, 40), seed=i))
    return tmp_path / "data"


def test_it_prints_the_deletion_metric_of_each_method_and_writes_overlays(
    checkpoint_path: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "img"
    json_out = tmp_path / "results.json"
    argv = ["--checkpoint", str(checkpoint_path), "--data", str(data_dir), "--explain"]
    argv += ["--explain-limit", "2", "--overlays", str(out), "--json-out", str(json_out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "deletion metric, model.pt@test" in printed
    methods = json.loads(json_out.read_text())["explanations"][0]["methods"]
    assert [m["method"] for m in methods] == ["gradcam", "ig", "lime", "shap"]
    for m in methods:
        assert m["n"] == 2
        assert 0.0 <= m["heat_deleted"] <= 1.0 and 0.0 <= m["random_deleted"] <= 1.0
        assert m["heat_drop"] == pytest.approx(m["fake_prob"] - m["heat_deleted"])
        assert f"\n{m['method']} " in printed
    with Image.open(out / "explanations.png") as grid:
        assert grid.size == (5 * 176, 2 * 176)  # two examples: the crop, then four overlays


def test_spread_picks_evenly_and_keeps_short_lists() -> None:
    items = [Path(str(i)) for i in range(10)]
    assert spread(items, 3) == [Path("0"), Path("4"), Path("9")]
    assert spread(items[:2], 5) == items[:2]


def test_lime_and_shap_can_be_measured_on_slic_superpixels_for_comparison(
    checkpoint_path: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_out = tmp_path / "results.json"
    argv = ["--checkpoint", str(checkpoint_path), "--data", str(data_dir), "--explain"]
    argv += ["--explain-methods", "lime", "shap", "--explain-regions", "slic"]
    argv += ["--explain-limit", "1", "--json-out", str(json_out)]
    assert main(argv) == 0
    assert "deletion metric, model.pt@test, slic regions" in capsys.readouterr().out
    result = json.loads(json_out.read_text())["explanations"][0]
    assert result["regions"] == "slic"
    assert [m["method"] for m in result["methods"]] == ["lime", "shap"]


def test_slic_superpixels_fall_back_to_the_grid_on_a_flat_image() -> None:
    from src.explain.faithfulness import slic_superpixels
    from src.explain.methods import grid_cells

    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    np.testing.assert_array_equal(slic_superpixels(flat, 25), grid_cells(64, 25))
    textured = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    segments = slic_superpixels(textured, 25)
    assert set(np.unique(segments)) == set(range(int(segments.max()) + 1))
