"""The model repository's layout (``<model>/<version>/model.pt``): listing, version order, and
the settings that pick the checkpoint served from it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from src.core.settings import Settings, version_order
from src.models.repository import ModelRepository, single_checkpoint


def _version(root: Path, model: str, version: str, source: Path, *extra: str) -> Path:
    folder = root / model / version
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "model.pt")
    for name in extra:
        (folder / name).write_text("x")
    return folder / "model.pt"


@pytest.fixture
def repository(tmp_path: Path, checkpoint_path: Path) -> Path:
    root = tmp_path / "repo"
    _version(root, "detector", "2", checkpoint_path, "model.onnx", "MODEL_CARD.md")
    _version(root, "detector", "10", checkpoint_path)
    _version(root, "detector", "9", checkpoint_path)
    _version(root, "other", "1.0.0", checkpoint_path)
    (root / "empty" / "1").mkdir(parents=True)  # no model.pt: not a model
    (root / ".hidden" / "1").mkdir(parents=True)
    shutil.copyfile(checkpoint_path, root / ".hidden" / "1" / "model.pt")
    (root / "detector" / "3").mkdir()  # a version folder without its checkpoint
    return root


def test_versions_sort_numbers_by_value() -> None:
    names = ["10", "9", "1.10.0", "1.9.2", "2", "2-rc1", "beta"]
    assert sorted(names, key=version_order) == ["1.9.2", "1.10.0", "2", "2-rc1", "9", "10", "beta"]


def test_the_listing_holds_each_model_with_its_versions_and_files(repository: Path) -> None:
    models = ModelRepository(repository).models()
    assert list(models) == ["detector", "other"]
    versions = models["detector"]
    assert [entry.version for entry in versions] == ["2", "9", "10"]
    assert versions[0].files == ("MODEL_CARD.md", "model.onnx", "model.pt")
    assert versions[0].size_bytes == (repository / "detector" / "2" / "model.pt").stat().st_size
    assert versions[0].checkpoint == repository / "detector" / "2" / "model.pt"
    assert ModelRepository(repository / "missing").models() == {}


def test_a_single_checkpoint_is_a_one_model_repository(checkpoint_path: Path) -> None:
    entry = single_checkpoint("detector", "test-1", checkpoint_path)
    assert (entry.model, entry.version, entry.checkpoint) == ("detector", "test-1", checkpoint_path)
    assert "model.pt" in entry.files


def test_without_a_repository_the_checkpoint_path_serves(
    settings_factory: Callable[..., Settings], checkpoint_path: Path
) -> None:
    settings = settings_factory()
    assert settings.model_repository is None and settings.model_version is None
    assert settings.model_name == "deepfake-detector"
    assert settings.checkpoint_path == checkpoint_path


def _repo_settings(repository: Path, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_repository": repository,
        "model_name": "detector",
        "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "api_keys": ["k" * 20],
        "device": "cpu",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_the_repository_decides_the_checkpoint(repository: Path, tmp_path: Path) -> None:
    assert _repo_settings(repository, tmp_path).checkpoint_path == (
        repository / "detector" / "10" / "model.pt"
    )
    named = _repo_settings(repository, tmp_path, model_version="2")
    assert named.checkpoint_path == repository / "detector" / "2" / "model.pt"
    other = _repo_settings(repository, tmp_path, model_name="other")
    assert other.checkpoint_path == repository / "other" / "1.0.0" / "model.pt"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_version": "3"}, "checkpoint not found in the model repository"),
        ({"model_name": "empty"}, "no empty/<version>/model.pt"),
        ({"model_name": "absent"}, "no absent/<version>/model.pt"),
        ({"model_version": "../x"}, "model_version"),
        (
            {"checkpoint_path": Path("checkpoints/deepfake-detector/0.1.0-demo/model.pt")},
            "not both",
        ),
    ],
)
def test_a_repository_that_cannot_serve_is_refused_at_start(
    repository: Path, tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("<", ".").replace(">", ".")):
        _repo_settings(repository, tmp_path, **overrides)


def test_a_missing_repository_or_a_version_without_one_is_refused(
    repository: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="model repository not found"):
        _repo_settings(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ValidationError, match="DFD_MODEL_VERSION needs DFD_MODEL_REPOSITORY"):
        _repo_settings(repository, tmp_path, model_repository=None, model_version="2")
